"""Defaults shared by every trainer config."""

from __future__ import annotations

import json
import numbers
import os
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from ..guards import GUARDS as _GUARD_NAMES
from ..guards import check_guard_names


def bf16_supported() -> bool:
    """Whether this machine can train in bf16 (a CUDA device with bf16 support)."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _launched_without_accelerator() -> bool:
    import os

    import torch

    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    return several and not accelerator


def resolve_pad_to_multiple_of(value) -> int | None:
    """`"auto"` (or None) -> None; otherwise a positive int, with a clear error for anything else."""
    if value is None or value == "auto":
        return None
    try:
        value = int(value)
    except ValueError:
        raise ValueError(f"`pad_to_multiple_of` must be a positive integer or 'auto'; got {value!r}.") from None
    if value <= 0:
        raise ValueError(f"`pad_to_multiple_of` must be positive; got {value}.")
    return value


def dict_field(value, name: str) -> dict | None:
    """A config field that takes a dict, or a JSON object string from the command line or YAML: the dict (None stays
    None).

    Raises:
        `ValueError`: a string that is not JSON. `TypeError`: a value (or parsed JSON) that is not a dict.

    Example:
        ```python
        >>> dict_field('{"dtype": "bfloat16"}', "model_init_kwargs")
        {'dtype': 'bfloat16'}
        ```
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"`{name}` must be a dict or a JSON object string; got {value!r} ({error}).") from None
    if value is not None and not isinstance(value, dict):
        raise TypeError(f"`{name}` must be a dict; got {type(value).__name__} ({value!r}).")
    return value


def check_reference_fields(config) -> None:
    """Cross-field checks of the reference-model options shared by DPO and KTO configs."""
    if config.precompute_ref_batch_size is not None and config.precompute_ref_batch_size <= 0:
        raise ValueError(f"`precompute_ref_batch_size` must be positive; got {config.precompute_ref_batch_size}.")
    if config.sync_ref_model and config.precompute_ref_log_probs:
        raise ValueError(
            "`sync_ref_model=True` updates the reference during training, so its log-probs cannot be precomputed; "
            "turn off one of `sync_ref_model` and `precompute_ref_log_probs`."
        )
    if not 0.0 <= config.ref_model_mixup_alpha <= 1.0:
        raise ValueError(f"`ref_model_mixup_alpha` must be in [0, 1]; got {config.ref_model_mixup_alpha}.")
    if config.ref_model_sync_steps <= 0:
        raise ValueError(f"`ref_model_sync_steps` must be positive; got {config.ref_model_sync_steps}.")


def _check_run_does_something(config) -> None:
    """Values that make `train()` do nothing, or fail at its first step, named at construction."""
    for name in ("seed", "data_seed", "max_steps", "gradient_accumulation_steps", "per_device_train_batch_size",
                 "per_device_eval_batch_size"):
        value = getattr(config, name, None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            raise TypeError(f"`{name}` must be an integer; got {type(value).__name__} {value!r} (e.g. `{name}=42`, "
                            "not a string).")
    for name in ("gradient_accumulation_steps", "per_device_train_batch_size", "per_device_eval_batch_size"):
        if getattr(config, name) < 1:
            raise ValueError(f"`{name}` must be a positive integer; got {getattr(config, name)}.")
    if isinstance(config.learning_rate, bool) or not isinstance(config.learning_rate, numbers.Real):
        raise TypeError(f"`learning_rate` must be a number; got {type(config.learning_rate).__name__} "
                        f"{config.learning_rate!r}.")
    if not config.learning_rate > 0:
        raise ValueError(f"`learning_rate` must be positive; got {config.learning_rate}: the weights would "
                         + ("never move." if config.learning_rate == 0 else "move up the loss.")
                         + " Typical values are 1e-6 to 1e-4 for full fine-tuning, 1e-4 to 1e-3 with LoRA.")
    if config.max_steps == 0:
        raise ValueError("`max_steps=0` trains for no step. Set a positive `max_steps`, or -1 (the default) to train "
                         "for `num_train_epochs`.")
    if config.max_steps < 0 and not config.num_train_epochs > 0:
        raise ValueError(f"`num_train_epochs={config.num_train_epochs}` with no `max_steps` trains for no step. Set a "
                         "positive `num_train_epochs` (or `max_steps`).")
    if config.fp16 and (config.use_cpu or not _fp16_device_available()):
        raise ValueError(
            "`fp16=True` needs a GPU (CUDA, XPU, NPU or MPS); this run is on the CPU, where it would silently train "
            "in float32. Leave `fp16` off to train in float32, or set `bf16=True, use_cpu=True` for bfloat16 on the "
            "CPU."
        )


_LIGER_LOSS_KERNELS = ("fused_linear_cross_entropy", "cross_entropy")


def liger_kernel_config(config) -> dict:
    """The `liger_kernel_config` our trainers pass to transformers' Liger integration (`use_liger_kernel=True`).

    Liger's normalisation, rotary and SwiGLU kernels are applied as configured. Its loss kernels are turned off:
    its fused linear cross-entropy replaces the model's `forward`, which would undo the fused LM head every trainer
    calls through `forward` (docs/design.md §2), and that head already computes log-probs and losses chunk by chunk
    without `(B, T, V)` logits, as Liger's kernel does. Asking for either loss kernel explicitly gets a warning.

    Raises:
        `ImportError`: liger-kernel is not installed (with the install command).
        `ValueError`: the run is on the CPU: Liger's kernels are Triton GPU kernels.
    """
    from ..import_utils import require

    require("liger_kernel", "`use_liger_kernel=True`")
    if config.use_cpu or not _triton_device_available():
        raise ValueError("`use_liger_kernel=True` needs a CUDA, ROCm or XPU GPU: Liger's kernels are Triton GPU "
                         "kernels, and this run has none (CPU or MPS). Leave `use_liger_kernel` off here.")
    kernels = dict_field(config.liger_kernel_config, "liger_kernel_config") or {}
    asked = [name for name in _LIGER_LOSS_KERNELS if kernels.get(name)]
    if asked:
        import warnings

        warnings.warn(f"`liger_kernel_config` asks for {', '.join(asked)}: turned off. Liger's loss kernels replace "
                      "the model's forward, through which every trainer calls its fused LM head, and that head is "
                      "already a chunked linear + cross-entropy without (B, T, V) logits.", stacklevel=3)
    return {**kernels, **dict.fromkeys(_LIGER_LOSS_KERNELS, False)}


def _triton_device_available() -> bool:
    """A GPU that Triton compiles for: CUDA (ROCm builds report through `torch.cuda` too) or Intel XPU."""
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def _fp16_device_available() -> bool:
    import torch

    if hasattr(torch, "accelerator"):  # torch>=2.6: CUDA, XPU, MPS, HPU, MTIA and out-of-tree devices alike
        return torch.accelerator.is_available()
    return torch.cuda.is_available() or torch.backends.mps.is_available()


@dataclass
class _BaseConfig(TrainingArguments):
    r"""
    Defaults that differ from `transformers.TrainingArguments` and are shared by all trainers.

    Parameters:
        logging_steps (`float`, *optional*, defaults to `10`):
            Log every X updates steps.
        gradient_checkpointing (`bool`, *optional*, defaults to `True`):
            Trade compute for memory by recomputing activations in the backward pass.
        logging_nan_inf_filter (`bool`, *optional*, defaults to `True`):
            As in the reference: NaN/inf losses are left out of the logged running loss. The NaN guard reads every
            step's raw loss, so a diverged run is still stopped (or warned about with `guards=False`).
        bf16 (`bool`, *optional*):
            Train in bf16 mixed precision. `None` means: on where the hardware supports it (a CUDA device with bf16),
            off otherwise, so that the defaults also run on a CPU-only machine. `fp16=True` turns it off.
        model_init_kwargs (`dict[str, Any]` or `str`, *optional*):
            Keyword arguments for `from_pretrained` when `model` is a string (a dict or a JSON string).
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow custom modelling code from the Hub, for the model and the processing class.
        router_aux_loss_coef (`float`, *optional*):
            Weight of the MoE load-balancing loss. `None` uses the model config's value; `0.0` disables it.
        run_report (`bool`, *optional*, defaults to `True`):
            Beyond the reference: at each save and at the end of training, write `output_dir/report/` (the log
            history as JSON, plots of the key metrics when matplotlib is installed, sampled completions of online
            trainers as HTML) and print a short end-of-run summary (`trl.trainer.callbacks.ReportCallback`). The
            default can be set with the `TRL_RUN_REPORT` environment variable (`0` turns it off).
        pad_to_multiple_of (`int` or `"auto"`, *optional*, defaults to `"auto"`):
            Pad each batch to a multiple of this. `"auto"` means no extra padding.
        packed_attention (`str`, *optional*, defaults to `"auto"`):
            Attention of rows that hold several documents (packing, `padding_free`): `"flex_attention"` runs it as
            document-masked flex attention (a block-sparse mask built from `position_ids`: blocks across documents are
            skipped); `"model"` keeps the model's own implementation (sdpa/eager then build a dense block-diagonal
            `(T, T)` mask; flash attention runs varlen kernels); `"auto"` picks flex attention on CUDA for a model that
            supports it and uses sdpa or eager, the model's own otherwise (flex attention has no backward on CPU).
            Read by SFT (packing, `padding_free`) and DPO (`padding_free`), the trainers that put several documents
            in a row; the others never do. Not a switch of the reference library.
        guards (`bool`, *optional*, defaults to `True`):
            Stop, with an explanation, a run that would learn nothing (each trainer's checks are in `trl/guards.py`:
            empty loss masks, an end-of-turn token never trained, pairs with identical sides, a NaN/inf loss, no
            gradient signal in online batches, ...). Set to `False` to only warn.
        ignore_guards (`list[str]`, *optional*, defaults to `[]`):
            Guards (`trl.guards`) that only warn instead of stopping the run, by name; `guards=False` turns all of
            them into warnings. The names: `loss_masks`, `truncation`, `eos_trained` (SFT data), `identical_pairs`
            (DPO / reward pairs), `prompts_fit` (DPO / KTO prompts that fill `max_length`), `finite_loss`,
            `gradient_flows`, `optimizer_memory` (every trainer), `no_reward`, `no_signal`, `step_loss_tokens`
            (online trainers). See `trl.guards.GUARDS`.
    """

    logging_steps: float = field(default=10, metadata={"help": "Log every X updates steps."})
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Recompute activations in the backward pass to save memory (default: on). On transformers>=5.20 "
            "this is an alias of `activation_checkpointing`.",
            "nargs": "?",
            "const": True,
        },
    )
    logging_nan_inf_filter: bool = field(
        default=True,
        metadata={"help": "Leave NaN/inf losses out of the logged loss (the NaN guard still reads every step's loss)."},
    )
    bf16: bool | None = field(
        default=None,
        metadata={"nargs": "?", "const": True, "help": "bf16 mixed precision. Default: on where the hardware supports it (CUDA with bf16)."},
    )
    lr_scheduler_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Extra arguments for the learning-rate scheduler (dict or JSON string)."}
    )
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments for `from_pretrained` when `model` is a string (dict or JSON string)."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom modelling code for the model and processing class."}
    )
    router_aux_loss_coef: float | None = field(
        default=None,
        metadata={"help": "MoE load-balancing loss weight. None: the model config's value; 0.0 disables it."},
    )
    run_report: bool = field(
        default_factory=lambda: os.environ.get("TRL_RUN_REPORT", "1") != "0",
        metadata={"help": "Write output_dir/report/ (log history, plots, sampled completions) at each save and at the "
                          "end, and print an end-of-run summary. Default from TRL_RUN_REPORT (0: off)."},
    )
    pad_to_multiple_of: int | str | None = field(
        default="auto", metadata={"help": "Pad each batch to a multiple of this; 'auto' means no extra padding."}
    )
    packed_attention: str = field(
        default="auto",
        metadata={"help": "Attention of packed / padding-free rows: 'auto' (flex attention on CUDA when supported), "
                          "'flex_attention' or 'model' (the model's own; sdpa builds a dense block-diagonal mask)."},
    )
    guards: bool = field(default=True, metadata={"help": "Stop runs that would learn nothing (set False to only warn)."})
    ignore_guards: list[str] = field(
        default_factory=list,
        metadata={"help": "Guards that only warn instead of stopping the run (guards=False: all of them): "
                          + ", ".join(_GUARD_NAMES) + "."},
    )

    def __post_init__(self):
        _check_run_does_something(self)
        if isinstance(self.ignore_guards, str):  # one name, or a comma-separated list (YAML / environment)
            self.ignore_guards = [name.strip() for name in self.ignore_guards.split(",") if name.strip()]
        self.ignore_guards = list(self.ignore_guards or [])
        check_guard_names(self.ignore_guards)
        # Activation checkpointing is on by default. transformers>=5.20 renamed the field `activation_checkpointing` and
        # warns on the old one, which is still the TRL name: the value goes to whichever name this transformers reads.
        if hasattr(self, "activation_checkpointing"):
            if self.activation_checkpointing is None:
                self.activation_checkpointing = True if self.gradient_checkpointing is None else self.gradient_checkpointing
                self.gradient_checkpointing = None
        elif self.gradient_checkpointing is None:
            self.gradient_checkpointing = True
        if not self.use_cpu and _launched_without_accelerator():
            # Under torchrun/accelerate on a machine without an accelerator, accelerate only forms the process group
            # (gloo) when told to use the CPU; otherwise every process would silently train alone.
            self.use_cpu = True
        if self.bf16 is None:
            self.bf16 = not self.fp16 and not self.use_cpu and bf16_supported()
        self.model_init_kwargs = dict_field(self.model_init_kwargs, "model_init_kwargs")
        if self.packed_attention not in ("auto", "flex_attention", "model"):
            raise ValueError(
                f"`packed_attention` must be 'auto', 'flex_attention' or 'model'; got {self.packed_attention!r}."
            )
        if self.router_aux_loss_coef is not None and self.router_aux_loss_coef < 0:
            raise ValueError(f"`router_aux_loss_coef` must be >= 0; got {self.router_aux_loss_coef}.")
        if self.use_liger_kernel:
            self.liger_kernel_config = liger_kernel_config(self)
        super().__post_init__()
