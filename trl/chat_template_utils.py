"""Chat-template tools: clone a template between tokenizers, check what a template can train on, patch it with
`{% generation %}` markers, and parse generated tool calls.

Our data path computes assistant masks from the template itself (docs/design.md §1): `{% generation %}` markers when
the template has them, otherwise the turn-by-turn prefix method of `trl.data.tokenize`. The checks here therefore ask
the same questions that path needs answered: is the template prefix-preserving, and does the mask cover the token that
ends an assistant turn? Patched templates are only returned after they render byte-identically to the original.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .data import tokenize as _tokenize
from .data.tokenize import (
    assistant_mask,
    assistant_mask_by_prefix,
    end_of_turn_position,
    render_ids,
)
from .template_families import CHATML, _inner_tokenizer, _template_of, decode_turn, detect_family

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin

    ProcessingClass = PreTrainedTokenizerBase | ProcessorMixin


# ---------------------------------------------------------------------------------------------------------------------
# Probe conversations. Contents are distinctive so that string searches in renderings cannot match template text.
# ---------------------------------------------------------------------------------------------------------------------

_WEATHER_CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
_WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city."}}, "required": ["city"]},
    },
}
_MULTI_TURN = [
    {"role": "user", "content": "What is 2 + 2?"},
    # reasoning in an earlier turn: templates that drop it from past turns are caught as not prefix-preserving
    {"role": "assistant", "content": "<think>\nAdd the numbers.\n</think>\n\n2 + 2 = 4."},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "content": "3 + 3 = 6."},
]
_TOOL_TURNS = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [_WEATHER_CALL]},
    {"role": "tool", "content": "22C"},
]


def _render_text(processing_class, messages: list[dict], chat_template: str | None = None, **kwargs) -> str:
    return processing_class.apply_chat_template(messages, tokenize=False, chat_template=chat_template, **kwargs)


def has_generation_markers(processing_class_or_template: "ProcessingClass | str | None") -> bool:
    """Whether a chat template marks assistant output with `{% generation %}` ... `{% endgeneration %}`.

    Args:
        processing_class_or_template (`PreTrainedTokenizerBase`, `ProcessorMixin` or `str`):
            A tokenizer or processor (its `chat_template` is read) or a template string.

    Example:
        ```python
        >>> from trl.chat_template_utils import has_generation_markers
        >>> has_generation_markers("{% generation %}{{ content }}<|im_end|>{% endgeneration %}")
        True
        >>> from trl.models.tiny import tiny_tokenizer
        >>> has_generation_markers(tiny_tokenizer())
        False
        ```
    """
    return _tokenize.has_generation_markers(_template_of(processing_class_or_template))


# ---------------------------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------------------------


def is_chat_template_prefix_preserving(tokenizer: "ProcessingClass") -> bool:
    """Whether rendering a conversation turn by turn only ever appends tokens.

    A small multi-turn conversation (user, assistant, user, assistant; the first assistant turn holds `<think>`
    reasoning) is rendered one turn at a time, and every rendering's token ids, as well as every generation prompt,
    must be a prefix of the next rendering. If the template renders a tool conversation (user, assistant with a tool
    call, tool), that conversation must pass the same check; templates that raise on it are judged on the first one
    only. A template that cannot render without a tool list (Command R+'s `tool_use`) is rendered with one.
    Prefix-preserving templates get exact assistant masks from our prefix method without `{% generation %}`
    markers.

    Args:
        tokenizer (`PreTrainedTokenizerBase`):
            Tokenizer with a chat template.

    Returns:
        `bool`: `True` if every rendering is a token prefix of the next.

    Raises:
        The template's own error if it cannot render a plain user/assistant conversation.

    Example:
        ```python
        >>> from trl.chat_template_utils import is_chat_template_prefix_preserving
        >>> from trl.models.tiny import tiny_tokenizer
        >>> is_chat_template_prefix_preserving(tiny_tokenizer())
        True
        ```
    """
    eos_ids = {_inner_tokenizer(tokenizer).eos_token_id}
    kwargs = None
    try:
        render_ids(tokenizer, _MULTI_TURN)
    except Exception as error:  # templates that need a tool list (Command R+'s tool_use) get one
        try:
            render_ids(tokenizer, _MULTI_TURN, {"tools": [_WEATHER_TOOL]})
        except Exception:  # noqa: BLE001 - the template's own first error
            raise error from None
        kwargs = {"tools": [_WEATHER_TOOL]}
    try:
        assistant_mask_by_prefix(tokenizer, _MULTI_TURN, eos_ids, kwargs)
    except ValueError:
        return False
    try:
        render_ids(tokenizer, _TOOL_TURNS, kwargs)
    except Exception:  # the template has no tool role or no tool calls (jinja raises all sorts of errors)
        return True
    try:
        assistant_mask_by_prefix(tokenizer, _TOOL_TURNS, eos_ids, kwargs)
    except ValueError:
        return False
    except Exception:  # a partial tool conversation the template refuses to render
        return True
    return True


def is_chat_template_stop_token_trained(tokenizer: "ProcessingClass") -> bool:
    """Whether the token that ends an assistant turn falls inside the assistant mask.

    If it does not, a model trained with `assistant_only_loss=True` never learns to stop. The mask comes from the
    same place as in training: `{% generation %}` markers when the template has them, else the prefix method, on a
    two-exchange conversation whose final assistant turn is checked. The end-of-turn token is the first eos or
    special token the template writes after the assistant content (e.g. `<|im_end|>`, `<|eot_id|>`).

    Args:
        tokenizer (`PreTrainedTokenizerBase`):
            Tokenizer with a chat template.

    Returns:
        `bool`: `True` if the end-of-turn token is trained; `False` if it is not, if the template writes none, if
        no assistant mask can be computed (no markers and not prefix-preserving), or if the template raises.

    Example:
        ```python
        >>> from trl.chat_template_utils import is_chat_template_stop_token_trained
        >>> from trl.models.tiny import tiny_tokenizer
        >>> is_chat_template_stop_token_trained(tiny_tokenizer())  # prefix method: "...<|im_end|>" is trained
        True
        ```
    """
    messages = _MULTI_TURN
    try:
        ids, mask = assistant_mask(tokenizer, messages, {_inner_tokenizer(tokenizer).eos_token_id})
        position = end_of_turn_position(tokenizer, ids, messages)
    except Exception:  # noqa: BLE001 - a template that cannot render the probe (raises, bad Jinja) trains no stop token
        return False
    return position is not None and bool(mask[position])


def _render_tool_probe(tokenizer: "ProcessingClass", messages: list[dict]) -> str:
    """Render a probe conversation with tool calls: without a tool list first, then, for templates that need one
    (Command R+'s `tool_use` template iterates over `tools`), with the `get_weather` tool listed. Raises the error of
    the first attempt when both fail."""
    from .template_families import render_tool_messages

    try:
        return render_tool_messages(tokenizer, messages)  # retried with JSON-string arguments (DeepSeek)
    except Exception as error:
        try:
            return render_tool_messages(tokenizer, messages, tools=[_WEATHER_TOOL])
        except Exception:  # noqa: BLE001 - report the first error
            raise error from None


def supports_tool_calling(tokenizer: "ProcessingClass") -> bool:
    """Whether the chat template renders tool calls and tool results.

    Renders user → assistant with a `get_weather(city="Paris")` tool call → tool result `"22C"`, and checks that
    the tool name, the argument key, the argument value and the tool result all appear in the text. A template that
    raises on dict arguments is retried with the arguments as a JSON string (DeepSeek's templates concatenate them),
    and one that raises without a tool list is retried with the `get_weather` tool listed (the argument value and the
    result, which the list does not contain, still have to appear).

    Args:
        tokenizer (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            Processing class with a chat template.

    Returns:
        `bool`: `False` if any of them is missing or the template raises.

    Example:
        ```python
        >>> from trl.chat_template_utils import supports_tool_calling
        >>> from trl.models.tiny import tiny_tokenizer
        >>> supports_tool_calling(tiny_tokenizer())  # plain ChatML drops tool calls
        False
        ```
    """
    try:
        text = _render_tool_probe(tokenizer, _TOOL_TURNS)
    except Exception:
        return False
    return all(piece in text for piece in ("get_weather", "city", "Paris", "22C"))


# ---------------------------------------------------------------------------------------------------------------------
# Training templates
# ---------------------------------------------------------------------------------------------------------------------

# Our own ChatML training template, built from parts: a variant that ignores tools (like plain ChatML) and one that
# lists tools in the system turn and writes tool calls as <tool_call> JSON blocks.
_CHATML_TEXT_MACRO = """{%- macro text(content) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- elif content is iterable and content is not mapping -%}
        {%- for part in content -%}
            {%- if part.type == 'text' -%}{{- part.text -}}{%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
"""
_CHATML_TOOLS_TURN = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages and messages[0].role == 'system' %}{{- text(messages[0].content) + '\\n\\n' }}{%- endif %}
    {{- '# Tools\\n\\nYou can call these functions:\\n<tools>' }}
    {%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}
    {{- '\\n</tools>\\n\\nTo call one, reply with <tool_call>\\n{"name": <name>, "arguments": <JSON object>}\\n'
        '</tool_call><|im_end|>\\n' }}
{%- endif %}
"""
_CHATML_TOOL_CALLS = """            {%- for call in message.tool_calls or [] %}
                {%- set fn = call.function if call.function is defined else call %}
                {%- set args = fn.arguments if fn.arguments is defined else {} %}
                {%- if not loop.first or text(message.content) %}{{- '\\n' }}{%- endif %}
                {{- '<tool_call>\\n{"name": ' + (fn.name | tojson) + ', "arguments": ' }}
                {{- args if args is string else (args | tojson) }}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
"""


def _chatml_training_template(with_tools: bool) -> str:
    skip_system = "message.role == 'system' and loop.first and tools" if with_tools else "false"
    return (
        _CHATML_TEXT_MACRO
        + (_CHATML_TOOLS_TURN if with_tools else "")
        + "{%- for message in messages %}\n"
        + "    {%- if " + skip_system + " %}{#- already written in the tools turn -#}\n"
        + "    {%- elif message.role == 'assistant' %}\n"
        + "        {{- '<|im_start|>assistant\\n' }}\n"
        + "        {%- generation %}\n"
        + "            {{- text(message.content) }}\n"
        + (_CHATML_TOOL_CALLS if with_tools else "")
        + "            {{- '<|im_end|>' }}\n"
        + "        {%- endgeneration %}\n"
        + "        {{- '\\n' }}\n"
        + "    {%- else %}\n"
        + "        {{- '<|im_start|>' + message.role + '\\n' + text(message.content) + '<|im_end|>\\n' }}\n"
        + "    {%- endif %}\n"
        + "{%- endfor %}\n"
        + "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}\n"
    )


chatml_training_chat_template = _chatml_training_template(with_tools=True)
"""ChatML with `{% generation %}` markers, a tools list in the system turn and `<tool_call>` JSON blocks."""
chatml_plain_training_chat_template = _chatml_training_template(with_tools=False)
"""ChatML with `{% generation %}` markers that, like plain ChatML, ignores tools and tool calls."""

_TRAINING_TEMPLATES = {
    "chatml": chatml_training_chat_template,
    "chatml (no tools)": chatml_plain_training_chat_template,
}

# (name, messages, apply_chat_template kwargs) on which a patched template must render exactly like the original
_SYSTEM = {"role": "system", "content": "You are a careful assistant."}
_PROBES = [
    ("user + assistant", _MULTI_TURN[2:], {}),
    ("system + two exchanges", [_SYSTEM, *_MULTI_TURN], {}),
    ("generation prompt", [_SYSTEM, _MULTI_TURN[0]], {"add_generation_prompt": True}),
    ("tool call + tool result", [*_TOOL_TURNS, {"role": "assistant", "content": "It is 22C."}], {}),
    ("tools list", [_SYSTEM, *_MULTI_TURN[:2]], {"tools": [_WEATHER_TOOL]}),
]


def _is_chatml(tokenizer) -> bool:
    try:
        text = _render_text(tokenizer, _MULTI_TURN[2:])
    except Exception:
        return False
    return f"<|im_start|>assistant\n{_MULTI_TURN[3]['content']}<|im_end|>" in text


def _first_mismatch(tokenizer, candidate: str) -> str | None:
    """Name of the first probe the candidate renders differently from the original template, else None."""
    for name, messages, kwargs in _PROBES:
        try:
            expected = _render_text(tokenizer, messages, **kwargs)
        except Exception:  # the original cannot render this probe (e.g. no tool role): nothing to match
            continue
        if _render_text(tokenizer, messages, chat_template=candidate, **kwargs) != expected:
            return name
    return None


def get_training_chat_template(processing_class: "ProcessingClass") -> str | None:
    """A version of the chat template that is prefix-preserving and marks assistant output with `{% generation %}`
    markers, for `assistant_only_loss` and for tool-calling rollouts.

    Returns `None` when the template already has markers and is prefix-preserving. Otherwise the template's family is
    recognised from its text (`trl.template_families.detect_family`) and its training template is generated from the
    template itself (`trl.training_templates`): the family's edits, if any (Qwen3: earlier assistant turns keep their
    reasoning, or the empty `<think></think>` block, instead of losing it once a user message follows; the one
    deliberate rendering difference), then a turn-by-turn wrapper that marks each assistant turn, up to and including
    its end-of-turn token. For ChatML-style templates our hand-written ChatML training templates are tried first.

    The result is verified at call time on probe conversations (plain, multi-turn, system prompt, generation prompt,
    tool calls with and without arguments, tool results, reasoning): it renders byte-identically to the original
    wherever the original is prefix-preserving, and every assistant turn exactly as the original renders it as the
    final turn, so training sees the text the model generates at inference.

    Args:
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            Processing class with a chat template.

    Returns:
        `str` or `None`: the training template, or `None` if the current one can be used as is.

    Raises:
        `ValueError`: the template is of no known family (the message shows how it renders an assistant turn), or
        the family's training template cannot be built or verified for it.

    Example:
        ```python
        >>> from trl.chat_template_utils import get_training_chat_template
        >>> from trl.models.tiny import tiny_tokenizer
        >>> tokenizer = tiny_tokenizer()
        >>> tokenizer.chat_template = get_training_chat_template(tokenizer)
        >>> out = tokenizer.apply_chat_template(
        ...     [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        ...     return_dict=True, return_assistant_tokens_mask=True,
        ... )
        >>> tokenizer.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m])
        'yo<|im_end|>'
        ```
    """
    from .training_templates import UNSUPPORTED, training_template, verify_training_template

    try:
        prefix_preserving = is_chat_template_prefix_preserving(processing_class)
    except Exception as error:  # the template's own error (jinja raises all sorts), reported with the reason
        family = detect_family(processing_class)
        known = f" {UNSUPPORTED[family.name]}." if family is not None and family.name in UNSUPPORTED else ""
        raise ValueError(
            "get_training_chat_template cannot render a plain user/assistant conversation with this chat template "
            f"({type(error).__name__}: {error}).{known} Pass a template with {{% generation %}} markers through "
            "SFTConfig(chat_template_path=...)."
        ) from error
    if has_generation_markers(processing_class) and prefix_preserving:
        return None
    advice = (
        "Pass a template with {% generation %} markers through SFTConfig(chat_template_path=...)"
        + (
            ", or train without markers: this template is prefix-preserving, so assistant_only_loss=True already "
            "works through the prefix method."
            if prefix_preserving
            else "; this template is not prefix-preserving, so the prefix method cannot compute the mask either."
        )
    )
    family = detect_family(processing_class)
    if family is None:
        from .template_families import FAMILIES

        raise ValueError(
            "get_training_chat_template does not recognise this chat template: it is of none of the known families "
            f"({', '.join(f.name for f in FAMILIES)}). {_what_it_renders(processing_class)} {advice}"
        )
    tried = {}
    if family.name == "chatml" and _is_chatml(processing_class):
        for name, candidate in _TRAINING_TEMPLATES.items():
            mismatch = _first_mismatch(processing_class, candidate)
            if mismatch is None:
                return candidate
            tried[name] = f"differs on the {mismatch!r} probe"
    try:
        candidate = training_template(_template_of(processing_class), family)
        problems = verify_training_template(processing_class, candidate, tuple(family.end_of_turn))
    except ValueError as error:
        problems = [str(error)]
    if not problems:
        return candidate
    tried[f"generated {family.name}"] = "; ".join(problems[:3])
    found = "; ".join(f"{name!r}: {why}" for name, why in tried.items())
    known = f" {UNSUPPORTED[family.name]}." if family.name in UNSUPPORTED else ""
    raise ValueError(
        f"get_training_chat_template recognised a {family.name!r} template but could not make a training template "
        f"that renders byte-identically to it.{known} ({found}). {advice}"
    )


def _what_it_renders(processing_class) -> str:
    try:
        text = _render_text(processing_class, _MULTI_TURN[2:])
    except Exception as error:
        return f"It cannot render a user/assistant exchange ({type(error).__name__}: {error})."
    return f"It renders a user/assistant exchange as {text[-300:]!r}."


# ---------------------------------------------------------------------------------------------------------------------
# Cloning
# ---------------------------------------------------------------------------------------------------------------------


def clone_chat_template(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    source_tokenizer_path: str,
    resize_to_multiple_of: int | None = 64,
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase", list[int]]:
    """Give a model and its tokenizer the chat template, added tokens and eos of another tokenizer.

    Copies the source's chat template, adds the source's added (and special) tokens the target lacks, makes the
    source's eos the target's eos (in the tokenizer, `model.config` and `model.generation_config`) and resizes the
    embeddings to `len(tokenizer)` rounded up to `resize_to_multiple_of`. The rows the rounding adds get dummy tokens
    `<extra_id_0>`, `<extra_id_1>`, ... so that `len(tokenizer)` equals the number of embedding rows.

    Args:
        model (`PreTrainedModel`):
            Model whose embeddings are resized.
        tokenizer (`PreTrainedTokenizerBase`):
            Tokenizer to update in place.
        source_tokenizer_path (`str`):
            Hub id or local folder of the tokenizer to copy from.
        resize_to_multiple_of (`int` or `None`, *optional*, defaults to `64`):
            Round the embedding rows up to a multiple of this; `None` resizes to `len(tokenizer)` exactly.

    Returns:
        `tuple[PreTrainedModel, PreTrainedTokenizerBase, list[int]]`: the model, the tokenizer and the ids of the
        tokens copied from the source (the `<extra_id_*>` padding tokens are not included).

    Example:
        ```python
        >>> from transformers import AutoModelForCausalLM, AutoTokenizer
        >>> from trl import clone_chat_template
        >>> model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-3.2-1B")
        >>> tokenizer = AutoTokenizer.from_pretrained("meta-llama/Llama-3.2-1B")
        >>> model, tokenizer, added_ids = clone_chat_template(model, tokenizer, "Qwen/Qwen3-0.6B")
        ```
    """
    from transformers import AutoTokenizer

    source = AutoTokenizer.from_pretrained(source_tokenizer_path)
    tokenizer.chat_template = source.chat_template

    vocab = tokenizer.get_vocab()
    missing = [tok for _, tok in sorted(source.added_tokens_decoder.items()) if tok.content not in vocab]
    special = [tok for tok in missing if tok.special]
    tokenizer.add_tokens(special, special_tokens=True)
    tokenizer.add_tokens([tok for tok in missing if not tok.special])
    added_token_ids = tokenizer.convert_tokens_to_ids([tok.content for tok in missing])

    if source.eos_token is not None:
        tokenizer.eos_token = source.eos_token
        model.config.eos_token_id = tokenizer.eos_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.eos_token_id = tokenizer.eos_token_id

    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=resize_to_multiple_of)
    rows = model.get_input_embeddings().weight.shape[0]
    if rows > len(tokenizer):
        # the rounded-up rows need tokens, or ids past len(tokenizer) decode to nothing and vocab sizes disagree
        tokenizer.add_tokens([f"<extra_id_{i}>" for i in range(rows - len(tokenizer))], special_tokens=True)
    return model, tokenizer, added_token_ids


# ---------------------------------------------------------------------------------------------------------------------
# Response parsing
# ---------------------------------------------------------------------------------------------------------------------

chatml_template = {
    "version": 1,
    "start_anchor": "<|im_start|>assistant\n",
    "defaults": {"role": "assistant"},
    "fields": {
        "content": {"close": "<|im_end|>", "repeats": True, "join": ""},
        "tool_calls": {
            "open": "<tool_call>",
            "close": "</tool_call>",
            "content": "json",
            "repeats": True,
            "transform": {"type": "function", "function": "{content}"},
        },
    },
}
"""`response_template` (transformers >= 5.13) that parses ChatML output with `<tool_call>` JSON blocks."""

chatml_schema = {
    "type": "object",
    "properties": {
        "role": {"const": "assistant"},
        "content": {"type": "string", "x-regex": r"^(.*?)(?:\s*<tool_call>|$)"},
        "tool_calls": {
            "x-regex-iterator": r"<tool_call>\s*(.+?)\s*</tool_call>",
            "type": "array",
            "items": {"x-parser": "json", "x-parser-args": {"transform": "{type: 'function', function: @}"}},
        },
    },
}
"""Legacy `response_schema` (transformers < 5.13): a content regex and a `<tool_call>` JSON block iterator."""


def add_response_schema(processing_class: "ProcessingClass") -> "ProcessingClass":
    """Attach a response parser to a ChatML tokenizer, so that `tokenizer.parse_response(...)` works.

    Sets `response_template` (`chatml_template`) on transformers versions that read it, else the legacy
    `response_schema` (`chatml_schema`). For a processor the inner tokenizer gets it.

    Args:
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            Processing class with a ChatML-style chat template.

    Returns:
        The same processing class.

    Raises:
        `ValueError`: the chat template is not ChatML-style.

    Example:
        ```python
        >>> from trl.chat_template_utils import add_response_schema
        >>> from trl.models.tiny import tiny_tokenizer
        >>> tokenizer = add_response_schema(tiny_tokenizer())
        >>> tokenizer.response_template["start_anchor"]
        '<|im_start|>assistant\\n'
        ```
    """
    if not _is_chatml(processing_class):
        raise ValueError(
            "add_response_schema only knows ChatML-style templates (assistant turns rendered as "
            "'<|im_start|>assistant\\n{content}<|im_end|>'); this chat template is not one. Parse outputs with "
            "trl.chat_template_utils.parse_response instead."
        )
    tokenizer = _inner_tokenizer(processing_class)
    if hasattr(tokenizer, "get_response_parser"):
        tokenizer.response_template = chatml_template
    else:
        tokenizer.response_schema = chatml_schema
    return processing_class


def parse_response(
    tokenizer: "ProcessingClass",
    ids: "list[int] | torch.Tensor",
    prefix: "str | list[int] | torch.Tensor | None" = None,
    tools: list | None = None,
) -> dict[str, Any]:
    """Parse generated token ids into an assistant message with the parser of the chat template's family.

    The family (`trl.template_families.detect_family`; ChatML when the template is of no known family) decides the
    call format: `<tool_call>{"name": ..., "arguments": ...}</tool_call>` blocks for ChatML/Qwen, a JSON
    `{"name": ..., "parameters": ...}` turn for Llama 3, and whether `<think>` reasoning goes to
    `reasoning_content` (Qwen3). The ids are decoded after dropping one trailing end-of-turn token (eos or any of the
    family's, e.g. `<|eot_id|>`/`<|eom_id|>`). Arguments that are missing or not an object become `{}`; a JSON
    string of an object is decoded. Never raises on malformed output: if any call cannot be parsed (invalid JSON, no
    string `name`, an unclosed `<tool_call>`), the whole decoded text is the content. The agent loop uses
    `trl.template_families.parse_tool_turn` instead, which reports every malformed call (arguments that are not an
    object included) as an error the model is shown.

    Args:
        tokenizer (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            Processing class that produced the ids.
        ids (`list[int]` or `torch.Tensor`):
            Generated completion ids (without the prompt).
        prefix (`str` or `list[int]`, *optional*):
            The prompt before generation. Text the template wrote into the assistant turn after its last assistant
            header (e.g. an opening `<think>` after `<|im_start|>assistant\\n`) is parsed as part of the response.
        tools (`list`, *optional*):
            Accepted for compatibility with `tokenizer.parse_response`; JSON arguments are already typed.

    Returns:
        `dict`: `{"role": "assistant", "content": str}`, plus `"reasoning_content"` and `"tool_calls"` when present.

    Example:
        ```python
        >>> from trl.chat_template_utils import parse_response
        >>> from trl.models.tiny import tiny_tokenizer
        >>> tokenizer = tiny_tokenizer()
        >>> text = 'Checking.\\n<tool_call>\\n{"name": "get_weather", "arguments": {"city": "Paris"}}\\n</tool_call>'
        >>> parse_response(tokenizer, tokenizer(text)["input_ids"])
        {'role': 'assistant', 'content': 'Checking.', 'tool_calls': [{'type': 'function', 'function': {'name': 'get_weather', 'arguments': {'city': 'Paris'}}}]}
        ```
    """
    family = detect_family(tokenizer) or CHATML
    text = decode_turn(tokenizer, ids, prefix, family)
    turn = family.parse_turn(text, strict=False)
    if turn.errors:
        return {"role": "assistant", "content": text}
    return turn.message
