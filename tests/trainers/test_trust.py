"""Trust: checkpoints written before the buffer was stored as plain values still resume exactly, and a resumed run
rotates its own checkpoints without a warning. The bad inputs of resuming and training (crafted or broken checkpoint
files, an earlier run's checkpoints in `output_dir`, runs that stop learning later) are rows of
tests/bad_inputs/test_training.py."""

import warnings

import pytest
import torch

from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer
from trl.data.tiny import tiny_task_dataset
from trl.models.tiny import tiny_model, tiny_tokenizer
from trl.rollout import Rollout

from .sft_one_step import SMALL


def vowels(completions, **kwargs):
    return [float(sum(ch in "aeiou" for ch in c[-1]["content"])) for c in completions]


def _grpo(tmp_path, output="run", **overrides):
    args = dict(output_dir=str(tmp_path / output), max_steps=3, per_device_train_batch_size=4, num_generations=4,
                steps_per_generation=2, max_completion_length=8, learning_rate=1e-2, logging_steps=1,
                report_to="none", save_strategy="steps", save_steps=1, seed=0, gradient_checkpointing=False,
                guards=False)
    args.update(overrides)
    return GRPOTrainer(model=tiny_model(seed=0, **SMALL), reward_funcs=vowels, args=GRPOConfig(**args),
                       train_dataset=tiny_task_dataset("prompt_only", "train", num_rows=16),
                       processing_class=tiny_tokenizer())


def _losses(trainer):
    return {log["step"]: log["loss"] for log in trainer.state.log_history if "loss" in log}


def test_grpo_resume_still_reads_old_checkpoints(tmp_path):
    full = _grpo(tmp_path)
    full.train()
    checkpoint = tmp_path / "run" / "checkpoint-1"  # in the middle of a generation batch: the buffer matters
    state_file = checkpoint / "online_state_0.pt"
    state = torch.load(state_file, weights_only=True)  # plain values only
    assert isinstance(state["buffer"][0], dict)

    # a checkpoint written before the buffer was stored as plain dicts (Rollout records) resumes exactly
    torch.save(dict(state, buffer=[Rollout(**b) for b in state["buffer"]]), state_file)
    resumed = _grpo(tmp_path)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for step in (2, 3):
        assert _losses(resumed)[step] == pytest.approx(_losses(full)[step], rel=1e-5, abs=1e-7)
    # (a crafted pickle in the same place is a row of tests/bad_inputs/test_training.py)


def _sft(tmp_path, model=None, **overrides):
    args = dict(output_dir=str(tmp_path / "out"), max_steps=8, per_device_train_batch_size=4, learning_rate=5e-3,
                logging_steps=1, report_to="none", save_strategy="no", max_length=128, seed=0)
    args.update(overrides)
    return SFTTrainer(model=model or tiny_model(seed=0, **SMALL), args=SFTConfig(**args),
                      train_dataset=tiny_task_dataset("conversational", num_rows=32), processing_class=tiny_tokenizer())


def test_a_resumed_run_rotates_all_its_checkpoints_without_a_warning(tmp_path):
    _sft(tmp_path, max_steps=2, save_strategy="steps", save_steps=1, save_total_limit=2).train()
    trainer = _sft(tmp_path, max_steps=4, save_strategy="steps", save_steps=1, save_total_limit=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*earlier run.*")
        trainer.train(resume_from_checkpoint=True)
    left = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("checkpoint-"))
    assert left == ["checkpoint-3", "checkpoint-4"]
