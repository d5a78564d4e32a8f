"""The fused-head forward: same model, no logits, and the patched model still behaves like the original."""

import copy
import inspect

import torch

from trl.models.tiny import tiny_model
from trl.ops.fused_head import FusedHeadRequest, add_fused_lm_head


SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
             head_dim=32)


def test_logps_equal_full_logits_at_label_positions():
    model = tiny_model(**SMALL)
    ids = torch.tensor([[1, 5, 9, 12, 7], [1, 8, 8, 3, 2]])
    labels = ids.clone()
    labels[0, :2] = -100
    with torch.no_grad():
        logps = model(input_ids=ids).logits.log_softmax(-1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    add_fused_lm_head(model)
    out = model(input_ids=ids, fused_lm_head=FusedHeadRequest(labels=labels))
    torch.testing.assert_close(out.logps, logps[labels[:, 1:] != -100], rtol=1e-5, atol=1e-6)
    assert out.mean_logits.shape == out.logps.shape


def test_signature_and_generate_are_unchanged():
    """`generate` inspects `forward` (e.g. for `logits_to_keep`): the patched forward keeps the model's signature."""
    model = tiny_model(**SMALL)
    prompt = torch.tensor([[1, 5, 9]])
    expected = model.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=3)
    original = inspect.signature(model.forward)
    add_fused_lm_head(model)
    patched = inspect.signature(model.forward)
    assert list(original.parameters)[:-1] == [p for p in patched.parameters if p != "fused_lm_head"][:-1]
    assert "logits_to_keep" in patched.parameters and "fused_lm_head" in patched.parameters
    assert torch.equal(model.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=3), expected)


def test_deep_copy_is_independent():
    model = add_fused_lm_head(tiny_model(**SMALL))
    clone = copy.deepcopy(model)
    assert clone.forward.__self__ is clone
    with torch.no_grad():
        clone.model.norm.weight.mul_(2.0)
    ids = torch.tensor([[1, 5, 9, 12]])
    assert not torch.allclose(clone(input_ids=ids).logits, model(input_ids=ids).logits)
