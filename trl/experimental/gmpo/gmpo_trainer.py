"""Geometric-Mean Policy Optimization (GMPO), https://huggingface.co/papers/2507.20673.

GRPO with one change: the policy term of a completion is `−A · exp(mean_t clipped log-ratio)`, the geometric mean of
its token ratios (`trl.losses.gmpo`), averaged over the completions of the optimiser step. Generation, rewards, group
advantages, the reference and logging are GRPO's (`GRPOTrainer`, `_OnlineTrainer`); only `_loss` differs.
"""

from __future__ import annotations

from ...losses.gmpo import gmpo_loss
from ...losses.reduce import sequence_mean_loss
from ...trainer.grpo_trainer import GRPOTrainer
from .gmpo_config import GMPOConfig


class GMPOTrainer(GRPOTrainer):
    """Trainer for GMPO. Arguments as [`GRPOTrainer`], with a [`GMPOConfig`].

    Logged metrics: GRPO's generation and reward metrics, `entropy`, `clip_ratio/low_mean`, `clip_ratio/high_mean`,
    `clip_ratio/region_mean` (fractions of tokens), `clip_ratio/low_min`, `clip_ratio/high_max`, and `kl` with
    `beta > 0`.

    Example:
        ```python
        >>> from trl.experimental.gmpo import GMPOConfig, GMPOTrainer
        >>> trainer = GMPOTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", reward_funcs=my_reward,
        ...                       args=GMPOConfig(output_dir="out"), train_dataset=dataset)
        >>> trainer.train()
        ```
    """

    _config_class = GMPOConfig
    _tag_names = ["trl", "gmpo"]
    _name = "GMPO"

    def _loss(self, micro, logps, entropy, mask):
        a = self.args
        losses, metrics = gmpo_loss(
            logps, self._old_logps_for_loss(micro, logps), micro.advantages, mask, epsilon_low=a.epsilon,
            epsilon_high=a.epsilon_high, beta=a.beta, ref_logps=micro.ref_logps,
        )
        return sequence_mean_loss(losses, micro.step_counts, self._dp_world_size()), metrics
