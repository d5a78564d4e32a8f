"""The bad-input suite's table rows and how one is checked.

Each row is a [`Case`]: a function that builds (and, where the problem only shows while training, trains) something
from a bad input, and what must happen: a clear error (`"error"`: an exception of the given type whose message
matches), a warning (`"warn"`), or a run that goes ahead (`"ok"`: the input is unusual but legitimate, e.g. text
documents longer than `max_length`). A regression is one failing row. `conftest.py` counts the rows by outcome and
prints the totals at the end of the run.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest


OUTCOMES: Counter = Counter()  # outcome -> rows checked in this session (printed by conftest.py)


@dataclass
class Outcome:
    """What a row's build did, for its `then` check: the value it returned (`None` when it raised), the exception of an
    `"error"` row, and the messages of the warnings it raised (`"warn"` and `"ok"` rows)."""

    value: Any = None
    error: BaseException | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Case:
    """One bad input and the outcome it must have.

    Args:
        id (`str`): the row's name (the pytest id).
        build (`Callable`): `build(env)`; `env` is the table's fixture (tmp_path, tiny model and tokenizer, ...).
        expect (`str`): `"error"`, `"warn"` or `"ok"`.
        match (`str`, *optional*): a regex the error or warning message must match (`re.search`).
        exc (`type`, *optional*, defaults to `ValueError`): the exception class of an `"error"` row (a subclass
            matches too, as with `pytest.raises`).
        warning (`type`, *optional*, defaults to `UserWarning`): the warning class of a `"warn"` row.
        then (`Callable`, *optional*): `then(env, outcome)`, more assertions once the outcome is checked (e.g. what a
            run that went ahead kept, or the step a stopped run reached); `outcome` is an [`Outcome`].
    """

    id: str
    build: Callable[[Any], Any]
    expect: Literal["error", "warn", "ok"]
    match: str | None = None
    exc: type[BaseException] = ValueError
    warning: type[Warning] = UserWarning
    then: Callable[[Any, Outcome], None] | None = None

    def param(self, marks=()):
        return pytest.param(self, id=self.id, marks=marks)


def error(id: str, build: Callable, match: str, exc: type[BaseException] = ValueError, then: Callable | None = None,
          marks=()):
    return Case(id, build, "error", match, exc=exc, then=then).param(marks)


def warn(id: str, build: Callable, match: str, warning: type[Warning] = UserWarning, then: Callable | None = None,
         marks=()):
    return Case(id, build, "warn", match, warning=warning, then=then).param(marks)


def ok(id: str, build: Callable, then: Callable | None = None, marks=()):
    return Case(id, build, "ok", then=then).param(marks)


def check(case: Case, env: Any) -> None:
    """Run `case.build(env)` and assert its outcome; an error message must never advise `weights_only=False`."""
    outcome = Outcome()
    if case.expect == "error":
        with pytest.raises(case.exc, match=case.match) as raised:
            case.build(env)
        assert "weights_only=False" not in str(raised.value)
        outcome.error = raised.value
    elif case.expect == "warn":
        with pytest.warns(case.warning, match=case.match) as caught:
            outcome.value = case.build(env)
        outcome.warnings = [str(w.message) for w in caught]
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outcome.value = case.build(env)
        outcome.warnings = [str(w.message) for w in caught]
    if case.then is not None:
        case.then(env, outcome)
    OUTCOMES[case.expect] += 1
