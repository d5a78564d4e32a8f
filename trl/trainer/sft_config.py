"""Configuration of the SFT trainer."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from .base_config import _BaseConfig, resolve_pad_to_multiple_of

PACKING_STRATEGIES = ("bfd", "bfd_split", "wrapped")
SFT_LOSS_TYPES = ("nll", "dft")
TRUNCATION_MODES = ("keep_start", "keep_end")


@dataclass
class SFTConfig(_BaseConfig):
    r"""
    Configuration for [`SFTTrainer`]. Every field is also a `trl sft` command-line flag.

    Parameters:
        > Model

        chat_template_path (`str`, *optional*):
            A tokenizer folder or hub id whose chat template (and added tokens) are copied, or a `.jinja`/`.j2` file
            whose content becomes the chat template.

        > Dataset preparation

        dataset_text_field (`str`, *optional*, defaults to `"text"`):
            Column that holds the text of language-modelling datasets.
        dataset_kwargs (`dict[str, Any]`, *optional*):
            Only key: `skip_prepare_dataset` (bool): the dataset is already tokenised/collatable as is.
        dataset_num_proc (`int`, *optional*):
            Number of processes for dataset preparation.
        eos_token (`str`, *optional*):
            Token that ends a sequence; overrides the tokenizer's eos and is added to the generation eos ids.
        max_length (`int` or `None`, *optional*, defaults to `1024`):
            Truncation length of each example; the block length when packing. `None` disables truncation.
        truncation_mode (`str`, *optional*, defaults to `"keep_start"`):
            `"keep_start"` or `"keep_end"` (deprecated).
        shuffle_dataset (`bool`, *optional*, defaults to `False`):
            Shuffle the dataset before packing.
        packing (`bool`, *optional*, defaults to `False`):
            Pack several examples into blocks of `max_length` tokens (documents never attend to each other).
        packing_strategy (`str`, *optional*, defaults to `"bfd"`):
            `"bfd"` (best-fit decreasing, truncates overlong examples), `"bfd_split"` (splits them instead) or
            `"wrapped"` (concatenate and cut, ignoring document boundaries).
        padding_free (`bool`, *optional*, defaults to `False`):
            Flatten each batch into one row with `position_ids` instead of padding. Works with every attention
            implementation (sdpa/eager build a block-diagonal mask from `position_ids`; flash attention uses varlen
            kernels). Packed batches are flattened automatically under flash attention; with sdpa/eager they keep one
            row per packed block (documents are still separated by `position_ids`), since a flat row would make
            attention quadratic in the whole batch.
        eval_packing (`bool`, *optional*):
            Pack the eval dataset. Defaults to `packing`.

        > Training

        completion_only_loss (`bool`, *optional*):
            Train only on completion tokens. `None` means: on for prompt-completion datasets.
        assistant_only_loss (`bool`, *optional*, defaults to `False`):
            Train only on assistant turns of conversational data.
        loss_type (`str`, *optional*, defaults to `"nll"`):
            `"nll"` (negative log-likelihood) or `"dft"` (Dynamic Fine-Tuning, https://huggingface.co/papers/2508.05629:
            each token's loss is weighted by its detached probability).
        activation_offloading (`bool`, *optional*, defaults to `False`):
            Offload activations to the CPU during the forward pass.
    """

    learning_rate: float = field(default=2e-5, metadata={"help": "Initial AdamW learning rate."})

    # Model
    chat_template_path: str | None = field(
        default=None,
        metadata={"help": "Tokenizer path/hub id to copy the chat template from, or a .jinja/.j2 template file."},
    )

    # Dataset preparation
    dataset_text_field: str = field(default="text", metadata={"help": "Text column of language-modelling data."})
    dataset_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Only key: skip_prepare_dataset (bool)."}
    )
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for dataset preparation."})
    eos_token: str | None = field(default=None, metadata={"help": "Overrides the tokenizer's eos token."})
    max_length: int | None = field(
        default=1024, metadata={"help": "Maximum tokens per example (block length when packing). None: no limit."}
    )
    truncation_mode: str = field(
        default="keep_start", metadata={"help": "keep_start or keep_end (deprecated).", "choices": TRUNCATION_MODES}
    )
    shuffle_dataset: bool = field(default=False, metadata={"help": "Shuffle the dataset before packing."})
    packing: bool = field(default=False, metadata={"help": "Pack examples into blocks of max_length tokens."})
    packing_strategy: str = field(
        default="bfd", metadata={"help": "bfd, bfd_split or wrapped (bfd-requeue is a deprecated alias of bfd_split)."}
    )
    padding_free: bool = field(
        default=False, metadata={"help": "Flatten each batch into one row with position_ids (no padding)."}
    )
    eval_packing: bool | None = field(default=None, metadata={"nargs": "?", "const": True, "help": "Pack the eval dataset (default: packing)."})

    # Training
    completion_only_loss: bool | None = field(
        default=None, metadata={"nargs": "?", "const": True, "help": "Loss on completion tokens only (default: on for prompt-completion data)."}
    )
    assistant_only_loss: bool = field(default=False, metadata={"help": "Loss on assistant turns only."})
    loss_type: str = field(default="nll", metadata={"help": "nll or dft (chunked_nll: deprecated alias of nll)."})
    activation_offloading: bool = field(default=False, metadata={"help": "Offload activations to the CPU."})
    pad_token: str | None = field(default=None, metadata={"help": "Deprecated: set the tokenizer's pad token."})

    def __post_init__(self):
        if self.packing_strategy == "bfd-requeue":
            warnings.warn("`packing_strategy='bfd-requeue'` is deprecated; use 'bfd_split'.", FutureWarning, stacklevel=2)
            self.packing_strategy = "bfd_split"
        if self.packing_strategy not in PACKING_STRATEGIES:
            raise ValueError(
                f"Unknown `packing_strategy` {self.packing_strategy!r}; expected one of {PACKING_STRATEGIES}."
            )
        if self.loss_type == "chunked_nll":
            warnings.warn("`loss_type='chunked_nll'` is deprecated; use 'nll'.", FutureWarning, stacklevel=2)
            self.loss_type = "nll"
        if self.loss_type not in SFT_LOSS_TYPES:
            raise ValueError(f"Unknown `loss_type` {self.loss_type!r}; expected one of {SFT_LOSS_TYPES}.")
        if self.truncation_mode not in TRUNCATION_MODES:
            raise ValueError(f"Unknown `truncation_mode` {self.truncation_mode!r}; expected one of {TRUNCATION_MODES}.")
        if self.truncation_mode == "keep_end":
            warnings.warn("`truncation_mode='keep_end'` is deprecated.", FutureWarning, stacklevel=2)
        if self.max_length is not None and self.max_length <= 0:
            raise ValueError(f"`max_length` must be a positive integer or None; got {self.max_length}.")
        if self.packing and self.max_length is None:
            raise ValueError("`packing=True` needs `max_length` (the block length); got max_length=None.")
        self.pad_to_multiple_of = resolve_pad_to_multiple_of(self.pad_to_multiple_of)
        if isinstance(self.dataset_kwargs, str):
            import json

            self.dataset_kwargs = json.loads(self.dataset_kwargs)
        unknown = set(self.dataset_kwargs or {}) - {"skip_prepare_dataset"}
        if unknown:
            raise ValueError(f"`dataset_kwargs` only accepts 'skip_prepare_dataset'; got unknown keys {sorted(unknown)}.")
        if self.eval_packing is None:
            self.eval_packing = self.packing
        if self.pad_token is not None:
            warnings.warn("`pad_token` is deprecated; set it on the tokenizer instead.", FutureWarning, stacklevel=2)
        super().__post_init__()
