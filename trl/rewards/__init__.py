"""Reward functions for online trainers (GRPO, RLOO): `(completions, **kwargs) -> list[float | None]`.

Importing this package needs only the standard library; `math_verify` (for the accuracy rewards) is imported when
those rewards are called.
"""

from .accuracy import accuracy_reward, get_cosine_scaled_reward, reasoning_accuracy_reward
from .format import think_format_reward
from .penalties import get_repetition_penalty_reward, get_soft_overlong_punishment

__all__ = [
    "accuracy_reward",
    "get_cosine_scaled_reward",
    "get_repetition_penalty_reward",
    "get_soft_overlong_punishment",
    "reasoning_accuracy_reward",
    "think_format_reward",
]
