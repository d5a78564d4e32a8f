"""Small model helpers shared by the trainers: the causal LM inside a PEFT wrapper, and turning dropout off."""

from __future__ import annotations

import torch

from . import loading

__all__ = ["causal_lm", "disable_dropout_in_model"]


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
