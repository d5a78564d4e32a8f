"""REINFORCE Leave-One-Out (RLOO), https://huggingface.co/papers/2402.14740.

Each completion's baseline is the mean reward of the other completions of its prompt; the KL to the reference is a
penalty on the reward (`β·Σ_t (log π_old − log π_ref)`), not a loss term; the loss is a sequence-level clipped
importance-sampling objective. It shares generation, scoring, buffering and logging with GRPO (`_OnlineTrainer`)
and differs only in the two functions below.
"""

from __future__ import annotations

import torch

from ..advantages import leave_one_out_advantages, normalize_advantages, rloo_rewards
from ..losses.policy import rloo_loss
from ..losses.reduce import sequence_mean_loss
from ..rollout import Rollout
from .online import _OnlineTrainer
from .rloo_config import RLOOConfig


class RLOOTrainer(_OnlineTrainer):
    """Trainer for RLOO. Arguments as [`GRPOTrainer`] (without `tools`, `rollout_func`, `environment_factory`).

    Example:
        ```python
        >>> from trl import RLOOConfig, RLOOTrainer
        >>> trainer = RLOOTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", reward_funcs=my_reward,
        ...                       args=RLOOConfig(output_dir="out"), train_dataset=dataset)
        >>> trainer.train()
        ```
    """

    _config_class = RLOOConfig
    _tag_names = ["trl", "rloo"]
    _name = "RLOO"
    _sequence_level_metrics = True  # its clip ratios are fractions of completions

    def __init__(self, model, reward_funcs, args: RLOOConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, reward_processing_classes=None, callbacks=None, optimizers=(None, None),
                 quantization_config=None, peft_config=None):
        super().__init__(model, reward_funcs, args, train_dataset, eval_dataset, processing_class,
                         reward_processing_classes, callbacks, optimizers, quantization_config, peft_config)

    def _needs_old_logps_for_rewards(self) -> bool:
        return self.args.beta != 0.0  # the KL penalty compares the sampling policy with the reference

    def _advantages(self, rollout: Rollout, all_rewards: torch.Tensor) -> torch.Tensor:
        kl = None
        if self.args.beta != 0.0:
            local_kl = ((rollout.old_logps - rollout.ref_logps) * self._loss_mask(rollout)).sum(-1)
            kl = self.accelerator.gather(local_kl)
            self._metrics.add("train", "kl", kl.sum(), kl.numel())
        rewards = rloo_rewards(
            all_rewards, self.reward_scorer.weights.to(all_rewards.device), self.args.reward_clip_range, kl=kl,
            beta=self.args.beta,
        )
        advantages = leave_one_out_advantages(rewards, self.args.num_generations)
        return normalize_advantages(advantages) if self.args.normalize_advantages else advantages

    def _loss(self, micro: Rollout, logps, entropy, mask):
        old_logps = self._old_logps_for_loss(micro, logps)
        seq_losses, metrics = rloo_loss(logps, old_logps, micro.advantages, mask, self.args.epsilon,
                                        self.args.epsilon_high)
        return sequence_mean_loss(seq_losses, micro.step_counts, self._dp_world_size()), metrics
