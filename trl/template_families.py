"""Template families: how a chat template writes an assistant turn and its tool calls, and how to read them back.

A family is recognised from the chat template's TEXT (never from the model's name), because fine-tunes keep their
base model's template and clones (`trl.clone_chat_template`) change it. Each family is one frozen record: the
assistant header and end-of-turn strings, the reasoning tags, and a tool-call parser
`text -> (content, tool_calls, errors)`; training templates and response schemas of each family belong in the same
record when they are added.

Parsing never raises on what a model generates. A call that was started but cannot be read (invalid JSON, no string
`name`, arguments that are not an object, an unclosed `<tool_call>`) is reported in `errors`, so that the agent loop
can count it as a failed call instead of silently treating it as text.

Families, in detection order (the first whose `recognize` accepts the template wins):

| name | recognised by | tool calls | reasoning |
|---|---|---|---|
| `gpt_oss` | `<|channel|>` and `<|start|>` (harmony) | `to=functions.<name>` messages, JSON body, `<|call|>` | `analysis` channel |
| `deepseek` | `<｜Assistant｜>` (V3, V3.1, R1, R1 distills) | `<｜tool▁call▁begin｜>function<｜tool▁sep｜>name` + fenced JSON; V3.1: `name<｜tool▁sep｜>{JSON}` | `<think>...</think>` |
| `glm4_moe` | `<arg_key>` and `<|assistant|>` | `<tool_call>name` + `<arg_key>`/`<arg_value>` pairs | `<think>...</think>` |
| `cohere2` | `<|START_ACTION|>` and `<|CHATBOT_TOKEN|>` | JSON list of `{"tool_name", "parameters"}` in `<|START_ACTION|>` | `<|START_THINKING|>` |
| `command_r` | `<|CHATBOT_TOKEN|>` (Command R / R+; Command R7B's is `cohere2`) | `Action:` + ```json list of `{"tool_name", "parameters"}` | none |
| `lfm2` | `<|tool_call_start|>` or `<|tool_list_start|>` | Python-style `[f(a=1)]` (parsed with `ast`, never evaluated) | `<think>...</think>` |
| `nemotron3` | `<|im_start|>`, `<function=` and `<think>` | `<tool_call><function=name><parameter=k>v</parameter>...` | `<think>...</think>` |
| `qwen3` | `<|im_start|>` and `<think>` | `<tool_call>\\n{"name", "arguments"}\\n</tool_call>`, several a turn | `<think>...</think>` |
| `olmo3` | `<|im_start|>` and `<function_calls>` | `<function_calls>f(a=<JSON>)\\ng()</function_calls>`, one call a line | kept in `content` |
| `chatml` | `<|im_start|>` (Qwen2.5, our ChatML templates) | same as `qwen3` | kept in `content` |
| `llama3` | `<|start_header_id|>` and `<|eot_id|>` | the whole turn is `{"name", "parameters"}` JSON | none |
| `gemma` | `<start_of_turn>` and `<end_of_turn>` | none (the templates render no tools) | none |
| `phi3` | `<|assistant|>` and `<|end|>` | none (the templates render no tools) | none |
"""

from __future__ import annotations

import ast
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase, ProcessorMixin

    ProcessingClass = PreTrainedTokenizerBase | ProcessorMixin

ToolCallParser = Callable[..., tuple[str, list[dict], list[str]]]  # (text, strict=True) -> content, calls, errors


@dataclass(frozen=True)
class Family:
    """How one family of chat templates writes assistant turns and tool calls.

    Args:
        name (`str`): short name, e.g. `"chatml"`.
        recognize (`Callable[[str], bool]`): whether a chat template's text belongs to the family.
        assistant_header (`str`): what the template writes before an assistant turn's content (the generation prompt).
        end_of_turn (`tuple[str, ...]`): tokens that end an assistant turn.
        parse_tool_calls (`Callable[[str], tuple[str, list[dict], list[str]]]`): `text -> (content, tool_calls,
            errors)` for the text of one assistant turn (reasoning already removed, end of turn stripped).
        call_format (`str`): the call format, as written in error messages.
        reasoning_tags (`tuple[str, str]` or `None`): opening and closing tags of reasoning moved to
            `reasoning_content`; `None` leaves reasoning in `content`.
        split_reasoning (`Callable[[str], tuple[str | None, str]]`, *optional*): `text -> (reasoning, rest)` for
            families whose reasoning is not a tagged block (GPT-OSS's analysis channel); overrides `reasoning_tags`.

    Example:
        ```python
        >>> from trl.template_families import detect_family
        >>> family = detect_family("{{ '<|im_start|>assistant\\n' }}")
        >>> family.name
        'chatml'
        >>> family.parse_tool_calls('Sure.\\n<tool_call>\\n{"name": "now", "arguments": {}}\\n</tool_call>')
        ('Sure.', [{'type': 'function', 'function': {'name': 'now', 'arguments': {}}}], [])
        ```
    """

    name: str
    recognize: Callable[[str], bool]
    assistant_header: str
    end_of_turn: tuple[str, ...]
    parse_tool_calls: ToolCallParser
    call_format: str
    reasoning_tags: tuple[str, str] | None = None
    split_reasoning: Callable[[str], tuple[str | None, str]] | None = None

    def parse_turn(self, text: str, strict: bool = True) -> ToolTurn:
        """Parse the decoded text of one assistant turn (end-of-turn token already stripped) into a [`ToolTurn`];
        `strict=False` turns arguments that are not an object into `{}` instead of an error."""
        message: dict[str, Any] = {"role": "assistant"}
        reasoning = None
        if self.split_reasoning is not None:
            reasoning, text = self.split_reasoning(text)
        elif self.reasoning_tags is not None:
            reasoning, text = _split_reasoning(text, *self.reasoning_tags)
        content, calls, errors = self.parse_tool_calls(text, strict=strict)
        message["content"] = content
        if reasoning:
            message["reasoning_content"] = reasoning
        if calls:
            message["tool_calls"] = calls
        return ToolTurn(message=message, errors=errors)


@dataclass
class ToolTurn:
    """One parsed assistant turn.

    Args:
        message (`dict`): `{"role": "assistant", "content": str}`, plus `"reasoning_content"` when the family
            separates reasoning and there was some, and `"tool_calls"` (`{"type": "function", "function": {"name",
            "arguments"}}`, arguments a `dict`) when valid calls were found. Calls that could not be parsed stay in
            `content` as text.
        errors (`list[str]`): one message per call that was started but could not be parsed, in order.
    """

    message: dict[str, Any]
    errors: list[str]


# ---------------------------------------------------------------------------------------------------------------------
# Parsers
# ---------------------------------------------------------------------------------------------------------------------


def _snippet(text: str, limit: int = 120) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _call_from_json(body: str, strict: bool = True) -> tuple[dict | None, str | None]:
    """`({"type": "function", "function": {...}}, None)` for a valid call object, `(None, why)` otherwise. With
    `strict=False`, arguments that are not an object (nor a JSON string of one) become `{}` instead of an error."""
    try:
        call = json.loads(body)
    except json.JSONDecodeError as error:
        return None, f"invalid JSON ({error.msg} at character {error.pos}) in {_snippet(body)}"
    if not isinstance(call, dict):
        return None, f'expected a JSON object {{"name": ..., "arguments": {{...}}}}, got a {type(call).__name__}'
    name = call.get("name")
    if not isinstance(name, str) or not name:
        return None, f'"name" is missing or not a non-empty string in {_snippet(body)}'
    key = "arguments" if "arguments" in call else "parameters"
    arguments = call.get(key)
    if arguments is None:  # a call without arguments
        arguments = {}
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            if strict:
                return None, f"{name}: {key!r} is a string that is not JSON: {_snippet(arguments)}"
            arguments = {}
    if not isinstance(arguments, dict):
        if strict:
            return None, f"{name}: {key!r} must be a JSON object, got a {type(arguments).__name__}: {_snippet(body)}"
        arguments = {}
    return {"type": "function", "function": {"name": name, "arguments": arguments}}, None


def parse_tagged_tool_calls(text: str, open_tag: str = "<tool_call>", close_tag: str = "</tool_call>",
                            strict: bool = True):
    """Split `open_tag` JSON `close_tag` blocks (Qwen/ChatML style) out of an assistant turn.

    Args:
        text (`str`): the turn's text.
        open_tag (`str`, *optional*, defaults to `"<tool_call>"`): tag before each call.
        close_tag (`str`, *optional*, defaults to `"</tool_call>"`): tag after each call.
        strict (`bool`, *optional*, defaults to `True`): False turns arguments that are not an object into `{}`
            instead of an error.

    Returns:
        `tuple[str, list[dict], list[str]]`: the text outside valid blocks (stripped; malformed blocks stay in it),
        the valid calls in order, and one error per malformed block, unclosed `open_tag` or stray `close_tag`.

    Example:
        ```python
        >>> from trl.template_families import parse_tagged_tool_calls
        >>> parse_tagged_tool_calls('<tool_call>{"name": "f", "arguments": [1]}</tool_call>')[2]
        ['tool call 1: f: \\'arguments\\' must be a JSON object, got a list: \\'{"name": "f", "arguments": [1]}\\'']
        ```
    """
    content, calls, errors = [], [], []
    position, number = 0, 0
    while True:
        start = text.find(open_tag, position)
        segment = text[position:] if start < 0 else text[position:start]
        if close_tag in segment:
            errors.append(f"{close_tag} without a preceding {open_tag} in {_snippet(segment)}")
        content.append(segment)
        if start < 0:
            break
        number += 1
        end = text.find(close_tag, start + len(open_tag))
        if end < 0:
            errors.append(
                f"tool call {number}: {open_tag} is never closed (the generation may have been cut off): "
                f"{_snippet(text[start:])}"
            )
            content.append(text[start:])
            break
        call, error = _call_from_json(text[start + len(open_tag) : end].strip(), strict)
        if error is None:
            calls.append(call)
        else:
            errors.append(f"tool call {number}: {error}")
            content.append(text[start : end + len(close_tag)])
        position = end + len(close_tag)
    return "".join(content).strip(), calls, errors


def parse_json_tool_call(text: str, tag: str = "<|python_tag|>", strict: bool = True):
    """Parse a Llama-3.1/3.2 assistant turn, whose body is one JSON call `{"name": ..., "parameters": {...}}`.

    `"arguments"` is accepted for `"parameters"`, and a leading `tag` (Llama's `<|python_tag|>`) is dropped. The turn
    is a call attempt when it starts with `tag`, or when it starts with `{` and either is a JSON object with a
    `parameters` or `arguments` key (the template always writes one) or is not valid JSON but mentions `"name"` (e.g.
    cut off). Any other text, JSON answers such as `{"name": "Alice"}` included, is content.

    Args:
        text (`str`): the turn's text.
        tag (`str`, *optional*, defaults to `"<|python_tag|>"`): marker a model may write before a call.
        strict (`bool`, *optional*, defaults to `True`): False turns arguments that are not an object into `{}`
            instead of an error.

    Returns:
        `tuple[str, list[dict], list[str]]`: content (`""` for a valid call, else the stripped text), the calls (zero
        or one) and the errors (zero or one).

    Example:
        ```python
        >>> from trl.template_families import parse_json_tool_call
        >>> parse_json_tool_call('{"name": "get_weather", "parameters": {"city": "Paris"}}')
        ('', [{'type': 'function', 'function': {'name': 'get_weather', 'arguments': {'city': 'Paris'}}}], [])
        >>> parse_json_tool_call("It is sunny.")
        ('It is sunny.', [], [])
        ```
    """
    body = text.strip()
    tagged = body.startswith(tag)
    if tagged:
        body = body[len(tag) :].strip()
    if not tagged:
        if not body.startswith("{"):
            return body, [], []
        try:
            value = json.loads(body)
        except json.JSONDecodeError:
            value = None
            attempt = '"name"' in body
        else:
            attempt = isinstance(value, dict) and bool({"parameters", "arguments"} & value.keys())
        if not attempt:
            return body, [], []
    call, error = _call_from_json(body, strict)
    if error is not None:
        return text.strip(), [], [f"tool call 1: {error}"]
    return "", [call], []


def _split_reasoning(text: str, open_tag: str, close_tag: str) -> tuple[str | None, str]:
    """`(reasoning, rest)`. Text before `close_tag` is reasoning even without `open_tag` (templates that write
    the opening tag into the generation prompt); an unclosed `open_tag` at the start makes everything reasoning."""
    if close_tag in text:
        before, after = text.split(close_tag, 1)
        if open_tag in before:
            head, before = before.split(open_tag, 1)
            if head.strip():  # text before the reasoning block: not a reasoning prefix
                return None, text
        return before.strip(), after
    stripped = text.lstrip()
    if stripped.startswith(open_tag):
        return stripped[len(open_tag) :].strip(), ""
    return None, text


def parse_no_tool_calls(text: str, strict: bool = True):
    """Parser of families whose templates render no tool calls (Gemma, Phi-3): the whole turn is content."""
    return text.strip(), [], []


def _blocks(text: str, open_tag: str, close_tag: str):
    """Split `text` into `(outside_text, [(start, end, inner)], errors)`: the text outside `open_tag ... close_tag`
    blocks, each block's span and inner text, and one error per unclosed `open_tag` or stray `close_tag` (an unclosed
    block stays in the outside text)."""
    outside, blocks, errors = [], [], []
    position = 0
    while True:
        start = text.find(open_tag, position)
        segment = text[position:] if start < 0 else text[position:start]
        if close_tag in segment:
            errors.append(f"{close_tag} without a preceding {open_tag} in {_snippet(segment)}")
        outside.append(segment)
        if start < 0:
            break
        end = text.find(close_tag, start + len(open_tag))
        if end < 0:
            errors.append(
                f"tool call {len(blocks) + 1}: {open_tag} is never closed (the generation may have been cut off): "
                f"{_snippet(text[start:])}"
            )
            outside.append(text[start:])
            break
        blocks.append((start, end + len(close_tag), text[start + len(open_tag) : end]))
        position = end + len(close_tag)
    return "".join(outside), blocks, errors


def _function_call(name, arguments) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def _arguments(name: str, value: Any, strict: bool) -> tuple[dict | None, str | None]:
    """Arguments that must be an object: `(arguments, None)` or `(None, why)`; `strict=False` turns anything else
    into `{}`."""
    if value is None:
        return {}, None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            if strict:
                return None, f"{name}: the arguments are not JSON: {_snippet(value)}"
            return {}, None
    if not isinstance(value, dict):
        if strict:
            return None, f"{name}: the arguments must be a JSON object, got a {type(value).__name__}: {_snippet(str(value))}"
        return {}, None
    return value, None


DEEPSEEK_CALLS_BEGIN, DEEPSEEK_CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
DEEPSEEK_CALL_BEGIN, DEEPSEEK_CALL_END, DEEPSEEK_SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
_FENCED_JSON = re.compile(r"\A\s*```(?:json)?\s*\n(.*?)\n?```\s*\Z", re.DOTALL)


def parse_deepseek_tool_calls(text: str, strict: bool = True):
    """Parse DeepSeek's tool calls (V3, R1 and its distills):
    `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>name\\n```json\\n{...}\\n```<｜tool▁call▁end｜>...`
    `<｜tool▁calls▁end｜>`; V3.1's `<｜tool▁call▁begin｜>name<｜tool▁sep｜>{...}<｜tool▁call▁end｜>` is read too, and so
    is a section left unclosed after a complete last call (how DeepSeek-V3's template writes a single call).

    Returns:
        `tuple[str, list[dict], list[str]]`: the text outside the calls (stripped), the valid calls, one error per
        malformed call (no `<｜tool▁sep｜>`, no name, arguments that are not a JSON object, unclosed tags).

    Example:
        ```python
        >>> from trl.template_families import parse_deepseek_tool_calls
        >>> text = ('<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>now\\n```json\\n{}\\n```'
        ...         '<｜tool▁call▁end｜><｜tool▁calls▁end｜>')
        >>> parse_deepseek_tool_calls(text)
        ('', [{'type': 'function', 'function': {'name': 'now', 'arguments': {}}}], [])
        ```
    """
    begin = text.find(DEEPSEEK_CALLS_BEGIN)
    if begin >= 0 and DEEPSEEK_CALLS_END not in text[begin:] and text.rstrip().endswith(DEEPSEEK_CALL_END):
        # a section whose calls are all complete but that is not closed: DeepSeek-V3's template writes a single
        # call that way (it writes <｜tool▁calls▁end｜> only after a second call)
        text = text.rstrip() + DEEPSEEK_CALLS_END
    outside, sections, errors = _blocks(text, DEEPSEEK_CALLS_BEGIN, DEEPSEEK_CALLS_END)
    content, calls = [outside], []
    if not sections and not errors and DEEPSEEK_CALL_BEGIN in outside:  # calls written without the section tags
        outside, sections = "", [(0, len(text), text)]
        content = [""]
    number = 0
    for start, end, inner in sections:
        rest, blocks, block_errors = _blocks(inner, DEEPSEEK_CALL_BEGIN, DEEPSEEK_CALL_END)
        errors.extend(block_errors)
        bad = bool(block_errors) or bool(rest.strip())
        if rest.strip() and not block_errors:
            errors.append(f"text between DeepSeek tool calls: {_snippet(rest.strip())}")
        for _, _, body in blocks:
            number += 1
            call, error = _deepseek_call(body, strict)
            if error is None:
                calls.append(call)
            else:
                errors.append(f"tool call {number}: {error}")
                bad = True
        if bad:
            content.append(text[start:end])
    return "".join(content).strip(), calls, errors


def _deepseek_call(body: str, strict: bool) -> tuple[dict | None, str | None]:
    if DEEPSEEK_SEP not in body:
        return None, f"no {DEEPSEEK_SEP} between the call type or name and the arguments in {_snippet(body)}"
    head, rest = body.split(DEEPSEEK_SEP, 1)
    if head.strip() == "function" and "\n" in rest and not rest.lstrip().startswith("{"):
        # V3 / R1: type<sep>name\n```json\n{...}\n``` (a V3.1 call of a tool named "function" has its JSON there)
        name, arguments = rest.split("\n", 1)
        fenced = _FENCED_JSON.match(arguments)
        if fenced is None:
            return None, f"{name.strip()}: the arguments are not in a ```json block: {_snippet(arguments)}"
        arguments = fenced.group(1)
    else:  # V3.1: name<sep>{...}
        name, arguments = head, rest
    name = name.strip()
    if not name:
        return None, f"the call has no function name: {_snippet(body)}"
    arguments, error = _arguments(name, arguments.strip() or "{}", strict)
    if error is not None:
        return None, error
    return _function_call(name, arguments), None



def _parse_tool_call_blocks(text: str, parse_call):
    """`(content, calls, errors)` of a text whose calls are `<tool_call>...</tool_call>` blocks, each read by
    `parse_call(body) -> (call, error)`: a block that cannot be read stays in the content and is reported."""
    _, blocks, errors = _blocks(text, "<tool_call>", "</tool_call>")
    content, calls = [], []
    position = 0
    for number, (start, end, body) in enumerate(blocks, 1):
        content.append(text[position:start])
        call, error = parse_call(body)
        if error is None:
            calls.append(call)
        else:
            errors.append(f"tool call {number}: {error}")
            content.append(text[start:end])
        position = end
    content.append(text[position:])
    return "".join(content).strip(), calls, errors


def parse_glm_tool_calls(text: str, strict: bool = True):
    """Parse GLM-4-MoE tool calls: `<tool_call>name\\n<arg_key>k</arg_key>\\n<arg_value>v</arg_value>...</tool_call>`.

    A value is JSON-decoded when it is valid JSON (numbers, booleans, objects, lists; the template writes non-strings
    with `tojson`), otherwise it is the string as written (strings are written raw, so a string argument that looks
    like JSON, e.g. `"3"`, comes back decoded).

    Example:
        ```python
        >>> from trl.template_families import parse_glm_tool_calls
        >>> parse_glm_tool_calls("<tool_call>f\\n<arg_key>n</arg_key>\\n<arg_value>2</arg_value>\\n</tool_call>")
        ('', [{'type': 'function', 'function': {'name': 'f', 'arguments': {'n': 2}}}], [])
        ```
    """
    return _parse_tool_call_blocks(text, _glm_call)


_GLM_PAIR = re.compile(r"\s*<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.DOTALL)


def _tagged_arguments(pattern: re.Pattern, text: str) -> tuple[dict, int]:
    """Arguments written as consecutive key/value tags that `pattern` matches (groups: key, value), each value
    JSON-decoded when it is valid JSON and kept as written otherwise; and where the run of tags stops in `text`."""
    arguments, position = {}, 0
    for match in pattern.finditer(text):
        if match.start() != position:
            break
        key, value = match.group(1).strip(), match.group(2)
        try:
            arguments[key] = json.loads(value)
        except json.JSONDecodeError:
            arguments[key] = value
        position = match.end()
    return arguments, position


def _glm_call(body: str) -> tuple[dict | None, str | None]:
    name, _, rest = body.partition("<arg_key>")
    rest = "<arg_key>" + rest if _ else ""
    name = name.strip()
    if not name or "\n" in name or "<" in name:
        return None, f"the call has no function name before its arguments: {_snippet(body)}"
    arguments, position = _tagged_arguments(_GLM_PAIR, rest)
    if rest[position:].strip():
        return None, f"{name}: expected <arg_key>k</arg_key><arg_value>v</arg_value> pairs, got {_snippet(rest[position:])}"
    return _function_call(name, arguments), None


_PY_LITERAL_NAMES = {"True": True, "False": False, "None": None, "true": True, "false": False, "null": None}


def _literal(node: ast.AST) -> Any:
    """A Python or JSON literal from its syntax tree (never evaluates code); raises ValueError otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool, type(None))):
        return node.value
    if isinstance(node, ast.Name) and node.id in _PY_LITERAL_NAMES:
        return _PY_LITERAL_NAMES[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(element) for element in node.elts]
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_literal(key): _literal(value) for key, value in zip(node.keys, node.values, strict=True)}
    raise ValueError(f"not a literal: {ast.unparse(node)!r}")


def parse_pythonic_tool_calls(text: str, strict: bool = True, open_tag: str = "<|tool_call_start|>",
                              close_tag: str = "<|tool_call_end|>"):
    """Parse LFM2/LFM2.5 Python-style calls: `<|tool_call_start|>[f(a=1, b="x"), g()]<|tool_call_end|>`.

    The list is parsed with `ast` (never evaluated): each element must be a call of a plain name with keyword
    arguments whose values are literals (Python's or JSON's: `True`/`true`, `None`/`null`, numbers, strings, lists,
    dicts). Anything else (positional arguments, expressions, invalid syntax, an unclosed tag) is an error and the
    block stays in the content.

    Example:
        ```python
        >>> from trl.template_families import parse_pythonic_tool_calls
        >>> parse_pythonic_tool_calls("<|tool_call_start|>[get_weather(city='Paris')]<|tool_call_end|>")
        ('', [{'type': 'function', 'function': {'name': 'get_weather', 'arguments': {'city': 'Paris'}}}], [])
        ```
    """
    return _parse_call_blocks(text, open_tag, close_tag, _pythonic_calls)


def _parse_call_blocks(text: str, open_tag: str, close_tag: str, read_calls):
    """`(content, calls, errors)` of a text whose calls are `open_tag ... close_tag` blocks of several calls each, read
    by `read_calls(body, calls_before) -> (calls, error)`: a block that cannot be read stays in the content and is
    reported (counted as one call)."""
    _, blocks, errors = _blocks(text, open_tag, close_tag)
    content, calls = [], []
    position, number = 0, 0
    for start, end, body in blocks:
        content.append(text[position:start])
        block_calls, error = read_calls(body, number)
        if error is None:
            calls.extend(block_calls)
            number += len(block_calls)
        else:
            number += 1
            errors.append(error)
            content.append(text[start:end])
        position = end
    content.append(text[position:])
    return "".join(content).strip(), calls, errors


def _pythonic_calls(body: str, before: int) -> tuple[list[dict], str | None]:
    try:
        tree = ast.parse(body.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError) as error:  # ValueError: a null byte; RecursionError: deep nesting
        return [], f"tool call {before + 1}: invalid Python call syntax ({_syntax_error(error)}) in {_snippet(body)}"
    elements = tree.elts if isinstance(tree, (ast.List, ast.Tuple)) else [tree]
    return _checked_calls(elements, before, _literal)


def _syntax_error(error: Exception) -> str:
    return error.msg if isinstance(error, SyntaxError) else f"{type(error).__name__}: {error}"


def _checked_calls(elements: list[ast.AST], before: int, value: Callable[[ast.AST], Any]) -> tuple[list[dict], str | None]:
    """The calls of `elements` (syntax trees numbered from `before + 1`), each a call of a plain name with keyword
    arguments whose values `value` reads (raising ValueError for anything else); `([], error)` at the first that is
    not."""
    calls = []
    for number, element in enumerate(elements, before + 1):
        if not isinstance(element, ast.Call) or not isinstance(element.func, ast.Name):
            return [], f"tool call {number}: expected name(key=value, ...), got {_snippet(ast.unparse(element))}"
        if element.args or any(keyword.arg is None for keyword in element.keywords):
            return [], f"tool call {number}: {element.func.id}: arguments must be passed by keyword"
        try:
            arguments = {keyword.arg: value(keyword.value) for keyword in element.keywords}
        except ValueError as error:
            return [], f"tool call {number}: {element.func.id}: {error}"
        calls.append(_function_call(element.func.id, arguments))
    return calls, None


OLMO3_CALLS = ("<function_calls>", "</function_calls>")


def parse_olmo3_tool_calls(text: str, strict: bool = True):
    """Parse OLMo 3 calls: `<function_calls>name(key=<JSON value>, ...)\\nname2(...)</function_calls>`, one call per
    line, keyword arguments whose values the template writes with `tojson`.

    The block's body is parsed with `ast` (never evaluated) as a sequence of statements, each of which must be a call
    of a plain name with keyword arguments. A value is read from its source text as JSON (so `true`, `null`, escapes
    and nested objects and lists come back exactly as `tojson` wrote them), else as a Python literal (`True`,
    `'x'`). Anything else (positional arguments, expressions, text between the calls, invalid syntax, an unclosed
    tag) is an error and the block stays in the content; text before and after the block is content.

    Example:
        ```python
        >>> from trl.template_families import parse_olmo3_tool_calls
        >>> parse_olmo3_tool_calls('Let me check.<function_calls>get_weather(city="Paris")</function_calls>')
        ('Let me check.', [{'type': 'function', 'function': {'name': 'get_weather', 'arguments': {'city': 'Paris'}}}], [])
        ```
    """
    return _parse_call_blocks(text, *OLMO3_CALLS, _olmo3_calls)


def _olmo3_calls(body: str, before: int) -> tuple[list[dict], str | None]:
    source = body.strip()
    try:
        statements = ast.parse(source, mode="exec").body
    except (SyntaxError, ValueError, RecursionError) as error:
        return [], f"tool call {before + 1}: invalid call syntax ({_syntax_error(error)}) in {_snippet(body)}"
    for number, statement in enumerate(statements, before + 1):
        if not isinstance(statement, ast.Expr):
            return [], f"tool call {number}: expected name(key=value, ...), got {_snippet(ast.unparse(statement))}"

    def value(node: ast.AST) -> Any:
        try:
            return json.loads(ast.get_source_segment(source, node) or "")
        except json.JSONDecodeError:
            return _literal(node)

    return _checked_calls([statement.value for statement in statements], before, value)


_HARMONY_MESSAGE = re.compile(r"(?P<header>.*?)<\|message\|>(?P<body>.*?)(?:<\|end\|>|<\|call\|>|<\|return\|>|\Z)",
                              re.DOTALL)


def split_harmony_reasoning(text: str) -> tuple[str | None, str]:
    """`(reasoning, rest)` of a GPT-OSS (harmony) turn: the bodies of its `analysis`-channel messages, joined by
    newlines, and the text without those messages."""
    reasoning, rest = [], []
    for piece in _harmony_pieces(text):
        match = _HARMONY_MESSAGE.fullmatch(piece)
        header = match.group("header") if match else ""
        if match and re.search(r"<\|channel\|>\s*analysis\b", header) and "to=" not in header:
            reasoning.append(match.group("body").strip())
        else:
            rest.append(piece)
    return ("\n".join(reasoning) or None), "<|start|>".join(rest)


def _harmony_pieces(text: str) -> list[str]:
    return [piece for piece in text.split("<|start|>") if piece.strip()]


def parse_harmony(text: str, strict: bool = True):
    """Parse the messages of a GPT-OSS (harmony) assistant turn (analysis messages already removed by
    [`split_harmony_reasoning`]).

    Each message is `[assistant][ to=R]<|channel|>C[ to=R][ <|constrain|>json|json]<|message|>body`, ended by
    `<|end|>`, `<|call|>`, `<|return|>` or the end of the text, messages separated by `<|start|>`. A message to
    `functions.<name>` is a call whose body is its JSON arguments; any other message's body (the `final` channel, a
    `commentary` preamble) is content.

    Example:
        ```python
        >>> from trl.template_families import parse_harmony
        >>> parse_harmony(' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>')
        ('', [{'type': 'function', 'function': {'name': 'get_weather', 'arguments': {'city': 'Paris'}}}], [])
        ```
    """
    content, calls, errors = [], [], []
    for piece in _harmony_pieces(text):
        match = _HARMONY_MESSAGE.fullmatch(piece)
        if match is None:
            if "<|channel|>" in piece or "to=" in piece:
                errors.append(f"harmony message without <|message|>: {_snippet(piece)}")
            content.append(piece.strip())
            continue
        header, body = match.group("header"), match.group("body")
        recipient = re.search(r"\bto=([^\s<]*)", header)
        if recipient is None:
            content.append(body.strip())
            continue
        name = recipient.group(1).removeprefix("functions.")
        number = len(calls) + len([e for e in errors if e.startswith("tool call")]) + 1
        if not name:
            error = f"the message to {recipient.group(1)!r} names no function"
        else:
            arguments, error = _arguments(name, body.strip() or "{}", strict)
        if error is None:
            calls.append(_function_call(name, arguments))
        else:
            errors.append(f"tool call {number}: {error}")
            content.append(piece.strip())
    return "\n".join(part for part in content if part).strip(), calls, errors


_XML_FUNCTION = re.compile(r"\A\s*<function=([^>\n]*)>(.*)</function>\s*\Z", re.DOTALL)
_XML_PARAMETER = re.compile(r"\s*<parameter=([^>\n]*)>\n?(.*?)\n?</parameter>", re.DOTALL)


def parse_xml_function_calls(text: str, strict: bool = True):
    """Parse XML-style calls (Nemotron 3): `<tool_call>\\n<function=name>\\n<parameter=k>\\nv\\n</parameter>\\n...`
    `</function>\\n</tool_call>`, several a turn.

    A value is JSON-decoded when it is valid JSON (the template writes objects and lists with `tojson`, numbers as
    text), otherwise it is the string as written (strings are written raw, so a string that looks like JSON, e.g.
    `"3"`, comes back decoded; Python's `True`/`None`, as the template writes booleans and null, stay strings).

    Example:
        ```python
        >>> from trl.template_families import parse_xml_function_calls
        >>> parse_xml_function_calls("<tool_call>\\n<function=f>\\n<parameter=n>\\n2\\n</parameter>\\n</function>\\n</tool_call>")
        ('', [{'type': 'function', 'function': {'name': 'f', 'arguments': {'n': 2}}}], [])
        ```
    """
    return _parse_tool_call_blocks(text, _xml_function_call)


def _xml_function_call(body: str) -> tuple[dict | None, str | None]:
    match = _XML_FUNCTION.match(body)
    if match is None:
        return None, f"expected <function=name>...</function> inside <tool_call>, got {_snippet(body)}"
    name, rest = match.group(1).strip(), match.group(2)
    if not name:
        return None, f"the call has no function name: {_snippet(body)}"
    arguments, position = _tagged_arguments(_XML_PARAMETER, rest)
    if rest[position:].strip():
        return None, f"{name}: expected <parameter=k>v</parameter> blocks, got {_snippet(rest[position:])}"
    return _function_call(name, arguments), None


_COMMAND_R_ACTION = re.compile(r"Action:\s*```(?:json)?\s*\n?(.*?)```", re.DOTALL)


def parse_command_r_tool_calls(text: str, strict: bool = True):
    """Parse a Command R / R+ turn (the `tool_use` template): content, then `Action:` and a ```json block holding a
    list of `{"tool_name", "parameters"}` objects. The text before `Action:` is the content; an `Action:` without a
    closed ```json block holding a JSON list of such objects is an error and stays in the content.

    Example:
        ```python
        >>> from trl.template_families import parse_command_r_tool_calls
        >>> parse_command_r_tool_calls('Action:\\n```json\\n[{"tool_name": "now", "parameters": {}}]```')
        ('', [{'type': 'function', 'function': {'name': 'now', 'arguments': {}}}], [])
        ```
    """
    at = text.find("Action:")
    if at < 0:
        return text.strip(), [], []
    head, action = text[:at], text[at:]
    match = _COMMAND_R_ACTION.match(action)
    if match is None:
        return text.strip(), [], [f"tool call 1: 'Action:' without a closed ```json block: {_snippet(action)}"]
    try:
        items = json.loads(match.group(1))
    except json.JSONDecodeError as error:
        why = f"invalid JSON ({error.msg} at character {error.pos}) in {_snippet(match.group(1))}"
        return text.strip(), [], [f"tool call 1: {why}"]
    if not isinstance(items, list):
        items = [items]
    calls, errors = [], []
    for number, item in enumerate(items, 1):
        if not isinstance(item, dict) or not isinstance(item.get("tool_name"), str) or not item["tool_name"]:
            errors.append(f'tool call {number}: expected {{"tool_name": ..., "parameters": {{...}}}}, got '
                          f"{_snippet(json.dumps(item))}")
            continue
        arguments, error = _arguments(item["tool_name"], item.get("parameters"), strict)
        if error is None:
            calls.append(_function_call(item["tool_name"], arguments))
        else:
            errors.append(f"tool call {number}: {error}")
    content = head + action[match.end():] if not errors else text
    return content.strip(), calls, errors


COHERE_ACTION = ("<|START_ACTION|>", "<|END_ACTION|>")
COHERE_RESPONSE = ("<|START_RESPONSE|>", "<|END_RESPONSE|>")


def parse_cohere_tool_calls(text: str, strict: bool = True):
    """Parse a Cohere 2 (Command R7B) turn: the content is the text in `<|START_RESPONSE|>...<|END_RESPONSE|>` (the
    whole text when there is no such block), the calls a JSON list in `<|START_ACTION|>...<|END_ACTION|>` of
    `{"tool_call_id", "tool_name", "parameters"}` objects.

    Example:
        ```python
        >>> from trl.template_families import parse_cohere_tool_calls
        >>> parse_cohere_tool_calls('<|START_ACTION|>[{"tool_call_id": "0", "tool_name": "now", "parameters": {}}]'
        ...                         '<|END_ACTION|>')
        ('', [{'type': 'function', 'function': {'name': 'now', 'arguments': {}}}], [])
        ```
    """
    outside, actions, errors = _blocks(text, *COHERE_ACTION)
    content, calls, number = [], [], 0
    for start, end, body in actions:
        try:
            items = json.loads(body)
        except json.JSONDecodeError as error:
            number += 1
            errors.append(f"tool call {number}: invalid JSON ({error.msg} at character {error.pos}) in {_snippet(body)}")
            content.append(text[start:end])
            continue
        if not isinstance(items, list):
            items = [items]
        bad = False
        for item in items:
            number += 1
            if not isinstance(item, dict) or not isinstance(item.get("tool_name"), str) or not item["tool_name"]:
                errors.append(f'tool call {number}: expected {{"tool_name": ..., "parameters": {{...}}}}, got '
                              f"{_snippet(json.dumps(item))}")
                bad = True
                continue
            arguments, error = _arguments(item["tool_name"], item.get("parameters"), strict)
            if error is None:
                calls.append(_function_call(item["tool_name"], arguments))
            else:
                errors.append(f"tool call {number}: {error}")
                bad = True
        if bad:  # the block stays in the content (its valid calls are still returned)
            content.append(text[start:end])
    rest, responses, _ = _blocks(outside, *COHERE_RESPONSE)
    if responses:
        content.insert(0, "".join(body for _, _, body in responses))
        content.append(rest)
    elif rest.strip().startswith(COHERE_RESPONSE[0]):  # cut off before <|END_RESPONSE|>
        content.insert(0, rest.strip()[len(COHERE_RESPONSE[0]) :])
    else:
        content.insert(0, rest)
    return "".join(content).strip(), calls, errors


# ---------------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------------

_TAGGED_FORMAT = '<tool_call>\\n{"name": <name>, "arguments": <JSON object>}\\n</tool_call> (one block per call)'

GPT_OSS = Family(
    name="gpt_oss",
    recognize=lambda template: "<|channel|>" in template and "<|start|>" in template,
    assistant_header="<|start|>assistant",
    end_of_turn=("<|return|>", "<|call|>", "<|end|>"),
    parse_tool_calls=parse_harmony,
    call_format="<|start|>assistant to=functions.<name><|channel|>commentary json<|message|><JSON object><|call|>",
    split_reasoning=split_harmony_reasoning,
)
DEEPSEEK = Family(
    name="deepseek",
    recognize=lambda template: "<｜Assistant｜>" in template,
    assistant_header="<｜Assistant｜>",
    end_of_turn=("<｜end▁of▁sentence｜>",),
    parse_tool_calls=parse_deepseek_tool_calls,
    call_format=(
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜><name>\\n```json\\n<JSON object>\\n```"
        "<｜tool▁call▁end｜><｜tool▁calls▁end｜> (V3.1: <｜tool▁call▁begin｜><name><｜tool▁sep｜><JSON object>"
        "<｜tool▁call▁end｜>)"
    ),
    reasoning_tags=("<think>", "</think>"),
)
GLM4_MOE = Family(
    name="glm4_moe",
    recognize=lambda template: "<arg_key>" in template and "<|assistant|>" in template,
    assistant_header="<|assistant|>",
    end_of_turn=("<|user|>", "<|observation|>", "<|endoftext|>"),
    parse_tool_calls=parse_glm_tool_calls,
    call_format="<tool_call><name>\\n<arg_key>key</arg_key>\\n<arg_value>value</arg_value>\\n...</tool_call>",
    reasoning_tags=("<think>", "</think>"),
)
COHERE2 = Family(
    name="cohere2",
    recognize=lambda template: "<|START_ACTION|>" in template and "<|CHATBOT_TOKEN|>" in template,
    assistant_header="<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
    end_of_turn=("<|END_OF_TURN_TOKEN|>",),
    parse_tool_calls=parse_cohere_tool_calls,
    call_format='<|START_ACTION|>[{"tool_call_id": "0", "tool_name": <name>, "parameters": <JSON object>}]<|END_ACTION|>',
    reasoning_tags=("<|START_THINKING|>", "<|END_THINKING|>"),
)
COMMAND_R = Family(
    name="command_r",
    recognize=lambda template: "<|CHATBOT_TOKEN|>" in template,
    assistant_header="<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
    end_of_turn=("<|END_OF_TURN_TOKEN|>",),
    parse_tool_calls=parse_command_r_tool_calls,
    call_format='Action:\\n```json\\n[{"tool_name": <name>, "parameters": <JSON object>}]```',
)
NEMOTRON3 = Family(
    name="nemotron3",
    recognize=lambda template: "<|im_start|>" in template and "<function=" in template and "<think>" in template,
    assistant_header="<|im_start|>assistant\n",
    end_of_turn=("<|im_end|>",),
    parse_tool_calls=parse_xml_function_calls,
    call_format="<tool_call>\\n<function=<name>>\\n<parameter=key>\\nvalue\\n</parameter>\\n</function>\\n</tool_call>",
    reasoning_tags=("<think>", "</think>"),
)
LFM2 = Family(
    name="lfm2",
    recognize=lambda template: "<|tool_call_start|>" in template or "<|tool_list_start|>" in template,
    assistant_header="<|im_start|>assistant\n",
    end_of_turn=("<|im_end|>",),
    parse_tool_calls=parse_pythonic_tool_calls,
    call_format="<|tool_call_start|>[<name>(key=value, ...), ...]<|tool_call_end|>",
    reasoning_tags=("<think>", "</think>"),
)
QWEN3 = Family(
    name="qwen3",
    recognize=lambda template: "<|im_start|>" in template and "<think>" in template,
    assistant_header="<|im_start|>assistant\n",
    end_of_turn=("<|im_end|>",),
    parse_tool_calls=parse_tagged_tool_calls,
    call_format=_TAGGED_FORMAT,
    reasoning_tags=("<think>", "</think>"),
)
OLMO3 = Family(
    name="olmo3",
    recognize=lambda template: "<|im_start|>" in template and "<function_calls>" in template,
    assistant_header="<|im_start|>assistant\n",
    end_of_turn=("<|im_end|>", "<|endoftext|>"),
    parse_tool_calls=parse_olmo3_tool_calls,
    call_format="<function_calls><name>(key=<JSON value>, ...)\\n<name>(...)</function_calls> (one call per line)",
)
CHATML = Family(
    name="chatml",
    recognize=lambda template: "<|im_start|>" in template,
    assistant_header="<|im_start|>assistant\n",
    end_of_turn=("<|im_end|>",),
    parse_tool_calls=parse_tagged_tool_calls,
    call_format=_TAGGED_FORMAT,
)
LLAMA3 = Family(
    name="llama3",
    recognize=lambda template: "<|start_header_id|>" in template and "<|eot_id|>" in template,
    assistant_header="<|start_header_id|>assistant<|end_header_id|>\n\n",
    end_of_turn=("<|eot_id|>", "<|eom_id|>"),
    parse_tool_calls=parse_json_tool_call,
    call_format='the whole assistant turn is {"name": <name>, "parameters": <JSON object>} (one call per turn)',
)
GEMMA = Family(
    name="gemma",
    recognize=lambda template: "<start_of_turn>" in template and "<end_of_turn>" in template,
    assistant_header="<start_of_turn>model\n",
    end_of_turn=("<end_of_turn>",),
    parse_tool_calls=parse_no_tool_calls,
    call_format="no tool calls (the template does not render them)",
)
PHI3 = Family(
    name="phi3",
    recognize=lambda template: "<|assistant|>" in template and "<|end|>" in template,
    assistant_header="<|assistant|>\n",
    end_of_turn=("<|end|>",),
    parse_tool_calls=parse_no_tool_calls,
    call_format="no tool calls (the template does not render them)",
)

FAMILIES: tuple[Family, ...] = (GPT_OSS, DEEPSEEK, GLM4_MOE, COHERE2, COMMAND_R, LFM2, NEMOTRON3, QWEN3, OLMO3, CHATML,
                                 LLAMA3, GEMMA, PHI3)
"""Known families in detection order: more specific families come before the ones they extend (LFM2, Nemotron 3,
Qwen3 and OLMo 3 templates are ChatML too; Command R7B's template has Command R's `<|CHATBOT_TOKEN|>` too; GLM's `<|assistant|>` is Phi-3's)."""


def _template_of(processing_class_or_template) -> str | None:
    if processing_class_or_template is None or isinstance(processing_class_or_template, str):
        return processing_class_or_template
    template = getattr(processing_class_or_template, "chat_template", None)
    if isinstance(template, dict):  # tokenizers may hold several named templates
        template = template.get("default")
    return template if isinstance(template, str) else None


@functools.lru_cache(maxsize=64)
def _detect(template: str) -> Family | None:
    return next((family for family in FAMILIES if family.recognize(template)), None)


def detect_family(processing_class_or_template: ProcessingClass | str | None) -> Family | None:
    """The family of a chat template, recognised from its text, or `None` if no known family matches.

    Args:
        processing_class_or_template (`PreTrainedTokenizerBase`, `ProcessorMixin` or `str`):
            A tokenizer or processor (its `chat_template` is read) or a template string.

    Example:
        ```python
        >>> from trl.template_families import detect_family
        >>> from trl.models.tiny import tiny_tokenizer
        >>> detect_family(tiny_tokenizer()).name
        'chatml'
        >>> detect_family("{{ messages[0].content }}") is None
        True
        ```
    """
    template = _template_of(processing_class_or_template)
    return None if template is None else _detect(template)


# ---------------------------------------------------------------------------------------------------------------------
# Parsing generated ids
# ---------------------------------------------------------------------------------------------------------------------


def _inner_tokenizer(processing_class):
    """The text tokenizer of a processor (or the tokenizer itself)."""
    return getattr(processing_class, "tokenizer", processing_class)


def family_end_of_turn_ids(tokenizer, family: Family) -> set[int]:
    """eos and the ids of the family's end-of-turn tokens that this tokenizer has (as single tokens)."""
    tokenizer = _inner_tokenizer(tokenizer)
    ids = {tokenizer.eos_token_id} - {None}
    for token in family.end_of_turn:
        token_id = tokenizer.convert_tokens_to_ids(token)  # no vocab copy: this runs once per generated turn
        if isinstance(token_id, int) and tokenizer.convert_ids_to_tokens(token_id) == token:
            ids.add(token_id)
    return ids


def decode_turn(
    processing_class: ProcessingClass,
    ids: list[int] | torch.Tensor,
    prefix: str | list[int] | torch.Tensor | None = None,
    family: Family | None = None,
) -> str:
    """The text of one generated assistant turn: `ids` decoded with special tokens, one trailing end-of-turn token
    (eos or any of the family's) dropped, and, with `prefix`, the text the template wrote after the last assistant
    header (e.g. an opening `<think>`) put in front, unless that text holds an end-of-turn token (the prompt ends
    after tool results that no header follows, as in DeepSeek's templates: the text belongs to the calling turn).
    `family` defaults to the detected one (ChatML when unknown).

    Example:
        ```python
        >>> from trl.template_families import decode_turn
        >>> from trl.models.tiny import tiny_tokenizer
        >>> tokenizer = tiny_tokenizer()
        >>> decode_turn(tokenizer, tokenizer("Hi.<|im_end|>")["input_ids"])
        'Hi.'
        ```
    """
    family = family or detect_family(processing_class) or CHATML
    tokenizer = _inner_tokenizer(processing_class)
    ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    if ids and ids[-1] in family_end_of_turn_ids(tokenizer, family):
        ids = ids[:-1]
    text = tokenizer.decode(ids, skip_special_tokens=False)
    if prefix is not None:
        if not isinstance(prefix, str):
            prefix = tokenizer.decode(prefix.tolist() if hasattr(prefix, "tolist") else list(prefix))
        if family.assistant_header in prefix:
            tail = prefix.rsplit(family.assistant_header, 1)[1]
            # a tail that holds an end of turn belongs to an earlier, finished assistant turn: after tool results
            # DeepSeek's templates write no header, so the last one in the prompt is that of the calling turn
            stops = [stop for stop in (*family.end_of_turn, tokenizer.eos_token) if stop]
            if not any(stop in tail for stop in stops):
                text = tail + text
    return text


def parse_tool_turn(
    processing_class: ProcessingClass,
    ids: list[int] | torch.Tensor,
    prefix: str | list[int] | torch.Tensor | None = None,
) -> ToolTurn:
    """Parse one generated assistant turn with the parser of the chat template's family.

    Never raises on generated text: calls that cannot be parsed are listed in `ToolTurn.errors` and stay in the
    message's `content`. A template of no known family is parsed as ChatML (`<tool_call>` blocks); call
    [`tool_call_family`] at construction to rule that case out.

    Args:
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            Processing class that produced the ids.
        ids (`list[int]` or `torch.Tensor`):
            The turn's generated ids (without the prompt), with or without its end-of-turn token.
        prefix (`str` or `list[int]`, *optional*):
            The prompt; text the template wrote after its last assistant header is parsed as part of the turn.

    Returns:
        [`ToolTurn`]: the assistant message and the errors.

    Example:
        ```python
        >>> from trl.template_families import parse_tool_turn
        >>> from trl.models.tiny import tiny_tokenizer
        >>> tokenizer = tiny_tokenizer()
        >>> text = '<tool_call>\\n{"name": "get_weather", "arguments": {"city": "Paris"}}\\n</tool_call><|im_end|>'
        >>> parse_tool_turn(tokenizer, tokenizer(text)["input_ids"]).message["tool_calls"]
        [{'type': 'function', 'function': {'name': 'get_weather', 'arguments': {'city': 'Paris'}}}]
        >>> parse_tool_turn(tokenizer, tokenizer("<tool_call>\\n{oops}</tool_call>")["input_ids"]).errors
        ["tool call 1: invalid JSON (Expecting property name enclosed in double quotes at character 1) in '{oops}'"]
        ```
    """
    family = detect_family(processing_class) or CHATML
    return family.parse_turn(decode_turn(processing_class, ids, prefix, family))


# ---------------------------------------------------------------------------------------------------------------------
# Construction-time check
# ---------------------------------------------------------------------------------------------------------------------

_FIX = (
    "Give it a template of a known family ({families}): copy a tool-calling model's template with "
    "`trl.clone_chat_template`, or for a ChatML-style model set "
    "`tokenizer.chat_template = trl.chat_template_utils.chatml_training_chat_template`."
)


def with_json_string_arguments(messages: list[dict]) -> list[dict]:
    """The messages with every tool call's `arguments` written as a JSON string, for templates that concatenate
    the arguments into the text and reject a dict (DeepSeek's)."""
    converted = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            message = {**message, "tool_calls": [_string_arguments(call) for call in calls]}
        converted.append(message)
    return converted


def _string_arguments(call: dict) -> dict:
    function = call.get("function", call)
    arguments = function.get("arguments")
    if arguments is None or isinstance(arguments, str):
        return call
    function = {**function, "arguments": json.dumps(arguments, ensure_ascii=False)}
    return {**call, "function": function} if "function" in call else function


def render_tool_messages(processing_class: ProcessingClass, messages: list[dict], **kwargs) -> str:
    """`apply_chat_template(messages, tokenize=False)`, retried with JSON-string tool-call arguments
    ([`with_json_string_arguments`]) when the template raises on dict arguments (DeepSeek's); the first error is
    raised when both fail."""
    try:
        return processing_class.apply_chat_template(messages, tokenize=False, **kwargs)
    except Exception as error:
        converted = with_json_string_arguments(messages)
        if converted == messages:
            raise
        try:
            return processing_class.apply_chat_template(converted, tokenize=False, **kwargs)
        except Exception:  # noqa: BLE001 - any template error: report the first one
            raise error from None


def tool_call_family(processing_class: ProcessingClass) -> Family:
    """The family whose parser reads the tool calls this chat template writes; raises if there is none.

    The template must render tool calls and tool results (`trl.chat_template_utils.supports_tool_calling`), be of a
    known family, and its rendering of an assistant turn calling `get_weather(city="Paris")` must parse back to
    exactly that call with the family's parser. Call it at construction, before any generation.

    Args:
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            Processing class with a chat template.

    Returns:
        [`Family`]: the family.

    Raises:
        `ValueError`: the template does not render tools, is of no known family, or writes calls its family's
        parser cannot read; the message shows the rendered call and how to fix it.

    Example:
        ```python
        >>> from trl.chat_template_utils import chatml_training_chat_template
        >>> from trl.models.tiny import tiny_tokenizer
        >>> from trl.template_families import tool_call_family
        >>> tokenizer = tiny_tokenizer()
        >>> tokenizer.chat_template = chatml_training_chat_template
        >>> tool_call_family(tokenizer).name
        'chatml'
        ```
    """
    from .chat_template_utils import _TOOL_TURNS, _WEATHER_CALL, _render_tool_probe, supports_tool_calling

    name = getattr(processing_class, "name_or_path", None) or type(processing_class).__name__
    fix = _FIX.format(families=", ".join(family.name for family in FAMILIES))
    if not supports_tool_calling(processing_class):
        raise ValueError(
            f"The chat template of the tokenizer {name!r} does not render tool calls and tool results, so tools "
            f"(`tools`, or an environment's methods) cannot be offered to the model. {fix}"
        )
    rendered = _render_tool_probe(processing_class, _TOOL_TURNS[:2])
    family = detect_family(processing_class)
    if family is None:
        at = rendered.find(_WEATHER_CALL["function"]["name"])
        found = rendered[max(0, at - 80) : at + 80]
        raise ValueError(
            f"The chat template of the tokenizer {name!r} renders tool calls, but in a format trl cannot parse: a "
            f"call of get_weather(city='Paris') is rendered as ...{found!r}..., and the template is of no known "
            f"family (the agent loop would never see the model's calls). {fix}"
        )
    expected = [{"type": "function", "function": _WEATHER_CALL["function"]}]
    # the last assistant turn with calls (templates may write an empty turn after it, or a generation prompt)
    for turn in reversed(rendered.split(family.assistant_header)[1:] or [rendered]):
        for token in family.end_of_turn:
            turn = turn.split(token, 1)[0]
        parsed = family.parse_turn(turn)
        if parsed.errors or parsed.message.get("tool_calls"):
            break
    if parsed.errors or parsed.message.get("tool_calls") != expected:
        problems = "; ".join(parsed.errors) or f"parsed as {parsed.message!r}"
        raise ValueError(
            f"The chat template of the tokenizer {name!r} looks like the {family.name!r} family, whose tool calls "
            f"are written as {family.call_format}, but it renders a call of get_weather(city='Paris') as "
            f"{turn!r}, which that parser does not read back ({problems}). {fix}"
        )
    return family
