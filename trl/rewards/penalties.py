"""Penalties computed from completion token ids alone: overlong completions and repeated n-grams.

The factories return instances of small callable classes rather than closures, so the reward functions can be
pickled into another process (async GRPO's rollout worker). The instance's `__name__` becomes the metric key
`rewards/<__name__>/mean`.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any


def _token_ids(ids: Any) -> list | None:
    # Tensors and arrays become lists; anything that is not a sequence of ids is treated as malformed.
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        return None
    return list(ids)


def _integer(name: str, value: Any, factory: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{factory}: `{name}` must be an integer, got {value!r}.")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{factory}: `{name}` must be an integer, got {value!r}.") from None


class SoftOverlongPunishment:
    """Callable returned by [`get_soft_overlong_punishment`]; see there."""

    def __init__(self, max_completion_len: int, soft_punish_cache: int):
        factory = "get_soft_overlong_punishment"
        max_completion_len = _integer("max_completion_len", max_completion_len, factory)
        soft_punish_cache = _integer("soft_punish_cache", soft_punish_cache, factory)
        if max_completion_len < 1:
            raise ValueError(f"{factory}: `max_completion_len` must be >= 1, got {max_completion_len}.")
        if soft_punish_cache < 0:
            raise ValueError(f"{factory}: `soft_punish_cache` must be >= 0, got {soft_punish_cache}.")
        if soft_punish_cache > max_completion_len:
            raise ValueError(
                f"{factory}: `soft_punish_cache` ({soft_punish_cache}) must not exceed `max_completion_len` "
                f"({max_completion_len}); the penalty ramp starts at max_completion_len - soft_punish_cache."
            )
        self.max_completion_len = max_completion_len
        self.soft_punish_cache = soft_punish_cache
        self.__name__ = "soft_overlong_punishment_reward"

    def _score(self, length: int) -> float:
        start = self.max_completion_len - self.soft_punish_cache
        if length <= start:
            return 0.0
        if length <= self.max_completion_len:  # only reachable when soft_punish_cache > 0
            return (start - length) / self.soft_punish_cache
        return -1.0

    def __call__(self, completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
        rewards = []
        for ids in completion_ids:
            ids = _token_ids(ids)
            rewards.append(0.0 if ids is None else self._score(len(ids)))
        return rewards

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(max_completion_len={self.max_completion_len}, "
            f"soft_punish_cache={self.soft_punish_cache})"
        )


def get_soft_overlong_punishment(max_completion_len: int, soft_punish_cache: int) -> SoftOverlongPunishment:
    r"""DAPO's soft overlong punishment ([paper](https://huggingface.co/papers/2503.14476), Eq. 13).

    With `L = len(completion_ids)`, `L_max = max_completion_len` and `C = soft_punish_cache`:

    - `0.0` when `L <= L_max - C`;
    - `(L_max - C - L) / C` when `L_max - C < L <= L_max` (a linear ramp from 0 down to -1);
    - `-1.0` when `L > L_max`.

    Args:
        max_completion_len (`int`):
            Maximum completion length `L_max` in tokens, at least 1.
        soft_punish_cache (`int`):
            Length `C` of the ramp before `L_max`, between 0 and `max_completion_len`. With 0 there is no ramp.

    Returns:
        A picklable callable `f(completion_ids, **kwargs) -> list[float]` with `__name__` set to
        `"soft_overlong_punishment_reward"`. A malformed entry of `completion_ids` scores 0.0.

    Raises:
        `ValueError`: if `max_completion_len < 1`, `soft_punish_cache < 0` or `soft_punish_cache > max_completion_len`.
        `TypeError`: if either argument is not an integer.

    Example:
        ```python
        >>> from trl.rewards import get_soft_overlong_punishment
        >>> reward_func = get_soft_overlong_punishment(max_completion_len=10, soft_punish_cache=4)
        >>> reward_func(completion_ids=[[1] * 6, [1] * 7, [1] * 10, [1] * 11])  # ramp starts after 10 - 4 = 6 tokens
        [0.0, -0.25, -1.0, -1.0]
        ```
    """
    return SoftOverlongPunishment(max_completion_len, soft_punish_cache)


class RepetitionPenalty:
    """Callable returned by [`get_repetition_penalty_reward`]; see there."""

    def __init__(self, ngram_size: int = 3, max_penalty: float = -1.0):
        factory = "get_repetition_penalty_reward"
        ngram_size = _integer("ngram_size", ngram_size, factory)
        if ngram_size < 1:
            raise ValueError(f"{factory}: `ngram_size` must be >= 1, got {ngram_size}.")
        if not isinstance(max_penalty, (int, float)) or isinstance(max_penalty, bool):
            raise TypeError(f"{factory}: `max_penalty` must be a number, got {max_penalty!r}.")
        if max_penalty > 0:
            raise ValueError(
                f"{factory}: `max_penalty` is a penalty and must be <= 0, got {max_penalty}. Pass a negative value "
                f"such as {-max_penalty}."
            )
        self.ngram_size = ngram_size
        self.max_penalty = float(max_penalty)
        self.__name__ = "repetition_penalty_reward"

    def _score(self, ids: list) -> float:
        n = self.ngram_size
        total = len(ids) - n + 1
        if total <= 0:
            return 0.0
        try:
            unique = len({tuple(ids[i : i + n]) for i in range(total)})
        except TypeError:  # unhashable "ids": not token ids at all
            return 0.0
        # `+ 0.0` turns the -0.0 of a repetition-free completion into 0.0.
        return (1.0 - unique / total) * self.max_penalty + 0.0

    def __call__(self, completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
        rewards = []
        for ids in completion_ids:
            ids = _token_ids(ids)
            rewards.append(0.0 if ids is None else self._score(ids))
        return rewards

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ngram_size={self.ngram_size}, max_penalty={self.max_penalty})"


def get_repetition_penalty_reward(ngram_size: int = 3, max_penalty: float = -1.0) -> RepetitionPenalty:
    r"""Penalise repeated token n-grams ([Demystifying Long CoT](https://huggingface.co/papers/2502.03373)).

    A completion of `L` tokens has `total = L - n + 1` n-grams, of which `unique` are distinct. The reward is
    `(1 - unique / total) * max_penalty`: 0.0 for a completion without repeats, approaching `max_penalty` as one
    n-gram is repeated over and over. Completions shorter than `n` tokens score 0.0.

    Args:
        ngram_size (`int`, *optional*, defaults to `3`):
            Size `n` of the token n-grams, at least 1.
        max_penalty (`float`, *optional*, defaults to `-1.0`):
            Penalty for a completion made entirely of repeats; must be <= 0.

    Returns:
        A picklable callable `f(completion_ids, **kwargs) -> list[float]` with `__name__` set to
        `"repetition_penalty_reward"`. A malformed entry of `completion_ids` scores 0.0.

    Raises:
        `ValueError`: if `max_penalty > 0` or `ngram_size < 1`.

    Example:
        ```python
        >>> from trl.rewards import get_repetition_penalty_reward
        >>> reward_func = get_repetition_penalty_reward(ngram_size=3, max_penalty=-1.0)
        >>> # [1, 2, 3, 1, 2, 3] has 4 trigrams, 3 distinct: (1 - 3/4) * -1 = -0.25
        >>> reward_func(completion_ids=[[1, 2, 3, 1, 2, 3], [1, 2, 3, 4], [1, 2]])
        [-0.25, 0.0, 0.0]
        ```
    """
    return RepetitionPenalty(ngram_size, max_penalty)
