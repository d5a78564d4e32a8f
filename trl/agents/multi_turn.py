"""Multi-turn rollouts with tools: generate, run the calls, append the tool turn's tokens, generate again.

The online trainers call [`multi_turn_rollout`] instead of a single generation when tools are configured
(docs/agents.md). It is token-exact (docs/design.md §1): the ids the model generated are kept as they are, never
decoded and re-encoded; only the tool turn that follows an assistant turn is rendered by the chat template, and only
its *suffix* (the tokens between the end-of-turn token of the assistant turn and the next generation prompt,
included) is appended. The chat template must render the conversation prefix-preservingly there: the rendering
without the tool turn must be a token prefix of the rendering with it, otherwise the turn is named in an error.

Rounds: every row generates; a row whose completion ended with the chat template's end-of-turn token and holds tool
calls gets them run (all rows of a round together, [`execute_tool_calls`]) and continues from its prompt plus
everything so far. With a continuation session (`TransformersBackend.continuation()`), the backend continues each such
row from the KV cache of its previous round, so only the tool turn (and the last generated token) is prefilled;
without one, `generate` re-prefills the whole sequence. A row is finished when it makes no call, when its turn ended
with an end-of-sequence token that is not the template's end of turn (e.g. `<|endoftext|>` where the template closes
turns with `<|im_end|>`: the template cannot continue after it), after `max_iterations` rounds of calls, or when its
completion budget is spent: generated and tool tokens together never exceed `max_completion_length`, and a tool turn
that does not leave room for at least one generated token is not appended (the rollout ends there, truncated).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..data.conversation import common_prefix_length
from ..data.tokenize import special_token_ids
from ..rollout import Rollout
from ..template_families import detect_family, family_end_of_turn_ids, parse_tool_turn, render_tool_messages
from .tools import DEFAULT_TOOL_TIMEOUT, Toolbox, execute_tool_calls

__all__ = ["Continuation", "MultiTurnResult", "check_tool_prompts", "check_tool_turns", "multi_turn_rollout",
           "tool_suffix_ids", "tool_turn_end_ids"]

# generate(prompt_ids, max_new_tokens) -> Rollout with one completion per prompt, in the order given
GenerateFn = Callable[[list[list[int]], int], Rollout]


class Continuation(Protocol):
    """What [`multi_turn_rollout`] needs from a backend's continuation session (`TransformersBackend.continuation()`):
    while it is open, the backend's `generate` keeps each returned row's KV cache and continues a prompt that extends
    a kept row from it."""

    def keep(self, prompt_ids: list[list[int]]) -> None:
        """Free the caches of the kept rows that none of `prompt_ids` (the next round's prompts) extends."""

    def close(self) -> None:
        """Free every cache and stop keeping them."""


@dataclass
class MultiTurnResult:
    """What [`multi_turn_rollout`] returns.

    Args:
        rollout ([`Rollout`]): `(N, ...)` one row per prompt; `completion_ids` holds every generated and tool-suffix
            token in order, `tool_mask` is 0 on the tool-suffix tokens, `sampling_logps` is 0 there.
        completions (`list[list[dict]]`): `(N,)` the completion as messages: assistant turns (with their parsed
            `tool_calls`) and the `tool` messages appended after them.
        num_calls (`list[int]`): `(N,)` tool calls made by each rollout over all rounds.
        num_failures (`list[int]`): `(N,)` of those, the calls that failed.
    """

    rollout: Rollout
    completions: list[list[dict]]
    num_calls: list[int]
    num_failures: list[int]


@dataclass
class _Row:
    ids: list[int] = field(default_factory=list)  # generated and tool-suffix tokens
    tool_mask: list[int] = field(default_factory=list)  # 1 generated, 0 tool suffix
    logps: list[float] = field(default_factory=list)  # sampling log-probs, 0.0 on the tool suffix
    messages: list[dict] = field(default_factory=list)
    calls: int = 0
    failures: int = 0
    truncated: bool = False


def check_tool_prompts(prompts: Sequence) -> None:
    """Check, before training, that prompts can be rolled out with tools: each must be a conversation that does not
    end with an assistant message (a prefilled answer, which the tool turns cannot be rendered after yet).

    Raises:
        `ValueError`: naming the first offending prompts.

    Example:
        ```python
        >>> check_tool_prompts([[{"role": "user", "content": "3*4?"}]])
        >>> check_tool_prompts([[{"role": "user", "content": "3*4?"}, {"role": "assistant", "content": "It is"}]])
        Traceback (most recent call last):
        ...
        ValueError: Prompts [0] end with an assistant message (a prefilled answer); ...
        ```
    """
    if prefilled := [i for i, p in enumerate(prompts) if p and p[-1].get("role") == "assistant"]:
        raise ValueError(f"Prompts {prefilled[:5]} end with an assistant message (a prefilled answer); this is not "
                         "supported together with tools yet. End the prompts with a user message.")


def tool_suffix_ids(tokenizer, conversation: list[dict], tool_messages: list[dict], eos_token_ids: Sequence[int],
                    template_kwargs: dict | None = None) -> list[int]:
    """Token ids of the tool turn that follows the last assistant turn of `conversation`, up to and including the
    next generation prompt: what comes after that turn's end-of-turn token in the rendering with `tool_messages`.

    The end-of-turn token is the first of `eos_token_ids` after where the last assistant turn's rendering starts, in
    the rendering with the tool turn: the token that closes the turn (`<|im_end|>`, GPT-OSS's `<|call|>`) or, for
    templates that close a turn by opening the next one, the tool turn's first token (GLM's `<|observation|>`).
    Whatever the template writes after it when the conversation ends there (an empty assistant turn, a generation
    header) is not part of the turn. Tool-call arguments are rendered as JSON strings for templates that reject dicts
    (`trl.template_families.render_tool_messages`), and reasoning is given as `thinking` too for templates that read
    that field (GPT-OSS, LFM2).

    Raises:
        `ValueError`: the rendering with the tool turn rewrites the tokens before the end-of-turn token, or the
            assistant turn has no end-of-turn token (both name the turn).

    Example:
        ```python
        >>> conversation = [{"role": "user", "content": "3*4?"}, {"role": "assistant", "content": "", "tool_calls": [
        ...     {"type": "function", "function": {"name": "multiply", "arguments": {"a": 3, "b": 4}}}]}]
        >>> tokenizer.decode(tool_suffix_ids(tokenizer, conversation, [{"role": "tool", "name": "multiply",
        ...                                                               "content": "12"}], {2}))
        '\\n<|im_start|>tool\\n12<|im_end|>\\n<|im_start|>assistant\\n'
        ```
    """
    return _tool_turn(tokenizer, conversation, tool_messages, set(eos_token_ids), template_kwargs)[1]


def _render(tokenizer, messages: list[dict], template_kwargs: dict | None, **options) -> list[int]:
    """Token ids of `messages` rendered by the chat template, as `apply_chat_template(tokenize=True)` gives them."""
    if not messages:
        return []
    messages = [{**m, "thinking": m["reasoning_content"]} if m.get("reasoning_content") and "thinking" not in m
                else m for m in messages]
    text = render_tool_messages(tokenizer, messages, **(template_kwargs or {}), **options)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _tool_turn(tokenizer, conversation: list[dict], tool_messages: list[dict], eos: set[int],
               template_kwargs) -> tuple[int, list[int]]:
    """`(end_of_turn_token, suffix)` for the tool turn after the last (assistant) turn of `conversation`; see
    [`tool_suffix_ids`]."""
    before = _render(tokenizer, conversation, template_kwargs)
    after = _render(tokenizer, conversation + tool_messages, template_kwargs, add_generation_prompt=True)
    start = common_prefix_length(_render(tokenizer, conversation[:-1], template_kwargs), before)
    eos = (eos & special_token_ids(tokenizer)) or eos  # an end of turn is a special token, never one of the text
    # the end of turn is in the turn as both renderings write it, or is the first token the tool turn adds (GLM)
    common = common_prefix_length(before, after)
    end = next((i for i in range(start, min(common + 1, len(after))) if after[i] in eos), None)
    turn = len(conversation) - 1
    if end is None and common < len(before):
        raise ValueError(
            f"The chat template is not prefix-preserving at turn {turn + 1} (the tool turn after assistant turn "
            f"{turn}): rendering the conversation with the tool results rewrites the tokens before them, so the "
            "tool turn cannot be appended to the generated tokens without re-encoding them. Use a chat template that "
            "renders earlier turns the same way whatever follows (e.g. trl.chat_template_utils."
            "chatml_training_chat_template for ChatML-style models, or trl.clone_chat_template)."
        )
    if end is None:
        raise ValueError(
            f"The chat template renders assistant turn {turn} without an end-of-turn token (any of {sorted(eos)}) "
            "inside that turn or as the first token of the tool turn after it, so where the tool turn starts is "
            "unknown."
        )
    return after[end], after[end + 1:]


def tool_turn_end_ids(tokenizer, template_kwargs: dict | None = None) -> set[int]:
    """The token that ends an assistant turn calling a tool, as the chat template writes it before a tool turn (on a
    probe conversation: user, assistant calling `get_weather(city="Paris")`, tool result): the first of its family's
    end-of-turn tokens or eos after the turn starts, e.g. GPT-OSS's `<|call|>` (not `<|end|>`, which ends an inner
    message of a turn that continues), GLM's `<|observation|>`. Sampling must stop there; empty when the template is
    of no known family or the probe cannot be rendered ([`check_tool_turns`] reports that).

    Example:
        ```python
        >>> tool_turn_end_ids(tokenizer)  # ChatML
        {2}
        ```
    """
    from ..chat_template_utils import _TOOL_TURNS

    family = detect_family(tokenizer)
    if family is None:
        return set()
    candidates = family_end_of_turn_ids(tokenizer, family)
    try:
        token, _ = _tool_turn(tokenizer, list(_TOOL_TURNS[:2]), list(_TOOL_TURNS[2:]), candidates, template_kwargs)
    except Exception:  # noqa: BLE001 - a template that cannot render the probe: check_tool_turns says why
        return set()
    return {token}


def multi_turn_rollout(
    generate: GenerateFn,
    prompt_ids: list[list[int]],
    prompts: list[list[dict]],
    tokenizer,
    toolbox: Toolbox | Sequence[Toolbox],
    *,
    max_completion_length: int,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    max_iterations: int | None = None,
    timeout: float = DEFAULT_TOOL_TIMEOUT,
    template_kwargs: dict | Sequence[dict] | None = None,
    continuation: Continuation | None = None,
    max_output_chars: int | None = None,
) -> MultiTurnResult:
    """Roll out `N` conversations with tool calls; see the module docstring for the rounds and the budget.

    Args:
        generate (`Callable`): `generate(prompt_ids, max_new_tokens) -> Rollout`, one completion per prompt in order,
            with `sampling_logps`. Each round passes every active row's whole sequence so far.
        prompt_ids (`list[list[int]]`): `(N,)` the rendered prompts (with the tools' schemas and the generation
            prompt).
        prompts (`list[list[dict]]`): `(N,)` the same prompts as messages (the tool turns are rendered after them).
        tokenizer: the policy's tokenizer (its chat template renders the tool turns).
        toolbox ([`Toolbox`] or `list[Toolbox]`): the tools the model may call, or one toolbox per row (e.g. bound
            to the row's environment).
        max_completion_length (`int`): most generated plus tool-suffix tokens per rollout.
        eos_token_ids (`Sequence[int]`): the tokens that end a turn (generation stops at them); a round that does not
            end with one is truncated. Only the one the chat template writes at the end of an assistant turn is
            followed by a tool turn.
        pad_token_id (`int`): pads the returned rollout.
        max_iterations (`int`, *optional*): most rounds of tool calls (None: only the budget limits them).
        timeout (`float`, *optional*, defaults to `60.0`): seconds per tool call.
        template_kwargs (`dict` or `list[dict]`, *optional*): chat-template arguments (the `tools` schemas among
            them), or one dict per row.
        continuation ([`Continuation`], *optional*): the open continuation session of the backend behind `generate`
            (`backend.continuation()`): each round then continues from the previous round's KV cache; the rows that
            stop are freed before the next round, and the session is closed at the end. Without it every round
            re-prefills.
        max_output_chars (`int`, *optional*): tool outputs longer than this are cut ([`execute_tool_calls`]).

    Returns:
        [`MultiTurnResult`].
    """
    try:
        check_tool_prompts(prompts)
        return _rollout(generate, prompt_ids, prompts, tokenizer, toolbox, max_completion_length, set(eos_token_ids),
                        pad_token_id, max_iterations, timeout, template_kwargs, continuation, max_output_chars)
    finally:
        if continuation is not None:
            continuation.close()


def _rollout(generate, prompt_ids, prompts, tokenizer, toolbox, max_completion_length, eos, pad_token_id,
             max_iterations, timeout, template_kwargs, continuation, max_output_chars) -> MultiTurnResult:
    toolboxes = [toolbox] * len(prompt_ids) if isinstance(toolbox, Toolbox) else list(toolbox)
    if template_kwargs is None or isinstance(template_kwargs, dict):
        template_kwargs = [template_kwargs] * len(prompt_ids)
    rows = [_Row() for _ in prompt_ids]
    active, rounds_of_calls, device = list(range(len(prompt_ids))), 0, None
    while active:
        budgets = [max_completion_length - len(rows[i].ids) for i in active]
        contexts = [prompt_ids[i] + rows[i].ids for i in active]
        if continuation is not None:
            continuation.keep(contexts)  # the rows that stopped calling tools leave: their caches are freed
        out = generate(contexts, max(budgets))
        device = out.completion_ids.device
        lengths = out.completion_lengths.tolist()
        generated, logps = out.completion_ids.tolist(), out.sampling_logps.tolist()
        calls: dict[int, tuple] = {}  # row -> (its calls, rendering of the conversation, end-of-turn position)
        for k, i in enumerate(active):
            n = min(lengths[k], budgets[k])
            new, row = generated[k][:n], rows[i]
            row.ids += new
            row.tool_mask += [1] * n
            row.logps += logps[k][:n]
            ended = bool(new) and new[-1] in eos
            turn = parse_tool_turn(tokenizer, new)  # malformed calls are reported in turn.errors, not dropped
            message = turn.message
            row.messages.append(message)
            row.truncated = not ended
            wants_tools = bool(message.get("tool_calls") or turn.errors)
            if ended and wants_tools and (max_iterations is None or rounds_of_calls < max_iterations):
                conversation = list(prompts[i]) + row.messages
                # Roll a tool turn that cannot fit back before running its calls. Its exact length needs the results,
                # so this uses the turn rendered with empty results (no name, no content), assuming that longer text
                # never renders in fewer tokens; the exact check after the calls stays.
                errors = [_unparsed_call_message(error) for error in turn.errors]
                empty = [{"role": "tool", "name": "", "content": ""} for _ in message.get("tool_calls", [])]
                end_token, suffix = _tool_turn(tokenizer, conversation, empty + errors, eos, template_kwargs[i])
                if new[-1] != end_token:  # not the template's end of turn: it cannot be followed by a tool turn
                    continue
                if len(row.ids) + len(suffix) >= max_completion_length:
                    row.truncated = True
                    continue
                calls[i] = (message.get("tool_calls", []), errors, conversation)
        if not calls:
            break
        rounds_of_calls += 1
        results = execute_tool_calls([c[0] for c in calls.values()], [toolboxes[i] for i in calls], timeout=timeout,
                                     max_output_chars=max_output_chars)
        active = []
        for j, (i, (_, errors, conversation)) in enumerate(calls.items()):
            row = rows[i]
            row.calls += results.num_calls[j] + len(errors)  # a call the model wrote but we could not read failed
            row.failures += results.num_failures[j] + len(errors)
            tool_messages = results.messages[j] + errors
            _, suffix = _tool_turn(tokenizer, conversation, tool_messages, eos, template_kwargs[i])
            if len(row.ids) + len(suffix) >= max_completion_length:  # no room to answer: roll the tool turn back
                row.truncated = True
                continue
            row.messages += tool_messages
            row.ids += suffix
            row.tool_mask += [0] * len(suffix)
            row.logps += [0.0] * len(suffix)
            active.append(i)
    return MultiTurnResult(
        rollout=_as_rollout(prompt_ids, rows, pad_token_id, device),
        completions=[row.messages for row in rows],
        num_calls=[row.calls for row in rows],
        num_failures=[row.failures for row in rows],
    )


def _as_rollout(prompt_ids: list[list[int]], rows: list[_Row], pad_token_id: int, device) -> Rollout:
    return Rollout.from_lists(
        prompt_ids, [row.ids for row in rows], pad_token_id=pad_token_id,
        is_truncated=[row.truncated for row in rows], sampling_logps=[row.logps for row in rows],
        tool_mask=[row.tool_mask for row in rows], device=device,
    )


def _unparsed_call_message(error: str) -> dict:
    """The `tool` message that answers a call the model started but that could not be read (its error, as the
    model sees it; no tool ran)."""
    return {"role": "tool", "name": "", "content": json.dumps(
        {"error": f"The tool call could not be parsed: {error}"}, ensure_ascii=False)}


def check_tool_turns(tokenizer, eos_token_ids: Sequence[int], template_kwargs: dict | None = None) -> None:
    """Check, before training, that the chat template appends a tool turn after an assistant turn that called a tool
    without rewriting what came before (the check [`tool_suffix_ids`] makes at every round, on probe conversations:
    user, assistant calling `get_weather(city="Paris")` alone, with reasoning and with text, tool result).

    Raises:
        `ValueError`: naming the tokenizer, the turn that changed and how to fix it.
    """
    from ..chat_template_utils import _TOOL_TURNS

    conversation, tool_messages = list(_TOOL_TURNS[:2]), list(_TOOL_TURNS[2:])
    reasoning = conversation[:1] + [{**conversation[1], "reasoning_content": "The weather tool knows."}]
    text = conversation[:1] + [{**conversation[1], "content": "Let me look it up."}]
    try:
        for probe in (conversation, reasoning, text):  # nor a calling turn with reasoning, or with text
            tool_suffix_ids(tokenizer, probe, tool_messages, eos_token_ids, template_kwargs)
    except ValueError as error:
        name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
        raise ValueError(f"The chat template of the tokenizer {name!r} cannot be used for tool calling: {error}") \
            from error
