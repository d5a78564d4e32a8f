"""The reference library's module path for the accuracy rewards; they are implemented in `trl.rewards.accuracy`.

Example:
    ```python
    >>> from trl.rewards.accuracy_rewards import accuracy_reward, reasoning_accuracy_reward
    ```
"""

from .accuracy import accuracy_reward, get_cosine_scaled_reward, reasoning_accuracy_reward

__all__ = ["accuracy_reward", "get_cosine_scaled_reward", "reasoning_accuracy_reward"]
