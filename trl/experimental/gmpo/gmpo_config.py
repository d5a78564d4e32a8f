"""Configuration of the GMPO trainer: GRPO's, with GMPO's clipping range."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from ...trainer.grpo_config import GRPOConfig


@dataclass
class GMPOConfig(GRPOConfig):
    r"""
    Configuration for [`GMPOTrainer`]: every [`GRPOConfig`] field, with these differences.

    Parameters:
        epsilon (`float`, *optional*, defaults to `0.4`): the token log-ratio is clipped below at `−epsilon`, i.e. the
            ratio at `e^{−0.4}` (the paper's range, wider than GRPO's since the geometric mean damps outliers).
        epsilon_high (`float`, *optional*): upper bound of the log-ratio (defaults to `epsilon`).

    `loss_type` and `importance_sampling_level` are not read: the loss is GMPO's sequence objective
    (`trl.losses.gmpo`), a mean over completions; setting either warns. The entropy controls (`entropy_coef`,
    `use_adaptive_entropy`, `top_entropy_quantile`), `off_policy_mask_threshold` and `delta` are GRPO-only and
    rejected. With `beta > 0` the KL term is the plain `k3` per token (`use_bias_correction_kl` is not read).
    """

    epsilon: float = field(default=0.4, metadata={"help": "Bound of the clipped token log-ratio (e^-eps, e^eps)."})

    def __post_init__(self):
        unsupported = {
            "entropy_coef": self.entropy_coef != 0.0,
            "use_adaptive_entropy": self.use_adaptive_entropy,
            "top_entropy_quantile": self.top_entropy_quantile < 1.0,
            "off_policy_mask_threshold": self.off_policy_mask_threshold is not None,
            "delta": self.delta is not None,
        }
        named = [name for name, on in unsupported.items() if on]
        if named:
            raise ValueError(f"GMPOConfig does not support {named} (GRPO's token-level controls); leave them at their "
                             "defaults, or use GRPOTrainer.")
        ignored = {"loss_type": (self.loss_type, "dapo"), "importance_sampling_level": (self.importance_sampling_level,
                                                                                        "token")}
        for name, (value, default) in ignored.items():
            if value != default:
                warnings.warn(f"GMPOConfig ignores `{name}={value!r}`: the loss is GMPO's geometric-mean sequence "
                              "objective (trl/losses/gmpo.py).", stacklevel=3)
        super().__post_init__()
