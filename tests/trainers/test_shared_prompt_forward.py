"""`share_prompt_forward` in GRPOTrainer and RLOOTrainer: the shared-prompt training forward (trl/ops/shared_prompt.py)
trains to the same losses and weights as one padded row per completion, is on by default where the model supports
it, and `True` on a model that cannot share fails at construction."""

import math

import pytest
import torch

from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
from trl.models.tiny import tiny_model, tiny_tokenizer

from .sft_one_step import SMALL, _GradCatcher, run_two_ranks
from .test_grpo_trainer import _config, _logged, _prompts, vowels


def _train(tmp_path, cls, config_cls, share, **overrides):
    catcher = _GradCatcher()  # the gradients of the last step (max_steps=1: the first)
    trainer = cls(model=tiny_model(seed=0, **SMALL), reward_funcs=vowels,
                  args=_config(tmp_path / str(share), config_cls, share_prompt_forward=share, max_steps=1,
                               max_grad_norm=0.0, **overrides),
                  train_dataset=_prompts(), processing_class=tiny_tokenizer(), callbacks=[catcher])
    calls = []
    original = trainer._shared_layout
    trainer._shared_layout = lambda model, micro: calls.append(out := original(model, micro)) or out
    trainer.train()
    return trainer, calls, catcher.grads


@pytest.mark.parametrize("cls,config_cls,overrides", [
    (GRPOTrainer, GRPOConfig, {"beta": 0.1}),  # the reference forward shares too
    (RLOOTrainer, RLOOConfig, {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}),  # groups split
])
def test_shared_forward_trains_like_one_row_per_completion(tmp_path, cls, config_cls, overrides):
    shared, calls, grads = _train(tmp_path, cls, config_cls, None, **overrides)
    assert shared._share_prompts and calls and all(layout is not None for layout in calls)
    assert all(layout.input_ids.shape[0] < len(layout.row) for layout in calls)  # fewer rows than completions
    padded, calls, expected_grads = _train(tmp_path, cls, config_cls, False, **overrides)
    assert not padded._share_prompts and not calls
    for got, want in zip(_logged(shared), _logged(padded), strict=True):
        for key in ("loss", "entropy", "kl"):
            if key in want:
                assert math.isfinite(got[key]) and got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
    assert grads.keys() == expected_grads.keys()
    scale = max(g.abs().max() for g in expected_grads.values())
    for name, want in expected_grads.items():
        assert want.abs().max() > 0 or name.endswith("embed_tokens.weight")
        torch.testing.assert_close(grads[name], want, atol=1e-5 * scale, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


def test_true_on_a_model_that_cannot_share_fails_at_construction(tmp_path):
    model = tiny_model("qwen2", seed=0, use_sliding_window=True, sliding_window=4, max_window_layers=0, **SMALL)
    with pytest.raises(ValueError, match="share_prompt_forward=True.*sliding-window"):
        GRPOTrainer(model=model, reward_funcs=vowels, args=_config(tmp_path, share_prompt_forward=True),
                    train_dataset=_prompts(), processing_class=tiny_tokenizer())
    trainer = GRPOTrainer(model=tiny_model("qwen2", seed=0, use_sliding_window=True, sliding_window=4,
                                           max_window_layers=0, **SMALL),
                          reward_funcs=vowels, args=_config(tmp_path), train_dataset=_prompts(),
                          processing_class=tiny_tokenizer())
    assert not trainer._share_prompts  # None: padded rows where sharing is not supported


def _reward_trainer(tmp_path, share, model=None, **overrides):
    from transformers import AutoModelForSequenceClassification

    from trl import RewardConfig, RewardTrainer
    from trl.data.tiny import tiny_task_dataset
    from trl.models.tiny import tiny_config

    if model is None:
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_config(tiny_config("qwen3", num_labels=1, **SMALL))
    args = RewardConfig(output_dir=str(tmp_path / str(share)), max_steps=1, per_device_train_batch_size=4,
                        learning_rate=1e-3, logging_steps=1, report_to="none", save_strategy="no", seed=0,
                        gradient_checkpointing=False, max_grad_norm=0.0, share_prompt_forward=share, **overrides)
    catcher = _GradCatcher()
    return RewardTrainer(model=model, args=args, train_dataset=tiny_task_dataset("preference", "train", num_rows=8),
                         processing_class=tiny_tokenizer(), callbacks=[catcher]), catcher


def test_reward_pairs_in_one_row_train_like_padded_rows(tmp_path):
    shared, catcher = _reward_trainer(tmp_path, None)
    used = []
    original = shared._shared_rewards
    shared._shared_rewards = lambda model, inputs: used.append(out := original(model, inputs)) or out
    shared.train()
    assert shared._share_prompts and used and all(rewards is not None for rewards in used)
    padded, expected = _reward_trainer(tmp_path, False)
    padded.train()
    got, want = _logged(shared)[0], _logged(padded)[0]
    for key in ("loss", "accuracy", "margin", "mean_reward"):
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
    scale = max(g.abs().max() for g in expected.grads.values())
    assert catcher.grads.keys() == expected.grads.keys()
    for name, grad in expected.grads.items():
        torch.testing.assert_close(catcher.grads[name], grad, atol=1e-5 * scale, rtol=1e-4)


def test_reward_true_on_a_model_that_cannot_share_fails(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from trl.models.tiny import tiny_config

    config = tiny_config("qwen2", num_labels=1, use_sliding_window=True, sliding_window=4, max_window_layers=0, **SMALL)
    with pytest.raises(ValueError, match="share_prompt_forward=True.*sliding-window"):
        _reward_trainer(tmp_path, True, model=AutoModelForSequenceClassification.from_config(config))


def test_reward_pairs_in_one_row_two_ddp_ranks_equal_one_process(tmp_path):
    """2 processes (gloo) x 2 pairs x 2 accumulation steps, pairs in one row = the same 8 pairs in padded rows on one
    process: the score head's output is read inside the DDP-wrapped forward, so its gradient is averaged."""
    from .reward_one_step import one_step

    loss, grads, _, layouts = one_step(tmp_path / "one", batch_size=8, grad_accum=1, share=False)
    assert not layouts
    out = tmp_path / "ddp.pt"
    run_two_ranks("reward_one_step.py", str(out), "2", "2", "auto")
    saved = torch.load(out)
    assert saved["world_size"] == 2 and saved["layouts"] and all(saved["layouts"])
    assert saved["loss"] == pytest.approx(loss, rel=1e-5)
    scale = max(g.abs().max() for g in grads.values())
    for name, grad in grads.items():
        torch.testing.assert_close(saved["grads"][name], grad, atol=1e-5 * scale, rtol=1e-4)


def test_reward_head_on_pooled_states_falls_back_to_padded_rows():
    """A score head that does not run per position (its output is not `(rows, width, 1)`) is detected at the first
    step: a warning, and padded rows from then on."""
    from types import SimpleNamespace

    from trl import RewardTrainer

    class PooledHead(torch.nn.Module):  # pools the sequence, then scores it: one output per row
        def __init__(self):
            super().__init__()
            self.config = SimpleNamespace(_attn_implementation="sdpa")
            self.embed = torch.nn.Embedding(32, 4)
            self.score = torch.nn.Linear(4, 1)

        @property
        def dtype(self):
            return torch.float32

        def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
            return self.score(self.embed(input_ids).mean(1))

    trainer = SimpleNamespace(accelerator=SimpleNamespace(unwrap_model=lambda m: m), _share_prompts=True)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [5, 6, 7, 13, 0, 0, 0, 0]])  # one pair sharing [5, 6, 7]
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    with pytest.warns(UserWarning, match="does not run per position"):
        assert RewardTrainer._shared_rewards(trainer, PooledHead(), batch) is None
    assert not trainer._share_prompts


def _dpo_trainer(tmp_path, share, catcher=None, **overrides):
    from trl import DPOConfig, DPOTrainer
    from trl.data.tiny import tiny_task_dataset

    values = {"output_dir": str(tmp_path / f"dpo-{share}"), "max_steps": 1, "per_device_train_batch_size": 4,
              "learning_rate": 1e-3, "logging_steps": 1, "report_to": "none", "save_strategy": "no", "seed": 0,
              "gradient_checkpointing": False, "max_grad_norm": 0.0, "share_prompt_forward": share, **overrides}
    return DPOTrainer(model=tiny_model(seed=0, **SMALL), args=DPOConfig(**values),
                      train_dataset=tiny_task_dataset("preference", "train", num_rows=8),
                      processing_class=tiny_tokenizer(), callbacks=[catcher] if catcher else None)


@pytest.mark.parametrize("overrides", [
    {"ld_alpha": 0.5, "use_weighting": True},  # per-token log-probs, mask and sum of squares
    {"loss_type": ["ipo", "sft"], "loss_weights": [1.0, 0.5]},
    {"precompute_ref_log_probs": True},  # the reference pass goes through the same scoring
])
def test_dpo_pairs_in_one_row_train_like_padded_rows(tmp_path, overrides):
    results = {}
    for share in (None, False):
        catcher = _GradCatcher()
        trainer = _dpo_trainer(tmp_path, share, catcher, **overrides)
        used = []
        build = trainer._pair_layout
        trainer._pair_layout = lambda batch, used=used, build=build: used.append(
            (out := build(batch)) is not None) or out
        trainer.train()
        results[share] = (_logged(trainer)[0], catcher.grads, used)
    (shared, grads, used), (padded, expected, not_used) = results[None], results[False]
    assert used and all(used) and not any(not_used)
    # at the first step the policy is the reference: rewards are float noise (~1e-7), and which side of 0 they fall
    # on (`rewards/accuracies`) is not a property of either layout
    noise = abs(padded["rewards/margins"]) < 1e-4
    for key, want in padded.items():
        if key not in ("grad_norm", "learning_rate", "epoch") and isinstance(want, float):
            if noise and key == "rewards/accuracies":
                continue
            assert shared[key] == pytest.approx(want, rel=1e-4, abs=1e-5), key
    scale = max(g.abs().max() for g in expected.values())
    for name, want in expected.items():
        torch.testing.assert_close(grads[name], want, atol=1e-5 * scale, rtol=1e-4)


def test_dpo_padding_free_does_not_share(tmp_path):
    assert not _dpo_trainer(tmp_path, None, padding_free=True)._share_prompts
    with pytest.raises(ValueError, match="share_prompt_forward=True.*padding_free=True"):
        _dpo_trainer(tmp_path, True, padding_free=True)


def test_dpo_batch_not_in_the_collator_layout_scores_like_padded_rows(tmp_path):
    # a custom collator's completion mask with a hole (or left padding): splitting the row by counts would score
    # other tokens than the padded rows, so such a batch is scored in padded rows
    from trl.data.collators import DataCollatorForPreference
    from trl.ops.shared_prompt import split_sequences

    trainer = _dpo_trainer(tmp_path, None)
    trainer.model.eval()
    prompt = list(range(5, 25))
    batch = DataCollatorForPreference(0)([{"prompt_ids": prompt, "chosen_ids": [30, 31, 32, 33], "rejected_ids": [34, 35]},
                                          {"prompt_ids": prompt[:15], "chosen_ids": [36], "rejected_ids": [37, 38, 39]}])
    assert trainer._pair_layout(batch) is not None  # the collator's layout shares
    batch["completion_mask"][0, len(prompt) + 1] = 0
    left = {k: v.flip(-1) for k, v in batch.items()}
    for case in (batch, left):
        assert split_sequences(case["input_ids"], case["attention_mask"], case["completion_mask"]) is None
    with torch.no_grad():
        shared = trainer._sequence_logps(trainer.model, batch, layout=trainer._pair_layout(batch))
        trainer._share_prompts = False
        padded = trainer._sequence_logps(trainer.model, batch, layout=trainer._pair_layout(batch))
    for key in ("chosen", "rejected", "lengths"):
        torch.testing.assert_close(shared[key], padded[key])
