"""One GRPO/RLOO optimiser step with a deterministic generation backend, returning the logged metrics and gradients.

Run as a script under torchrun for the 2-process case (each rank generates its share of every group):
    python -m torch.distributed.run --nproc_per_node 2 tests/trainers/online_one_step.py OUT.pt grpo|rloo BS GA
"""

import sys

import torch

from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
from trl.data.tiny import tiny_task_dataset
from trl.models.tiny import tiny_model, tiny_tokenizer
from trl.rollout import Rollout

try:
    from .sft_one_step import SMALL, _GradCatcher, leave
except ImportError:  # run as a script
    from sft_one_step import SMALL, _GradCatcher, leave


class DeterministicBackend:
    """Completion k of a prompt depends only on the prompt and k (`offset + k` on a process that holds samples
    `offset..` of each group), so one process and several processes generate the same global batch."""

    def __init__(self, offset: int = 0):
        self.offset = offset

    def sync_weights(self, model):
        pass

    def generate(self, prompt_ids, n, sampling, generator=None):
        rows = []
        for prompt in prompt_ids:
            seed = sum(prompt)
            for k in range(self.offset, self.offset + n):
                length = 3 + (seed + k * 3) % 6
                tokens = [10 + (seed * 7 + k * 13 + j * 5) % 400 for j in range(length)]
                ended = k % 3 != 0
                if ended:
                    tokens[-1] = sampling.eos_token_ids[0]
                rows.append((prompt, tokens, ended))
        width_p, width_c = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
        prompt_ids_t = torch.full((len(rows), width_p), sampling.pad_token_id)
        prompt_mask = torch.zeros(len(rows), width_p, dtype=torch.long)
        completion_ids = torch.full((len(rows), width_c), sampling.pad_token_id)
        completion_mask = torch.zeros(len(rows), width_c, dtype=torch.long)
        for i, (prompt, tokens, _) in enumerate(rows):
            prompt_ids_t[i, width_p - len(prompt) :], prompt_mask[i, width_p - len(prompt) :] = torch.tensor(prompt), 1
            completion_ids[i, : len(tokens)], completion_mask[i, : len(tokens)] = torch.tensor(tokens), 1
        truncated = torch.tensor([not r[2] for r in rows])
        return Rollout(prompt_ids_t, prompt_mask, completion_ids, completion_mask, truncated, None)


def vowels(completions, **kwargs):
    return [float(sum(ch in "aeiou" for ch in c[-1]["content"])) for c in completions]


def one_step(output_dir, kind: str, batch_size: int, grad_accum: int, num_generations: int = 8):
    """One optimiser step over one group of `num_generations` completions; returns (first log, grads, trainer)."""
    catcher = _GradCatcher()
    trainer_class, config_class = (GRPOTrainer, GRPOConfig) if kind == "grpo" else (RLOOTrainer, RLOOConfig)
    args = config_class(
        output_dir=str(output_dir), per_device_train_batch_size=batch_size, gradient_accumulation_steps=grad_accum,
        max_steps=1, num_generations=num_generations, max_completion_length=8, learning_rate=1e-3, logging_steps=1,
        report_to="none", save_strategy="no", max_grad_norm=0.0, gradient_checkpointing=False, seed=0, guards=False,
        shuffle_dataset=False, beta=0.05,
    )
    trainer = trainer_class(model=tiny_model(seed=0, **SMALL), reward_funcs=vowels, args=args,
                            train_dataset=tiny_task_dataset("prompt_only", "train", num_rows=16),
                            processing_class=tiny_tokenizer(), callbacks=[catcher])
    trainer.backend = DeterministicBackend(offset=trainer.accelerator.process_index * batch_size * grad_accum)
    trainer.train()
    log = next(entry for entry in trainer.state.log_history if "loss" in entry)
    return log, catcher.grads, trainer


if __name__ == "__main__":
    out, kind, bs, ga = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    log, grads, trainer = one_step(out + ".dir", kind, bs, ga)
    if trainer.accelerator.is_main_process:
        torch.save({"log": log, "grads": grads, "world_size": trainer.accelerator.num_processes}, out)
    leave(trainer)
