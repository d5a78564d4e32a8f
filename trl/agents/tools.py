"""Tools for agent training: JSON schemas of Python functions, and running the calls a model made.

A tool is a plain Python function, sync or async, with a type hint on every argument and a Google-style docstring
(a description and an `Args:` section). Its JSON schema, the one the chat template shows the model, is made by
transformers' own `transformers.utils.get_json_schema`; [`Toolbox`] checks every tool when it is built, so a tool
the template cannot describe is an error at construction, not at step 500.

[`execute_tool_calls`] runs one round of calls for many rollouts at once and returns the `tool` messages to append.
The model's output is data, not code we trust: an unknown tool, arguments of the wrong names or types, a tool that
raises or one that runs past its timeout all become a `{"error": "..."}` tool message the model sees, counted as a
failure for the `tools/failure_frequency` metric ([`tool_metrics`]). Nothing the model writes can crash the run.

How calls run (one round takes about as long as its slowest chain of calls, not the sum of all calls):
- sync tools each run in their own daemon thread, async tools as tasks on one event loop (a daemon thread), all
  started together;
- the methods of an environment (`trl.agents.environments`) are stateful and not assumed to be thread-safe, so the
  calls one rollout makes to its environment run one after another, in call order; different rollouts, and
  standalone tools, run concurrently;
- every call is bounded by `timeout` seconds. An async tool that times out is cancelled. A sync tool cannot be
  stopped (Python cannot kill a thread): its call is reported as timed out and the round moves on, while the thread
  keeps running in the background until the function returns (it is a daemon thread, so it never blocks the
  process from exiting). After a call to an environment times out, that rollout's later calls to the same
  environment in the round are not run (its state is unknown), and say so.
- An async tool that blocks (e.g. `time.sleep` inside `async def`) stalls the shared event loop; use
  `await asyncio.sleep` or make the tool sync.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transformers.utils import DocstringParsingException, TypeHintParsingException, get_json_schema

from .._event_loop import event_loop

__all__ = ["DEFAULT_TOOL_TIMEOUT", "ToolResults", "Toolbox", "execute_tool_calls", "tool_metrics", "tool_schemas"]

# Seconds one tool call may take before it is reported as timed out.
DEFAULT_TOOL_TIMEOUT = 60.0

_SCHEMA_TYPES = "str, int, float, bool, list[...], dict[str, ...], Literal[...], an Enum, or a union of these"


# ---- schemas -------------------------------------------------------------------------------------------------------


def tool_schemas(tools: Sequence[Callable]) -> list[dict]:
    """JSON schemas of tools, as the chat template's `tools=` argument expects them.

    Args:
        tools (`list[Callable]`): sync or async functions (or bound methods), each with a type hint on every argument
            and a Google-style docstring describing every argument.

    Returns:
        `list[dict]`: one `{"type": "function", "function": {"name", "description", "parameters"}}` per tool, in order.

    Raises:
        `ValueError`: a tool without a docstring, or whose docstring does not describe an argument; two tools with the
            same name.
        `TypeError`: a tool that is not callable or has no `__name__`, an argument without a type hint (or one the
            schema cannot express), `*args`, `**kwargs` or positional-only arguments.

    Example:
        ```python
        >>> def multiply(a: int, b: int) -> int:
        ...     '''Multiply two integers.
        ...
        ...     Args:
        ...         a: The first factor.
        ...         b: The second factor.
        ...     '''
        ...     return a * b
        >>> tool_schemas([multiply])[0]["function"]["parameters"]["required"]
        ['a', 'b']
        ```
    """
    return Toolbox(tools).schemas


def _where(func: Any, index: int | None, owner: str | None) -> str:
    """How an error names a tool: `tools[1] (search)` or `GameEnv.move`."""
    name = getattr(func, "__name__", None)
    if owner is not None:
        return f"{owner}.{name}"
    return f"tools[{index}] ({name})" if isinstance(name, str) else f"tools[{index}]"


def _schema(func: Any, where: str) -> dict:
    """The JSON schema of one tool, or a ValueError/TypeError that says what to add."""
    if not callable(func) or isinstance(func, type):
        raise TypeError(f"{where} is of type {type(func).__name__}; a tool must be a function (def or async def).")
    if not isinstance(getattr(func, "__name__", None), str):
        raise TypeError(
            f"{where} ({type(func).__name__}) has no __name__, which the model would call it by; wrap it in a def "
            "with a docstring and type hints."
        )
    for parameter in inspect.signature(func).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            star = "*" if parameter.kind == parameter.VAR_POSITIONAL else "**"
            raise TypeError(
                f"Tool {where} takes {star}{parameter.name}; the model calls a tool with named JSON arguments, so "
                "every argument must be named, typed and described. Replace it with named parameters."
            )
        if parameter.kind == parameter.POSITIONAL_ONLY:
            raise TypeError(
                f"Tool {where} has the positional-only argument '{parameter.name}'; tools are called with keyword "
                "arguments, so remove the '/'."
            )
        if parameter.annotation is parameter.empty:
            raise TypeError(
                f"Tool {where} has no type hint on argument '{parameter.name}'; add one (e.g. `{parameter.name}: str`)"
                f", since the JSON schema shown to the model is built from the hints. Supported: {_SCHEMA_TYPES}."
            )
    if not inspect.getdoc(func):
        raise ValueError(
            f"Tool {where} has no docstring; add a Google-style docstring with a one-line description and an `Args:` "
            "section describing each argument (the chat template shows them to the model)."
        )
    try:
        return get_json_schema(func)
    except DocstringParsingException as error:
        raise ValueError(
            f"Tool {where}: {str(error).rstrip('.')}. Describe every argument in the docstring's `Args:` section, "
            "one `name: text` line each."
        ) from error
    except (TypeHintParsingException, NameError) as error:
        raise TypeError(f"Tool {where}: a type hint cannot be turned into a JSON schema ({error}). Supported: "
                        f"{_SCHEMA_TYPES}.") from error


class Toolbox:
    """Tools by name, with their JSON schemas: what one rollout may call.

    Args:
        tools (`list[Callable]`, *optional*): sync or async functions; see [`tool_schemas`] for what each needs.

    Attributes:
        functions (`dict[str, Callable]`): the tools by name, in order.
        schemas (`list[dict]`): their JSON schemas, in the same order (pass them as the chat template's `tools=`).

    Raises:
        `ValueError` / `TypeError`: as [`tool_schemas`].

    Example:
        ```python
        >>> async def search(query: str) -> str:
        ...     '''Search the web.
        ...
        ...     Args:
        ...         query: What to look for.
        ...     '''
        ...     return "nothing found"
        >>> Toolbox([search]).names
        ['search']
        ```
    """

    def __init__(self, tools: Sequence[Callable] = ()):
        if callable(tools):
            tools = [tools]
        self.functions: dict[str, Callable] = {}
        self.schemas: list[dict] = []
        self._origins: dict[str, str] = {}  # name -> how errors name it
        self._environment: Any = None  # the instance whose methods these are; its calls run one at a time
        # set when a call to the environment timed out: its thread may still be changing the instance, so the
        # environment pool discards it instead of handing it to another rollout
        self.environment_timed_out = False
        for index, func in enumerate(tools):
            self._add(func, _schema(func, _where(func, index, None)), _where(func, index, None))

    @classmethod
    def _of_environment(cls, instance: Any, method_names: Sequence[str]) -> Toolbox:
        """The public methods of an environment instance, bound to it; errors name `Class.method`."""
        toolbox = cls()
        owner = type(instance).__name__
        for name in method_names:
            method = getattr(instance, name)
            toolbox._add(method, _schema(method, _where(method, None, owner)), f"{owner}.{name}")
        toolbox._environment = instance
        return toolbox

    def _add(self, func: Callable, schema: dict, origin: str) -> None:
        name = schema["function"]["name"]
        if name in self.functions:
            raise ValueError(
                f"Two tools are named '{name}': {self._origins[name]} and {origin}. The model calls a tool by name, "
                "so names must be unique; rename one."
            )
        self.functions[name], self._origins[name] = func, origin
        self.schemas.append(schema)

    @property
    def names(self) -> list[str]:
        return list(self.functions)

    def __len__(self) -> int:
        return len(self.functions)

    def __add__(self, other: Toolbox) -> Toolbox:
        """Both toolboxes' tools (at most one of them may belong to an environment); a shared name is a ValueError."""
        if self._environment is not None and other._environment is not None:
            raise ValueError("Cannot combine the tools of two environments in one toolbox.")
        combined = Toolbox()
        for box in (self, other):
            for schema in box.schemas:
                name = schema["function"]["name"]
                combined._add(box.functions[name], schema, box._origins[name])
        combined._environment = self._environment if self._environment is not None else other._environment
        return combined

    def _rebound(self, instance: Any) -> Toolbox:
        """This toolbox with its environment methods bound to `instance` (another instance of the same class),
        without checking the schemas again."""
        box = Toolbox()
        box.schemas, box._origins = self.schemas, self._origins
        box.functions = {name: getattr(instance, name) if self._is_method(func) else func
                         for name, func in self.functions.items()}
        box._environment = instance
        return box

    def _is_method(self, func: Callable) -> bool:
        return self._environment is not None and getattr(func, "__self__", None) is self._environment


# ---- running calls -------------------------------------------------------------------------------------------------


@dataclass
class ToolResults:
    """What one round of [`execute_tool_calls`] produced, one entry per rollout.

    Args:
        messages (`list[list[dict]]`): `(N,)` the `{"role": "tool", "name": ..., "content": str}` messages to append
            after the assistant turn, in call order.
        num_calls (`list[int]`): `(N,)` calls made this round.
        num_failures (`list[int]`): `(N,)` calls that failed (unknown tool, bad arguments, raised, timed out).

    Example:
        ```python
        >>> results.messages[0]
        [{'role': 'tool', 'name': 'multiply', 'content': '6'}]
        >>> results.metrics()
        {'tools/call_frequency': 1.0, 'tools/failure_frequency': 0.0}
        ```
    """

    messages: list[list[dict]]
    num_calls: list[int]
    num_failures: list[int]

    def metrics(self) -> dict[str, float]:
        """[`tool_metrics`] of this round alone."""
        return tool_metrics(self.num_calls, self.num_failures)


def tool_metrics(num_calls: Sequence[int], num_failures: Sequence[int]) -> dict[str, float]:
    """`tools/call_frequency` (share of rollouts that made at least one call) and `tools/failure_frequency` (share of
    calls that failed; 0 when there was no call).

    Pass per-rollout totals over all rounds of a multi-turn rollout (and over all processes, gathered), not one
    round's counts, so that a rollout calling tools in two rounds counts once.

    Example:
        ```python
        >>> tool_metrics([2, 0, 1, 1], [1, 0, 0, 0])
        {'tools/call_frequency': 0.75, 'tools/failure_frequency': 0.25}
        ```
    """
    rollouts, calls = len(num_calls), sum(num_calls)
    return {
        "tools/call_frequency": sum(1 for n in num_calls if n > 0) / rollouts if rollouts else 0.0,
        "tools/failure_frequency": sum(num_failures) / calls if calls else 0.0,
    }


class _Failure(Exception):
    """A call that cannot run or did not finish; its message is what the model sees."""


@dataclass
class _Call:
    rollout: int
    name: str
    func: Callable | None = None  # None: failed before running
    arguments: dict | None = None
    error: str | None = None
    content: str | None = None
    timed_out: bool = False


def execute_tool_calls(
    tool_calls: Sequence[Sequence[Any] | None],
    toolboxes: Toolbox | Sequence[Toolbox],
    timeout: float = DEFAULT_TOOL_TIMEOUT,
    max_output_chars: int | None = None,
) -> ToolResults:
    """Run one round of tool calls for `N` rollouts at once; see the module docstring for how they run.

    Args:
        tool_calls (`list[list[dict]]`): `(N,)` the calls of each rollout's last assistant turn (`None` or `[]` for a
            rollout that made none). A call is `{"name": str, "arguments": dict}` or the chat format that
            `trl.chat_template_utils.parse_response` returns,
            `{"type": "function", "function": {"name", "arguments"}}`; `arguments` may also be a JSON string of an
            object.
        toolboxes (`Toolbox` or `list[Toolbox]`): the tools every rollout may call, or one toolbox per rollout (e.g.
            each bound to the rollout's environment).
        timeout (`float`, *optional*, defaults to `60.0`): seconds each call may take.
        max_output_chars (`int`, *optional*): a result longer than this many characters is cut there and ends with
            `"... [tool output cut: N characters]"` (a huge output cannot fit a completion anyway, and rendering and
            tokenizing it would stall the round). None keeps every result whole.

    Returns:
        [`ToolResults`]. A result that is not a string is JSON-encoded (`str()` when it is not JSON-serialisable); a
        failed call's content is `{"error": "<what went wrong, naming the tool>"}`, JSON-encoded.

    Raises:
        `ValueError`: `toolboxes` is a list of the wrong length, or `timeout` is not positive. (Nothing the model wrote
            raises.)

    Example:
        ```python
        >>> calls = [[{"name": "multiply", "arguments": {"a": 2, "b": 3}}], []]
        >>> results = execute_tool_calls(calls, Toolbox([multiply]))
        >>> results.messages
        [[{'role': 'tool', 'name': 'multiply', 'content': '6'}], []]
        ```
    """
    if not timeout > 0:
        raise ValueError(f"The tool timeout must be a positive number of seconds; got {timeout!r}.")
    if max_output_chars is not None and not max_output_chars > 0:
        raise ValueError(f"`max_output_chars` must be a positive number of characters or None; got "
                         f"{max_output_chars!r}.")
    if isinstance(toolboxes, Toolbox):
        toolboxes = [toolboxes] * len(tool_calls)
    if len(toolboxes) != len(tool_calls):
        raise ValueError(
            f"Give one toolbox per rollout: got {len(toolboxes)} toolboxes for {len(tool_calls)} rollouts."
        )

    calls = [[_prepare(call, i, toolboxes[i]) for call in (rollout_calls or [])]
             for i, rollout_calls in enumerate(tool_calls)]
    chains = []  # each chain runs its calls in order; chains run concurrently
    for i, rollout_calls in enumerate(calls):
        runnable = [call for call in rollout_calls if call.func is not None]
        to_environment = [call for call in runnable if toolboxes[i]._is_method(call.func)]
        chains += [[call] for call in runnable if not toolboxes[i]._is_method(call.func)]
        if to_environment:
            chains.append(to_environment)
    if chains:
        asyncio.run_coroutine_threadsafe(_run_chains(chains, timeout), event_loop()).result()
    for i, rollout_calls in enumerate(calls):
        if any(call.timed_out and toolboxes[i]._is_method(call.func) for call in rollout_calls):
            toolboxes[i].environment_timed_out = True
        if max_output_chars is not None:
            for call in rollout_calls:
                if call.content is not None and len(call.content) > max_output_chars:
                    call.content = (call.content[:max_output_chars]
                                    + f"... [tool output cut: {len(call.content)} characters]")

    messages = [[{"role": "tool", "name": call.name, "content": call.content if call.error is None else
                  json.dumps({"error": call.error}, ensure_ascii=False)} for call in rollout_calls]
                for rollout_calls in calls]
    return ToolResults(
        messages=messages,
        num_calls=[len(rollout_calls) for rollout_calls in calls],
        num_failures=[sum(call.error is not None for call in rollout_calls) for rollout_calls in calls],
    )


def _prepare(call: Any, rollout: int, toolbox: Toolbox) -> _Call:
    """Look the tool up and check the arguments; a problem becomes the call's error, naming the tool."""
    if isinstance(call, Mapping) and isinstance(call.get("function"), Mapping):
        call = call["function"]
    name = call.get("name") if isinstance(call, Mapping) else None
    if not isinstance(name, str):
        return _Call(rollout, "", error=f"Malformed tool call {_short(call)}: expected "
                                        '{"name": "<tool>", "arguments": {...}}.')
    func = toolbox.functions.get(name)
    if func is None:
        return _Call(rollout, name, error=f"Unknown tool '{name}'; the available tools are {toolbox.names}.")
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            pass  # reported as not an object below
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, Mapping):
        return _Call(rollout, name, error=f"Tool '{name}' needs its arguments as a JSON object of names to values; "
                                          f"got {type(arguments).__name__} {_short(arguments)}.")
    schema = toolbox.schemas[toolbox.names.index(name)]["function"]["parameters"]
    problem = _argument_problem(dict(arguments), schema)
    if problem:
        return _Call(rollout, name, error=f"Tool '{name}': {problem}")
    return _Call(rollout, name, func=func, arguments=dict(arguments))


def _argument_problem(arguments: dict, parameters: dict) -> str | None:
    properties, required = parameters.get("properties", {}), parameters.get("required", [])
    unexpected = [key for key in arguments if key not in properties]
    if unexpected:
        return f"unexpected argument(s) {unexpected}; its arguments are {list(properties)}."
    missing = [key for key in required if key not in arguments]
    if missing:
        return f"missing required argument(s) {missing}; its arguments are {list(properties)}."
    for key, value in arguments.items():
        expected = _type_mismatch(value, properties[key])
        if expected:
            return f"argument '{key}' must be {expected}; got {type(value).__name__} {_short(value)}."
    return None


_JSON_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, (list, tuple)),
    "object": lambda v: isinstance(v, Mapping),
}


def _type_mismatch(value: Any, schema: dict) -> str | None:
    """What the value should be, if it does not fit the (transformers-generated) schema; None if it fits."""
    if value is None and schema.get("nullable"):
        return None
    if "enum" in schema and value not in schema["enum"]:
        return f"one of {schema['enum']}"
    if "anyOf" in schema:
        if all(_type_mismatch(value, option) for option in schema["anyOf"]):
            return " or ".join(_describe(option) for option in schema["anyOf"])
        return None
    types = schema.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    known = [t for t in types if t in _JSON_TYPES]
    if len(known) < len(types) or not types:  # no type (Any) or one we do not check (image, audio)
        return None
    if not any(_JSON_TYPES[t](value) for t in known):
        return _describe(schema)
    if isinstance(value, (list, tuple)):
        items = schema.get("prefixItems")
        if items is not None and len(items) != len(value):
            return _describe(schema)
        for i, item in enumerate(value):
            item_schema = items[i] if items is not None else schema.get("items")
            if item_schema and _type_mismatch(item, item_schema):
                return _describe(schema)
    values_schema = schema.get("additionalProperties")
    if isinstance(value, Mapping) and isinstance(values_schema, dict) and any(
        _type_mismatch(item, values_schema) for item in value.values()
    ):
        return _describe(schema)
    return None


def _describe(schema: dict) -> str:
    """`an integer`, `an array of strings`, ... for error messages."""
    if "anyOf" in schema:
        return " or ".join(_describe(option) for option in schema["anyOf"])
    types = schema.get("type")
    types = [types] if isinstance(types, str) else list(types or ["any value"])
    text = " or ".join({"integer": "an integer", "array": "an array", "object": "an object"}.get(t, f"a {t}")
                       for t in types)
    if "items" in schema:
        text += f" of ({_describe(schema['items'])})"
    if "prefixItems" in schema:
        text += f" of {len(schema['prefixItems'])} items ({', '.join(_describe(s) for s in schema['prefixItems'])})"
    if isinstance(schema.get("additionalProperties"), dict):
        text += f" with values ({_describe(schema['additionalProperties'])})"
    return text + (" or null" if schema.get("nullable") else "")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _encode(result: Any, name: str) -> str:
    """The tool message's content: a string as it is, else JSON, else `str()`; a result that cannot be turned into
    text at all (a `__str__` that raises, a recursion too deep) is a failure naming the tool, never a crash."""
    if isinstance(result, str):
        return result
    try:
        return json.dumps(result, ensure_ascii=False)
    except Exception:  # noqa: BLE001 -- any result the model's call produced is data, not a reason to stop
        try:
            return str(result)
        except Exception as error:  # noqa: BLE001
            raise _Failure(f"Tool '{name}' returned a {type(result).__name__} that cannot be written as text "
                           f"({type(error).__name__}: {error}).") from error


async def _run_chains(chains: list[list[_Call]], timeout: float) -> None:
    await asyncio.gather(*(_run_chain(chain, timeout) for chain in chains))


async def _run_chain(chain: list[_Call], timeout: float) -> None:
    timed_out = None
    for call in chain:
        if timed_out is not None:
            call.error = (f"Tool '{call.name}' was not run: the earlier call to '{timed_out}' in this turn timed out, "
                          "so the environment's state is unknown.")
            continue
        try:
            call.content = _encode(await _bounded(call, timeout), call.name)
        except _Failure as failure:
            call.error = str(failure)
            call.timed_out = isinstance(failure.__cause__, TimeoutError)
            timed_out = call.name if call.timed_out else None


async def _bounded(call: _Call, timeout: float) -> Any:
    """The call's result, or a _Failure naming the tool. The deadline is enforced with `asyncio.wait`, which (unlike
    `wait_for`) does not wait for a cancelled task to finish, so a tool that ignores cancellation cannot hold us."""
    try:
        if _is_async(call.func):
            task = asyncio.ensure_future(call.func(**call.arguments))
        else:
            task = _in_daemon_thread(call.func, call.arguments, call.name)
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            task.cancel()  # an async tool stops at its next await; a sync tool's thread runs on (module docstring)
            raise _Failure(f"Tool '{call.name}' timed out after {timeout:g} s.") from TimeoutError()
        return task.result()
    except _Failure:
        raise
    except Exception as error:  # whatever the tool raised is shown to the model
        raise _Failure(f"Tool '{call.name}' raised {type(error).__name__}: {error}") from error


def _in_daemon_thread(func: Callable, arguments: dict, name: str) -> asyncio.Future:
    """Run a sync tool in a new daemon thread (not a pool: a hung call must not keep a worker, or the interpreter's
    exit, waiting); the returned future is resolved on the event loop."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(result: Any = None, error: BaseException | None = None) -> None:
        if future.done():  # cancelled after a timeout
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def target() -> None:
        try:
            result = func(**arguments)
        except BaseException as error:  # noqa: BLE001 - handed to the waiting call (even sys.exit() is data here)
            if not isinstance(error, Exception):
                error = RuntimeError(f"{type(error).__name__}: {error}")
            loop.call_soon_threadsafe(settle, None, error)
        else:
            loop.call_soon_threadsafe(settle, result)

    threading.Thread(target=target, name=f"trl-tool-{name}", daemon=True).start()
    return future


def _is_async(func: Any) -> bool:
    if inspect.iscoroutinefunction(func):  # also sees through functools.partial
        return True
    return not inspect.isroutine(func) and inspect.iscoroutinefunction(type(func).__call__)  # async def __call__


def gather_sync(awaitables: Sequence[Any]) -> list[Any]:
    """Await `awaitables` concurrently on the tools' event loop from synchronous code; an exception is returned in
    place of its result (used for async `reset`)."""
    return asyncio.run_coroutine_threadsafe(_gather(list(awaitables)), event_loop()).result()


async def _gather(awaitables: list) -> list:
    return await asyncio.gather(*awaitables, return_exceptions=True)
