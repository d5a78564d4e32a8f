"""MergeModelCallback: the linear merge against hand-computed weights; merging at checkpoints during training; a clear
error for the mergekit-only methods when mergekit is missing."""

import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from trl.data.tiny import tiny_task_dataset
from trl.experimental.merge_model_callback import MergeConfig, MergeModelCallback, linear_merge, merge_models
from trl.experimental.orpo import ORPOConfig, ORPOTrainer
from trl.models.tiny import save_tiny_model

from .helpers import SMALL, common_args


def _state(path):
    return {k: v.float() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


def test_linear_merge_hand_computed(tmp_path):
    a = save_tiny_model(tmp_path / "a", seed=0, **SMALL)
    b = save_tiny_model(tmp_path / "b", seed=1, **SMALL)
    out = linear_merge(str(a), str(b), str(tmp_path / "m"), 0.3, 0.9, normalize=True, dtype="float32")
    sa, sb, sm = _state(a), _state(b), _state(out)
    name = "model.layers.0.self_attn.q_proj.weight"
    # normalised: (0.3·a + 0.9·b) / 1.2 = 0.25·a + 0.75·b
    torch.testing.assert_close(sm[name], 0.25 * sa[name] + 0.75 * sb[name], rtol=1e-6, atol=1e-7)
    assert all(torch.allclose(sm[k], 0.25 * sa[k] + 0.75 * sb[k], atol=1e-6) for k in sa)
    assert os.path.exists(os.path.join(out, "tokenizer_config.json"))
    config = MergeConfig("linear")
    config.policy_model_path, config.target_model_path = str(a), str(b)
    config.normalize, config.policy_model_weight, config.target_model_weight = 0.0, 1.0, 1.0
    config.dtype = "float32"
    summed = _state(merge_models(config.create(), str(tmp_path / "s")))  # not normalised: a + b
    torch.testing.assert_close(summed[name], sa[name] + sb[name], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"Unknown merge method 'avg'"):
        MergeConfig("avg")


def test_merges_checkpoints_during_training(tmp_path):
    start = save_tiny_model(tmp_path / "start", seed=0, **SMALL)
    target = save_tiny_model(tmp_path / "target", seed=3, **SMALL)
    config = MergeConfig("linear")
    config.target_model_path, config.dtype = str(target), "float32"
    args = ORPOConfig(**common_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=1, max_length=64,
                                    max_prompt_length=32))
    trainer = ORPOTrainer(model=str(start), args=args, train_dataset=tiny_task_dataset("preference", num_rows=8),
                          callbacks=[MergeModelCallback(config, merge_at_every_checkpoint=True)])
    trainer.train()
    for step in (1, 2):
        checkpoint = tmp_path / "out" / f"checkpoint-{step}"
        merged, policy, other = _state(checkpoint / "merged"), _state(checkpoint), _state(target)
        assert all(torch.allclose(merged[k], 0.5 * policy[k] + 0.5 * other[k], atol=1e-6) for k in policy)
    assert not torch.equal(_state(tmp_path / "out" / "checkpoint-2")["model.norm.weight"], other["model.norm.weight"])


def test_mergekit_methods_need_mergekit(monkeypatch):
    import trl.import_utils as iu

    monkeypatch.setattr(iu, "is_mergekit_available", lambda: False)
    with pytest.raises(ImportError, match=r"pip install mergekit"):
        MergeModelCallback(MergeConfig("ties"))
    with pytest.raises(ImportError, match=r"'slerp' merge needs mergekit"):
        merge_models(MergeConfig("slerp").create(), "/tmp/never")


def test_merges_the_final_weights_at_train_end_without_a_checkpoint(tmp_path):
    """The default (merge once at the end) with save_strategy="no": no checkpoint of the last step exists, so the
    final weights are merged into output_dir/merged (this used to do nothing, silently)."""
    start = save_tiny_model(tmp_path / "start", seed=0, **SMALL)
    target = save_tiny_model(tmp_path / "target", seed=3, **SMALL)
    config = MergeConfig("linear")
    config.target_model_path, config.dtype = str(target), "float32"
    config.policy_model_weight, config.target_model_weight = 0.75, 0.25
    args = ORPOConfig(**common_args(tmp_path, max_steps=2, max_length=64, max_prompt_length=32))  # save_strategy="no"
    trainer = ORPOTrainer(model=str(start), args=args, train_dataset=tiny_task_dataset("preference", num_rows=8),
                          callbacks=[MergeModelCallback(config)])
    trainer.train()
    out = tmp_path / "out"
    assert not any(p.name.startswith("checkpoint-") for p in out.iterdir())
    assert not any(p.name.startswith("policy-") for p in out.iterdir())  # the temporary save is removed
    merged, other = _state(out / "merged"), _state(target)
    final = {k: v.detach().float() for k, v in trainer.model.state_dict().items()}
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(final[name], _state(start)[name])  # trained
    assert all(torch.allclose(merged[k], 0.75 * final[k] + 0.25 * other[k], atol=1e-6) for k in final)
    assert (out / "merged" / "tokenizer_config.json").exists()


def test_merge_at_end_creates_the_output_dir(tmp_path):
    """The end-of-training merge of the final weights works when nothing was written to output_dir yet."""
    import types

    start = save_tiny_model(tmp_path / "start", seed=0, **SMALL)
    config = MergeConfig("linear")
    config.target_model_path, config.dtype = str(start), "float32"
    model = AutoModelForCausalLM.from_pretrained(start)
    args = types.SimpleNamespace(output_dir=str(tmp_path / "never" / "made"))
    state = types.SimpleNamespace(global_step=3, is_world_process_zero=True)
    MergeModelCallback(config).on_train_end(args, state, None, model=model)
    merged, original = _state(tmp_path / "never" / "made" / "merged"), _state(start)
    assert all(torch.allclose(merged[k], original[k], atol=1e-6) for k in original)  # 0.5·θ + 0.5·θ
