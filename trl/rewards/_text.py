"""Reading the text out of a completion, whatever shape the trainer hands it over in."""

from __future__ import annotations

from typing import Any


def _content_text(content: Any) -> str | None:
    # Multimodal messages carry a list of parts ({"type": "text", "text": ...}); only the text parts matter here.
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part.get("text") for part in content if isinstance(part, dict) and part.get("type") == "text"]
        texts = [text for text in texts if isinstance(text, str)]
        return "".join(texts) if texts else None
    return None


def completion_text(completion: Any, which: str = "first") -> str | None:
    """Return the text of one completion, or `None` when it has no readable text.

    Args:
        completion (`str` or `list[dict]`):
            A plain string (standard data) or a list of messages (conversational data).
        which (`str`, *optional*, defaults to `"first"`):
            For conversational completions, `"first"` reads the first message and `"final"` reads the last
            assistant message (the final answer of a multi-turn, tool-calling completion). Both are the same message
            when the completion is a single assistant turn, which is the usual case.

    Example:
        ```python
        >>> from trl.rewards._text import completion_text
        >>> completion_text("42"), completion_text([{"role": "assistant", "content": "42"}]), completion_text(None)
        ('42', '42', None)
        ```
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):  # a single message not wrapped in a list
        completion = [completion]
    if not isinstance(completion, (list, tuple)) or not completion:
        return None
    messages = [message for message in completion if isinstance(message, dict)]
    if not messages:
        return None
    if which == "final":
        assistant = [message for message in messages if message.get("role", "assistant") == "assistant"]
        message = (assistant or messages)[-1]
    else:
        message = messages[0]
    return _content_text(message.get("content"))
