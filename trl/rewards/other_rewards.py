"""The reference library's module path for the length and repetition penalties; they are implemented in
`trl.rewards.penalties`.

Example:
    ```python
    >>> from trl.rewards.other_rewards import get_soft_overlong_punishment
    ```
"""

from .penalties import get_repetition_penalty_reward, get_soft_overlong_punishment

__all__ = ["get_repetition_penalty_reward", "get_soft_overlong_punishment"]
