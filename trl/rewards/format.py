"""Format rewards: check the shape of a completion, not its content."""

from __future__ import annotations

import re
from typing import Any

from ._text import completion_text

# One opening <think> at the very start, no second <think> anywhere after it, and a closing </think>.
_THINK_FORMAT = re.compile(r"^<think>(?!.*<think>)(.*?)</think>.*$", re.DOTALL)


def think_format_reward(completions: list[list[dict[str, Any]]] | list[str], **kwargs: Any) -> list[float]:
    r"""Reward completions that open with a single `<think>...</think>` block.

    A completion scores 1.0 when its text matches `^<think>(?!.*<think>)(.*?)</think>.*$` (with `re.DOTALL`): it
    starts with `<think>`, contains no second `<think>`, and closes the block with `</think>`. Anything else, including
    a completion with no readable text, scores 0.0.

    Args:
        completions (`list[list[dict]]` or `list[str]`):
            Conversational completions (`[{"role": "assistant", "content": ...}]`, the first message is checked) or
            plain strings.
        **kwargs:
            Ignored; the trainer passes every dataset column and its own extras.

    Returns:
        `list[float]`: 1.0 or 0.0 per completion.

    Example:
        ```python
        >>> from trl.rewards import think_format_reward
        >>> completions = [
        ...     [{"role": "assistant", "content": "<think>\nThis is my reasoning.\n</think>\nThis is my answer."}],
        ...     [{"role": "assistant", "content": "<think>\nThis is my reasoning.\nThis is my answer."}],
        ...     "<think>a</think><think>b</think>",
        ... ]
        >>> think_format_reward(completions)
        [1.0, 0.0, 0.0]
        ```
    """
    rewards = []
    for completion in completions:
        text = completion_text(completion, which="first")
        rewards.append(1.0 if text is not None and _THINK_FORMAT.match(text) else 0.0)
    return rewards
