"""The bundled tiny default: a small byte-level BPE tokenizer with a ChatML template and tiny model configs.

Everything loads from package data, offline. Used by the demo, the tests and the benchmarks.
"""

from __future__ import annotations

import json
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
TINY_ARCHITECTURES = ("qwen3", "qwen2", "llama")


def tiny_tokenizer():
    """Load the bundled tokenizer (byte-level BPE, ChatML template, eos `<|im_end|>`, pad `<|pad|>`).

    Example:
        ```python
        >>> from trl.models.tiny import tiny_tokenizer
        >>> tokenizer = tiny_tokenizer()
        >>> tokenizer.eos_token, tokenizer.pad_token
        ('<|im_end|>', '<|pad|>')
        ```
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ASSETS_DIR / "tokenizer"))


def tiny_config(arch: str = "qwen3", **overrides):
    """The bundled `PretrainedConfig` of a tiny model (4 layers, hidden 256, ~3M parameters).

    Args:
        arch (`str`, *optional*, defaults to `"qwen3"`): one of `"qwen3"`, `"qwen2"`, `"llama"`.
        **overrides: config fields to change, e.g. `num_hidden_layers=2`.
    """
    from transformers import AutoConfig

    if arch not in TINY_ARCHITECTURES:
        raise ValueError(f"Unknown tiny architecture {arch!r}; expected one of {TINY_ARCHITECTURES}.")
    values = json.loads((ASSETS_DIR / "model_configs" / f"{arch}.json").read_text())
    values.update(overrides)
    model_type = values.pop("model_type")
    return AutoConfig.for_model(model_type, **values)


def tiny_model(arch: str = "qwen3", seed: int = 0, **overrides):
    """Build a tiny causal LM with random weights from the bundled config.

    Args:
        arch (`str`, *optional*, defaults to `"qwen3"`): one of `"qwen3"`, `"qwen2"`, `"llama"`.
        seed (`int`, *optional*, defaults to `0`): seed for the random initialisation.
        **overrides: config fields to change.

    Example:
        ```python
        >>> from trl.models.tiny import tiny_model
        >>> model = tiny_model("qwen3", num_hidden_layers=2)
        >>> model.config.num_hidden_layers
        2
        ```
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, **overrides)
    devices = []  # fork_rng needs no CUDA devices: the weights are created on the CPU
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model


def save_tiny_model(path: str | Path, arch: str = "qwen3", seed: int = 0, **overrides) -> Path:
    """Write a tiny model and the bundled tokenizer to `path`, so that it loads like any local checkpoint.

    Example:
        ```python
        >>> path = save_tiny_model("tiny-qwen3")
        >>> SFTTrainer(model=str(path), train_dataset=dataset)
        ```
    """
    path = Path(path)
    tiny_model(arch, seed, **overrides).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
