"""Deprecated aliases in `trl.experimental` of trainers that became stable: same classes, with a FutureWarning naming
the stable import path when a config or trainer is built."""

from __future__ import annotations

import warnings


def alias(stable_cls: type, old_path: str, new_path: str) -> type:
    """A subclass of `stable_cls` that warns (FutureWarning) on construction, and is otherwise the same class.

    Example:
        ```python
        >>> KTOTrainer = alias(trl.KTOTrainer, "trl.experimental.kto", "trl")
        ```
    """
    name = stable_cls.__name__
    message = (f"`from {old_path} import {name}` is deprecated and will be removed: {name} is stable now. Use "
               f"`from {new_path} import {name}` instead.")
    hook = "__post_init__" if hasattr(stable_cls, "__post_init__") else "__init__"
    parent = getattr(stable_cls, hook)
    stacklevel = 3 if hook == "__post_init__" else 2  # the user's line (a dataclass __init__ calls __post_init__)

    def warned(self, *args, **kwargs):
        warnings.warn(message, FutureWarning, stacklevel=stacklevel)
        return parent(self, *args, **kwargs)

    warned.__doc__ = parent.__doc__
    return type(name, (stable_cls,), {hook: warned, "__module__": old_path,
                                      "__doc__": f"Deprecated alias of `{new_path}.{name}`. {message}"})
