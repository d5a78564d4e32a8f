"""GRPOTrainer(tools=[...]) across processes and checkpoints: two gloo processes on CPU log the same tool metrics
(gathered over both), and a run resumed from a checkpoint repeats the uninterrupted one, tool rounds included.

A random tiny model never writes a tool call, so generation is scripted as in tests/trainers/test_grpo_tools.py. For
the resume test the script draws from the trainer's sampling generator (whether a sample calls the tool, which answer
it gives after the tool turn), so a resumed run repeats the tool rounds only if the generator state is restored.

The 2-process run is this module under torchrun (as a module, so that its relative imports work):
    python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.trainers.test_grpo_tools_distributed OUT
"""

import json
import math
import os
import sys
from pathlib import Path

import torch

from trl import GRPOTrainer
from trl.models.tiny import tiny_model

from .sft_one_step import SMALL, run_two_ranks
from .test_grpo_tools import ANSWER, CALL, Calculator, Scripted, _questions, _tool_tokenizer, lengths
from .test_grpo_trainer import _config, _logged

ANSWERS = ("It is 12.<|im_end|>", "So twelve.<|im_end|>", "12<|im_end|>", "Three fours make twelve.<|im_end|>")


class RandomScript(Scripted):
    """A scripted `backend.generate` that samples from `generator` like a real backend: in the first round each sample
    calls `multiply(a=3, b=4)` with probability 1/2 (else answers), after a tool turn it picks one of `ANSWERS`."""

    def __call__(self, prompt_ids, n, sampling, generator=None):
        draws = iter(torch.rand(len(prompt_ids) * n, generator=generator).tolist())  # one per row, in order
        self.first = lambda k: CALL if next(draws) < 0.5 else ANSWER
        self.later = lambda k: ANSWERS[int(next(draws) * len(ANSWERS))]
        return super().__call__(prompt_ids, n, sampling, generator)


def _tool_trainer(output_dir, script, **overrides):
    tokenizer = _tool_tokenizer()
    args = _config(Path(output_dir), output_dir=str(output_dir), max_completion_length=256, **overrides)
    trainer = GRPOTrainer(model=tiny_model(seed=0, **SMALL), reward_funcs=lengths, args=args,
                          train_dataset=_questions(), processing_class=tokenizer, tools=Calculator().tools())
    trainer.backend.generate = script(tokenizer)
    return trainer


# ---- two processes --------------------------------------------------------------------------------------------------


def _ddp_run(out: str) -> None:
    """One rank of the 2-process run: 2 steps; rank 0's samples all call the tool, rank 1's every other one, so that
    only metrics gathered over both ranks agree (0.75). Each rank writes its logged steps to `OUT.rank<i>.json`."""
    from trl.scripts.utils import close_processes

    rank = int(os.environ["RANK"])
    trainer = _tool_trainer(out + ".dir", lambda tokenizer: Scripted(
        tokenizer, first=lambda k: CALL if rank == 0 or k % 2 == 0 else ANSWER), per_device_train_batch_size=4,
        num_generations=4, max_steps=2)
    trainer.train()
    with open(f"{out}.rank{trainer.accelerator.process_index}.json", "w") as file:
        json.dump({"logs": _logged(trainer), "world_size": trainer.accelerator.num_processes}, file)
    close_processes(trainer)


def test_two_ddp_ranks_with_tools(tmp_path):
    out = tmp_path / "ddp"
    run_two_ranks("-m", "tests.trainers.test_grpo_tools_distributed", str(out))
    ranks = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for rank in ranks:
        assert [log["step"] for log in rank["logs"]] == [1, 2]
        for log in rank["logs"]:
            assert math.isfinite(log["loss"])
            assert log["tools/call_frequency"] == 0.75  # 4 of 4 rollouts on rank 0, 2 of 4 on rank 1
            assert log["tools/failure_frequency"] == 0.0
    for log_0, log_1 in zip(ranks[0]["logs"], ranks[1]["logs"]):
        for key in ("loss", "reward", "tools/call_frequency", "completions/mean_length"):
            assert log_0[key] == log_1[key], key


# ---- resume ---------------------------------------------------------------------------------------------------------


def test_resume_with_tools_repeats_the_uninterrupted_run(tmp_path):
    """4 steps with a checkpoint at each; resuming from step 1 (in the middle of a generation batch used for two steps:
    the buffered multi-turn rollouts and their tool masks come from the checkpoint) and from step 2 (a new generation
    batch: the tool rounds are sampled from the restored generator) logs the uninterrupted run's steps exactly."""
    keys = ("loss", "reward", "tools/call_frequency", "completions/mean_length", "entropy")

    def run(output, resume=None):
        trainer = _tool_trainer(tmp_path / output, RandomScript, max_steps=4, per_device_train_batch_size=4,
                                num_generations=4, steps_per_generation=2, save_strategy="steps", save_steps=1)
        trainer.train(resume_from_checkpoint=resume)
        # the rollout metrics are logged at the first step of a generation batch
        return {log["step"]: {key: log.get(key) for key in keys} for log in _logged(trainer)}

    full = run("full")
    assert 0.0 < full[1]["tools/call_frequency"] < 1.0 and 0.0 < full[3]["tools/call_frequency"] < 1.0
    assert full[1]["reward"] != full[3]["reward"]  # the scripted rounds differ between generation batches
    for checkpoint in (1, 2):
        resumed = run(f"resumed-{checkpoint}", resume=str(tmp_path / "full" / f"checkpoint-{checkpoint}"))
        assert sorted(resumed) == [1, 2, 3, 4]  # the log history up to the checkpoint comes with it
        for step in range(checkpoint + 1, 5):
            assert resumed[step] == full[step], (checkpoint, step)


if __name__ == "__main__":
    _ddp_run(sys.argv[1])
    # as tests/trainers/online_one_step.py: results saved and the process group released, leave without teardown
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
