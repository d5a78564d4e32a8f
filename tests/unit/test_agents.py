"""`trl.agents`: tool schemas, running tool calls (errors as data, concurrency, timeouts), environment pools."""

import asyncio
import doctest
import functools
import json
import re
import subprocess
import sys
import threading
import time

import pytest

import trl.agents.environments
import trl.agents.tools
from trl.agents import (
    EnvironmentPool,
    Toolbox,
    append_to_prompt,
    execute_tool_calls,
    tool_metrics,
    tool_schemas,
)
from trl.rewards.scoring import RewardScorer

SLEEP = 0.2  # seconds a "slow" tool takes
# Two slow calls run concurrently should take ~SLEEP; in sequence they would take 2 * SLEEP or more. The bound leaves
# room for a loaded 2-core machine while still failing a sequential run of four calls (4 * SLEEP).
CONCURRENT_BOUND = 3.5 * SLEEP


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return a * b


async def search(query: str, limit: int = 3) -> list[str]:
    """Search the web.

    Args:
        query: What to look for.
        limit: How many results to return.
    """
    await asyncio.sleep(0)
    return [f"{query} {i}" for i in range(limit)]


def divide(a: float, b: float) -> float:
    """Divide two numbers.

    Args:
        a: The dividend.
        b: The divisor.
    """
    return a / b


def call(name, **arguments):
    return {"name": name, "arguments": arguments}


def error_of(message):
    """The error text of a failed call's tool message."""
    return json.loads(message["content"])["error"]


# ---- schemas --------------------------------------------------------------------------------------------------------


def test_schema_of_sync_tool():
    assert tool_schemas([multiply]) == [{
        "type": "function",
        "function": {
            "name": "multiply",
            "description": "Multiply two integers.",
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"type": "integer", "description": "The first factor."},
                    "b": {"type": "integer", "description": "The second factor."},
                },
                "required": ["a", "b"],
            },
            "return": {"type": "integer"},
        },
    }]


def test_schema_of_async_tool():
    (schema,) = tool_schemas([search])
    assert schema["function"]["name"] == "search"
    assert schema["function"]["parameters"] == {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "What to look for."},
            "limit": {"type": "integer", "description": "How many results to return."},
        },
        "required": ["query"],
    }


def no_docstring(x: int) -> int:
    return x


def no_hint(x) -> int:
    """Identity.

    Args:
        x: A value.
    """
    return x


def star_args(*values: int) -> int:
    """Sum.

    Args:
        values: Numbers.
    """
    return sum(values)


def star_kwargs(x: int, **options: int) -> int:
    """Identity.

    Args:
        x: A value.
        options: Options.
    """
    return x


def undescribed(x: int, y: int) -> int:
    """Add.

    Args:
        x: A value.
    """
    return x + y


class Custom:
    pass


def custom_hint(x: Custom) -> int:
    """Use a custom class.

    Args:
        x: A custom object.
    """
    return 0


@pytest.mark.parametrize(
    ("tools", "error", "match"),
    [
        ([no_docstring], ValueError, r"Tool tools\[0\] \(no_docstring\) has no docstring; add a Google-style"),
        ([no_hint], TypeError, r"Tool tools\[0\] \(no_hint\) has no type hint on argument 'x'; add one"),
        ([star_args], TypeError, r"Tool tools\[0\] \(star_args\) takes \*values; .* Replace it with named parameters"),
        ([star_kwargs], TypeError, r"Tool tools\[0\] \(star_kwargs\) takes \*\*options"),
        ([undescribed], ValueError,
         r"Tool tools\[0\] \(undescribed\): .*no description for the argument 'y'\. Describe every argument"),
        ([custom_hint], TypeError, r"Tool tools\[0\] \(custom_hint\): a type hint cannot be turned into a JSON"),
        ([multiply, 3], TypeError, r"tools\[1\] is of type int; a tool must be a function"),
        ([functools.partial(multiply, b=2)], TypeError, r"tools\[0\] \(partial\) has no __name__"),
        ([multiply, search, multiply], ValueError,
         r"Two tools are named 'multiply': tools\[0\] \(multiply\) and tools\[2\] \(multiply\)"),
    ],
)
def test_bad_tools_are_errors_at_construction(tools, error, match):
    with pytest.raises(error, match=match):
        tool_schemas(tools)


# ---- running calls --------------------------------------------------------------------------------------------------


def test_valid_call():
    results = execute_tool_calls([[call("multiply", a=6, b=7)]], Toolbox([multiply]))
    assert results.messages == [[{"role": "tool", "name": "multiply", "content": "42"}]]
    assert (results.num_calls, results.num_failures) == ([1], [0])


def test_chat_format_and_json_string_arguments():
    """The format `parse_response` returns, and OpenAI-style arguments given as a JSON string."""
    calls = [[{"type": "function", "function": {"name": "multiply", "arguments": {"a": 2, "b": 3}}},
              {"type": "function", "function": {"name": "multiply", "arguments": '{"a": 4, "b": 5}'}}]]
    results = execute_tool_calls(calls, Toolbox([multiply]))
    assert [m["content"] for m in results.messages[0]] == ["6", "20"]


def test_two_calls_in_one_turn_keep_call_order():
    toolbox = Toolbox([multiply, search])
    results = execute_tool_calls([[call("search", query="cats", limit=2), call("multiply", a=2, b=3)]], toolbox)
    assert results.messages[0] == [
        {"role": "tool", "name": "search", "content": '["cats 0", "cats 1"]'},  # a list is JSON-encoded
        {"role": "tool", "name": "multiply", "content": "6"},
    ]


def test_rollouts_without_calls_get_no_messages():
    results = execute_tool_calls([[], None, [call("multiply", a=1, b=1)]], Toolbox([multiply]))
    assert results.messages[:2] == [[], []]
    assert results.num_calls == [0, 0, 1]


@pytest.mark.parametrize(
    ("tool_call", "expected"),
    [
        (call("divide_by_zero"), "Unknown tool 'divide_by_zero'; the available tools are ['multiply', 'divide']."),
        (call("multiply", a=2, c=3), "Tool 'multiply': unexpected argument(s) ['c']; its arguments are ['a', 'b']."),
        (call("multiply", a=2), "Tool 'multiply': missing required argument(s) ['b']; its arguments are ['a', 'b']."),
        (call("multiply", a="2", b=3), "Tool 'multiply': argument 'a' must be an integer; got str '2'."),
        (call("multiply", a=True, b=3), "Tool 'multiply': argument 'a' must be an integer; got bool True."),
        (call("multiply", a=2.5, b=3), "Tool 'multiply': argument 'a' must be an integer; got float 2.5."),
        ({"name": "multiply", "arguments": [2, 3]},
         "Tool 'multiply' needs its arguments as a JSON object of names to values; got list [2, 3]."),
        ({"name": "multiply", "arguments": "{not json"},
         "Tool 'multiply' needs its arguments as a JSON object of names to values; got str '{not json'."),
        ({"arguments": {"a": 1}}, ("""Malformed tool call {'arguments': {'a': 1}}: expected {"name": "<tool>", """
                                  """"arguments": {...}}.""")),
        (call("divide", a=1, b=0), "Tool 'divide' raised ZeroDivisionError: division by zero"),
    ],
)
def test_malformed_calls_are_data(tool_call, expected):
    results = execute_tool_calls([[tool_call, call("multiply", a=2, b=3)]], Toolbox([multiply, divide]))
    assert error_of(results.messages[0][0]) == expected
    assert results.messages[0][1]["content"] == "6"  # the other call of the turn still runs
    assert (results.num_calls, results.num_failures) == ([2], [1])


def test_int_is_accepted_for_float_and_nested_types_are_checked():
    def total(values: list[float], weights: dict[str, int] | None = None) -> float:
        """Sum values.

        Args:
            values: The values.
            weights: Optional weights.
        """
        return sum(values)

    toolbox = Toolbox([total])
    calls = [[call("total", values=[1, 2.5]), call("total", values=[1, "x"]),
              call("total", values=[1], weights={"a": "b"}), call("total", values=[], weights=None)]]
    results = execute_tool_calls(calls, toolbox)
    assert results.messages[0][0]["content"] == "3.5"
    assert error_of(results.messages[0][1]) == ("Tool 'total': argument 'values' must be an array of (a number); got "
                                                "list [1, 'x'].")
    assert "argument 'weights' must be an object with values (an integer) or null" in error_of(results.messages[0][2])
    assert results.messages[0][3]["content"] == "0"


def test_async_tool():
    results = execute_tool_calls([[call("search", query="dogs")]], Toolbox([search]))
    assert json.loads(results.messages[0][0]["content"]) == ["dogs 0", "dogs 1", "dogs 2"]


def test_async_tool_that_raises():
    async def broken(x: int) -> int:
        """Fail.

        Args:
            x: Ignored.
        """
        raise RuntimeError("backend down")

    results = execute_tool_calls([[call("broken", x=1)]], Toolbox([broken]))
    assert error_of(results.messages[0][0]) == "Tool 'broken' raised RuntimeError: backend down"


def test_results_are_json_encoded_with_a_str_fallback():
    def info(x: int) -> dict:
        """Describe.

        Args:
            x: A number.
        """
        return {"x": x, "square": x * x} if x else {1, 2}

    results = execute_tool_calls([[call("info", x=3), call("info", x=0)]], Toolbox([info]))
    assert [m["content"] for m in results.messages[0]] == ['{"x": 3, "square": 9}', "{1, 2}"]


def test_one_round_takes_the_slowest_call_not_the_sum():
    def slow_sync(x: int) -> int:
        """Wait, then echo.

        Args:
            x: A value.
        """
        time.sleep(SLEEP)
        return x

    async def slow_async(x: int) -> int:
        """Wait, then echo.

        Args:
            x: A value.
        """
        await asyncio.sleep(SLEEP)
        return x

    toolbox = Toolbox([slow_sync, slow_async])
    calls = [[call("slow_sync", x=1), call("slow_async", x=2)], [call("slow_sync", x=3), call("slow_async", x=4)]]
    start = time.perf_counter()
    results = execute_tool_calls(calls, toolbox)
    elapsed = time.perf_counter() - start
    assert [[m["content"] for m in rollout] for rollout in results.messages] == [["1", "2"], ["3", "4"]]
    assert SLEEP <= elapsed < CONCURRENT_BOUND


def test_hung_sync_tool_times_out_and_the_round_moves_on():
    release = threading.Event()
    finished = threading.Event()

    def hang(x: int) -> int:
        """Block until released.

        Args:
            x: A value.
        """
        release.wait(30)
        finished.set()
        return x

    start = time.perf_counter()
    results = execute_tool_calls([[call("hang", x=1), call("multiply", a=2, b=3)]], Toolbox([hang, multiply]),
                                 timeout=0.2)
    elapsed = time.perf_counter() - start
    assert error_of(results.messages[0][0]) == "Tool 'hang' timed out after 0.2 s."
    assert results.messages[0][1]["content"] == "6"
    assert results.num_failures == [1]
    assert elapsed < 3.0
    # The thread cannot be killed: it keeps running until the function returns.
    assert not finished.is_set()
    release.set()
    assert finished.wait(5)


def test_async_tool_times_out_and_is_cancelled():
    cancelled = threading.Event()

    async def sleepy(x: int) -> int:
        """Sleep for a long time.

        Args:
            x: A value.
        """
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return x

    start = time.perf_counter()
    results = execute_tool_calls([[call("sleepy", x=1)]], Toolbox([sleepy]), timeout=0.2)
    assert time.perf_counter() - start < 3.0
    assert error_of(results.messages[0][0]) == "Tool 'sleepy' timed out after 0.2 s."
    assert cancelled.wait(5)


def test_bad_executor_arguments():
    with pytest.raises(ValueError, match="positive number of seconds; got 0"):
        execute_tool_calls([[]], Toolbox([multiply]), timeout=0)
    with pytest.raises(ValueError, match="got 1 toolboxes for 2 rollouts"):
        execute_tool_calls([[], []], [Toolbox([multiply])])


def test_metrics():
    results = execute_tool_calls(
        [[call("multiply", a=1, b=2), call("nope")], [], [call("multiply", a=1, b="x")], []], Toolbox([multiply])
    )
    assert (results.num_calls, results.num_failures) == ([2, 0, 1, 0], [1, 0, 1, 0])
    assert results.metrics() == {"tools/call_frequency": 0.5, "tools/failure_frequency": 2 / 3}
    assert tool_metrics([0, 0], [0, 0]) == {"tools/call_frequency": 0.0, "tools/failure_frequency": 0.0}
    assert tool_metrics([], []) == {"tools/call_frequency": 0.0, "tools/failure_frequency": 0.0}


# ---- environments ---------------------------------------------------------------------------------------------------


class Counter:
    """Counts up to a target; reset appends the target to the prompt."""

    built = 0

    def __init__(self):
        Counter.built += 1
        self.resets = []
        self.total = 0
        self.target = None

    def reset(self, **row):
        self.resets.append(row)
        self.total, self.target = 0, row.get("target", 10)
        return f" Reach {self.target}."

    def add(self, n: int) -> int:
        """Add to the running total.

        Args:
            n: How much to add.
        """
        self.total += n
        return self.total

    async def peek(self) -> int:
        """The running total."""
        return self.total

    def get_reward(self) -> float:
        return float(self.total == self.target)

    def _helper(self):  # private: not a tool
        return None


class Guesser:
    """A second environment kind, with an async reward and no reset output."""

    def reset(self, **row):
        self.secret = row["secret"]
        self.guesses = []

    def guess(self, word: str) -> str:
        """Guess the secret word.

        Args:
            word: The guess.
        """
        self.guesses.append(word)
        return "right" if word == self.secret else "wrong"

    async def get_reward(self) -> float:
        await asyncio.sleep(0)
        return float(self.secret in self.guesses)


def test_pool_reuses_instances_and_resets_with_the_row_minus_environment():
    Counter.built = 0
    pool = EnvironmentPool(Counter)
    assert Counter.built == 1  # the first instance is built (and checked) at construction
    rows = [{"prompt": "p0", "target": 3, "environment": "ignored"}, {"prompt": "p1", "target": 5}]
    episodes = pool.acquire(rows)
    assert Counter.built == 2
    assert [e.environment.resets[-1] for e in episodes] == [
        {"prompt": "p0", "target": 3}, {"prompt": "p1", "target": 5}]  # no 'environment'
    assert [e.observation for e in episodes] == [" Reach 3.", " Reach 5."]
    assert [e.name for e in episodes] == ["Counter", "Counter"]
    first = {id(e.environment) for e in episodes}
    pool.release(episodes)
    again = pool.acquire([{"prompt": "p2", "target": 7}, {"prompt": "p3"}])
    assert Counter.built == 2 and {id(e.environment) for e in again} == first
    assert sorted(len(e.environment.resets) for e in again) == [2, 2]
    assert all(e.environment.total == 0 for e in again)


def test_environment_tools_are_public_methods_bound_to_each_instance():
    pool = EnvironmentPool(Counter, tools=[multiply])
    episodes = pool.acquire([{"target": 3}, {"target": 5}])
    assert episodes[0].toolbox.names == ["multiply", "add", "peek"]  # no reset, get_reward or _helper
    assert [s["function"]["name"] for s in episodes[0].toolbox.schemas] == ["multiply", "add", "peek"]
    calls = [[call("add", n=2), call("add", n=1), call("peek"), call("multiply", a=2, b=2)], [call("add", n=5)]]
    results = execute_tool_calls(calls, [e.toolbox for e in episodes])
    assert [m["content"] for m in results.messages[0]] == ["2", "3", "3", "4"]
    assert [e.environment.total for e in episodes] == [3, 5]


def test_calls_to_one_environment_run_in_order_one_at_a_time():
    class Log:
        def reset(self, **row):
            self.events = []

        def step(self, label: str, wait: float) -> str:
            """Record a step.

            Args:
                label: Its name.
                wait: Seconds it takes.
            """
            self.events.append(("start", label))
            time.sleep(wait)
            self.events.append(("end", label))
            return label

    episodes = EnvironmentPool(Log).acquire([{}, {}])
    calls = [[call("step", label="a", wait=SLEEP), call("step", label="b", wait=0.0)],
             [call("step", label="c", wait=SLEEP)]]
    start = time.perf_counter()
    execute_tool_calls(calls, [e.toolbox for e in episodes])
    elapsed = time.perf_counter() - start
    assert episodes[0].environment.events == [("start", "a"), ("end", "a"), ("start", "b"), ("end", "b")]
    assert elapsed < CONCURRENT_BOUND  # the two rollouts ran side by side


def test_environment_timeout_skips_later_calls_to_it():
    release = threading.Event()

    class Stuck:
        def reset(self, **row):
            pass

        def wait(self) -> str:
            """Block."""
            release.wait(30)
            return "done"

    (episode,) = EnvironmentPool(Stuck).acquire([{}])
    results = execute_tool_calls([[call("wait"), call("wait")]], episode.toolbox, timeout=0.2)
    release.set()
    assert [error_of(m) for m in results.messages[0]] == [
        "Tool 'wait' timed out after 0.2 s.",
        ("Tool 'wait' was not run: the earlier call to 'wait' in this turn timed out, so the environment's state is "
        "unknown."),
    ]
    assert results.num_failures == [2]


def test_append_to_prompt():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Play."}]
    assert append_to_prompt(messages, " Board: X.") == [{"role": "system", "content": "Be brief."},
                                                         {"role": "user", "content": "Play. Board: X."}]
    assert messages[1]["content"] == "Play."  # not modified in place
    assert append_to_prompt("Play.", " Board: X.") == "Play. Board: X."
    assert append_to_prompt("Play.", [" a", " b"]) == "Play. a b"
    assert append_to_prompt(messages, None) is messages
    image = {"type": "image", "image": "board.png"}
    assert append_to_prompt(messages, [image, " Your move."])[-1]["content"] == [
        {"type": "text", "text": "Play."}, image, {"type": "text", "text": " Your move."}]
    with pytest.raises(ValueError, match=r"no user message .* its roles are \['system'\]"):
        append_to_prompt(messages[:1], "x")
    with pytest.raises(TypeError, match="a text prompt cannot hold"):
        append_to_prompt("Play.", [image])
    with pytest.raises(TypeError, match="got int"):
        append_to_prompt("Play.", 3)


def test_reset_output_appended_to_prompts():
    pool = EnvironmentPool(Counter)
    rows = [{"prompt": [{"role": "user", "content": "Count."}], "target": 4}, {"prompt": "Count.", "target": 6}]
    episodes = pool.acquire(rows)
    prompts = [append_to_prompt(row["prompt"], e.observation) for row, e in zip(rows, episodes)]
    assert prompts == [[{"role": "user", "content": "Count. Reach 4."}], "Count. Reach 6."]


def test_reset_returning_a_wrong_type_or_raising():
    class Bad:
        def reset(self, **row):
            if row.get("fail"):
                raise KeyError("level")
            return {"board": 1}

    pool = EnvironmentPool(Bad)
    with pytest.raises(TypeError, match=r"Bad.reset\(\) returned a dict for row 0; it must return None, or a string"):
        pool.acquire([{}])
    with pytest.raises(RuntimeError, match=r"Bad.reset\(\) raised KeyError for row 1: 'level'"):
        pool.acquire([{}, {"fail": True}])


def test_async_reset():
    class Remote:
        async def reset(self, **row):
            await asyncio.sleep(0)
            return f" Task {row['task']}."

    episodes = EnvironmentPool(Remote).acquire([{"task": 1}, {"task": 2}])
    assert [e.observation for e in episodes] == [" Task 1.", " Task 2."]


def test_dict_routing():
    pool = EnvironmentPool({"count": Counter, "guess": Guesser})
    assert pool.names == ["count", "guess"]
    rows = [{"environment": "guess", "secret": "cat"}, {"environment": "count", "target": 2}]
    episodes = pool.acquire(rows)
    assert [type(e.environment) for e in episodes] == [Guesser, Counter]
    assert [e.toolbox.names for e in episodes] == [["guess"], ["add", "peek"]]
    assert episodes[0].environment.secret == "cat" and episodes[0].observation is None
    assert episodes[1].environment.resets[-1] == {"target": 2}
    pool.release(episodes)
    assert pool.acquire([{"environment": "guess", "secret": "dog"}])[0].environment is episodes[0].environment


def test_dict_routing_errors():
    pool = EnvironmentPool({"count": Counter, "guess": Guesser})
    with pytest.raises(ValueError, match=re.escape(
            "Row 1 asks for environment 'chess', which environment_factory does not have; the configured names are "
            "['count', 'guess'].")):
        pool.acquire([{"environment": "count"}, {"environment": "chess"}])
    with pytest.raises(ValueError, match=re.escape(
            "environment_factory is a dict of environments ['count', 'guess'], so each row must name its environment "
            "in an 'environment' column; row 0 has columns ['prompt'].")):
        pool.acquire([{"prompt": "hi"}])
    with pytest.raises(ValueError, match=re.escape(
            "environment_factory is a dict of environments ['count', 'guess'], so each dataset row must name its "
            "environment in an 'environment' column; the dataset has columns ['prompt']. Add the column, or pass a "
            "single factory.")):
        pool.check_dataset(["prompt"])
    with pytest.raises(ValueError, match="Row 2 asks for environment 'chess'"):
        pool.check_dataset(["prompt", "environment"], ["count", "guess", "chess"])
    pool.check_dataset(["prompt", "environment"], ["count", "guess"])
    with pytest.raises(ValueError, match="empty dict"):
        EnvironmentPool({})


def test_reset_must_accept_the_columns():
    class Strict:
        def reset(self, seed: int = 0):
            pass

    pool = EnvironmentPool(Strict)
    with pytest.raises(TypeError, match=re.escape(
            "Strict.reset() cannot take the row's columns ['prompt', 'seed'] (got an unexpected keyword argument "
            "'prompt'). Define it as `def reset(self, **kwargs)`")):
        pool.check_dataset(["prompt", "seed"])
    with pytest.raises(TypeError, match=r"Strict.reset\(\) cannot take the row's columns \['prompt'\] for row 0"):
        pool.acquire([{"prompt": "x"}])


def test_get_reward_as_reward_function():
    pool = EnvironmentPool({"count": Counter, "guess": Guesser})
    assert [f.__name__ for f in pool.reward_funcs] == ["Counter", "Guesser"]
    episodes = pool.acquire([{"environment": "count", "target": 2}, {"environment": "count", "target": 3},
                             {"environment": "guess", "secret": "cat"}, {"environment": "guess", "secret": "dog"}])
    episodes[0].environment.add(2)
    episodes[2].environment.guess("cat")
    scorer = RewardScorer(pool.reward_funcs)  # the sync Counter reward and the async Guesser reward
    assert scorer.names == ["Counter", "Guesser"]
    environments = [e.environment for e in episodes]
    scores = scorer.score(["p"] * 4, ["c"] * 4, [[1]] * 4, columns={"environments": environments})
    # each reward is None (NaN) for the environments of the other class
    assert scores.rewards.nan_to_num(-1).tolist() == [[1.0, -1], [0.0, -1], [-1, 1.0], [-1, 0.0]]
    reward = pool.reward_funcs[0]
    with pytest.raises(TypeError, match=re.escape("needs `environments=[...]`")):
        reward(completions=["c"])
    with pytest.raises(ValueError, match="got 1 environments for 2 completions"):
        reward(completions=["c", "d"], environments=environments[:1])


def test_environment_without_get_reward_has_no_reward_function():
    class Plain:
        def reset(self, **row):
            pass

    assert EnvironmentPool(Plain).reward_funcs == []


class NeedsSize:
    def __init__(self, size):
        self.size = size

    def reset(self, **row):
        pass


class NoDoc:
    def reset(self, **row):
        pass

    def move(self, direction: str) -> str:
        return direction


class NoHint:
    def reset(self, **row):
        pass

    def move(self, direction) -> str:
        """Move.

        Args:
            direction: Where.
        """
        return direction


class NoReset:
    def move(self, direction: str) -> str:
        """Move.

        Args:
            direction: Where.
        """
        return direction


class Clash:
    def reset(self, **row):
        pass

    def multiply(self, a: int, b: int) -> int:
        """Multiply.

        Args:
            a: A factor.
            b: A factor.
        """
        return a * b


@pytest.mark.parametrize(
    ("factory", "tools", "error", "match"),
    [
        (NeedsSize, None, TypeError, re.escape(
            "environment_factory (NeedsSize) needs the argument(s) ['size'] to be built, but environments are built "
            "with no arguments (one per rollout). Give them defaults, or bind them: "
            "`functools.partial(NeedsSize, size=...)` or `lambda: NeedsSize(...)`.")),
        ({"grid": NeedsSize}, None, TypeError, r"environment_factory\['grid'\] \(NeedsSize\) needs the argument"),
        (functools.partial(NeedsSize, size=3), None, None, None),
        (Counter(), None, TypeError, ("environment_factory must be a class or a zero-argument callable returning a "
                                      "new environment; got a Counter instance. Pass the class itself.")),
        (NoDoc, None, ValueError, r"Tool NoDoc.move has no docstring; add a Google-style docstring"),
        (NoHint, None, TypeError, r"Tool NoHint.move has no type hint on argument 'direction'"),
        (NoReset, None, TypeError, r"environment_factory builds NoReset, which has no reset\(\) method"),
        (Clash, [multiply], ValueError, re.escape(
            "Two tools are named 'multiply': tools[0] (multiply) and Clash.multiply. The model calls a tool by name, "
            "so names must be unique; rename one.")),
        ({1: Counter}, None, TypeError, r"The keys of environment_factory must be strings"),
    ],
)
def test_bad_environments_are_errors_at_construction(factory, tools, error, match):
    if error is None:
        assert EnvironmentPool(factory, tools=tools).acquire([{}])[0].environment.size == 3
        return
    with pytest.raises(error, match=match):
        EnvironmentPool(factory, tools=tools)


def test_factory_that_raises():
    def broken():
        raise OSError("no server")

    with pytest.raises(RuntimeError, match=r"environment_factory \(broken\) raised OSError while building an "
                                           r"environment: no server"):
        EnvironmentPool(broken)


@pytest.mark.parametrize(
    "func",
    [tool_schemas, Toolbox, tool_metrics, execute_tool_calls, trl.agents.tools.ToolResults, EnvironmentPool,
     append_to_prompt],
    ids=lambda func: func.__name__,
)
def test_docstring_examples(func):
    module = trl.agents.environments if func in (EnvironmentPool, append_to_prompt) else trl.agents.tools
    results = execute_tool_calls([[call("multiply", a=2, b=3)]], Toolbox([multiply]))
    globs = {**vars(module), "multiply": multiply, "results": results}
    lines = [line for line in func.__doc__.splitlines() if line.strip() not in ("```", "```python")]
    test = doctest.DocTestParser().get_doctest("\n".join(lines), globs, func.__name__, None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.failures == 0 and runner.tries > 0


def test_imports_only_torch_transformers_and_the_standard_library():
    code = ("import sys, trl.agents; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'datasets', 'accelerate', 'peft', 'vllm'}), "
            "sorted(m for m in sys.modules if m.startswith('trl.') and not m.startswith('trl.agents')))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.splitlines() == ["[] ['trl._event_loop', 'trl._lazy']"]


def test_a_result_that_cannot_become_text_is_a_failure_not_a_crash():
    class Unprintable:
        def __str__(self):
            raise RuntimeError("no text")

    def odd() -> str:
        """Return something that cannot be written as text."""
        return Unprintable()

    results = execute_tool_calls([[{"name": "odd", "arguments": {}}]], Toolbox([odd]))
    assert results.num_failures == [1]
    assert "returned a Unprintable that cannot be written as text (RuntimeError: no text)" in (
        results.messages[0][0]["content"])
