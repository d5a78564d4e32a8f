"""Configuration of the DPO trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..losses.dpo import validate_dpo_loss_config
from .base_config import _BaseConfig, check_reference_fields, resolve_pad_to_multiple_of
from .sft_config import TRUNCATION_MODES


@dataclass
class DPOConfig(_BaseConfig):
    r"""
    Configuration for [`DPOTrainer`]. Every field is also a `trl dpo` command-line flag.

    Parameters:
        > Model

        disable_dropout (`bool`, *optional*, defaults to `True`):
            Disable dropout in the policy and the reference model.

        > Data

        dataset_num_proc (`int`, *optional*): processes for dataset preparation.
        max_length (`int` or `None`, *optional*, defaults to `1024`):
            Maximum tokens of prompt + completion; longer sequences are truncated (`truncation_mode`).
        truncation_mode (`str`, *optional*, defaults to `"keep_start"`): `"keep_start"` or `"keep_end"` (deprecated).
        padding_free (`bool`, *optional*, defaults to `False`):
            Concatenate the chosen and rejected sequences of a batch into one row (no padding tokens); each sequence
            attends only to itself (sdpa/eager build the block-diagonal mask from `position_ids`, flash attention uses
            varlen kernels). Pays off with flash attention; with sdpa/eager attention costs grow with the whole row.
        share_prompt_forward (`bool`, *optional*):
            Score the chosen and rejected sequences of a pair in one row, the prompt run once
            (`trl/ops/shared_prompt.py`; the same log-probs up to float rounding). `None`: where the model supports it
            and it pays; `True`: require it; `False`: one padded row per sequence, as the reference library does.
        precompute_ref_log_probs (`bool`, *optional*, defaults to `False`):
            Compute the reference log-probs once before training and cache them on disk (keyed by the model's and the
            dataset's fingerprints); a later run with the same model and data reads the cache and never builds a
            reference model.
        precompute_ref_batch_size (`int`, *optional*): batch size of that pass (defaults to the train batch size).

        > Loss

        loss_type (`str` or `list[str]`, *optional*, defaults to `["sigmoid"]`):
            One or more of `sigmoid`, `hinge`, `ipo`, `exo_pair`, `nca_pair`, `robust`, `bco_pair`, `sppo_hard`, `aot`,
            `aot_unpaired`, `apo_zero`, `apo_down`, `discopop`, `sft`, `sigmoid_norm`.
        loss_weights (`list[float]`, *optional*): weight of each loss type (e.g. MPO: sigmoid, bco_pair, sft).
        beta (`float`, *optional*, defaults to `0.1`): β (τ for IPO).
        label_smoothing (`float`, *optional*, defaults to `0.0`): noise rate in [0, 0.5) (robust, cDPO); EXO's ε.
        f_divergence_type (`str`, *optional*, defaults to `"reverse_kl"`):
            `reverse_kl`, `forward_kl`, `js_divergence` or `alpha_divergence`.
        f_alpha_divergence_coef (`float`, *optional*, defaults to `0.5`): α of the alpha-divergence.
        ld_alpha (`float`, *optional*): LD-DPO weight of completion tokens beyond the length both sides share.
        use_weighting (`bool`, *optional*, defaults to `False`): WPO weighting of each pair.
        discopop_tau (`float`, *optional*, defaults to `0.05`): DiscoPOP temperature.

        > Reference model

        sync_ref_model (`bool`, *optional*, defaults to `False`): TR-DPO reference syncing.
        ref_model_mixup_alpha (`float`, *optional*, defaults to `0.6`): α of `ref <- α·policy + (1-α)·ref`.
        ref_model_sync_steps (`int`, *optional*, defaults to `512`): steps between syncs.

        > Other

        activation_offloading (`bool`, *optional*, defaults to `False`): offload activations to the CPU.
    """

    learning_rate: float = field(default=1e-6, metadata={"help": "Initial AdamW learning rate."})

    # Model
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in the policy and reference."})

    # Data
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for dataset preparation."})
    max_length: int | None = field(default=1024, metadata={"help": "Maximum tokens of prompt + completion."})
    truncation_mode: str = field(default="keep_start", metadata={"help": "keep_start or keep_end (deprecated)."})
    padding_free: bool = field(default=False, metadata={"help": "One flat row per batch instead of padding."})
    share_prompt_forward: bool | None = field(
        default=None, metadata={"help": "Score a pair's chosen and rejected in one row, the prompt run once "
                                        "(None: where supported and it pays; False: one padded row per sequence)."}
    )
    precompute_ref_log_probs: bool = field(
        default=False, metadata={"help": "Compute reference log-probs once before training and cache them."}
    )
    precompute_ref_batch_size: int | None = field(
        default=None, metadata={"help": "Batch size of the precompute pass (default: the train batch size)."}
    )

    # Loss
    loss_type: list[str] = field(
        default_factory=lambda: ["sigmoid"],
        metadata={"help": "Loss type(s): sigmoid, hinge, ipo, exo_pair, nca_pair, robust, bco_pair, sppo_hard, aot, "
                          "aot_unpaired, apo_zero, apo_down, discopop, sft, sigmoid_norm."},
    )
    loss_weights: list[float] | None = field(default=None, metadata={"help": "Weight of each loss type."})
    beta: float = field(default=0.1, metadata={"help": "beta (tau for IPO)."})
    label_smoothing: float = field(default=0.0, metadata={"help": "Label noise rate in [0, 0.5); EXO's epsilon."})
    f_divergence_type: str = field(
        default="reverse_kl", metadata={"help": "reverse_kl, forward_kl, js_divergence or alpha_divergence."}
    )
    f_alpha_divergence_coef: float = field(default=0.5, metadata={"help": "alpha of the alpha-divergence."})
    ld_alpha: float | None = field(default=None, metadata={"help": "LD-DPO weight of tokens beyond the shared length."})
    use_weighting: bool = field(default=False, metadata={"help": "WPO weighting of each pair."})
    discopop_tau: float = field(default=0.05, metadata={"help": "DiscoPOP temperature."})

    # Reference model
    sync_ref_model: bool = field(default=False, metadata={"help": "TR-DPO: periodically mix the policy into the ref."})
    ref_model_mixup_alpha: float = field(default=0.6, metadata={"help": "alpha of ref <- alpha*policy + (1-alpha)*ref."})
    ref_model_sync_steps: int = field(default=512, metadata={"help": "Steps between reference syncs."})

    # Other
    activation_offloading: bool = field(default=False, metadata={"help": "Offload activations to the CPU."})
    pad_token: str | None = field(default=None, metadata={"help": "Deprecated: set the tokenizer's pad token."})

    def __post_init__(self):
        self.loss_type = validate_dpo_loss_config(
            self.loss_type, self.loss_weights, self.f_divergence_type, self.label_smoothing, self.use_weighting,
            f_alpha_divergence_coef=self.f_alpha_divergence_coef, discopop_tau=self.discopop_tau, beta=self.beta,
        )
        if self.truncation_mode not in TRUNCATION_MODES:
            raise ValueError(f"Unknown `truncation_mode` {self.truncation_mode!r}; expected one of {TRUNCATION_MODES}.")
        if self.max_length is not None and self.max_length <= 0:
            raise ValueError(f"`max_length` must be a positive integer or None; got {self.max_length}.")
        if self.ld_alpha is not None and not 0.0 <= self.ld_alpha <= 1.0:
            raise ValueError(f"`ld_alpha` must be in [0, 1]; got {self.ld_alpha}.")
        check_reference_fields(self)
        self.pad_to_multiple_of = resolve_pad_to_multiple_of(self.pad_to_multiple_of)
        super().__post_init__()
