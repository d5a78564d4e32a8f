"""A small lazy module: submodules are imported on first attribute access, so `import trl` stays fast."""

from __future__ import annotations

import importlib
import types
from typing import Any


class _LazyModule(types.ModuleType):
    """Module whose public names are resolved on first access.

    Args:
        name (`str`): the module's `__name__`.
        module_file (`str`): the module's `__file__`.
        import_structure (`dict[str, list[str]]`): submodule (relative to `name`) -> names it defines.
        extra_objects (`dict[str, Any]`, *optional*): names that are already resolved (e.g. `__version__`).

    Example:
        ```python
        sys.modules[__name__] = _LazyModule(__name__, __file__, {"trainer": ["SFTTrainer"]})
        ```
    """

    def __init__(self, name: str, module_file: str, import_structure: dict[str, list[str]], extra_objects=None):
        super().__init__(name)
        self.__file__ = module_file
        self.__path__ = [module_file.rsplit("/", 1)[0]]
        self._name_to_module = {n: mod for mod, names in import_structure.items() for n in names}
        self._submodules = set(import_structure)
        self.__all__ = sorted(set(self._name_to_module) | self._submodules)
        for key, value in (extra_objects or {}).items():
            setattr(self, key, value)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self.__all__))

    def __getattr__(self, name: str) -> Any:
        if name in self._name_to_module:
            module = importlib.import_module(f".{self._name_to_module[name]}", self.__name__)
            value = getattr(module, name)
        elif name in self._submodules:
            value = importlib.import_module(f".{name}", self.__name__)
        else:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        setattr(self, name, value)
        return value
