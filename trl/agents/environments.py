"""Environments for agent training: one instance per rollout, its public methods as tools, its reward.

An `environment_factory` is a class (or any zero-argument callable returning a new instance), or a dict
`{name: factory}` whose entries each dataset row picks by its `environment` column. An environment has:

- `reset(**row)`, called with the row's columns (all but the `environment` control column) before each rollout. It
  returns `None`, or a string (or list of strings / content parts) that [`append_to_prompt`] appends to the last user
  message of the prompt (to the end of a text prompt);
- tools: every public method other than `reset` and `get_reward`, each with a type hint on every argument and a
  Google-style docstring, as for standalone tools (`trl.agents.tools`). A rollout calls the methods of its own
  instance, one call at a time;
- optionally `get_reward()` (sync or async): the reward of the finished rollout. [`EnvironmentPool.reward_funcs`]
  turns it into a reward function named after the class, for `trl.rewards.scoring.RewardScorer` (weight 1).

[`EnvironmentPool`] builds one instance of each factory at construction (so a factory that cannot be built, or a
method that cannot be a tool, is an error then, not mid-run) and reuses idle instances: a rollout's instance returns
to the pool when the rollout is done and is `reset` before its next use. What an instance keeps between rollouts
beyond what `reset` clears is the user's.
"""

from __future__ import annotations

import asyncio
import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .tools import Toolbox, gather_sync

__all__ = ["ENVIRONMENT_COLUMN", "EnvironmentPool", "Episode", "append_to_prompt"]

# The dataset column that routes a row to an entry of a dict of factories; never passed to `reset`.
ENVIRONMENT_COLUMN = "environment"
_NOT_TOOLS = ("reset", "get_reward")


@dataclass
class Episode:
    """One rollout's environment, handed out by [`EnvironmentPool.acquire`].

    Args:
        environment (`Any`): the instance, already `reset` for this rollout.
        name (`str`): which factory built it: the key of a dict of factories, or the class name.
        observation (`str`, `list` or `None`): what `reset` returned; see [`append_to_prompt`].
        toolbox ([`~trl.agents.tools.Toolbox`]): what the rollout may call: the standalone tools, then the instance's
            methods. `toolbox.schemas` goes to the chat template.

    Example:
        ```python
        >>> (episode,) = pool.acquire([{"environment": "game", "prompt": "Play.", "level": 2}])
        >>> episode.name, episode.observation, episode.toolbox.names
        ('game', ' Level 2.', ['move'])
        ```
    """

    environment: Any
    name: str
    observation: str | list | None
    toolbox: Toolbox


@dataclass
class _Kind:
    """One factory and what was learnt from its first instance."""

    factory: Callable[[], Any]
    what: str  # how errors name it: environment_factory or environment_factory['game']
    cls: type
    prototype: Any  # the first instance (its signatures are checked)
    toolbox: Toolbox  # standalone tools + the methods, bound to the first instance
    idle: list


class EnvironmentPool:
    """Hands out one environment instance per rollout, reusing idle ones.

    Args:
        environment_factory (`type`, `Callable[[], Any]` or `dict[str, ...]`): builds a new environment with no
            arguments; a dict routes each row by its `environment` column.
        tools (`list[Callable]`, *optional*): standalone tools every rollout may call besides its environment's.

    Attributes:
        names (`list[str]`): the dict's keys, or the class name of a single factory.
        reward_funcs (`list[Callable]`): one reward function per environment class that defines `get_reward`.

    Raises:
        `TypeError`: a factory that is not callable, needs arguments or returns None; an environment without
            `reset`; a method that cannot be a tool (no type hint, `*args`, ...), named `Class.method`.
        `ValueError`: an empty dict; a method without a docstring; a tool name used twice (e.g. by a standalone tool
            and a method).
        `RuntimeError`: the factory raised while building the first instance.

    Example:
        ```python
        >>> class Counter:
        ...     def reset(self, **row):
        ...         self.total = 0
        ...     def add(self, n: int) -> int:
        ...         '''Add to the running total.
        ...
        ...         Args:
        ...             n: How much to add.
        ...         '''
        ...         self.total += n
        ...         return self.total
        ...     def get_reward(self) -> float:
        ...         return float(self.total == 10)
        >>> pool = EnvironmentPool(Counter)
        >>> episodes = pool.acquire([{"prompt": "Reach 10."}] * 2)
        >>> [e.toolbox.names for e in episodes]
        [['add'], ['add']]
        >>> pool.release(episodes)
        ```
    """

    def __init__(self, environment_factory: Any, tools: Sequence[Callable] | None = None):
        self.routed = isinstance(environment_factory, Mapping)
        self.tools = Toolbox(tools or [])
        self._kinds: dict[str, _Kind] = {}
        for key, factory in _factories(environment_factory).items():
            what = f"environment_factory[{key!r}]" if self.routed else "environment_factory"
            instance = _build(factory, what)
            cls = type(instance)
            if not callable(getattr(instance, "reset", None)):
                raise TypeError(
                    f"{what} builds {cls.__name__}, which has no reset() method. An environment needs "
                    "`def reset(self, **kwargs)`: it is called with the row's columns before each rollout and may "
                    "return a string to append to the prompt, or None."
                )
            methods = Toolbox._of_environment(instance, _public_methods(cls))
            self._kinds[key if self.routed else cls.__name__] = _Kind(
                factory, what, cls, prototype=instance, toolbox=self.tools + methods, idle=[instance]
            )
        self.names = list(self._kinds)
        classes = list(dict.fromkeys(kind.cls for kind in self._kinds.values()))
        self.reward_funcs = [_reward_function(cls) for cls in classes if callable(getattr(cls, "get_reward", None))]

    @property
    def tool_names(self) -> list[str]:
        """Every tool some rollout may be offered: the standalone tools and every environment's methods, sorted."""
        return sorted({name for kind in self._kinds.values() for name in kind.toolbox.names})

    def check_dataset(self, column_names: Sequence[str], environment_names: Sequence[str] | None = None) -> None:
        """Check a dataset against the environments before training: the `environment` column of a dict of factories
        and its values, and that every `reset` accepts the columns.

        Args:
            column_names (`list[str]`): the dataset's columns.
            environment_names (`list[str]`, *optional*): the values of its `environment` column, if there is one.

        Raises:
            `ValueError`: a dict of factories and no `environment` column; a value that names no factory.
            `TypeError`: a `reset` that does not accept the columns (it should take `**kwargs`).
        """
        columns = [c for c in column_names if c != ENVIRONMENT_COLUMN]
        if self.routed and ENVIRONMENT_COLUMN not in column_names:
            raise ValueError(
                f"environment_factory is a dict of environments {self.names}, so each dataset row must name its "
                f"environment in an '{ENVIRONMENT_COLUMN}' column; the dataset has columns {list(column_names)}. Add "
                "the column, or pass a single factory."
            )
        if self.routed and environment_names is not None:
            for i, name in enumerate(environment_names):
                self._route({ENVIRONMENT_COLUMN: name}, i)
        for kind in self._kinds.values():
            _check_reset_accepts(kind, kind.prototype, dict.fromkeys(columns))

    def acquire(self, rows: Sequence[Mapping[str, Any]]) -> list[Episode]:
        """One environment per row, `reset` with the row's columns (all but `environment`).

        Args:
            rows (`list[dict]`): one dataset row per rollout (a prompt's row repeated for each of its generations).

        Returns:
            `list[Episode]`, aligned with `rows`. Give them back with [`~EnvironmentPool.release`] once the rollouts
            are scored (reward functions receive `[e.environment for e in episodes]` as `environments=`).

        Raises:
            `ValueError`: with a dict of factories, a row without an `environment` value or naming no factory (checked
                for every row before anything is reset).
            `TypeError`: `reset` does not accept the row's columns, or returned something other than None, a string
                or a list.
            `RuntimeError`: a factory or `reset` raised (the original exception is chained).
        """
        keys = [self._route(row, i) for i, row in enumerate(rows)]
        episodes = []
        for key in keys:
            kind = self._kinds[key]
            instance = kind.idle.pop() if kind.idle else _build(kind.factory, kind.what)
            episodes.append(Episode(instance, key, None, kind.toolbox._rebound(instance)))
        arguments = [{k: v for k, v in row.items() if k != ENVIRONMENT_COLUMN} for row in rows]
        observations = _reset_all(episodes, arguments, self._kinds)
        for i, (episode, observation) in enumerate(zip(episodes, observations)):
            if observation is not None and not isinstance(observation, (str, list)):
                raise TypeError(
                    f"{type(episode.environment).__name__}.reset() returned a {type(observation).__name__} for row "
                    f"{i}; it must return None, or a string (or list of strings / content parts) to append to the "
                    "last user message of the prompt."
                )
            episode.observation = observation
        return episodes

    def release(self, episodes: Sequence[Episode]) -> None:
        """Return finished rollouts' environments to the pool; each is `reset` again before its next rollout. An
        instance one of whose tool calls timed out is dropped instead (the call's thread may still be changing it; a
        new instance is built when one is needed)."""
        dropped = []
        for episode in episodes:
            if episode.toolbox.environment_timed_out:
                dropped.append(type(episode.environment).__name__)
                continue
            self._kinds[episode.name].idle.append(episode.environment)
        if dropped:
            warnings.warn(
                f"{len(dropped)} environment instance(s) ({', '.join(sorted(set(dropped)))}) had a tool call time out; "
                "their call may still be running in the background, so they were not reused (new instances are built "
                "as needed). Raise `tool_timeout` if the calls are slow rather than hung.", stacklevel=2,
            )

    def _route(self, row: Mapping[str, Any], index: int) -> str:
        if not self.routed:
            return self.names[0]
        if ENVIRONMENT_COLUMN not in row:
            raise ValueError(
                f"environment_factory is a dict of environments {self.names}, so each row must name its environment "
                f"in an '{ENVIRONMENT_COLUMN}' column; row {index} has columns {list(row)}."
            )
        name = row[ENVIRONMENT_COLUMN]
        if name not in self._kinds:
            raise ValueError(
                f"Row {index} asks for environment {name!r}, which environment_factory does not have; the configured "
                f"names are {self.names}."
            )
        return name


def append_to_prompt(prompt: str | list[dict], observation: str | list | None) -> str | list[dict]:
    """A prompt with what `reset` returned appended: to the end of a text prompt, or to the content of the last user
    message of a conversational one. Nothing is inserted between them; put a separator in the returned text if one is
    wanted. The prompt given is not modified.

    Args:
        prompt (`str` or `list[dict]`): text, or a list of messages.
        observation (`str`, `list` or `None`): a string; a list of strings and/or content parts such as
            `{"type": "image", ...}` (only text for a text prompt); or `None` for no change.

    Returns:
        `str` or `list[dict]`: the new prompt. A string content followed by content parts becomes a list of parts.

    Raises:
        `ValueError`: a conversational prompt without a user message.
        `TypeError`: an observation of another type, or a non-text part for a text prompt.

    Example:
        ```python
        >>> append_to_prompt([{"role": "user", "content": "Guess the word."}], " It has 5 letters.")
        [{'role': 'user', 'content': 'Guess the word. It has 5 letters.'}]
        >>> append_to_prompt("Guess the word.", " It has 5 letters.")
        'Guess the word. It has 5 letters.'
        ```
    """
    if observation is None:
        return prompt
    parts = _content_parts(observation)
    if isinstance(prompt, str):
        if any(part.get("type") != "text" for part in parts):
            raise TypeError(
                "reset() returned non-text content parts, which a text prompt cannot hold; use a conversational "
                "prompt (a list of messages)."
            )
        return prompt + "".join(part["text"] for part in parts)
    messages = [dict(message) for message in prompt]
    users = [i for i, message in enumerate(messages) if message.get("role") == "user"]
    if not users:
        raise ValueError(
            f"The prompt has no user message to append the environment's reset() output to; its roles are "
            f"{[m.get('role') for m in messages]}."
        )
    last = messages[users[-1]]
    content = last.get("content")
    if isinstance(observation, str) and isinstance(content, (str, type(None))):
        last["content"] = (content or "") + observation
    else:
        last["content"] = (_content_parts(content) if content else []) + parts
    return messages


def _content_parts(value: str | list) -> list[dict]:
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    if not isinstance(value, list):
        raise TypeError(f"Expected a string or a list of content parts; got {type(value).__name__}.")
    parts = []
    for item in value:
        if isinstance(item, str):
            parts.append({"type": "text", "text": item})
        elif isinstance(item, Mapping) and "type" in item:
            parts.append(dict(item))
        else:
            raise TypeError(f"A content part must be a string or a dict with a 'type'; got {item!r:.80}.")
    return parts


# ---- construction helpers ------------------------------------------------------------------------------------------


def _factories(environment_factory: Any) -> dict[str, Any]:
    if not isinstance(environment_factory, Mapping):
        return {"": environment_factory}
    if not environment_factory:
        raise ValueError("environment_factory is an empty dict; give at least one `{name: factory}` entry.")
    bad = [key for key in environment_factory if not isinstance(key, str)]
    if bad:
        raise TypeError(f"The keys of environment_factory must be strings (the values of the '{ENVIRONMENT_COLUMN}' "
                        f"column); got {bad}.")
    return dict(environment_factory)


def _build(factory: Any, what: str) -> Any:
    name = getattr(factory, "__name__", type(factory).__name__)
    if not callable(factory):
        raise TypeError(
            f"{what} must be a class or a zero-argument callable returning a new environment; got a {name} instance. "
            "Pass the class itself."
        )
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have none; calling will tell
        signature = None
    if signature is not None:
        needed = [p.name for p in signature.parameters.values()
                  if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if needed:
            raise TypeError(
                f"{what} ({name}) needs the argument(s) {needed} to be built, but environments are built with no "
                f"arguments (one per rollout). Give them defaults, or bind them: "
                f"`functools.partial({name}, {needed[0]}=...)` or `lambda: {name}(...)`."
            )
    try:
        instance = factory()
    except Exception as error:
        raise RuntimeError(f"{what} ({name}) raised {type(error).__name__} while building an environment: "
                           f"{error}") from error
    if instance is None:
        raise TypeError(f"{what} ({name}) returned None; it must return a new environment instance.")
    return instance


def _public_methods(cls: type) -> list[str]:
    """Public methods of the class (inherited ones included, in definition order) except reset and get_reward."""
    names: dict[str, None] = {}
    for klass in reversed(cls.__mro__[:-1]):  # object has no public methods
        for name, attribute in vars(klass).items():
            if name.startswith("_") or name in _NOT_TOOLS:
                continue
            if inspect.isfunction(attribute) or isinstance(attribute, (staticmethod, classmethod)):
                names.setdefault(name)
            else:  # a subclass replaced the method by something else
                names.pop(name, None)
    return list(names)


def _check_reset_accepts(kind: _Kind, instance: Any, arguments: dict, row: int | None = None) -> None:
    try:
        inspect.signature(instance.reset).bind(**arguments)
    except TypeError as error:
        where = f" for row {row}" if row is not None else ""
        raise TypeError(
            f"{kind.cls.__name__}.reset() cannot take the row's columns {list(arguments)}{where} ({error}). Define it "
            f"as `def reset(self, **kwargs)`: it receives every column except '{ENVIRONMENT_COLUMN}'."
        ) from None
    except ValueError:  # no signature; calling will tell
        pass


def _reset_all(episodes: list[Episode], arguments: list[dict], kinds: dict[str, _Kind]) -> list[Any]:
    """Call every `reset`: sync ones in order, async ones concurrently on the tools' event loop."""
    results: list[Any] = [None] * len(episodes)
    pending = {}
    for i, (episode, kwargs) in enumerate(zip(episodes, arguments)):
        _check_reset_accepts(kinds[episode.name], episode.environment, kwargs, i)
        try:
            result = episode.environment.reset(**kwargs)
        except Exception as error:
            raise _reset_error(episode, i, error) from error
        if inspect.isawaitable(result):
            pending[i] = result
        else:
            results[i] = result
    if pending:
        outcomes = gather_sync(list(pending.values()))
        for i, outcome in zip(pending, outcomes):
            if isinstance(outcome, BaseException):
                raise _reset_error(episodes[i], i, outcome) from outcome
            results[i] = outcome
    return results


def _reset_error(episode: Episode, row: int, error: BaseException) -> RuntimeError:
    return RuntimeError(f"{type(episode.environment).__name__}.reset() raised {type(error).__name__} for row {row}: "
                        f"{error}")


def _reward_function(cls: type) -> Callable:
    """`cls.get_reward()` of each rollout's environment as a reward function: `None` for rollouts whose environment is
    of another class (a dict of factories), so that this reward leaves them out."""

    def environments_of(completions: list, environments: list | None) -> list:
        if environments is None:
            raise TypeError(
                f"The reward of {cls.__name__} needs `environments=[...]` (one environment per completion) among the "
                "reward function's keyword arguments."
            )
        if len(environments) != len(completions):
            raise ValueError(f"The reward of {cls.__name__} got {len(environments)} environments for "
                             f"{len(completions)} completions; give one per completion.")
        return environments

    if inspect.iscoroutinefunction(cls.get_reward):

        async def reward(completions: list, environments: list | None = None, **kwargs: Any) -> list:
            environments = environments_of(completions, environments)
            mine = [i for i, env in enumerate(environments) if type(env) is cls]
            values = await asyncio.gather(*(environments[i].get_reward() for i in mine))
            rewards: list = [None] * len(environments)
            for i, value in zip(mine, values):
                rewards[i] = value
            return rewards

    else:

        def reward(completions: list, environments: list | None = None, **kwargs: Any) -> list:
            environments = environments_of(completions, environments)
            return [env.get_reward() if type(env) is cls else None for env in environments]

    reward.__name__ = reward.__qualname__ = cls.__name__  # RewardScorer names the metric after it
    reward.__doc__ = f"`{cls.__name__}.get_reward()` of each completion's environment (None for other classes)."
    return reward
