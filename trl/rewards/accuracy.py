r"""Math-answer rewards checked with [math_verify](https://github.com/huggingface/Math-Verify).

`math_verify` is optional: it is imported when a reward is called, not when `trl.rewards` is imported, and a missing
install raises an `ImportError` that says how to get it (`pip install "trl[math-verify]"`).

Completions may be conversational (`[{"role": "assistant", "content": ...}]`; the last assistant message is read, which
is the only message for a single-turn completion) or plain strings.
"""

from __future__ import annotations

import importlib.metadata
import math
import operator
import re
import threading
from collections.abc import Callable
from typing import Any

from ._text import completion_text

# math_verify enforces its timeouts with SIGALRM, which only the main thread may install.
_PARSE_TIMEOUT_S = 10
_VERIFY_TIMEOUT_S = 5

_INSTALL_HINT = 'pip install "trl[math-verify]"` (or `pip install math-verify`)'


def _math_verify():
    """Import `math_verify` on demand, with an install hint when it is missing."""
    try:
        import math_verify
        from latex2sympy2_extended import NormalizationConfig
    except ImportError as error:
        raise ImportError(
            f"The math rewards in `trl.rewards` need the `math_verify` package, which is not installed. "
            f"Install it with `{_INSTALL_HINT}."
        ) from error
    return math_verify, NormalizationConfig


def _math_verify_version() -> tuple[int, int] | None:
    """Installed math_verify version as `(major, minor)`; `None` when the metadata cannot be read."""
    try:
        text = importlib.metadata.version("math-verify")
    except importlib.metadata.PackageNotFoundError:
        return None
    match = re.match(r"(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


class _Verifier:
    """Parses gold solutions and completion answers, and compares them. Never raises on bad text."""

    def __init__(self):
        self._mv, normalization = _math_verify()
        in_main_thread = threading.current_thread() is threading.main_thread()
        version = _math_verify_version()
        if not in_main_thread and version is not None and version < (0, 8):
            # Before 0.8, math_verify always installs a SIGALRM handler, which raises outside the main thread: every
            # sample would silently fail to parse. Say so instead.
            raise ImportError(
                "math_verify >= 0.8.0 is needed to compute math rewards outside the main thread (older versions can "
                "only time out with signals, which work in the main thread alone). Upgrade it with "
                '`pip install -U "math-verify>=0.8.0"`.'
            )
        self._parse_timeout = _PARSE_TIMEOUT_S if in_main_thread else None
        self._verify_timeout = _VERIFY_TIMEOUT_S if in_main_thread else None
        # Answers must sit in LaTeX (`$...$`, `\[...\]`) or `\boxed{}`; `\boxed` wins over other matches and the first
        # match is kept, so a model cannot hedge by listing several answers.
        self._answer_config = [
            self._mv.LatexExtractionConfig(
                normalization_config=normalization(
                    basic_latex=True, units=True, malformed_operators=False, nits=False, boxed="all"
                ),
                boxed_match_priority=0,
                try_extract_without_anchor=False,
            )
        ]

    def gold(self, solution: Any) -> list:
        if solution is None:
            return []
        try:
            return self._mv.parse(str(solution), extraction_mode="first_match", parsing_timeout=self._parse_timeout)
        except Exception:  # math_verify can raise on pathological LaTeX or time out
            return []

    def answer(self, text: str | None) -> list:
        if not text:
            return []
        try:
            return self._mv.parse(
                text,
                extraction_config=self._answer_config,
                extraction_mode="first_match",
                parsing_timeout=self._parse_timeout,
            )
        except Exception:
            return []

    def is_correct(self, gold: list, answer: list) -> bool:
        if not answer:
            return False
        try:
            return bool(self._mv.verify(gold, answer, timeout_seconds=self._verify_timeout))
        except Exception:
            return False


def _check_lengths(name: str, completions: list, solution: list) -> None:
    if len(completions) != len(solution):
        raise ValueError(
            f"{name}: got {len(completions)} completions but {len(solution)} solutions; the dataset's `solution` "
            f"column must hold one gold answer per prompt."
        )


def _score(
    texts: list[str | None], solution: list, log_extra: Callable[[str, list], None] | None
) -> list[float | None]:
    """Score answer texts against gold solutions. `None` in `texts` means "no answer to check" and scores 0.0."""
    verifier = _Verifier()
    rewards, gold_logged, answer_logged = [], [], []
    for text, sol in zip(texts, solution):
        gold = verifier.gold(sol)
        gold_logged.append(str(gold))
        if not gold:  # an unparseable gold answer cannot grade anything: skip the sample
            rewards.append(None)
            answer_logged.append("")
        elif text is None:
            rewards.append(0.0)
            answer_logged.append("")
        else:
            answer = verifier.answer(text)
            rewards.append(float(verifier.is_correct(gold, answer)))
            answer_logged.append(str(answer))
    if log_extra is not None:
        log_extra("solution", [str(sol) for sol in solution])
        log_extra("gold_parsed", gold_logged)
        log_extra("answer_parsed", answer_logged)
    return rewards


def accuracy_reward(
    completions: list[list[dict[str, Any]]] | list[str],
    solution: list[str],
    log_extra: Callable[[str, list], None] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    r"""Reward 1.0 when the completion's final answer is mathematically equal to the gold solution, else 0.0.

    The gold `solution` is parsed with `math_verify.parse`; when nothing can be parsed from it the reward is `None`,
    so the trainer skips the sample. The answer is extracted from the completion as LaTeX (`\boxed{}` first, units
    normalised, first match) and compared with `math_verify.verify`. A completion without an extractable answer, or
    one that makes `math_verify` fail, scores 0.0. Parsing and verification time out after 10 s and 5 s when called
    from the main thread; elsewhere math_verify cannot install its alarm, so the timeouts are off.

    Args:
        completions (`list[list[dict]]` or `list[str]`):
            Conversational completions (the last assistant message is read) or plain strings.
        solution (`list[str]`):
            Gold answers, one per completion (the dataset's `solution` column).
        log_extra (`Callable[[str, list], None]`, *optional*):
            Called with the columns `"solution"`, `"gold_parsed"` and `"answer_parsed"` (strings; `""` where no answer
            was parsed) for the completions table.
        **kwargs:
            Ignored; the trainer passes every dataset column and its own extras.

    Returns:
        `list[float | None]`: 1.0, 0.0, or `None` (unparseable gold) per completion.

    Raises:
        `ImportError`: if `math_verify` is not installed (`pip install "trl[math-verify]"`).
        `ValueError`: if `completions` and `solution` differ in length.

    Example:
        ```python
        >>> from trl.rewards import accuracy_reward
        >>> solution = [r"\frac{1}{3}", r"\frac{1}{3}", "not math"]
        >>> completions = [
        ...     [{"role": "assistant", "content": r"My answer is \boxed{\frac{1}{3}}"}],
        ...     [{"role": "assistant", "content": r"My answer is \boxed{\frac{1}{2}}"}],
        ...     r"My answer is \boxed{1}",
        ... ]
        >>> accuracy_reward(completions, solution)
        [1.0, 0.0, None]
        ```
    """
    _check_lengths("accuracy_reward", completions, solution)
    texts = [completion_text(completion, which="final") for completion in completions]
    return _score(texts, solution, log_extra)


def _after_last_delimiter(text: str | None, delimiters: list[str]) -> str | None:
    """Text after the right-most occurrence of any delimiter, or `None` when no delimiter occurs."""
    if text is None:
        return None
    best_end = -1
    for delimiter in delimiters:
        position = text.rfind(delimiter)
        if position != -1:
            best_end = max(best_end, position + len(delimiter))
    return None if best_end == -1 else text[best_end:]


def reasoning_accuracy_reward(
    completions: list[list[dict[str, Any]]] | list[str],
    solution: list[str],
    reasoning_delimiters: list[str] | None = None,
    log_extra: Callable[[str, list], None] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    r"""Like [`accuracy_reward`], but only the text after the reasoning block is graded.

    The completion is cut after the last occurrence of any delimiter in `reasoning_delimiters`, so an answer written
    inside the reasoning does not count. A completion without any delimiter has not finished reasoning and scores
    0.0. An unparseable gold solution still gives `None`.

    Args:
        completions (`list[list[dict]]` or `list[str]`):
            Conversational completions (the last assistant message is read) or plain strings.
        solution (`list[str]`):
            Gold answers, one per completion.
        reasoning_delimiters (`list[str]`, *optional*, defaults to `["</think>"]`):
            Strings that close the reasoning block. With several, the right-most occurrence of any of them is used.
        log_extra (`Callable[[str, list], None]`, *optional*):
            As in [`accuracy_reward`].
        **kwargs:
            Ignored; the trainer passes every dataset column and its own extras.

    Returns:
        `list[float | None]`: 1.0, 0.0, or `None` (unparseable gold) per completion.

    Raises:
        `ImportError`: if `math_verify` is not installed (`pip install "trl[math-verify]"`).
        `ValueError`: if `completions` and `solution` differ in length, or a delimiter is empty.

    Example:
        ```python
        >>> from trl.rewards import reasoning_accuracy_reward
        >>> solution = [r"\frac{1}{3}", r"\frac{1}{3}", r"\frac{1}{3}"]
        >>> completions = [
        ...     r"<think> Reasoning. </think> The answer is \boxed{\frac{1}{3}}",
        ...     r"<think> The answer is \boxed{\frac{1}{3}} </think> The answer is \boxed{\frac{1}{2}}",
        ...     r"<think> Unfinished reasoning. The answer is \boxed{\frac{1}{3}}",
        ... ]
        >>> reasoning_accuracy_reward(completions, solution)
        [1.0, 0.0, 0.0]
        ```
    """
    if reasoning_delimiters is None:
        reasoning_delimiters = ["</think>"]
    elif isinstance(reasoning_delimiters, str):
        reasoning_delimiters = [reasoning_delimiters]
    if not reasoning_delimiters or any(not isinstance(d, str) or not d for d in reasoning_delimiters):
        raise ValueError(
            f"reasoning_accuracy_reward: `reasoning_delimiters` must be non-empty strings, got {reasoning_delimiters!r}."
        )
    _check_lengths("reasoning_accuracy_reward", completions, solution)
    texts = [
        _after_last_delimiter(completion_text(completion, which="final"), reasoning_delimiters)
        for completion in completions
    ]
    return _score(texts, solution, log_extra)


class CosineScaledReward:
    """Callable returned by [`get_cosine_scaled_reward`]; see there."""

    def __init__(
        self,
        max_len: int,
        min_value_wrong: float = -1.0,
        max_value_wrong: float = -0.5,
        min_value_correct: float = 0.5,
        max_value_correct: float = 1.0,
    ):
        try:
            valid = not isinstance(max_len, bool) and operator.index(max_len) >= 1
        except TypeError:
            valid = False
        if not valid:
            raise ValueError(f"get_cosine_scaled_reward: `max_len` must be a positive integer, got {max_len!r}.")
        self.max_len = operator.index(max_len)
        self.min_value_wrong = float(min_value_wrong)
        self.max_value_wrong = float(max_value_wrong)
        self.min_value_correct = float(min_value_correct)
        self.max_value_correct = float(max_value_correct)
        self.__name__ = "cosine_scaled_reward"

    def _value(self, num_tokens: int, correct: bool) -> float:
        progress = min(num_tokens / self.max_len, 1.0)
        cosine = math.cos(progress * math.pi)  # 1 at length 0, -1 at max_len
        if correct:  # long correct answers decay from max_value_correct towards min_value_correct
            start, end = self.max_value_correct, self.min_value_correct
        else:  # short wrong answers get min_value_wrong (the harshest); longer ones relax towards max_value_wrong
            start, end = self.min_value_wrong, self.max_value_wrong
        return end + 0.5 * (start - end) * (1.0 + cosine)

    def __call__(
        self,
        completions: list[list[dict[str, Any]]] | list[str],
        solution: list[str],
        completion_ids: list[list[int]],
        **kwargs: Any,
    ) -> list[float | None]:
        _check_lengths("cosine_scaled_reward", completions, solution)
        if len(completion_ids) != len(completions):
            raise ValueError(
                f"cosine_scaled_reward: got {len(completions)} completions but {len(completion_ids)} completion_ids."
            )
        verifier = _Verifier()
        rewards = []
        for completion, sol, ids in zip(completions, solution, completion_ids):
            gold = verifier.gold(sol)
            try:
                num_tokens = len(ids)
            except TypeError:
                num_tokens = None
            if not gold or num_tokens is None:  # nothing to grade against, or no length to scale by
                rewards.append(None)
                continue
            answer = verifier.answer(completion_text(completion, which="final"))
            rewards.append(self._value(num_tokens, verifier.is_correct(gold, answer)))
        return rewards

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(max_len={self.max_len}, min_value_wrong={self.min_value_wrong}, "
            f"max_value_wrong={self.max_value_wrong}, min_value_correct={self.min_value_correct}, "
            f"max_value_correct={self.max_value_correct})"
        )


def get_cosine_scaled_reward(
    max_len: int,
    min_value_wrong: float = -1.0,
    max_value_wrong: float = -0.5,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
) -> CosineScaledReward:
    r"""Length-aware correctness reward on a cosine schedule ([Demystifying Long CoT](https://huggingface.co/papers/2502.03373)).

    With `progress = min(len(completion_ids) / max_len, 1)` and `c = cos(progress * pi)` (1 for an empty completion,
    0 at half of `max_len`, -1 at `max_len` and beyond):

    - correct: `min_value_correct + 0.5 * (max_value_correct - min_value_correct) * (1 + c)`, so short correct answers
      score highest (`max_value_correct`) and the reward decays to `min_value_correct` at `max_len`;
    - wrong: `max_value_wrong + 0.5 * (min_value_wrong - max_value_wrong) * (1 + c)`, the same formula with the
      wrong-answer bounds swapped, so short wrong answers are penalised most (`min_value_wrong`) and the penalty
      relaxes to `max_value_wrong` at `max_len` (a long attempt that fails is punished less than a quick guess).

    Worked example with the defaults and `max_len=100`: a correct answer scores 1.0 at 0 tokens, 0.75 at 50 tokens
    (`0.5 + 0.5 * 0.5 * (1 + 0)`) and 0.5 at 100 tokens or more; a wrong answer scores -1.0, -0.75
    (`-0.5 + 0.5 * -0.5 * (1 + 0)`) and -0.5 at the same lengths.

    Correctness is decided as in [`accuracy_reward`]. The reward is `None` when the gold solution is unparseable (or
    an entry of `completion_ids` has no length).

    Args:
        max_len (`int`):
            Length in tokens at which the schedule reaches its end value.
        min_value_wrong (`float`, *optional*, defaults to `-1.0`):
            Reward of a wrong answer of length 0.
        max_value_wrong (`float`, *optional*, defaults to `-0.5`):
            Reward of a wrong answer of length `max_len` or more.
        min_value_correct (`float`, *optional*, defaults to `0.5`):
            Reward of a correct answer of length `max_len` or more.
        max_value_correct (`float`, *optional*, defaults to `1.0`):
            Reward of a correct answer of length 0.

    Returns:
        A picklable callable `f(completions, solution, completion_ids, **kwargs) -> list[float | None]` with `__name__`
        set to `"cosine_scaled_reward"`. Calling it needs `math_verify`.

    Raises:
        `ValueError`: if `max_len` is not a positive integer.

    Example:
        ```python
        >>> from trl.rewards import get_cosine_scaled_reward
        >>> reward_func = get_cosine_scaled_reward(max_len=100)
        >>> completions = [r"The answer is \boxed{2}", r"The answer is \boxed{3}"]
        >>> rewards = reward_func(completions, solution=["2", "2"], completion_ids=[[0] * 50, [0] * 50])
        >>> [round(reward, 4) for reward in rewards]
        [0.75, -0.75]
        ```
    """
    return CosineScaledReward(max_len, min_value_wrong, max_value_wrong, min_value_correct, max_value_correct)
