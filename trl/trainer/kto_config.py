"""Configuration of the KTO trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..losses.kto import KTO_LOSSES
from .base_config import _BaseConfig, check_reference_fields, resolve_pad_to_multiple_of


@dataclass
class KTOConfig(_BaseConfig):
    r"""
    Configuration for [`KTOTrainer`]. Every field is also a `trl kto` command-line flag.

    Parameters:
        > Model

        disable_dropout (`bool`, *optional*, defaults to `True`):
            Disable dropout in the policy and the reference model.

        > Data

        dataset_num_proc (`int`, *optional*): processes for dataset preparation.
        max_length (`int` or `None`, *optional*, defaults to `1024`):
            Maximum tokens of prompt + completion; longer sequences are truncated from the right.
        precompute_ref_log_probs (`bool`, *optional*, defaults to `False`):
            Compute the reference log-probs of every completion and KL completion (`ref_logps`, `ref_KL_logps`) once
            before training and cache them on disk (keyed by the model's and the dataset's fingerprints); a later run
            with the same model and data reads the cache and never builds a reference model.
        precompute_ref_batch_size (`int`, *optional*): batch size of that pass (defaults to the train batch size).
        train_sampling_strategy (`str`, *optional*, defaults to `"sequential"`):
            Order of the training rows. Kept at TRL's default for parity; unlike TRL, our KL completions are paired
            when the dataset is prepared, so `"random"` works just as well.

        > Loss

        loss_type (`str`, *optional*, defaults to `"kto"`):
            `"kto"` (https://huggingface.co/papers/2402.01306) or `"apo_zero_unpaired"`
            (https://huggingface.co/papers/2408.06266, no KL term).
        beta (`float`, *optional*, defaults to `0.1`): β, how far the policy may move from the reference.
        desirable_weight (`float`, *optional*, defaults to `1.0`): λ_D, weight of desirable rows' losses.
        undesirable_weight (`float`, *optional*, defaults to `1.0`): λ_U, weight of undesirable rows' losses. The paper
            recommends `λ_D·n_D / (λ_U·n_U)` in [1, 4/3] to counter class imbalance.

        > Reference model

        sync_ref_model (`bool`, *optional*, defaults to `False`): TR-DPO reference syncing.
        ref_model_mixup_alpha (`float`, *optional*, defaults to `0.6`): α of `ref <- α·policy + (1-α)·ref`.
        ref_model_sync_steps (`int`, *optional*, defaults to `512`): steps between syncs.

        > Other

        activation_offloading (`bool`, *optional*, defaults to `False`): offload activations to the CPU.

    Example:
        ```python
        >>> from trl import KTOConfig
        >>> config = KTOConfig(output_dir="out", beta=0.1, desirable_weight=1.33)
        >>> config.learning_rate, config.loss_type
        (1e-06, 'kto')
        ```
    """

    learning_rate: float = field(default=1e-6, metadata={"help": "Initial AdamW learning rate."})
    train_sampling_strategy: str = field(
        default="sequential",
        metadata={"help": "Sampler for training: 'sequential' (TRL's KTO default), 'random', 'group_by_length', or "
                          "'batch_rebalance'. KL completions do not depend on it.",
                  "choices": ["random", "sequential", "group_by_length", "batch_rebalance"]},
    )

    # Model
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in the policy and reference."})

    # Data
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for dataset preparation."})
    max_length: int | None = field(default=1024, metadata={"help": "Maximum tokens of prompt + completion."})
    precompute_ref_log_probs: bool = field(
        default=False, metadata={"help": "Compute reference log-probs once before training and cache them."}
    )
    precompute_ref_batch_size: int | None = field(
        default=None, metadata={"help": "Batch size of the precompute pass (default: the train batch size)."}
    )

    # Loss
    loss_type: str = field(default="kto", metadata={"help": "Loss type: kto or apo_zero_unpaired."})
    beta: float = field(default=0.1, metadata={"help": "beta: how far the policy may move from the reference."})
    desirable_weight: float = field(default=1.0, metadata={"help": "Weight of the desirable rows' losses."})
    undesirable_weight: float = field(default=1.0, metadata={"help": "Weight of the undesirable rows' losses."})

    # Reference model
    sync_ref_model: bool = field(default=False, metadata={"help": "TR-DPO: periodically mix the policy into the ref."})
    ref_model_mixup_alpha: float = field(default=0.6, metadata={"help": "alpha of ref <- alpha*policy + (1-alpha)*ref."})
    ref_model_sync_steps: int = field(default=512, metadata={"help": "Steps between reference syncs."})

    # Other
    activation_offloading: bool = field(default=False, metadata={"help": "Offload activations to the CPU."})

    def __post_init__(self):
        if self.loss_type not in KTO_LOSSES:
            raise ValueError(f"Unknown KTO `loss_type` {self.loss_type!r}; allowed: {sorted(KTO_LOSSES)}.")
        if self.beta <= 0:
            raise ValueError(f"`beta` must be > 0; got {self.beta}.")
        for name in ("desirable_weight", "undesirable_weight"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be > 0; got {getattr(self, name)}. Use a small value to down-weight.")
        if self.max_length is not None and self.max_length <= 0:
            raise ValueError(f"`max_length` must be a positive integer or None; got {self.max_length}.")
        check_reference_fields(self)
        self.pad_to_multiple_of = resolve_pad_to_multiple_of(self.pad_to_multiple_of)
        super().__post_init__()
