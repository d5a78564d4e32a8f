"""One RewardTrainer optimiser step over the same 8 pairs, returning the logged loss and the gradients.

Run as a script under torchrun for the 2-process case:
    python -m torch.distributed.run --nproc_per_node 2 tests/trainers/reward_one_step.py OUT.pt BS GA auto|false
"""

import sys

import torch
from transformers import AutoModelForSequenceClassification

from trl import RewardConfig, RewardTrainer
from trl.data.tiny import tiny_task_dataset
from trl.models.tiny import tiny_config, tiny_tokenizer

try:
    from .sft_one_step import SMALL, _GradCatcher, leave
except ImportError:  # run as a script
    from sft_one_step import SMALL, _GradCatcher, leave


def one_step(output_dir, batch_size: int, grad_accum: int, share: bool | None = None):
    """Train one optimiser step covering all 8 pairs; return (logged loss, {param name: grad}, trainer, layouts) where
    `layouts` records, per micro-batch, whether the pair-sharing layout was used."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config("qwen3", num_labels=1, **SMALL))
    args = RewardConfig(
        output_dir=str(output_dir), per_device_train_batch_size=batch_size, gradient_accumulation_steps=grad_accum,
        max_steps=1, learning_rate=1e-3, logging_steps=1, report_to="none", save_strategy="no", max_grad_norm=0.0,
        gradient_checkpointing=False, seed=0, share_prompt_forward=share, disable_tqdm=True,
    )
    catcher = _GradCatcher()
    trainer = RewardTrainer(model=model, args=args, train_dataset=tiny_task_dataset("preference", "train", num_rows=8),
                            processing_class=tiny_tokenizer(), callbacks=[catcher])
    layouts = []
    score = trainer._shared_rewards
    trainer._shared_rewards = lambda model, inputs: layouts.append((out := score(model, inputs)) is not None) or out
    trainer.train()
    loss = next(log["loss"] for log in trainer.state.log_history if "loss" in log)
    return loss, catcher.grads, trainer, layouts


if __name__ == "__main__":
    out, bs, ga = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    loss, grads, trainer, layouts = one_step(out + ".dir", bs, ga, share={"auto": None, "false": False}[sys.argv[4]])
    if trainer.accelerator.is_main_process:
        torch.save({"loss": loss, "grads": grads, "world_size": trainer.accelerator.num_processes,
                    "layouts": layouts}, out)
    leave(trainer)
