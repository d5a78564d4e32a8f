"""Small helpers shared by trainers."""

from __future__ import annotations

import torch


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
