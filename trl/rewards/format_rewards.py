"""The reference library's module path for the format rewards; they are implemented in `trl.rewards.format`.

Example:
    ```python
    >>> from trl.rewards.format_rewards import think_format_reward
    ```
"""

from .format import think_format_reward

__all__ = ["think_format_reward"]
