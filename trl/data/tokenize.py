"""Token-exact tokenisation with loss masks, computed from the chat template itself (docs/design.md §1).

Masks of conversational data come from, in this order:
1. `{% generation %}` markers in the template (`return_assistant_tokens_mask`), when present;
2. the turn-by-turn prefix method: the conversation is rendered one turn at a time and each rendering must be a token
   prefix of the next, so the tokens a turn adds are known exactly, for any template;
3. otherwise a clear error that names the turn at which the template rewrote earlier tokens.

A trained span ends with the end-of-turn token: tokens a template writes after it (ChatML's "\\n") are context, not
targets, because generation stops at the end-of-turn token.

Some templates write no end-of-turn token into an assistant turn: GLM-4-MoE's turn is ended by the next turn's header
(`<|user|>`, or `<|observation|>` before tool results), which GLM's generation config lists as eos. For those the
header token that directly follows an assistant turn (`closing_tokens`) is an end-of-turn token: it is trained as
part of the turn it closes, and a conversation that ends with an assistant turn gets it appended (`<|observation|>`
after a tool-calling turn, `<|user|>` otherwise), so that the model learns to stop.
"""

from __future__ import annotations

import re
import weakref
from typing import Any

from .conversation import _parse_tools, common_prefix_length

_GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


def has_generation_markers(chat_template: str | None) -> bool:
    """Whether a chat template marks assistant output with `{% generation %}` ... `{% endgeneration %}`.

    Example:
        ```python
        >>> has_generation_markers("{% generation %}{{ m['content'] }}{% endgeneration %}")
        True
        ```
    """
    return bool(chat_template) and _GENERATION_MARKER.search(chat_template) is not None


def row_template_kwargs(example: dict) -> dict[str, Any]:
    """Per-row `tools` (a list or a JSON string) and `chat_template_kwargs`, as `apply_chat_template` arguments."""
    kwargs = dict(example.get("chat_template_kwargs") or {})
    tools = _parse_tools(example.get("tools"))
    if tools:  # an empty list means no tools
        kwargs["tools"] = tools
    return kwargs


def render_ids(tokenizer, messages: list[dict], template_kwargs: dict | None = None, **options) -> list[int]:
    """Token ids of `messages` rendered by the tokenizer's chat template (no extra special tokens).

    Args:
        options: `add_generation_prompt`, `continue_final_message`.

    Example:
        ```python
        >>> render_ids(tokenizer, [{"role": "user", "content": "hi"}], add_generation_prompt=True)
        [1, 346, 202, 5906, 2, 202, 1, 68, 296, 310, 202]
        ```
    """
    if not messages:
        return []
    messages = for_template(tokenizer, messages)
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **(template_kwargs or {}), **options)
    return list(out["input_ids"])


def for_template(tokenizer, messages: list[dict]) -> list[dict]:
    """`messages` as the tokenizer's chat template takes them: tool-call arguments written as JSON strings for a
    template that concatenates them into its text and raises on a dict (DeepSeek's, `trl/template_families.py`),
    the messages unchanged otherwise. The rendered text is what the model writes either way.

    Example:
        ```python
        >>> for_template(deepseek_tokenizer, [{"role": "assistant", "tool_calls": [call]}])[0]["tool_calls"][0]
        {'type': 'function', 'function': {'name': 'get_weather', 'arguments': '{"city": "Paris"}'}}
        ```
    """
    if not any(isinstance(message, dict) and message.get("tool_calls") for message in messages):
        return messages
    if not _needs_string_arguments(tokenizer):
        return messages
    from ..template_families import with_json_string_arguments

    return with_json_string_arguments(messages)


_STRING_ARGUMENTS: dict[str, bool] = {}  # chat template text -> whether it needs JSON-string tool-call arguments


def _needs_string_arguments(tokenizer) -> bool:
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return False
    if template not in _STRING_ARGUMENTS:
        from ..template_families import with_json_string_arguments

        try:
            tokenizer.apply_chat_template(_PROBE_TOOL, tokenize=False)
            needs = False
        except Exception:  # noqa: BLE001 - any template error on dict arguments
            try:
                tokenizer.apply_chat_template(with_json_string_arguments(_PROBE_TOOL), tokenize=False)
                needs = True
            except Exception:  # noqa: BLE001 - the template fails on tool calls either way: nothing to convert
                needs = False
        _STRING_ARGUMENTS[template] = needs
    return _STRING_ARGUMENTS[template]


def special_token_ids(tokenizer) -> set[int]:
    """eos and every special or added token of the (inner) tokenizer: the tokens a chat template can end a turn with."""
    inner = getattr(tokenizer, "tokenizer", tokenizer)
    return {inner.eos_token_id, *inner.all_special_ids, *getattr(inner, "added_tokens_decoder", {})}


def end_of_turn_position(tokenizer, ids: list[int], messages: list[dict]) -> int | None:
    """Position in `ids` (the rendering of `messages`) of the token that ends the final assistant turn: the first eos
    or special/added token after the assistant content, which ends where the rendering with
    `continue_final_message=True` stops being a prefix of the full rendering."""
    open_ids = render_ids(tokenizer, messages, continue_final_message=True)
    start = common_prefix_length(open_ids, ids)
    stop_ids = special_token_ids(tokenizer)
    return next((i for i in range(start, len(ids)) if ids[i] in stop_ids), None)


def end_of_turn_ids(tokenizer) -> set[int]:
    """The tokens that end a sequence: eos, plus the token the chat template writes at the end of an assistant turn
    (e.g. `<|im_end|>` for a base model whose eos is `<|endoftext|>`).

    Example:
        ```python
        >>> end_of_turn_ids(tiny_tokenizer())
        {2}
        ```
    """
    ids = {tokenizer.eos_token_id}
    if getattr(tokenizer, "chat_template", None):
        full, position = _probe_end_of_turn(tokenizer)
        if position is not None:
            ids.add(full[position])
        ids |= set(closing_tokens(tokenizer).values())
    return ids


_PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
_PROBE_CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
_PROBE_TOOL = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "", "tool_calls": [_PROBE_CALL]}]


def _probe_end_of_turn(tokenizer) -> tuple[list[int], int | None]:
    """The rendering of user -> assistant and the position of the assistant turn's end-of-turn token in it."""
    try:
        full = render_ids(tokenizer, _PROBE)
        return full, end_of_turn_position(tokenizer, full, _PROBE)
    except Exception:  # a template that cannot render this probe has no end-of-turn token to add
        return [], None


_CLOSING_CACHE: "weakref.WeakKeyDictionary[Any, tuple[str, dict[str, int]]]" = weakref.WeakKeyDictionary()


def closing_tokens(tokenizer) -> dict[str, int]:
    """For a template whose assistant turns have no end-of-turn token of their own (GLM-4-MoE), the special token it
    writes directly after an assistant turn when the next turn begins, by the next turn's role: `"user"` (probe user
    -> assistant -> user) and `"tool"` (user -> tool-calling assistant -> tool). Empty for every template whose
    assistant turn ends with its own token (ChatML's `<|im_end|>`, Llama's `<|eot_id|>`, ...), so nothing changes
    for them. Cached per tokenizer and template.

    Example:
        ```python
        >>> tokenizer.convert_ids_to_tokens(list(closing_tokens(glm_tokenizer).values()))
        ['<|user|>', '<|observation|>']
        ```
    """
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return {}
    try:
        cached = _CLOSING_CACHE.get(tokenizer)
    except TypeError:  # not weak-referenceable
        cached = None
    if cached is not None and cached[0] == template:
        return dict(cached[1])
    found: dict[str, int] = {}
    full, position = _probe_end_of_turn(tokenizer)
    if full and position is None:
        special = special_token_ids(tokenizer)
        probes = {"user": (_PROBE, {"role": "user", "content": "Hi"}), "tool": (_PROBE_TOOL, {"role": "tool",
                                                                                            "content": "22C"})}
        try:  # the tokens that open an assistant turn: a generic turn opener (ChatML's <|im_start|>) is not a
            # closing token, only a header of the next role that no assistant turn starts with (GLM's <|user|>)
            prompt, before = render_ids(tokenizer, _PROBE[:1], add_generation_prompt=True), render_ids(tokenizer,
                                                                                                  _PROBE[:1])
            opener = set(prompt[len(before):]) if prompt[: len(before)] == before else set()
        except Exception:  # noqa: BLE001 -- a template without a generation prompt
            opener = set()
        for role, (turns, following) in probes.items():
            try:
                head = render_ids(tokenizer, turns)
                longer = render_ids(tokenizer, [*turns, following])
            except Exception:  # e.g. a template without tool calls
                continue
            if longer[: len(head)] == head and len(longer) > len(head) and longer[len(head)] in special \
                    and longer[len(head)] not in opener:
                found[role] = longer[len(head)]
    try:
        _CLOSING_CACHE[tokenizer] = (template, found)
    except TypeError:
        pass
    return dict(found)


def _mark_closing_tokens(ids: list[int], mask: list[int], closing: set[int], eos_ids: set[int]) -> list[int]:
    """Mark the closing token (`closing_tokens`) that directly follows a marked span with no end-of-turn token."""
    if not closing:
        return mask
    mask = list(mask)
    for i in range(len(mask) - 1):
        if mask[i] and not mask[i + 1] and ids[i + 1] in closing:
            start = i
            while start > 0 and mask[start - 1]:
                start -= 1
            if not any(t in eos_ids for t in ids[start : i + 1]):
                mask[i + 1] = 1
    return mask


def _close_final_turn(tokenizer, messages: list[dict], ids: list[int], mask: list[int] | None):
    """Append the closing token (`closing_tokens`) after a conversation that ends with an assistant turn, for a
    template that writes none there (GLM): what the model generates to end that turn. Marked in `mask` if given."""
    if not messages or messages[-1].get("role") != "assistant":
        return ids, mask
    closing = closing_tokens(tokenizer)
    token = closing.get("tool" if messages[-1].get("tool_calls") else "user", closing.get("user"))
    if token is None or (ids and ids[-1] == token):
        return ids, mask
    return ids + [token], (None if mask is None else mask + [1])


def _trim_after_end_of_turn(ids: list[int], start: int, end: int, eos_ids: set[int]) -> int:
    """End of the trained span [start, end): just after its last end-of-turn token, if it has one."""
    for i in range(end - 1, start - 1, -1):
        if ids[i] in eos_ids:
            return i + 1
    return end


def _not_prefix_error(turn: int, role: str, what: str) -> ValueError:
    return ValueError(
        f"The chat template is not prefix-preserving at turn {turn} (role {role!r}): {what}. Such templates rewrite "
        "earlier turns (e.g. they drop the reasoning of past assistant messages), so the tokens of each turn cannot be "
        "located. Use a template with {% generation %} markers (SFTConfig.chat_template_path=...), train on "
        "prompt-completion data, or set assistant_only_loss=False."
    )


def assistant_mask_by_prefix(
    tokenizer, messages: list[dict], eos_ids: set[int], template_kwargs: dict | None = None
) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and a 0/1 mask of its assistant tokens, by the turn-by-turn prefix method.

    Each assistant turn's trained tokens are those that rendering the turn adds after the generation prompt of the
    conversation so far, up to and including its end-of-turn token.

    Raises:
        `ValueError`: a rendering is not a token prefix of the next one; the message names the turn.

    Example:
        ```python
        >>> ids, mask = assistant_mask_by_prefix(tok, [{"role": "user", "content": "hi"},
        ...                                             {"role": "assistant", "content": "yo"}], {tok.eos_token_id})
        >>> tok.decode([t for t, m in zip(ids, mask) if m])
        'yo<|im_end|>'
        ```
    """
    full = render_ids(tokenizer, messages, template_kwargs)
    mask = [0] * len(full)
    previous: list[int] = []
    for k, message in enumerate(messages):
        current = render_ids(tokenizer, messages[: k + 1], template_kwargs) if k + 1 < len(messages) else full
        if current[: len(previous)] != previous:
            raise _not_prefix_error(k, message["role"], f"rendering {k} turns is not a prefix of rendering {k + 1}")
        if message["role"] == "assistant":
            header = render_ids(tokenizer, messages[:k], template_kwargs, add_generation_prompt=True)
            if current[: len(header)] != header or len(header) < len(previous):
                raise _not_prefix_error(k, "assistant", "the generation prompt is not a prefix of the assistant turn")
            end = _trim_after_end_of_turn(current, len(header), len(current), eos_ids)
            mask[len(header) : end] = [1] * (end - len(header))
        previous = current
    if full[: len(previous)] != previous:
        raise _not_prefix_error(len(messages) - 1, messages[-1]["role"], "the full rendering differs")
    return full, _mark_closing_tokens(full, mask, set(closing_tokens(tokenizer).values()), eos_ids)


def assistant_mask(tokenizer, messages, eos_ids, template_kwargs=None) -> tuple[list[int], list[int]]:
    """Assistant-token mask from `{% generation %}` markers when the template has them, else by the prefix method.

    Either way a trained span ends with its end-of-turn token: marked tokens after it are unmarked. For a template
    whose assistant turns have no end-of-turn token (GLM), the closing token that directly follows a turn
    (`closing_tokens`: the next `<|user|>` / `<|observation|>`) is marked with it.
    """
    if has_generation_markers(tokenizer.chat_template):
        out = tokenizer.apply_chat_template(
            for_template(tokenizer, messages), tokenize=True, return_dict=True, return_assistant_tokens_mask=True, **(template_kwargs or {})
        )
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
        mask = _trim_spans_after_end_of_turn(ids, mask, eos_ids)
        return ids, _mark_closing_tokens(ids, mask, set(closing_tokens(tokenizer).values()), eos_ids)
    return assistant_mask_by_prefix(tokenizer, messages, eos_ids, template_kwargs)


def _trim_spans_after_end_of_turn(ids: list[int], mask: list[int], eos_ids: set[int]) -> list[int]:
    """Unmark what a marked span holds after its last end-of-turn token (e.g. a "\\n" inside `{% generation %}`)."""
    mask = list(mask)
    i = 0
    while i < len(mask):
        if not mask[i]:
            i += 1
            continue
        j = i
        while j < len(mask) and mask[j]:
            j += 1
        end = _trim_after_end_of_turn(ids, i, j, eos_ids)
        mask[end:j] = [0] * (j - end)
        i = j
    return mask


def _continue_final_message(prompt: list[dict], completion: list[dict]) -> list[dict]:
    """A prompt that ends with an assistant message (a prefill) is continued by the completion's first assistant
    message: the two become one message, so that the completion's tokens follow the prefill's directly."""
    last, first = prompt[-1], completion[0] if completion else None
    if first is None or first.get("role") != "assistant":
        return prompt + completion
    if not (isinstance(last.get("content"), str) and isinstance(first.get("content"), str)):
        return prompt + completion
    return prompt[:-1] + [{**last, **first, "content": last["content"] + first["content"]}] + completion[1:]


def _with_eos(ids: list[int], eos_id: int) -> list[int]:
    return ids if ids and ids[-1] == eos_id else ids + [eos_id]


def tokenize_sft_example(
    example: dict,
    tokenizer,
    *,
    kind: str,
    conversational: bool,
    text_field: str = "text",
    assistant_only_loss: bool = False,
    eos_token_id: int,
    eos_ids: set[int],
) -> dict[str, list[int]]:
    """Tokenise one SFT row into `input_ids` plus the masks its loss needs.

    Returns `input_ids`, `completion_mask` (1 on completion tokens; all ones for language modelling) and, with
    `assistant_only_loss`, `assistant_masks`. Standard text and completions get `eos_token_id` appended. A conversational
    prompt that ends with an assistant message (a prefill) is continued by the completion's first assistant message.

    Example:
        ```python
        >>> out = tokenize_sft_example({"prompt": "2+2=", "completion": "4"}, tok, kind="prompt_completion",
        ...                            conversational=False, eos_token_id=tok.eos_token_id, eos_ids={2})
        >>> sorted(out)
        ['completion_mask', 'input_ids']
        ```
    """
    template_kwargs = row_template_kwargs(example) if conversational else {}
    out: dict[str, list[int]] = {}
    if kind == "language_modeling":
        if conversational:
            messages = example["messages"]
            if assistant_only_loss:
                ids, masks = assistant_mask(tokenizer, messages, eos_ids, template_kwargs)
            else:
                ids, masks = render_ids(tokenizer, messages, template_kwargs), None
            ids, masks = _close_final_turn(tokenizer, messages, ids, masks)
            if masks is not None:
                out["assistant_masks"] = masks
        else:
            ids = _with_eos(tokenizer(example[text_field])["input_ids"], eos_token_id)
        out["input_ids"] = ids
        out["completion_mask"] = [1] * len(ids)
        return out

    # prompt-completion: the completion starts where the prompt's tokens stop being a prefix of the full sequence
    if conversational:
        prompt, completion = example["prompt"], example["completion"]
        continue_final = prompt[-1]["role"] == "assistant"
        prompt_ids = render_ids(
            tokenizer, prompt, template_kwargs, add_generation_prompt=not continue_final,
            continue_final_message=continue_final,
        )
        messages = _continue_final_message(prompt, completion) if continue_final else prompt + completion
        if assistant_only_loss:
            ids, masks = assistant_mask(tokenizer, messages, eos_ids, template_kwargs)
        else:
            ids, masks = render_ids(tokenizer, messages, template_kwargs), None
        ids, masks = _close_final_turn(tokenizer, messages, ids, masks)
        if masks is not None:
            out["assistant_masks"] = masks
        # As the reference: the completion is the full rendering minus the prompt's, so template text after the
        # end-of-turn token (ChatML's "\n") is trained too; `assistant_masks`, when asked for, still stop at it.
        start, end = common_prefix_length(prompt_ids, ids), len(ids)
    else:
        prompt_ids = tokenizer(example["prompt"])["input_ids"]
        ids = _with_eos(tokenizer(example["prompt"] + example["completion"])["input_ids"], eos_token_id)
        start, end = common_prefix_length(prompt_ids, ids), len(ids)
    out["input_ids"] = ids
    out["completion_mask"] = [0] * start + [1] * (end - start) + [0] * (len(ids) - end)
    out["prompt_is_prefix"] = int(start == len(prompt_ids))
    return out


def truncate(example: dict, max_length: int, mode: str = "keep_start") -> dict:
    """Cut every token-aligned list column of a tokenised row to `max_length` (`keep_start` or `keep_end`)."""
    n = len(example["input_ids"])
    if n <= max_length:
        return example
    window = slice(0, max_length) if mode == "keep_start" else slice(n - max_length, n)
    return {k: (v[window] if isinstance(v, list) and len(v) == n else v) for k, v in example.items()}
