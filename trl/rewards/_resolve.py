"""Reward functions given by name: a function of `trl.rewards`, a dotted path `module.function`, or a reward model.

The trainers (`reward_funcs="think_format_reward"`) and the `trl grpo`/`trl rloo` commands (`--reward_funcs`) resolve
strings here, the same way. Only the standard library is imported at module level.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._dotted import import_dotted

__all__ = [
    "CLI_FACTORY_DEFAULTS",
    "accepted_forms",
    "builtin_reward_names",
    "resolve_reward_func",
    "resolve_reward_funcs",
]

logger = logging.getLogger(__name__)

# Factories that `--reward_funcs` accepts by name, built with the parameters the reference library's `trl grpo` uses
# (its script registers `get_soft_overlong_punishment(max_completion_len=1280, soft_punish_cache=256)`), so command
# lines written for it keep working. Other parameters: a module function, see `_factory_error`.
CLI_FACTORY_DEFAULTS: dict[str, dict[str, Any]] = {
    "get_soft_overlong_punishment": {"max_completion_len": 1280, "soft_punish_cache": 256},
}

# `org/name` as the Hub spells a repository id; anything else that is not a folder here cannot be a model either
_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*/[A-Za-z0-9_][\w.-]*")


def builtin_reward_names() -> tuple[list[str], list[str]]:
    """The plain reward functions of `trl.rewards`, and its factories (`get_*`, which build a reward function).

    Example:
        ```python
        >>> functions, factories = builtin_reward_names()
        >>> "think_format_reward" in functions, "get_soft_overlong_punishment" in factories
        (True, True)
        ```
    """
    from trl import rewards

    functions = [name for name in rewards.__all__ if not name.startswith("get_")]
    factories = [name for name in rewards.__all__ if name.startswith("get_")]
    return functions, factories


def accepted_forms() -> str:
    """One sentence listing what a reward function given as a string may be (for error messages)."""
    functions, _ = builtin_reward_names()
    return (
        f"A reward function given as a string is the name of a function of trl.rewards ({', '.join(functions)}); a "
        "dotted path `module.function` to your own reward function (e.g. `my_rewards.my_reward` for a my_rewards.py "
        "in the current directory); or a Hub id (`org/name`) or local folder of a sequence-classification reward "
        "model."
    )


def _factory_error(name: str, where: str) -> ValueError:
    return ValueError(
        f"Reward function {name!r} ({where}) is a factory that builds a reward function from parameters, not a reward function. Wrap it "
        f"in a module function: e.g. put `my_reward = {name.rsplit('.', 1)[-1]}(...)` (with your parameters) in "
        "my_rewards.py in the current directory and give `my_rewards.my_reward` as the reward function (or, in Python, "
        "pass the function it returns)."
    )


def _import_reward_func(path: str, where: str) -> Callable:
    """Import `package.module.function`, with the current directory importable (as for `python my_script.py`)."""
    from trl import rewards

    func = import_dotted(path, f"Reward function {path!r} ({where})", accepted_forms())
    _, factories = builtin_reward_names()
    if any(func is getattr(rewards, name) for name in factories):
        raise _factory_error(path, where)
    if not callable(func):
        raise TypeError(f"Reward function {path!r} ({where}) is a {type(func).__name__}, not a function.")
    return func


def resolve_reward_func(name: str, where: str = "reward_funcs") -> Callable | str:
    """Resolve one reward function given as a string, without touching the network.

    In this order, `name` is:
    - the name of a plain reward function of `trl.rewards` (its factories, `get_*`, need parameters and are rejected);
    - an existing local folder: kept as a string (a reward model, loaded by the trainer);
    - a dotted path `package.module.function`, imported with the current directory on `sys.path`;
    - a Hub id `org/name`: kept as a string (a reward model, loaded by the trainer).
    Anything else (a typo, a path to no folder, a bare name) is an error at once, listing the built-in names.

    Args:
        name (`str`): the string to resolve.
        where (`str`, *optional*, defaults to `"reward_funcs"`): how to call it in error messages, e.g.
            `"reward_funcs[1]"`.

    Returns:
        `Callable` or `str`: the reward function, or the model id/folder, unchanged.

    Raises:
        `ValueError`: an unknown name, a factory, a path to no folder, or a dotted path whose module or function does
            not exist.
        `TypeError`: a dotted path that names something that is not callable.

    Example:
        ```python
        >>> resolve_reward_func("think_format_reward")
        <function think_format_reward at ...>
        >>> resolve_reward_func("org/reward-model")
        'org/reward-model'
        ```
    """
    from trl import rewards

    functions, factories = builtin_reward_names()
    if name in functions:
        return getattr(rewards, name)
    if name in factories:
        raise _factory_error(name, where)
    if Path(name).expanduser().is_dir():
        return name
    if "." in name and all(part.isidentifier() for part in name.split(".")):
        return _import_reward_func(name, where)
    if _HUB_ID.fullmatch(name) and ".." not in name:
        return name
    if "/" in name or os.sep in name or name.startswith(("~", ".")):
        problem = f"is not a folder: nothing exists at {os.path.abspath(os.path.expanduser(name))}, and it is not a Hub id"
    else:
        problem = "is not a known reward function"
    raise ValueError(f"Unknown reward function {name!r} ({where}): it {problem}. {accepted_forms()}")


def resolve_reward_funcs(names: list[str] | None, reward_model_name_or_path: str | None = None) -> list[Any]:
    """Resolve the reward strings of `trl grpo`/`trl rloo` (`--reward_funcs`) into the trainer's `reward_funcs`, with
    [`resolve_reward_func`].

    As in the reference library's command line, the factory `get_soft_overlong_punishment` is also accepted by name
    and built with its parameters there: `max_completion_len=1280, soft_punish_cache=256` (see
    `CLI_FACTORY_DEFAULTS`). For other parameters, give a dotted path to your own module function.

    Args:
        names (`list[str]`, *optional*): the reward function strings.
        reward_model_name_or_path (`str`, *optional*): a reward model, put first.

    Returns:
        `list`: callables and model ids/paths, in order.

    Raises:
        As [`resolve_reward_func`].

    Example:
        ```python
        >>> resolve_reward_funcs(["think_format_reward", "org/reward-model"])
        [<function think_format_reward at ...>, 'org/reward-model']
        ```
    """
    resolved: list[Any] = [reward_model_name_or_path] if reward_model_name_or_path else []
    for name in names or []:
        if name in CLI_FACTORY_DEFAULTS:
            from trl import rewards

            params = CLI_FACTORY_DEFAULTS[name]
            logger.info("--reward_funcs %s: built with %s (the reference's command-line parameters).", name, params)
            resolved.append(getattr(rewards, name)(**params))
        else:
            resolved.append(resolve_reward_func(name, "reward_funcs"))
    return resolved
