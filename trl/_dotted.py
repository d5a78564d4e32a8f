"""Importing what a user names by a dotted path `module.attribute` (`--reward_funcs`, `--tools`,
`--environment_factory`), with the current directory importable as for `python my_script.py`."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any


def import_dotted(path: str, what: str, hint: str = "") -> Any:
    """The attribute `path` names (`my_tools.multiply` is `multiply` from my_tools.py in the current directory or an
    installed package).

    Args:
        path (`str`): `module.attribute` (the module may be dotted too).
        what (`str`): how messages name it, e.g. `"--tools[1] is 'my_tools.nope'"`.
        hint (`str`, *optional*): appended to the messages (the accepted forms).

    Raises:
        `ValueError`: the module or the attribute does not exist (a module that exists but fails on one of its own
            imports raises that `ModuleNotFoundError` itself).

    Example:
        ```python
        >>> import_dotted("math.floor", "--tools[0] is 'math.floor'")
        <built-in function floor>
        ```
    """
    module_name, attribute = path.rsplit(".", 1)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if not (module_name == missing or module_name.startswith(missing + ".")):
            raise  # the module was found, but one of its own imports is missing
        raise ValueError(f"{what}: there is no module {module_name!r} in the current directory ({cwd}) or the "
                         f"installed packages.{' ' + hint if hint else ''}") from None
    if not hasattr(module, attribute):
        raise ValueError(f"{what}: module {module_name!r} ({getattr(module, '__file__', '?')}) has no {attribute!r}."
                         f"{' ' + hint if hint else ''}")
    return getattr(module, attribute)
