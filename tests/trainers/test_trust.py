"""Trust: resuming never runs code and names a broken file; runs that stop learning later are stopped; an earlier
run's checkpoints in `output_dir` are warned about and never rotate this run's checkpoints away."""

import warnings

import pytest
import torch

from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer
from trl.checkpoints import CheckpointError
from trl.data.tiny import tiny_task_dataset
from trl.guards import TrainingWillNotLearnError
from trl.models.tiny import tiny_model, tiny_tokenizer
from trl.rollout import Rollout

from .sft_one_step import SMALL


class WritesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


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


def test_grpo_resume_refuses_code_and_still_reads_old_checkpoints(tmp_path):
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

    # a crafted pickle in the same place is refused before anything is restored, and its code never runs
    marker = tmp_path / "pwned"
    torch.save(dict(state, buffer=[WritesAFile(str(marker))]), state_file)
    attacked = _grpo(tmp_path)
    with pytest.raises(CheckpointError, match=r"Refusing to load .*checkpoint-1/online_state_0\.pt") as error:
        attacked.train(resume_from_checkpoint=str(checkpoint))
    assert "weights_only=False" not in str(error.value)
    assert not marker.exists()
    assert attacked.state.global_step == 0


def _sft(tmp_path, model=None, **overrides):
    args = dict(output_dir=str(tmp_path / "out"), max_steps=8, per_device_train_batch_size=4, learning_rate=5e-3,
                logging_steps=1, report_to="none", save_strategy="no", max_length=128, seed=0)
    args.update(overrides)
    return SFTTrainer(model=model or tiny_model(seed=0, **SMALL), args=SFTConfig(**args),
                      train_dataset=tiny_task_dataset("conversational", num_rows=32), processing_class=tiny_tokenizer())


def test_sft_resume_names_a_truncated_optimizer_file(tmp_path):
    _sft(tmp_path, max_steps=2, save_strategy="steps", save_steps=2).train()
    optimizer = tmp_path / "out" / "checkpoint-2" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    trainer = _sft(tmp_path, max_steps=4)
    with pytest.raises(CheckpointError, match=r"Cannot read .*checkpoint-2/optimizer\.pt \(checkpoint .*checkpoint-2\)"
                                              r": the file is corrupt or truncated") as error:
        trainer.train(resume_from_checkpoint=True)
    assert "weights_only" not in str(error.value)


def _zero_loss_from(trainer, step: int, value: float = 0.0):
    """From optimiser step `step` on, the loss is multiplied by `value` (0: an exactly zero gradient; nan: NaN)."""
    compute_loss = trainer.compute_loss

    def patched(model, inputs, *args, **kwargs):
        loss = compute_loss(model, inputs, *args, **kwargs)
        return loss * value if trainer.state.global_step >= step else loss

    trainer.compute_loss = patched
    return trainer


def test_a_gradient_that_collapses_later_stops_the_run(tmp_path):
    trainer = _zero_loss_from(_sft(tmp_path, max_steps=12), step=4)
    with pytest.raises(TrainingWillNotLearnError, match=r"exactly zero for 3 optimiser steps in a row \(up to step 7\)"
                                                        r".*learning rate is too high"):
        trainer.train()
    assert trainer.state.global_step == 7  # steps 5, 6 and 7 had no gradient; caught at step 7's log


def test_a_zero_gradient_between_logs_is_caught_at_the_next_log(tmp_path):
    trainer = _zero_loss_from(_sft(tmp_path, max_steps=12, logging_steps=5), step=4)
    with pytest.raises(TrainingWillNotLearnError, match=r"exactly zero for 6 optimiser steps in a row"):
        trainer.train()
    assert trainer.state.global_step == 10


def test_zero_gradient_later_only_warns_with_guards_off(tmp_path):
    trainer = _zero_loss_from(_sft(tmp_path, max_steps=8, guards=False), step=4)
    with pytest.warns(UserWarning, match=r"exactly zero for 3 optimiser steps in a row"):
        trainer.train()
    assert trainer.state.global_step == 8


def test_a_nan_loss_later_stops_the_run_even_when_logs_filter_it(tmp_path):
    trainer = _zero_loss_from(_sft(tmp_path, max_steps=12, logging_steps=4, logging_nan_inf_filter=True), step=5,
                              value=float("nan"))
    with pytest.raises(TrainingWillNotLearnError, match=r"A training loss was NaN or inf between the last log and "
                                                        r"step 8"):
        trainer.train()
    assert trainer.state.global_step == 8


def test_earlier_checkpoints_in_output_dir_are_warned_about_and_kept(tmp_path):
    output = tmp_path / "out"
    for step in (50, 60):
        (output / f"checkpoint-{step}").mkdir(parents=True)
        (output / f"checkpoint-{step}" / "marker.txt").write_text("earlier run")
    trainer = _sft(tmp_path, max_steps=4, save_strategy="steps", save_steps=1, save_total_limit=2)
    with pytest.warns(UserWarning, match=r"already holds 2 checkpoint\(s\) of an earlier run \(checkpoint-50, "
                                         r"checkpoint-60\) and this run does not resume from them"):
        trainer.train()
    left = sorted(p.name for p in output.iterdir() if p.name.startswith("checkpoint-"))
    assert left == ["checkpoint-3", "checkpoint-4", "checkpoint-50", "checkpoint-60"]
    assert (output / "checkpoint-60" / "marker.txt").read_text() == "earlier run"


def test_a_resumed_run_rotates_all_its_checkpoints_without_a_warning(tmp_path):
    _sft(tmp_path, max_steps=2, save_strategy="steps", save_steps=1, save_total_limit=2).train()
    trainer = _sft(tmp_path, max_steps=4, save_strategy="steps", save_steps=1, save_total_limit=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*earlier run.*")
        trainer.train(resume_from_checkpoint=True)
    left = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("checkpoint-"))
    assert left == ["checkpoint-3", "checkpoint-4"]
