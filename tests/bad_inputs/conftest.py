"""Shared fixtures of the bad-input suite, and its tally: how many rows gave a clear error, a warning, or trained."""

import pytest


@pytest.fixture(autouse=True)
def _quiet_progress_bars():
    import datasets

    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


def pytest_terminal_summary(terminalreporter):
    from .harness import OUTCOMES

    if OUTCOMES:
        total = sum(OUTCOMES.values())
        terminalreporter.write_line(
            f"bad-input suite: {total} inputs tried: {OUTCOMES['error']} clear errors, {OUTCOMES['warn']} warnings, "
            f"{OUTCOMES['ok']} legitimate inputs that go ahead"
        )
