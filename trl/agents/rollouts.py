"""What the online trainers read from finished multi-turn rollouts (docs/agents.md): which were cut mid-call."""

from __future__ import annotations

from collections.abc import Sequence

from ..template_families import CHATML, Family

__all__ = ["cut_mid_call"]


def cut_mid_call(completions: Sequence[list[dict]], truncated: Sequence[bool], family: Family | None = None
                 ) -> list[bool]:
    """Which rollouts were cut by the length budget in the middle of a tool call: truncated, and either their last
    assistant turn holds calls whose results were not appended (the tool turn did not fit), or its text holds a call
    that was started and not finished (the chat template family's parser reports an error for it).

    Args:
        completions (`list[list[dict]]`): `(N,)` each rollout's messages (assistant turns and `tool` messages).
        truncated (`list[bool]`): `(N,)` whether the rollout ended without an end-of-turn token or had a tool turn
            rolled back.
        family ([`~trl.template_families.Family`], *optional*): the chat template's family (its call format);
            defaults to ChatML (`<tool_call>` blocks).

    Returns:
        `list[bool]`: `(N,)`.

    Example:
        ```python
        >>> cut_mid_call([[{"role": "assistant", "content": "<tool_call>\\n{\\"name\\": \\"mul"}],
        ...               [{"role": "assistant", "content": "It is"}]], [True, True])
        [True, False]
        ```
    """
    family = family or CHATML
    flags = []
    for messages, cut in zip(completions, truncated):
        last = messages[-1] if messages else {}
        flags.append(bool(cut) and last.get("role") == "assistant" and (
            bool(last.get("tool_calls")) or bool(family.parse_tool_calls(_text(last.get("content")))[2])
        ))
    return flags


def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""
