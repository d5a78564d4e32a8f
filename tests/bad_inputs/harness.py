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
from dataclasses import dataclass
from typing import Any, Literal

import pytest


OUTCOMES: Counter = Counter()  # outcome -> rows checked in this session (printed by conftest.py)


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
    """

    id: str
    build: Callable[[Any], Any]
    expect: Literal["error", "warn", "ok"]
    match: str | None = None
    exc: type[BaseException] = ValueError
    warning: type[Warning] = UserWarning

    def param(self):
        return pytest.param(self, id=self.id)


def error(id: str, build: Callable, match: str, exc: type[BaseException] = ValueError):
    return Case(id, build, "error", match, exc=exc).param()


def warn(id: str, build: Callable, match: str, warning: type[Warning] = UserWarning):
    return Case(id, build, "warn", match, warning=warning).param()


def ok(id: str, build: Callable):
    return Case(id, build, "ok").param()


def check(case: Case, env: Any) -> None:
    """Run `case.build(env)` and assert its outcome; an error message must never advise `weights_only=False`."""
    if case.expect == "error":
        with pytest.raises(case.exc, match=case.match) as raised:
            case.build(env)
        assert "weights_only=False" not in str(raised.value)
    elif case.expect == "warn":
        with pytest.warns(case.warning, match=case.match):
            case.build(env)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            case.build(env)
    OUTCOMES[case.expect] += 1
