"""Configuration of the reward-model trainer."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from .base_config import _BaseConfig, resolve_pad_to_multiple_of


@dataclass
class RewardConfig(_BaseConfig):
    r"""
    Configuration for [`RewardTrainer`]. Every field is also a `trl reward` command-line flag.

    Parameters:
        > Model

        chat_template_path (`str`, *optional*):
            A tokenizer folder or hub id whose chat template (and added tokens) are copied, or a `.jinja`/`.j2` file
            whose content becomes the chat template.
        disable_dropout (`bool`, *optional*, defaults to `True`):
            Disable dropout in the model, so that the chosen and rejected rewards of a pair are compared without noise.

        > Data

        dataset_num_proc (`int`, *optional*):
            Number of processes for dataset preparation.
        eos_token (`str`, *optional*):
            Token that ends a sequence; overrides the tokenizer's eos token.
        max_length (`int` or `None`, *optional*, defaults to `1024`):
            Maximum tokens of a full sequence (prompt + chosen, prompt + rejected). Pairs where either side is longer
            are **filtered out**, not truncated (a truncated sequence would be scored on text that does not hold the
            difference between the two sides). `None` keeps every pair.

        > Training

        center_rewards_coefficient (`float`, *optional*):
            Weight of the auxiliary loss `mean((r_chosen + r_rejected)²)` that centres the rewards around zero
            (https://huggingface.co/papers/2312.09244); `0.01` is a good value. `None` disables it.
        activation_offloading (`bool`, *optional*, defaults to `False`):
            Offload activations to the CPU during the forward pass.
        share_prompt_forward (`bool`, *optional*):
            Score the chosen and rejected sequences of a pair in one row, their common prefix (the prompt) run once
            (`trl/ops/shared_prompt.py`). `None`: where the model supports it and it pays; `True`: require it;
            `False`: one padded row per sequence, as the reference library lays them out.
        pad_token (`str`, *optional*):
            Deprecated: the tokenizer's pad token. Set it on the tokenizer instead.

    Example:
        ```python
        >>> from trl import RewardConfig
        >>> args = RewardConfig(output_dir="Qwen3-0.6B-Reward", max_length=512, center_rewards_coefficient=0.01)
        >>> args.learning_rate
        0.0001
        ```
    """

    learning_rate: float = field(default=1e-4, metadata={"help": "Initial AdamW learning rate."})

    # Model
    chat_template_path: str | None = field(
        default=None,
        metadata={"help": "Tokenizer path/hub id to copy the chat template from, or a .jinja/.j2 template file."},
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in the model."})

    # Data
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for dataset preparation."})
    eos_token: str | None = field(default=None, metadata={"help": "Overrides the tokenizer's eos token."})
    max_length: int | None = field(
        default=1024,
        metadata={"help": "Maximum tokens of prompt + chosen / prompt + rejected; longer pairs are filtered out."},
    )

    # Training
    center_rewards_coefficient: float | None = field(
        default=None,
        metadata={"help": "Weight of mean((r_chosen + r_rejected)^2), which centres the rewards (0.01 recommended)."},
    )
    activation_offloading: bool = field(default=False, metadata={"help": "Offload activations to the CPU."})
    share_prompt_forward: bool | None = field(
        default=None, metadata={"help": "Run a pair's common prefix once, chosen and rejected in one row (None: where "
                                        "supported and it pays; False: one padded row per sequence)."}
    )
    pad_token: str | None = field(default=None, metadata={"help": "Deprecated: set the tokenizer's pad token."})

    def __post_init__(self):
        if self.max_length is not None and self.max_length <= 0:
            raise ValueError(f"`max_length` must be a positive integer or None; got {self.max_length}.")
        if self.center_rewards_coefficient is not None and self.center_rewards_coefficient < 0:
            raise ValueError(
                f"`center_rewards_coefficient` must be >= 0 (or None to disable centring); got "
                f"{self.center_rewards_coefficient}."
            )
        self.pad_to_multiple_of = resolve_pad_to_multiple_of(self.pad_to_multiple_of)
        if self.dataset_num_proc is not None and self.dataset_num_proc <= 0:
            raise ValueError(f"`dataset_num_proc` must be a positive integer or None; got {self.dataset_num_proc}.")
        if self.pad_token is not None:
            warnings.warn(
                "`pad_token` is deprecated; set `tokenizer.pad_token` instead (it is still applied for now).",
                FutureWarning, stacklevel=2,
            )
        super().__post_init__()
