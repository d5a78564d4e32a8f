"""The shared-prompt layout of the online trainers' forward (trl/ops/shared_prompt.py): its tokens, positions and mask
worked out by hand, and the same completion log-probs, entropies and gradients as one padded row per completion."""

import pytest
import torch

from trl.models.tiny import tiny_model
from trl.ops.fused_head import add_fused_lm_head, completion_logps
from trl.ops.shared_prompt import share_prompts, unsupported_reason


def _left_pad(prompts, width):
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, prompt in enumerate(prompts):
        ids[b, width - len(prompt):] = torch.tensor(prompt)
        mask[b, width - len(prompt):] = 1
    return ids, mask


def _right_pad(completions, width):
    ids = torch.zeros(len(completions), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, completion in enumerate(completions):
        ids[b, : len(completion)] = torch.tensor(completion)
        mask[b, : len(completion)] = 1
    return ids, mask


def test_layout_by_hand():
    # prompts A = [5, 6, 7] (rows 0 and 2) and B = [8, 9] (row 1); completions of 2, 1 and 3 tokens
    prompt_ids, prompt_mask = _left_pad([[5, 6, 7], [8, 9], [5, 6, 7]], 3)
    completion_ids, completion_mask = _right_pad([[10, 11], [12], [13, 14, 15]], 3)
    # (too small to pay: 18 positions either way, so the cost rules are lifted to see the layout)
    shared = share_prompts(prompt_ids, prompt_mask, completion_ids, completion_mask, min_saving=0,
                           max_attention_growth=float("inf"))
    # row A: prompt minus its last token, then [7, 10, 11] and [7, 13, 14, 15]; row B: [9, 12] after [8]
    assert shared.input_ids.tolist() == [[5, 6, 7, 10, 11, 7, 13, 14, 15], [8, 9, 12, 0, 0, 0, 0, 0, 0]]
    assert shared.position_ids.tolist() == [[0, 1, 2, 3, 4, 2, 3, 4, 5], [0, 1, 2, 0, 0, 0, 0, 0, 0]]
    assert shared.score_mask.tolist() == [[0, 0, 0, 1, 1, 0, 1, 1, 1], [0, 0, 1, 0, 0, 0, 0, 0, 0]]
    mask = shared.attention_mask[0, 0].int()
    # the second segment (columns 5-8) sees the shared prompt (0-1) and itself, never the first segment (2-4)
    assert mask[7].tolist() == [1, 1, 0, 0, 0, 1, 1, 1, 0]
    assert mask[4].tolist() == [1, 1, 1, 1, 1, 0, 0, 0, 0]
    assert mask[1].tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0]
    # padding queries see something (no all-masked row: sdpa would return NaN)
    assert shared.attention_mask[1, 0].any(-1).all()
    assert shared.row.tolist() == [0, 1, 0]
    # next-token columns: row 0's tokens are predicted at columns 2 and 3, row 2's at 5, 6 and 7
    assert shared.columns.tolist() == [[2, 3, 0], [1, 0, 0], [5, 6, 7]]
    values = torch.arange(16.0).view(2, 8)
    assert shared.gather(values).tolist() == [[2.0, 3.0, 0.0], [9.0, 0.0, 0.0], [5.0, 6.0, 7.0]]


def test_nothing_to_share_or_holes_give_none():
    prompt_ids, prompt_mask = _left_pad([[5, 6], [7, 8]], 2)
    completion_ids, completion_mask = _right_pad([[9], [10]], 2)
    assert share_prompts(prompt_ids, prompt_mask, completion_ids, completion_mask) is None  # two distinct prompts
    prompt_ids, prompt_mask = _left_pad([[5, 6, 7, 8, 9, 10], [5, 6, 7, 8, 9, 10]], 6)
    # 2 rows of 6 + 2 = 16 positions and 128 scores padded, 1 row of 5 + 2 + 2 = 9 positions and 81 scores shared
    assert share_prompts(prompt_ids, prompt_mask, completion_ids, completion_mask) is not None
    holes = torch.tensor([[0, 1], [1, 1]])  # the first row skips a token
    assert share_prompts(prompt_ids, prompt_mask, completion_ids, holes) is None
    assert share_prompts(prompt_ids, prompt_mask, completion_ids, completion_mask, max_mask_elements=80) is None
    assert share_prompts(prompt_ids, prompt_mask, completion_ids, completion_mask, min_saving=0.5) is None
    assert share_prompts(prompt_ids, prompt_mask, completion_ids, completion_mask, max_attention_growth=0.6) is None


def test_long_completions_of_a_short_prompt_stay_padded():
    # 8 completions of 256 tokens after a 200-token prompt: 8 x 456-wide rows padded (1.66M scores) against one row of
    # 199 + 8 x 257 = 2,255 (5.09M scores): three times the attention for 38% fewer positions -> padded rows
    prompt_ids, prompt_mask = _left_pad([list(range(4, 204))] * 8, 200)
    completion_ids, completion_mask = _right_pad([list(range(4, 260))] * 8, 256)
    assert share_prompts(prompt_ids, prompt_mask, completion_ids, completion_mask) is None
    assert share_prompts(prompt_ids, prompt_mask, completion_ids, completion_mask, max_attention_growth=4) is not None


def _batch(vocab, seed=0):
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(4, vocab, (n,), generator=gen).tolist() for n in (5, 9, 1)]
    groups = [0, 0, 0, 1, 1, 2, 2, 2]  # not every group the same size; a one-token prompt shares nothing but itself
    lengths = [7, 3, 1, 5, 7, 2, 6, 4]
    prompt_ids, prompt_mask = _left_pad([prompts[g] for g in groups], 9)
    completions = [torch.randint(4, vocab, (n,), generator=gen).tolist() for n in lengths]
    completion_ids, completion_mask = _right_pad(completions, 7)
    return prompt_ids, prompt_mask, completion_ids, completion_mask


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("arch,tied", [("qwen3", False), ("qwen2", True), ("llama", False)])
def test_same_logps_entropy_and_gradients_as_one_row_per_completion(attention, arch, tied):
    torch.manual_seed(0)
    model = add_fused_lm_head(tiny_model(arch, seed=0, tie_word_embeddings=tied))
    model.set_attn_implementation(attention)
    prompt_ids, prompt_mask, completion_ids, completion_mask = _batch(model.config.vocab_size)
    # one left-padded row per completion, as the trainers score them without sharing
    ids = torch.cat([prompt_ids, completion_ids], 1)
    mask = torch.cat([prompt_mask, completion_mask], 1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    padded = completion_logps(model, ids, mask, torch.cat([torch.zeros_like(prompt_mask), completion_mask], 1),
                              position_ids=positions, temperature=0.7)
    width = prompt_ids.shape[1]
    expected = padded.token_logps[:, width - 1:]
    expected_entropy = torch.zeros(padded.mask.shape).masked_scatter(padded.mask, padded.outputs.entropy)[:, width - 1:]

    shared = share_prompts(prompt_ids, prompt_mask, completion_ids, completion_mask)
    assert shared.input_ids.shape[0] == 3
    scored = completion_logps(model, shared.input_ids, shared.mask_for(attention, torch.float32), shared.score_mask,
                              position_ids=shared.position_ids, temperature=0.7)
    logps = shared.gather(scored.token_logps)
    entropy = shared.gather(torch.zeros(scored.mask.shape).masked_scatter(scored.mask, scored.outputs.entropy))
    torch.testing.assert_close(logps, expected, atol=1e-6, rtol=1e-6)  # float rounding of ~6-nat values
    torch.testing.assert_close(entropy, expected_entropy, atol=1e-6, rtol=1e-6)
    assert (logps[completion_mask == 0] == 0).all()

    weights = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1))
    params = [p for p in model.parameters() if p.requires_grad]
    expected_grads = torch.autograd.grad((expected * weights).sum(), params)
    grads = torch.autograd.grad((logps * weights).sum(), params)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_unsupported_models_say_why():
    model = tiny_model("qwen3")
    assert unsupported_reason(model) is None
    sliding = tiny_model("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=0)
    assert "sliding-window" in unsupported_reason(sliding)
    model.config._attn_implementation = "flash_attention_2"
    assert "'flash_attention_2'" in unsupported_reason(model)


@pytest.mark.parametrize("model_type,overrides,why", [
    # GPT-Neo's local layers get the 4D mask as it is, with no window: silently different log-probs
    ("gpt_neo", {"num_layers": 2, "hidden_size": 64, "num_heads": 4, "attention_types": [[["global", "local"], 1]],
                 "window_size": 4}, "local-attention"),
    # ALiBi biases keys by column: MPT gives different log-probs, Bloom fails on the 4D mask
    ("mpt", {"d_model": 64, "n_layers": 2, "n_heads": 4}, "ALiBi"),
    ("bloom", {"hidden_size": 64, "n_layer": 2, "n_head": 4}, "ALiBi"),
    ("falcon", {"hidden_size": 64, "num_attention_heads": 4, "alibi": True, "num_hidden_layers": 2}, "ALiBi"),
])
def test_models_whose_attention_ignores_the_layout_are_refused(model_type, overrides, why):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, vocab_size=300, **overrides)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    assert why in unsupported_reason(model)


def test_a_reference_model_that_cannot_share_is_scored_in_padded_rows():
    # `_OnlineTrainer._shared_layout` checks each model it scores with: a separate `ref_model` with sliding-window
    # layers gets the padded layout even though the policy shares
    from types import SimpleNamespace

    from trl.trainer.online import _OnlineTrainer

    trainer = SimpleNamespace(accelerator=SimpleNamespace(unwrap_model=lambda m: m))
    prompt_ids, prompt_mask, completion_ids, completion_mask = _batch(300)
    micro = SimpleNamespace(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                            completion_mask=completion_mask)
    assert _OnlineTrainer._shared_layout(trainer, tiny_model("qwen2"), micro) is not None
    sliding = tiny_model("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=0)
    assert _OnlineTrainer._shared_layout(trainer, sliding, micro) is None


def test_modelling_code_outside_transformers_is_refused():
    # remote code (trust_remote_code) may ignore or rebuild a 4D mask; here a subclass defined outside transformers
    base = type(tiny_model("qwen3"))
    custom = type("CustomForCausalLM", (base,), {"__module__": "my_remote_code.modeling"})
    model = custom(tiny_model("qwen3").config)
    assert "my_remote_code.modeling" in unsupported_reason(model)


def test_pair_prefixes_by_hand():
    from trl.ops.shared_prompt import share_pair_prefixes

    # pairs: [5, 6, 7 | 8, 9] vs [5, 6, 7 | 10] and [11, 12 | 13] vs [11, 12 | 14, 15, 16]; chosen rows first, right-padded
    rows = [[5, 6, 7, 8, 9], [11, 12, 13], [5, 6, 7, 10], [11, 12, 14, 15, 16]]
    ids = torch.zeros(4, 5, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = 1
    shared = share_pair_prefixes(ids, mask, min_saving=0, max_attention_growth=float("inf"))
    assert shared.input_ids.tolist() == [[5, 6, 7, 8, 9, 7, 10], [11, 12, 13, 12, 14, 15, 16]]
    assert shared.position_ids.tolist() == [[0, 1, 2, 3, 4, 2, 3], [0, 1, 2, 1, 2, 3, 4]]
    # each sequence's last token: where a sequence classifier reads its score
    assert shared.row.tolist() == [0, 1, 0, 1]
    assert shared.ends.tolist() == [4, 2, 6, 6]
    assert [shared.input_ids[r, e].item() for r, e in zip(shared.row, shared.ends)] == [9, 13, 10, 16]
    # left padding (a custom collator): pairs of equal lengths, so reading each row's first `length` columns would
    # see matching padding and build a layout of the wrong tokens
    left = torch.tensor([[0, 0, 5, 6, 7, 8], [0, 0, 11, 12, 13, 14], [0, 0, 5, 6, 7, 9], [0, 0, 11, 12, 15, 16]])
    assert share_pair_prefixes(left, (left != 0).long(), min_saving=0, max_attention_growth=float("inf")) is None
    ids[2, 0] = 99  # the first pair now shares no token
    assert share_pair_prefixes(ids, mask, min_saving=0, max_attention_growth=float("inf")) is None
