"""Bad inputs whose problem shows only at `train()` or on resume, one row each: an `output_dir` holding an earlier run's
checkpoints, a broken or crafted checkpoint file, and runs that stop learning after a few good steps (a loss that turns
NaN, a gradient that collapses to zero). Each row trains the tiny model a few steps."""

import os

import pytest
import torch

from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer
from trl.checkpoints import CheckpointError
from trl.data.tiny import tiny_task_dataset
from trl.guards import TrainingWillNotLearnError
from trl.models.tiny import tiny_model, tiny_tokenizer

from ..trainers.sft_one_step import SMALL
from .harness import check, error, warn


class WritesAFile:
    """Unpickling this opens (creates) a file: the marker of code run by a load."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def vowels(completions, **kwargs):
    return [float(sum(ch in "aeiou" for ch in c[-1]["content"])) for c in completions]


class Env:
    """A row's `tmp_path`, and the SFT and GRPO runs of the trust tests on the tiny model."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.trainer = None

    def sft(self, **overrides):
        args = {"output_dir": str(self.tmp_path / "out"), "max_steps": 8, "per_device_train_batch_size": 4,
                "learning_rate": 5e-3, "logging_steps": 1, "report_to": "none", "save_strategy": "no",
                "max_length": 128, "seed": 0, **overrides}
        evaluates = args.get("eval_strategy", "no") != "no"
        self.trainer = SFTTrainer(model=tiny_model(seed=0, **SMALL), args=SFTConfig(**args),
                                  train_dataset=tiny_task_dataset("conversational", num_rows=32),
                                  eval_dataset=tiny_task_dataset("conversational", num_rows=4) if evaluates else None,
                                  processing_class=tiny_tokenizer())
        return self.trainer

    def grpo(self, **overrides):
        args = {"output_dir": str(self.tmp_path / "run"), "max_steps": 3, "per_device_train_batch_size": 4,
                "num_generations": 4, "steps_per_generation": 2, "max_completion_length": 8, "learning_rate": 1e-2,
                "logging_steps": 1, "report_to": "none", "save_strategy": "steps", "save_steps": 1, "seed": 0,
                "gradient_checkpointing": False, "guards": False, **overrides}
        self.trainer = GRPOTrainer(model=tiny_model(seed=0, **SMALL), reward_funcs=vowels, args=GRPOConfig(**args),
                                   train_dataset=tiny_task_dataset("prompt_only", "train", num_rows=16),
                                   processing_class=tiny_tokenizer())
        return self.trainer


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


def _loss_from(from_step: int, how: str, **overrides):
    """An SFT run whose loss changes from optimiser step `from_step` on: `"stuck"` keeps its value but has an exactly
    zero gradient (a saturated model), `"zero"` is 0 with a zero gradient (nothing left to learn), `"nan"` is NaN."""
    def build(env):
        trainer = env.sft(**overrides)
        compute_loss = trainer.compute_loss

        def patched(model, inputs, *args, **kwargs):
            loss = compute_loss(model, inputs, *args, **kwargs)
            if trainer.state.global_step < from_step:
                return loss
            return {"stuck": loss.detach() + 0 * loss, "zero": 0 * loss, "nan": loss * float("nan")}[how]

        trainer.compute_loss = patched
        trainer.train()
        return trainer

    return build


def _stopped_at(step):
    def then(env, outcome):
        assert env.trainer.state.global_step == step

    return then


def _earlier_checkpoints(**overrides):
    def build(env):
        output = env.tmp_path / "out"
        for step in (50, 60):
            (output / f"checkpoint-{step}").mkdir(parents=True)
            (output / f"checkpoint-{step}" / "marker.txt").write_text("earlier run")
        trainer = env.sft(max_steps=4, save_strategy="steps", save_steps=1, **overrides)
        trainer.train()
        assert trainer.args.save_total_limit == overrides["save_total_limit"]  # restored after the run
        return trainer

    return build


def _earlier_checkpoints_kept(*own):
    def then(env, outcome):
        output = env.tmp_path / "out"
        left = sorted(p.name for p in output.iterdir() if p.name.startswith("checkpoint-"))
        expected = list(own) or [os.path.basename(env.trainer.state.best_model_checkpoint)]
        assert left == sorted([*expected, "checkpoint-50", "checkpoint-60"])
        assert (output / "checkpoint-60" / "marker.txt").read_text() == "earlier run"

    return then


def _truncated_optimizer(env):
    env.sft(max_steps=2, save_strategy="steps", save_steps=2).train()
    optimizer = env.tmp_path / "out" / "checkpoint-2" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    env.sft(max_steps=4).train(resume_from_checkpoint=True)


def _crafted_online_state(env):
    env.grpo(max_steps=1).train()
    state_file = env.tmp_path / "run" / "checkpoint-1" / "online_state_0.pt"
    state = torch.load(state_file, weights_only=True)
    torch.save(dict(state, buffer=[WritesAFile(str(env.tmp_path / "pwned"))]), state_file)
    env.grpo().train(resume_from_checkpoint=str(state_file.parent))


def _no_code_ran(env, outcome):
    assert not (env.tmp_path / "pwned").exists()
    assert env.trainer.state.global_step == 0  # refused before anything was restored


CASES = [
    warn("output_dir holding an earlier run's checkpoints", _earlier_checkpoints(save_total_limit=2),
         r"already holds 2 checkpoint\(s\) of an earlier run \(checkpoint-50, checkpoint-60\) and this run does not "
         r"resume from them", then=_earlier_checkpoints_kept("checkpoint-3", "checkpoint-4")),
    warn("output_dir holding an earlier run's checkpoints, save_total_limit=1 keeping the best",
         _earlier_checkpoints(save_total_limit=1, eval_strategy="steps", eval_steps=1, load_best_model_at_end=True,
                              metric_for_best_model="loss"),
         r"already holds 2 checkpoint\(s\) of an earlier run", then=_earlier_checkpoints_kept()),
    error("truncated optimizer.pt on resume", _truncated_optimizer,
          r"Cannot read .*checkpoint-2/optimizer\.pt \(checkpoint .*checkpoint-2\): the file is corrupt or truncated",
          CheckpointError),
    error("crafted pickle in online_state_0.pt", _crafted_online_state,
          r"Refusing to load .*checkpoint-1/online_state_0\.pt", CheckpointError, then=_no_code_ran),
    error("a loss that turns NaN later, hidden from the logs",
          _loss_from(5, "nan", max_steps=12, logging_steps=4, logging_nan_inf_filter=True),
          r"A training loss was NaN or inf between the last log and step 8", TrainingWillNotLearnError,
          then=_stopped_at(8)),
    error("a gradient that collapses to zero later", _loss_from(4, "stuck", max_steps=12),
          r"exactly zero for 3 optimiser steps in a row \(up to step 7\) while the loss was not.*learning rate is too "
          r"high", TrainingWillNotLearnError, then=_stopped_at(7)),  # steps 5, 6 and 7: no gradient; caught at step 7
    error("a zero gradient between logs", _loss_from(4, "stuck", max_steps=12, logging_steps=5),
          r"exactly zero for 6 optimiser steps in a row", TrainingWillNotLearnError, then=_stopped_at(10)),
    warn("a gradient that collapses to zero later, guards off", _loss_from(4, "stuck", max_steps=8, guards=False),
         r"exactly zero for 3 optimiser steps in a row", then=_stopped_at(8)),
    warn("a loss that reaches exactly zero (nothing left to learn) trains on",
         _loss_from(4, "zero", max_steps=10), r"The loss and its gradient were exactly zero for 3 optimiser steps in "
                                             r"a row \(up to step 7\): those batches have nothing left to learn",
         then=_stopped_at(10)),
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_seen_in_training(case, env):
    check(case, env)
