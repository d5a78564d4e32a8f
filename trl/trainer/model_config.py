"""Model-loading options shared by the `trl` training commands: dtype, attention, LoRA and bitsandbytes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig


DTYPES = ("auto", "bfloat16", "float16", "float32")
BNB_4BIT_QUANT_TYPES = ("fp4", "nf4")


@dataclass
class ModelConfig:
    r"""
    Which model to load and how: precision, attention, LoRA adapters and bitsandbytes quantization. Every field is also
    a `trl <command>` command-line flag.

    Parameters:
        > Model

        model_name_or_path (`str`, *optional*):
            Hub id or local folder of the model to train.
        model_revision (`str`, *optional*, defaults to `"main"`):
            Branch, tag or commit of the model on the Hub.
        dtype (`str`, *optional*, defaults to `"float32"`):
            Dtype the weights are loaded in: `"auto"` (the checkpoint's dtype), `"bfloat16"`, `"float16"` or
            `"float32"`.
        attn_implementation (`str`, *optional*):
            Attention implementation, e.g. `"sdpa"`, `"eager"`, `"flash_attention_2"` or a Hub kernel id. `None` lets
            transformers choose.

        > LoRA (PEFT)

        use_peft (`bool`, *optional*, defaults to `False`):
            Train LoRA adapters instead of the full model.
        lora_r (`int`, *optional*, defaults to `16`):
            LoRA rank.
        lora_alpha (`int`, *optional*, defaults to `32`):
            LoRA scaling numerator (the update is scaled by `lora_alpha / lora_r`, or `/ sqrt(lora_r)` with rsLoRA).
        lora_dropout (`float`, *optional*, defaults to `0.05`):
            Dropout on the LoRA input.
        lora_target_modules (`list[str]` or `str`, *optional*):
            Modules that get adapters: a list of module names, `"all-linear"`, or a single string that PEFT reads as a
            regular expression over full module names. `None` uses PEFT's per-architecture defaults.
        lora_target_parameters (`list[str]`, *optional*):
            Parameters (not modules) that get adapters, e.g. the fused expert weights of MoE layers.
        lora_modules_to_save (`list[str]`, *optional*):
            Modules trained in full and saved with the adapter, e.g. `["embed_tokens"]` after adding tokens.
        lora_task_type (`str`, *optional*, defaults to `"CAUSAL_LM"`):
            PEFT task type; use `"SEQ_CLS"` for reward models.
        use_rslora (`bool`, *optional*, defaults to `False`):
            Rank-stabilised LoRA (https://huggingface.co/papers/2312.03732): scale by `lora_alpha / sqrt(lora_r)`.
        use_dora (`bool`, *optional*, defaults to `False`):
            Weight-Decomposed LoRA (https://huggingface.co/papers/2402.09353).

        > Quantization (bitsandbytes)

        load_in_8bit (`bool`, *optional*, defaults to `False`):
            Load the base model in 8-bit. Exclusive with `load_in_4bit`.
        load_in_4bit (`bool`, *optional*, defaults to `False`):
            Load the base model in 4-bit (QLoRA). Exclusive with `load_in_8bit`.
        bnb_4bit_quant_type (`str`, *optional*, defaults to `"nf4"`):
            4-bit data type: `"nf4"` or `"fp4"`.
        use_bnb_nested_quant (`bool`, *optional*, defaults to `False`):
            Quantize the quantization constants too (double quantization).
        bnb_4bit_quant_storage (`str`, *optional*):
            Dtype that stores the packed 4-bit weights, e.g. `"bfloat16"` (needed for FSDP). `None`: `uint8`.

    Example:
        ```python
        >>> from trl import ModelConfig, get_peft_config
        >>> model_args = ModelConfig("Qwen/Qwen3-0.6B", use_peft=True, lora_target_modules="all-linear")
        >>> get_peft_config(model_args).r
        16
        ```
    """

    # Model
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub id or local folder of the model to train."}
    )
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the model on the Hub."})
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(
        default="float32", metadata={"help": "Dtype the weights are loaded in ('auto': the checkpoint's dtype)."}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention implementation, e.g. sdpa, eager, flash_attention_2."}
    )

    # LoRA (PEFT)
    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of the full model."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scaling numerator)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Modules that get adapters: names, 'all-linear', or one regex. Default: PEFT's defaults."},
    )
    lora_target_parameters: list[str] | None = field(
        default=None, metadata={"help": "Parameters (not modules) that get adapters, e.g. MoE expert weights."}
    )
    lora_modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained in full and saved with the adapter."}
    )
    lora_task_type: str = field(
        default="CAUSAL_LM", metadata={"help": "PEFT task type (CAUSAL_LM; SEQ_CLS for reward models)."}
    )
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised LoRA: scale by alpha / sqrt(r)."})
    use_dora: bool = field(default=False, metadata={"help": "Weight-Decomposed LoRA (DoRA)."})

    # Quantization (bitsandbytes)
    load_in_8bit: bool = field(default=False, metadata={"help": "Load the base model in 8-bit."})
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the base model in 4-bit (QLoRA)."})
    bnb_4bit_quant_type: Literal["fp4", "nf4"] = field(default="nf4", metadata={"help": "4-bit data type."})
    use_bnb_nested_quant: bool = field(default=False, metadata={"help": "Double quantization (4-bit)."})
    bnb_4bit_quant_storage: str | None = field(
        default=None, metadata={"help": "Storage dtype of packed 4-bit weights (e.g. bfloat16 for FSDP)."}
    )

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"`dtype` must be one of {DTYPES}; got {self.dtype!r}.")
        if self.bnb_4bit_quant_type not in BNB_4BIT_QUANT_TYPES:
            raise ValueError(
                f"`bnb_4bit_quant_type` must be one of {BNB_4BIT_QUANT_TYPES}; got {self.bnb_4bit_quant_type!r}."
            )
        if self.load_in_8bit and self.load_in_4bit:
            raise ValueError("`load_in_8bit` and `load_in_4bit` are mutually exclusive; set at most one of them.")
        # The command line always yields a list; PEFT only recognises the "all-linear" shorthand as a plain string.
        if isinstance(self.lora_target_modules, list) and len(self.lora_target_modules) == 1:
            if self.lora_target_modules[0].lower() == "all-linear":
                self.lora_target_modules = "all-linear"
        for name in ("lora_target_parameters", "lora_modules_to_save"):
            if isinstance(getattr(self, name), str):
                setattr(self, name, [getattr(self, name)])
        if self.lora_r <= 0:
            raise ValueError(f"`lora_r` must be a positive integer; got {self.lora_r}.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"`lora_dropout` must be in [0, 1); got {self.lora_dropout}.")


def get_peft_config(model_args: ModelConfig) -> LoraConfig | None:
    """Build the `peft.LoraConfig` that `model_args` describes, or `None` when `use_peft` is off.

    Args:
        model_args ([`ModelConfig`]): the model options.

    Returns:
        `peft.LoraConfig` or `None`: a LoRA config with `bias="none"`.

    Raises:
        ImportError: `use_peft` is on but peft is not installed.

    Example:
        ```python
        >>> config = get_peft_config(ModelConfig(use_peft=True, lora_r=8, lora_target_modules=["q_proj", "v_proj"]))
        >>> config.r, config.lora_alpha, sorted(config.target_modules)
        (8, 32, ['q_proj', 'v_proj'])
        ```
    """
    if not model_args.use_peft:
        return None
    try:
        from peft import LoraConfig
    except ImportError:
        raise ImportError("`use_peft=True` needs the peft package: `pip install peft`.") from None

    kwargs: dict[str, Any] = {}
    if model_args.lora_target_parameters is not None:  # only newer peft versions know this argument
        kwargs["target_parameters"] = model_args.lora_target_parameters
    return LoraConfig(
        task_type=model_args.lora_task_type,
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
        modules_to_save=model_args.lora_modules_to_save,
        bias="none",
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
        **kwargs,
    )


def get_quantization_config(model_args: ModelConfig) -> BitsAndBytesConfig | None:
    """Build the `transformers.BitsAndBytesConfig` that `model_args` describes, or `None` without quantization.

    4-bit computes in `model_args.dtype` (`"auto"` leaves bitsandbytes' default, float32) with the chosen quant type,
    optional double quantization and storage dtype; 8-bit is plain `load_in_8bit=True`.

    Args:
        model_args ([`ModelConfig`]): the model options.

    Returns:
        `transformers.BitsAndBytesConfig` or `None`.

    Example:
        ```python
        >>> get_quantization_config(ModelConfig()) is None
        True
        >>> get_quantization_config(ModelConfig(load_in_4bit=True, dtype="bfloat16")).bnb_4bit_quant_type
        'nf4'
        ```
    """
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return None
    from transformers import BitsAndBytesConfig

    if model_args.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute_dtype = None if model_args.dtype == "auto" else model_args.dtype
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=model_args.use_bnb_nested_quant,
        bnb_4bit_quant_storage=model_args.bnb_4bit_quant_storage,
    )


def get_kbit_device_map() -> dict[str, int] | None:
    """Device map that puts a quantized model whole on this process's accelerator, or `None` without one.

    bitsandbytes weights cannot be moved after loading, so each process loads its copy straight onto its own device.

    Example:
        ```python
        >>> model_init_kwargs = {"quantization_config": quantization_config, "device_map": get_kbit_device_map()}
        ```
    """
    import torch

    if not (torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())):
        return None
    from accelerate import PartialState

    return {"": PartialState().local_process_index}
