"""Training chat templates, generated from the model's own template: prefix-preserving, with `{% generation %}` markers.

A training template is built from the original template text in two steps, so that it keeps every byte the vendor's
template writes (its system prompts, tool instructions and quirks), instead of a hand-written copy that drifts:

1. **Family edits** (`FAMILY_EDITS`): a few tested regular-expression edits of the template text, only for families
   whose template rewrites earlier turns. Each edit must match, or the template is reported as a variant we do not
   know. Qwen3, GLM-4-MoE and LFM2.5 render reasoning only for the turns after the last user message (Qwen3 also an
   empty `<think>` block); GPT-OSS drops the analysis of earlier turns and ends them with `<|end|>` instead of the
   `<|return|>` the model generates: the edits make every assistant turn render as the original renders the latest
   one. Phi-3.5 (eos) and Cohere 2 (an assistant header, even without a generation prompt) write text after the last
   message only; the edits leave it out, as a continuation of the conversation would.
2. **Turn-by-turn wrapping** (`wrap_turn_by_turn`, every family): the edited template becomes a macro (its own
   generation markers, LFM2.5 has some, made plain blocks), and the training template renders the conversation
   through it one assistant turn at a time. Before each assistant turn it writes what the macro adds for the
   generation prompt, then the assistant turn's own text inside `{% generation %}` ... `{% endgeneration %}` up to
   and including its end-of-turn token (what the model generates at inference), then what the next rendering adds.
   A template that still rewrites earlier turns raises an error naming the message.

Consequences, checked by `verify_training_template` on the `CONVERSATIONS` probe set (tool-call arguments rendered as
JSON strings for templates that reject dicts, DeepSeek's, as the agent loop renders them):
- Where the original is prefix-preserving on a conversation, the training template renders it byte-identically
  (up to the closing text above).
- Every assistant turn's text (what the model is trained to generate) is exactly what the original renders for it
  when it is the final turn, i.e. what the model generates at inference.
- The deliberate differences: earlier assistant turns keep their reasoning / analysis / empty think block (GPT-OSS:
  and end with `<|return|>`); Phi-3.5 and Cohere 2 leave out their closing text.
- The generation markers mark exactly the tokens the turn-by-turn prefix method of `trl.data.tokenize` marks.
- Families in `UNSUPPORTED` (DeepSeek-R1-Distill, Nemotron 3, Command R+, OLMo 3) are refused with the reason.

The cost is a few renderings of the original per assistant turn (quadratic in the number of turns), which is
negligible next to training.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .chat_template_utils import _WEATHER_CALL as _WEATHER
from .chat_template_utils import _WEATHER_TOOL
from .template_families import render_tool_messages

__all__ = ["CONVERSATIONS", "FAMILY_EDITS", "UNSUPPORTED", "TemplateEdit", "same_up_to_closing", "training_template",
           "verify_training_template", "wrap_turn_by_turn"]


@dataclass(frozen=True)
class TemplateEdit:
    """One edit of a family's template text: the first of `patterns` that matches is replaced everywhere.

    Args:
        what (`str`): what the edit does, for error messages.
        patterns (`tuple[str, ...]`): regular expressions, one per known variant of the family's templates.
        replacement (`str`): the replacement text.
        unless (`str`, *optional*): a regular expression; a template in which it matches is a variant that does not
            need the edit (it is returned unchanged instead of being reported as unknown).
    """

    what: str
    patterns: tuple[str, ...]
    replacement: str
    unless: str | None = None

    def apply(self, template: str) -> str:
        for pattern in self.patterns:
            edited, count = re.subn(pattern, self.replacement, template)
            if count:
                return edited
        if self.unless is not None and re.search(self.unless, template):
            return template
        raise ValueError(
            f"The chat template looks like this family's, but it is a variant we do not know: the edit that "
            f"{self.what} found none of the patterns {list(self.patterns)} in it."
        )


FAMILY_EDITS: dict[str, tuple[TemplateEdit, ...]] = {
    "qwen3": (
        TemplateEdit(
            what="keeps the reasoning of assistant turns before the last user query",
            patterns=(r"loop\.index0\s*>\s*ns\.last_query_index",),
            replacement="true",
        ),
        TemplateEdit(
            what="writes the <think> block (empty if there is no reasoning) into every assistant turn",
            patterns=(
                r"loop\.last\s+or\s+\(\s*not\s+loop\.last\s+and\s+reasoning_content\s*\)",  # Qwen3's published form
                r"loop\.last\s+or\s+reasoning_content",
            ),
            replacement="true",
        ),
    ),
    "glm4_moe": (
        TemplateEdit(
            what="keeps the reasoning of assistant turns before the last user message",
            patterns=(r"loop\.index0\s*>\s*ns\.last_user_index\s+and\s+reasoning_content",),
            replacement="reasoning_content",
        ),
    ),
    "lfm2": (
        TemplateEdit(
            what="keeps the thinking of assistant turns before the last user message (preserve_thinking on)",
            patterns=(r"preserve_thinking\s*\|\s*default\(\s*false\s*\)",),
            replacement="true",
            unless=r"(?s)\A(?:(?!thinking).)*\Z",  # LFM2 (not .5): no thinking, nothing dropped
        ),
    ),
    "gpt_oss": (
        TemplateEdit(
            what="keeps the analysis of tool-calling turns followed by a final answer",
            patterns=(r"not\s+future_final_message\.found",),
            replacement="true",
        ),
        TemplateEdit(
            what="renders every final answer as the last turn: its analysis, then the answer closed by <|return|>",
            patterns=(r"loop\.last\s+and\s+not\s+add_generation_prompt",),
            replacement="true",
        ),
    ),
    "phi3": (
        TemplateEdit(
            what="leaves out the eos the template writes after the last message (no continuation has it)",
            patterns=(r"\{%-?\s*else\s*-?%\}\s*\{\{-?\s*eos_token\s*-?\}\}\s*(\{%-?\s*endif\s*-?%\})",),
            replacement=r"\1",
            # Phi-3-mini's May 2024 template writes no eos (nor a generation prompt: every user turn is followed by
            # the assistant header)
            unless=r"(?s)\A(?:(?!eos_token).)*\Z",
        ),
    ),
    "cohere2": (
        TemplateEdit(
            what="writes the closing assistant header only for a generation prompt (no continuation has it)",
            patterns=(r"(\{%-?\s*endfor\s*-?%\})(<\|START_OF_TURN_TOKEN\|><\|CHATBOT_TOKEN\|>)\s*$",),
            replacement=r"\1{%- if add_generation_prompt %}\2{%- endif %}",
        ),
    ),
}
"""Edits that make a family's template prefix-preserving, by family name; families not listed need none."""

UNSUPPORTED: dict[str, str] = {
    "deepseek": (
        "DeepSeek-R1-Distill's template cannot be made into a training template by edits: its generation prompt "
        "opens a '<think>\\n' block that its assistant turns never contain (so the generation prompt is not a prefix "
        "of any assistant turn, and no template byte-identical to it can be prefix-preserving), it drops the reasoning of every turn including the last, it renders a second "
        "round of tool calls without its opening tokens (and a second round of results without theirs), it writes a stray "
        "empty assistant turn after tool calls whose content is '', and it needs tool-call arguments as JSON strings. "
        "A training template would have to invent text the vendor never renders (see docs/agents.md, "
        "'DeepSeek-R1-Distill: refused, and why'): pass your own template with {% generation %} markers "
        "(SFTConfig.chat_template_path) or train on prompt-completion data"
    ),
    "nemotron3": (
        "Nemotron 3's template (nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B) has no rendering of an assistant turn "
        "without reasoning that follows its generation prompt: with thinking on (its default) the generation prompt "
        "is '<|im_start|>assistant\\n<think>\\n', but such a turn is rendered as '<think></think>' + content, so "
        "the generation prompt is not a prefix of it (with enable_thinking=False it is '<think></think>', which is "
        "not a prefix of a turn with reasoning, '<think>\\n...\\n</think>\\n'); a training template would have to "
        "pick one of the two for every turn, which the original never does (see docs/agents.md, 'Nemotron 3 and "
        "Command R+: refused, and why')"
    ),
    "command_r": (
        "Command R+'s tool_use template (CohereForAI/c4ai-command-r-plus) cannot render a conversation without a "
        "tool list (it iterates over `tools`), writes its instruction to answer with 'Action:' as a system turn after "
        "the last message only (so no conversation is a prefix of its continuation), and ends a tool-calling turn "
        "without <|END_OF_TURN_TOKEN|> (see docs/agents.md, 'Nemotron 3 and Command R+: refused, and why')"
    ),
    "olmo3": (
        "OLMo 3's template (allenai/Olmo-3.1-32B-Instruct) ends the last assistant message with eos_token "
        "('<|endoftext|>') and every earlier one with '<|im_end|>\\n': once a user message or a tool result follows, "
        "the eos of the turn before it becomes '<|im_end|>\\n', so a conversation that ends with an assistant turn is "
        "not a prefix of its continuation and no template byte-identical to it can be prefix-preserving; a training "
        "template would have to pick one of the two endings for every turn, which the original never does (see "
        "docs/agents.md, 'OLMo 3: refused, and why'): pass your own template with {% generation %} markers "
        "(SFTConfig.chat_template_path) or train on prompt-completion data"
    ),
}
"""Why a family's generated training template fails verification where it is known to, by family name: added to
`get_training_chat_template`'s error."""

_WRAPPER_HEAD = """{#- Training template generated by trl.training_templates from the original template below (kept as the
    __original macro): it renders the conversation one assistant turn at a time and wraps each assistant turn's text,
    up to and including its end-of-turn token, in generation markers. -#}
{%- macro __original(messages, add_generation_prompt) -%}
"""
_WRAPPER_TAIL = """
{%- endmacro -%}
{%- set __ns = namespace(prev='', cut=0, found=false) -%}
{%- for __message in messages -%}
    {%- if __message.role == 'assistant' -%}
        {%- set __header = __original(messages[:loop.index0], true) if loop.index0 > 0 else '' -%}
        {%- set __current = __original(messages[:loop.index], false) -%}
        {%- if __header[:__ns.prev|length] != __ns.prev or __current[:__header|length] != __header -%}
            {{- raise_exception('The chat template is not prefix-preserving at message ' ~ loop.index0 ~ ': rendering '
                ~ 'the conversation up to this assistant turn rewrites what was rendered before it.') -}}
        {%- endif -%}
        {{- __header[__ns.prev|length:] -}}
        {%- set __turn = __current[__header|length:] -%}
        {%- set __ns.cut = __turn|length -%}
        {%- set __ns.found = false -%}
        {%- for __stop in __END_OF_TURN__ -%}
            {%- set __at = __turn.rfind(__stop) -%}
            {%- if __at >= 0 and (not __ns.found or __at + __stop|length > __ns.cut) -%}
                {%- set __ns.cut = __at + __stop|length -%}
                {%- set __ns.found = true -%}
            {%- endif -%}
        {%- endfor -%}
        {%- generation -%}{{- __turn[:__ns.cut] -}}{%- endgeneration -%}
        {%- set __ns.prev = __header + __turn[:__ns.cut] -%}
    {%- endif -%}
{%- endfor -%}
{%- set __full = __original(messages, add_generation_prompt) -%}
{%- if __full[:__ns.prev|length] != __ns.prev -%}
    {{- raise_exception('The chat template is not prefix-preserving: rendering the whole conversation rewrites the '
        ~ 'assistant turns rendered before.') -}}
{%- endif -%}
{{- __full[__ns.prev|length:] -}}
"""


def wrap_turn_by_turn(template: str, end_of_turn: tuple[str, ...]) -> str:
    """Wrap a prefix-preserving chat template so that it marks assistant turns with `{% generation %}` markers.

    The result renders byte-identically to `template` on every conversation where `template` is prefix-preserving
    at assistant turns (and raises, naming the message, where it is not). The marked text of an assistant turn is
    what `template` adds after the generation prompt, cut after the last of the `end_of_turn` strings in it (tokens
    written after it, such as ChatML's newline, are context, not targets). An assistant message that opens the
    conversation gets everything before it marked too, as the template cannot render an empty conversation.

    Args:
        template (`str`): a chat template.
        end_of_turn (`tuple[str, ...]`): the strings that end an assistant turn, e.g. `("<|im_end|>",)`.

    Returns:
        `str`: the training template.

    Example:
        ```python
        >>> from trl.training_templates import wrap_turn_by_turn
        >>> from trl.models.tiny import tiny_tokenizer
        >>> tokenizer = tiny_tokenizer()
        >>> tokenizer.chat_template = wrap_turn_by_turn(tokenizer.chat_template, ("<|im_end|>",))
        >>> out = tokenizer.apply_chat_template(
        ...     [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        ...     return_dict=True, return_assistant_tokens_mask=True)
        >>> tokenizer.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m])
        'yo<|im_end|>'
        ```
    """
    stops = "[" + ", ".join(_jinja_string(stop) for stop in end_of_turn) + "]"
    return _WRAPPER_HEAD + _without_generation_markers(template) + _WRAPPER_TAIL.replace("__END_OF_TURN__", stops)


def _without_generation_markers(template: str) -> str:
    """The template with its own `{% generation %}` markers (LFM2.5 has some) made plain blocks: inside the macro
    they would mark offsets of the macro's output, not of the rendering. Whitespace control is kept."""
    template = re.sub(r"\{%(-?)\s*generation\s*(-?)%\}", r"{%\1 if true \2%}", template)
    return re.sub(r"\{%(-?)\s*endgeneration\s*(-?)%\}", r"{%\1 endif \2%}", template)


def _jinja_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def training_template(template: str, family) -> str:
    """The training template of `template`, a chat template of `family` (a `trl.template_families.Family`): the
    family's edits (`FAMILY_EDITS`), then [`wrap_turn_by_turn`] with the family's end-of-turn strings. Not verified:
    `trl.chat_template_utils.get_training_chat_template` verifies it against the original.

    Raises:
        `ValueError`: an edit of the family matches nothing in `template`.
    """
    for edit in FAMILY_EDITS.get(family.name, ()):
        template = edit.apply(template)
    return wrap_turn_by_turn(template, tuple(family.end_of_turn))


# ---------------------------------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------------------------------


def _call(name: str, arguments: dict | None) -> dict:
    function = {"name": name} if arguments is None else {"name": name, "arguments": arguments}
    return {"type": "function", "function": function}


_NOW_TOOL = {
    "type": "function",
    "function": {"name": "get_time", "description": "Current time.", "parameters": {"type": "object",
                                                                                    "properties": {}}},
}
_SYSTEM = {"role": "system", "content": "You are a careful assistant."}
_ASK = {"role": "user", "content": "What is the weather in Paris?"}
_TOOL_CALL = {"role": "assistant", "content": "", "tool_calls": [_WEATHER]}
_TOOL_RESULT = {"role": "tool", "content": "22C"}
_ANSWER = {"role": "assistant", "content": "It is 22C in Paris."}

# (name, messages, apply_chat_template kwargs). Every template is asked to render every conversation; those the
# original cannot render (no tool role, one call per turn, ...) are skipped.
CONVERSATIONS: list[tuple[str, list[dict], dict]] = [
    ("plain", [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}], {}),
    ("multi-turn", [
        {"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3 + 3?"}, {"role": "assistant", "content": "6."},
    ], {}),
    ("system prompt", [_SYSTEM, {"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}], {}),
    ("generation prompt", [_SYSTEM, {"role": "user", "content": "Hi!"}], {"add_generation_prompt": True}),
    ("multi-turn generation prompt", [
        {"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye?"},
    ], {"add_generation_prompt": True}),
    ("tool call and result", [_ASK, _TOOL_CALL, _TOOL_RESULT, _ANSWER], {"tools": [_WEATHER_TOOL]}),
    ("tool call, system prompt, generation prompt", [_SYSTEM, _ASK, _TOOL_CALL, _TOOL_RESULT],
     {"tools": [_WEATHER_TOOL], "add_generation_prompt": True}),
    ("tool call without arguments", [
        {"role": "user", "content": "What time is it?"},
        {"role": "assistant", "content": "", "tool_calls": [_call("get_time", {})]},
        {"role": "tool", "content": "12:00"}, {"role": "assistant", "content": "Noon."},
    ], {"tools": [_NOW_TOOL]}),
    ("two tool calls in one turn", [
        _ASK, {"role": "assistant", "content": "", "tool_calls": [_WEATHER, _call("get_time", {})]},
        _TOOL_RESULT, {"role": "tool", "content": "12:00"}, _ANSWER,
    ], {"tools": [_WEATHER_TOOL, _NOW_TOOL]}),
    ("tool turns then a new question", [
        _ASK, _TOOL_CALL, _TOOL_RESULT, _ANSWER, {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You are welcome."},
    ], {"tools": [_WEATHER_TOOL]}),
    ("reasoning", [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4.", "reasoning_content": "Add the numbers."},
    ], {}),
    ("reasoning in earlier turns", [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4.", "reasoning_content": "Add the numbers."},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "6.", "reasoning_content": "Add again."},
    ], {}),
    ("reasoning inline in content", [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "<think>\nAdd the numbers.\n</think>\n\n4."},
        {"role": "user", "content": "And 3 + 3?"}, {"role": "assistant", "content": "6."},
    ], {}),
    ("reasoning with tool calls", [
        _ASK, {**_TOOL_CALL, "reasoning_content": "I need the weather tool."}, _TOOL_RESULT,
        {**_ANSWER, "reasoning_content": "The tool said 22C."},
    ], {"tools": [_WEATHER_TOOL]}),
    ("thinking field in earlier turns", [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4.", "thinking": "Add the numbers."},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "6.", "thinking": "Add again."},
    ], {}),
    ("thinking field with tool calls", [
        _ASK, {**_TOOL_CALL, "thinking": "I need the weather tool."}, _TOOL_RESULT,
        {**_ANSWER, "thinking": "The tool said 22C."},
    ], {"tools": [_WEATHER_TOOL]}),
    ("thinking disabled", [
        {"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye?"}, {"role": "assistant", "content": "Bye."},
    ], {"enable_thinking": False}),
]
"""Probe conversations on which a training template is verified against the original template."""


def _render(tokenizer, messages: list[dict], chat_template: str | None = None, **kwargs) -> str:
    """The text `chat_template` (default: the tokenizer's) renders for `messages`, with tool-call arguments retried
    as JSON strings when the template rejects dicts (DeepSeek's concatenate them), as the agent loop renders them
    (`trl.template_families.render_tool_messages`): the probe conversations' tool turns are checked on those
    templates too."""
    return render_tool_messages(tokenizer, messages, chat_template=chat_template, **kwargs)


def _cut_after_end_of_turn(text: str, end_of_turn: tuple[str, ...]) -> str:
    """`text` up to and including the last of the `end_of_turn` strings in it (all of it if there is none): what a
    continuation of the conversation keeps, without text some templates write after the last message only."""
    ends = [text.rfind(stop) + len(stop) for stop in end_of_turn if stop in text]
    return text[: max(ends)] if ends else text


def same_up_to_closing(rendered: str, expected: str, end_of_turn: tuple[str, ...]) -> bool:
    """Whether `rendered` is `expected`, or `expected` without text the original writes after the last turn's
    end-of-turn only (Phi-3.5's eos, Cohere 2's assistant header without a generation prompt), which no continuation
    of the conversation has and the training template leaves out."""
    if rendered == expected:
        return True
    return expected.startswith(rendered) and _cut_after_end_of_turn(rendered, end_of_turn) == rendered.rstrip()


def _assistant_turns(tokenizer, messages, kwargs, template=None, end_of_turn=()) -> list[str] | None:
    """The text each assistant turn adds after the generation prompt when it is the final turn, up to its last
    end-of-turn string, or None where the template's generation prompt is not a prefix of the turn."""
    kwargs = {k: v for k, v in kwargs.items() if k != "add_generation_prompt"}
    turns = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant" or k == 0:
            continue
        try:
            header = _render(tokenizer, messages[:k], template, add_generation_prompt=True, **kwargs)
            current = _render(tokenizer, messages[: k + 1], template, **kwargs)
        except Exception:
            return None
        if not current.startswith(header):
            return None
        turns.append(_cut_after_end_of_turn(current[len(header):], end_of_turn))
    return turns


def _is_prefix_preserving(tokenizer, messages, kwargs, end_of_turn=()) -> bool:
    """Whether the template renders `messages` by appending at assistant turns, as the training template does: the
    generation prompt before each assistant turn extends what came before, the turn extends its generation prompt,
    and the next rendering (or the whole conversation) extends the turn up to its last end-of-turn string."""
    options = {k: v for k, v in kwargs.items() if k != "add_generation_prompt"}
    previous = ""
    try:
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            header = _render(tokenizer, messages[:k], add_generation_prompt=True, **options) if k else ""
            current = _render(tokenizer, messages[: k + 1], **options)
            if not header.startswith(previous) or not current.startswith(header):
                return False
            previous = header + _cut_after_end_of_turn(current[len(header):], end_of_turn)
        return _render(tokenizer, messages, **kwargs).startswith(previous)
    except Exception:  # a partial conversation the template refuses: the training template cannot render it
        return False


def verify_training_template(tokenizer, candidate: str, end_of_turn: tuple[str, ...] = ()) -> list[str]:
    """Compare a training template with the tokenizer's own on `CONVERSATIONS`; returns the problems (empty if none).

    For every conversation the original renders: the candidate renders it (being prefix-preserving, or it raises);
    it renders byte-identically where the original is prefix-preserving on that conversation (up to text the
    original writes after the last turn's end-of-turn only, see `same_up_to_closing`); and every assistant turn's
    text, up to its last `end_of_turn` string, is the original's text for that turn when it is the final turn (what
    the model generates at inference).
    """
    problems = []
    for name, messages, kwargs in CONVERSATIONS:
        try:
            expected = _render(tokenizer, messages, **kwargs)
        except Exception:  # the original cannot render this conversation: nothing to match
            continue
        try:
            rendered = _render(tokenizer, messages, candidate, **kwargs)
        except Exception as error:
            problems.append(f"{name!r}: the training template raises {error}")
            continue
        if _is_prefix_preserving(tokenizer, messages, kwargs, end_of_turn) and not same_up_to_closing(
            rendered, expected, end_of_turn
        ):
            problems.append(f"{name!r}: renders {rendered!r} where the original renders {expected!r}")
            continue
        original_turns = _assistant_turns(tokenizer, messages, kwargs, end_of_turn=end_of_turn)
        if original_turns is not None and original_turns != _assistant_turns(
            tokenizer, messages, kwargs, candidate, end_of_turn
        ):
            problems.append(f"{name!r}: an assistant turn differs from the original's rendering of it as the last turn")
    return problems
