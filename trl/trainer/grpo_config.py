"""Configuration of the GRPO trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

from .online_config import _OnlineConfig

# loss types that weight each completion by its number of tokens (a token mean or sum over the batch)
_LENGTH_WEIGHTED = ("bnpo", "dapo", "dr_grpo", "cispo")
_VLLM_IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


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
            Combined with a length-weighted `loss_type` (`bnpo`, `dapo`, `dr_grpo`, `cispo`) it warns.
        delta (`float`, *optional*): cap of the unclipped ratio (two-sided clipping, INTELLECT-2).
        sapo_temperature_pos (`float`, *optional*, defaults to `1.0`), sapo_temperature_neg (`float`, *optional*,
            defaults to `1.05`): SAPO gate temperatures for positive / negative advantages.
        vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg (`float`, *optional*): VESPO weight shape.
        off_policy_mask_threshold (`float`, *optional*): off-policy sequence masking (OPSM) of the DeepSeek-V3.2
            technical report: a completion with a negative advantage whose mean per-token
            `log π_old − log π_θ` over its loss tokens exceeds this δ is left out of the policy term (not of the KL
            term). `π_old` is the policy that sampled it, so on-policy micro-batches are never masked. None: off.
        cast_lm_head_to_fp32 (`bool`, *optional*, defaults to `False`): accepted for the reference's configs and has
            no effect: the chunked LM head already computes the log-softmax of the policy and the reference in fp32.
        vllm_importance_sampling_correction, vllm_importance_sampling_mode, vllm_importance_sampling_clip_max,
        vllm_importance_sampling_clip_min, vllm_importance_sampling_cap (deprecated): the reference's correction
            for vLLM's sampling distribution, parsed so its configs load; used only with `use_vllm=True`.

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
        default=False, metadata={"help": "Accepted, no effect: the chunked LM head already computes the log-softmax "
                                         "in fp32."}
    )
    off_policy_mask_threshold: float | None = field(
        default=None, metadata={"help": "DeepSeek-V3.2 off-policy sequence masking: leave out of the policy loss "
                                        "negative-advantage completions whose mean per-token log-ratio "
                                        "log pi_old - log pi exceeds this (None: off)."}
    )
    # vLLM importance-sampling correction (parsed for the reference's configs; used only with use_vllm=True)
    vllm_importance_sampling_correction: bool = field(
        default=True, metadata={"help": "Correct for vLLM's sampling distribution (needs use_vllm)."}
    )
    vllm_importance_sampling_mode: str = field(
        default="sequence_mask",
        metadata={"help": "token_truncate, token_mask, sequence_truncate or sequence_mask (needs use_vllm)."},
    )
    vllm_importance_sampling_clip_max: float | None = field(
        default=3.0, metadata={"help": "Upper bound of the vLLM importance weight (needs use_vllm)."}
    )
    vllm_importance_sampling_clip_min: float | None = field(
        default=None, metadata={"help": "Lower bound of the vLLM importance weight (needs use_vllm)."}
    )
    vllm_importance_sampling_cap: float | None = field(
        default=None, metadata={"help": "Deprecated name of vllm_importance_sampling_clip_max."}
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
        if self.importance_sampling_level == "sequence" and self.loss_type in _LENGTH_WEIGHTED:
            import warnings

            warnings.warn(
                f"importance_sampling_level='sequence' with loss_type={self.loss_type!r}: the sequence-level ratio is "
                f"one number per completion, but {self.loss_type!r} weights each completion by its token count, so "
                "long completions count more than GSPO intends. GSPO uses a per-sequence mean: loss_type='grpo' (or "
                "'luspo').", stacklevel=2,
            )
        if self.off_policy_mask_threshold is not None and self.off_policy_mask_threshold < 0:
            raise ValueError(f"`off_policy_mask_threshold` must be >= 0 (a KL bound) or None; got "
                             f"{self.off_policy_mask_threshold}.")
        if self.vllm_importance_sampling_mode not in _VLLM_IS_MODES:
            raise ValueError(f"`vllm_importance_sampling_mode` must be one of {list(_VLLM_IS_MODES)}; got "
                             f"{self.vllm_importance_sampling_mode!r}.")
        if self.vllm_importance_sampling_cap is not None:
            import warnings

            warnings.warn("`vllm_importance_sampling_cap` is deprecated: use `vllm_importance_sampling_clip_max`.",
                          FutureWarning, stacklevel=2)
            self.vllm_importance_sampling_clip_max = self.vllm_importance_sampling_cap
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
