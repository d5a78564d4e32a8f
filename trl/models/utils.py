"""Small model helpers shared by the trainers: the causal LM inside a PEFT wrapper, and turning dropout off."""

from __future__ import annotations

import importlib.util

import torch

from . import loading

__all__ = ["causal_lm", "disable_dropout_in_model", "use_packed_attention"]


def causal_lm(model):
    """The `PreTrainedModel` with the LM head inside a possible PEFT wrapper."""
    return model.get_base_model() if loading.is_peft_model(model) else model


def disable_dropout_in_model(model: torch.nn.Module) -> None:
    """Set every dropout probability in `model` to 0 (preference trainers compare log-probs of two forward passes,
    which dropout would make noisy).

    Example:
        ```python
        >>> disable_dropout_in_model(model)
        ```
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    config = getattr(model, "config", None)
    for name in ("attention_dropout", "hidden_dropout", "dropout"):
        if config is not None and isinstance(getattr(config, name, None), float):
            setattr(config, name, 0.0)


def use_packed_attention(model, mode: str, training_device: torch.device | str) -> str:
    """Set the attention that rows holding several documents (packing, padding-free batches) run with, and return
    the implementation in use.

    Such rows carry `position_ids` that restart at every document and no attention mask; transformers turns that into
    a per-document causal mask. With sdpa or eager the mask is a dense `(T, T)` block-diagonal tensor whose every
    block is computed; flex attention builds a block-sparse mask and skips the blocks across documents; flash
    attention runs varlen kernels. `mode` is `"flex_attention"`, `"model"` (leave it) or `"auto"`: flex attention
    when training on CUDA, the model supports it and it uses sdpa or eager.

    Raises:
        `ValueError`: `"flex_attention"` asked for training on the CPU (flex attention has no backward there), or for
            a model transformers cannot run with it.

    Example:
        ```python
        >>> use_packed_attention(model, "auto", "cpu")
        'sdpa'
        ```
    """
    lm = causal_lm(model)
    current = str(getattr(lm.config, "_attn_implementation", None) or "eager")
    if mode == "model":
        return current
    device_type = torch.device(training_device).type
    supported = bool(getattr(lm, "_supports_flex_attn", False)) and (
        importlib.util.find_spec("torch.nn.attention.flex_attention") is not None
    )
    if mode == "auto":
        if device_type != "cuda" or not supported or current not in ("sdpa", "eager"):
            return current
    elif device_type == "cpu":
        raise ValueError(
            "`packed_attention='flex_attention'` cannot train on the CPU: PyTorch's flex attention has no backward "
            "pass there. Use `packed_attention='model'` (sdpa with a block-diagonal mask) or 'auto'."
        )
    elif not supported:
        raise ValueError(
            f"`packed_attention='flex_attention'`: {type(lm).__name__} does not support flex attention in this "
            "transformers version. Use `packed_attention='model'` or 'auto'."
        )
    if current != "flex_attention":
        lm.set_attn_implementation("flex_attention")
    return "flex_attention"
