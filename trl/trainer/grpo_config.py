"""Configuration of the GRPO trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

from .online_config import _OnlineConfig


@dataclass
class GRPOConfig(_OnlineConfig):
    r"""
    Configuration for [`GRPOTrainer`]. Every field is also a `trl grpo` command-line flag. The data, generation,
    reward, reference and logging fields are described in [`_OnlineConfig`]; `per_device_train_batch_size` counts
    completions.

    Parameters:
        > Algorithm

        beta (`float`, *optional*, defaults to `0.0`): KL coefficient; 0 loads no reference model.
        importance_sampling_level (`str`, *optional*, defaults to `"token"`): `"token"`, or `"sequence"` for GSPO
            (https://huggingface.co/papers/2507.18071), where the ratio is the geometric mean over the sequence.
        delta (`float`, *optional*): cap of the unclipped ratio (two-sided clipping, INTELLECT-2).
        sapo_temperature_pos (`float`, *optional*, defaults to `1.0`), sapo_temperature_neg (`float`, *optional*,
            defaults to `1.05`): SAPO gate temperatures for positive / negative advantages.
        vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg (`float`, *optional*): VESPO weight shape.

        > Rewards

        scale_rewards (`str` or `bool`, *optional*, defaults to `"group"`): divide advantages by the reward std of the
            group (`"group"`/True), of the batch (`"batch"`), or not (`"none"`/False; Dr. GRPO).
        multi_objective_aggregation (`str`, *optional*, defaults to `"sum_then_normalize"`): or
            `"normalize_then_sum"` (GDPO: each reward normalised in its group before the weighted sum).

        > Loss

        loss_type (`str`, *optional*, defaults to `"dapo"`): `grpo`, `dr_grpo`, `dapo`, `bnpo`, `cispo`, `sapo`,
            `luspo` or `vespo`; see `trl.losses.policy` for formulas and normalisation.
        top_entropy_quantile (`float`, *optional*, defaults to `1.0`): train only the tokens whose entropy is in the
            top ρ quantile of the micro-batch (0.2 recommended by https://huggingface.co/papers/2506.01939).
        use_bias_correction_kl (`bool`, *optional*, defaults to `True`): multiply the per-token KL by the ratio.

        > Entropy

        entropy_coef (`float`, *optional*, defaults to `0.0`): weight of an entropy bonus, `loss -= coef · mean
            entropy`, the mean taken over the completion tokens of the whole optimiser step (whatever `loss_type`).
        use_adaptive_entropy (`bool`, *optional*, defaults to `False`): adapt the coefficient after every optimiser
            step (Skywork-OR1, https://huggingface.co/papers/2505.22312): `+ entropy_coef_delta` while the mean
            entropy of the step is below `entropy_target`, `- entropy_coef_delta` otherwise, clamped to
            `[entropy_coef_min, entropy_coef_max]`; its state is saved in checkpoints (`entropy_ctrl_state.json`).
        entropy_coef_min (`float`, *optional*, defaults to `0.0`), entropy_coef_max (`float`, *optional*, defaults to
            `1.0`), entropy_coef_delta (`float`, *optional*, defaults to `0.005`), entropy_target (`float`, *optional*,
            defaults to `0.2`).

    Example:
        ```python
        >>> from trl import GRPOConfig
        >>> config = GRPOConfig(output_dir="out", per_device_train_batch_size=8, num_generations=8)
        >>> config.loss_type, config.generation_batch_size
        ('dapo', 8)
        ```
    """

    # Algorithm
    beta: float = field(default=0.0, metadata={"help": "KL coefficient; 0 loads no reference model."})
    importance_sampling_level: str = field(
        default="token", metadata={"help": "'token' or 'sequence' (GSPO).", "choices": ["token", "sequence"]}
    )
    delta: float | None = field(default=None, metadata={"help": "Cap of the unclipped ratio (two-sided clipping)."})
    sapo_temperature_neg: float = field(default=1.05, metadata={"help": "SAPO temperature for negative advantages."})
    sapo_temperature_pos: float = field(default=1.0, metadata={"help": "SAPO temperature for positive advantages."})
    vespo_k_pos: float = field(default=2.0, metadata={"help": "VESPO shape k for positive advantages."})
    vespo_lambda_pos: float = field(default=3.0, metadata={"help": "VESPO rate lambda for positive advantages."})
    vespo_k_neg: float = field(default=3.0, metadata={"help": "VESPO shape k for negative advantages."})
    vespo_lambda_neg: float = field(default=2.0, metadata={"help": "VESPO rate lambda for negative advantages."})
    cast_lm_head_to_fp32: bool = field(
        default=False, metadata={"help": "Compute the LM head in fp32 (not available yet; the chunked head already "
                                         "computes the log-softmax in fp32)."}
    )

    # Rewards
    # typed `str` so that the command line takes a value; Python callers may still pass True/False
    scale_rewards: str = field(
        default="group", metadata={"help": "Advantage scaling: 'group', 'batch' or 'none' (true/false accepted)."}
    )
    multi_objective_aggregation: str = field(
        default="sum_then_normalize",
        metadata={"help": "How several rewards combine.", "choices": ["sum_then_normalize", "normalize_then_sum"]},
    )

    # Loss
    loss_type: str = field(default="dapo", metadata={"help": "grpo, dr_grpo, dapo, bnpo, cispo, sapo, luspo, vespo."})
    top_entropy_quantile: float = field(
        default=1.0, metadata={"help": "Train only the top-entropy tokens of this quantile (1.0: all tokens)."}
    )
    use_bias_correction_kl: bool = field(default=True, metadata={"help": "Multiply the per-token KL by the ratio."})

    # Entropy
    entropy_coef: float = field(default=0.0, metadata={"help": "Weight of the entropy bonus (0: off)."})
    use_adaptive_entropy: bool = field(default=False, metadata={"help": "Adapt entropy_coef towards entropy_target."})
    entropy_coef_min: float = field(default=0.0, metadata={"help": "Lower bound of the adaptive coefficient."})
    entropy_coef_max: float = field(default=1.0, metadata={"help": "Upper bound of the adaptive coefficient."})
    entropy_coef_delta: float = field(default=0.005, metadata={"help": "Step of the adaptive coefficient."})
    entropy_target: float = field(default=0.2, metadata={"help": "Mean token entropy the adaptive coefficient aims at."})

    def __post_init__(self):
        from ..losses.policy import validate_policy_loss_config

        scale = {True: "group", False: "none", "true": "group", "false": "none"}
        key = self.scale_rewards.lower() if isinstance(self.scale_rewards, str) else self.scale_rewards
        self.scale_rewards = scale.get(key, self.scale_rewards)
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ValueError(f"`scale_rewards` must be 'group', 'batch' or 'none'; got {self.scale_rewards!r}.")
        if self.multi_objective_aggregation not in ("sum_then_normalize", "normalize_then_sum"):
            raise ValueError(
                "`multi_objective_aggregation` must be 'sum_then_normalize' or 'normalize_then_sum'; got "
                f"{self.multi_objective_aggregation!r}."
            )
        warning = validate_policy_loss_config(self.loss_type, self.importance_sampling_level)
        if warning:
            import warnings

            warnings.warn(warning, stacklevel=2)
        if not 0.0 < self.top_entropy_quantile <= 1.0:
            raise ValueError(f"`top_entropy_quantile` must be in (0, 1]; got {self.top_entropy_quantile}.")
        if self.cast_lm_head_to_fp32:
            raise ValueError("`cast_lm_head_to_fp32` is not supported yet; the chunked LM head already computes the "
                             "log-softmax in float32. Remove it.")
        if self.entropy_coef < 0 or self.entropy_coef_delta < 0:
            raise ValueError(f"`entropy_coef` and `entropy_coef_delta` must be >= 0; got {self.entropy_coef}, "
                             f"{self.entropy_coef_delta}.")
        if not 0 <= self.entropy_coef_min <= self.entropy_coef_max:
            raise ValueError(f"Need 0 <= entropy_coef_min <= entropy_coef_max; got {self.entropy_coef_min}, "
                             f"{self.entropy_coef_max}.")
        if self.loss_type == "cispo" and (self.epsilon_high is None or self.epsilon_high < 1.0):
            import warnings

            warnings.warn(
                f"loss_type='cispo' caps the importance weight at epsilon_high, an absolute value (not 1 + "
                f"epsilon_high); epsilon_high={self.epsilon_high if self.epsilon_high is not None else self.epsilon} "
                "caps every weight below 1. The CISPO paper uses 5.0: set `epsilon_high=5.0`.",
                stacklevel=2,
            )
        if self.delta is not None and self.delta <= 1.0:
            raise ValueError(f"`delta` caps the ratio and must be > 1 (e.g. 4.0); got {self.delta}.")
        super().__post_init__()
