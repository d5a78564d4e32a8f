"""Tests for `trl.template_families`: recognising a template's family from its text, parsing tool calls (and
errors) per family, round trips through real-style templates, and prefix preservation of tool turns.

The Qwen2.5-, Qwen3- and Llama-3.1-style templates are in `tests/data/chat_templates/` (written in the vendors'
published style); the tokenizers come from `tests/template_data.py` (the bundled tiny tokenizer, plus Llama 3's
special tokens for the Llama template)."""

import json
from types import SimpleNamespace

import pytest
import torch

from tests.template_data import (
    chat_template,
    llama3_style_tokenizer,
    qwen2_5_style_tokenizer,
    qwen3_style_tokenizer,
)
from trl.chat_template_utils import (
    chatml_plain_training_chat_template,
    chatml_training_chat_template,
    parse_response,
)
from trl.data.tokenize import render_ids
from trl.models.tiny import tiny_tokenizer
from trl.template_families import (
    CHATML,
    FAMILIES,
    LLAMA3,
    QWEN3,
    ToolTurn,
    detect_family,
    parse_json_tool_call,
    parse_tagged_tool_calls,
    parse_tool_turn,
    tool_call_family,
)


def call(name, arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def tool(name, properties):
    parameters = {"type": "object", "properties": {k: {"type": v} for k, v in properties.items()}}
    return {
        "type": "function",
        "function": {"name": name, "description": f"The {name} tool.", "parameters": parameters},
    }


TOOLS = [tool("get_weather", {"city": "string"}), tool("search", {"query": "string", "filters": "object"})]
WEATHER = call("get_weather", {"city": "Paris"})
NESTED = call("search", {"query": 'cafés "open"', "filters": {"open": True, "price": [1, 2], "near": {"km": 2.5}}})
USER = {"role": "user", "content": "What is the weather in Paris?"}


def chatml_tools_tokenizer():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = chatml_training_chat_template
    return tokenizer


TOKENIZERS = {
    "chatml": chatml_tools_tokenizer,
    "qwen2_5_style": qwen2_5_style_tokenizer,
    "qwen3_style": qwen3_style_tokenizer,
    "llama3_1_style": llama3_style_tokenizer,
}


def tokenize(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# -- recognition ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template, family",
    [
        (tiny_tokenizer().chat_template, "chatml"),
        (chatml_training_chat_template, "chatml"),
        (chatml_plain_training_chat_template, "chatml"),
        (chat_template("qwen2_5_style"), "chatml"),
        (chat_template("qwen3_style"), "qwen3"),
        (chat_template("llama3_1_style"), "llama3"),
        ("{%- for m in messages %}[INST] {{ m.content }} [/INST]{%- endfor %}", None),  # Mistral-like
        ("{{ messages[0].content }}", None),
    ],
    ids=["tiny", "chatml-training", "chatml-plain", "qwen2.5", "qwen3", "llama3.1", "mistral-like", "bare"],
)
def test_detect_family_from_template_text(template, family):
    found = detect_family(template)
    assert (found and found.name) == family


def test_detect_family_reads_processing_classes():
    assert detect_family(tiny_tokenizer()) is CHATML
    assert detect_family(llama3_style_tokenizer()) is LLAMA3

    processor = SimpleNamespace(
        chat_template={"default": chat_template("qwen3_style"), "rag": "..."}
    )  # named templates
    assert detect_family(processor) is QWEN3
    assert detect_family(None) is None
    # more specific families come first: qwen3 templates are ChatML too
    assert [family.name for family in FAMILIES] == ["qwen3", "chatml", "llama3"]


# -- parsing ----------------------------------------------------------------------------------------------------------


def block(body):
    return f"<tool_call>\n{body}\n</tool_call>"


def test_tagged_valid_calls():
    text = "Let me check.\n" + block('{"name": "get_weather", "arguments": {"city": "Paris"}}')
    assert parse_tagged_tool_calls(text) == ("Let me check.", [WEATHER], [])
    # two calls in one turn, nested arguments, "parameters" accepted, missing arguments -> {}
    nested = '{"name": "search", "parameters": ' + json.dumps(NESTED["function"]["arguments"]) + "}"
    text = block(nested) + "\n" + block('{"name": "now"}')
    assert parse_tagged_tool_calls(text) == ("", [NESTED, call("now", {})], [])
    # arguments written as a JSON string of an object are decoded
    text = block('{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}')
    assert parse_tagged_tool_calls(text) == ("", [WEATHER], [])


@pytest.mark.parametrize(
    "body, error",
    [
        ("{not json}", "invalid JSON"),
        ('{"name": "get_weather", "arguments": {"city": "Paris"}', "invalid JSON"),  # unbalanced
        ('[{"name": "get_weather"}]', "expected a JSON object"),  # unknown shape
        ('{"arguments": {"city": "Paris"}}', '"name" is missing'),
        ('{"name": 3, "arguments": {}}', '"name" is missing or not a non-empty string'),
        ('{"name": "get_weather", "arguments": ["Paris"]}', "'arguments' must be a JSON object, got a list"),
        ('{"name": "get_weather", "arguments": 3}', "'arguments' must be a JSON object, got a int"),
        ('{"name": "get_weather", "arguments": "Paris"}', "'arguments' is a string that is not JSON"),
        ('{"name": "get_weather", "arguments": "[1]"}', "'arguments' must be a JSON object, got a list"),
    ],
)
def test_tagged_malformed_call_is_an_error_and_stays_in_content(body, error):
    valid = block('{"name": "get_weather", "arguments": {"city": "Paris"}}')
    content, calls, errors = parse_tagged_tool_calls(valid + "\n" + block(body))
    assert calls == [WEATHER]  # the valid call is kept
    assert len(errors) == 1 and errors[0].startswith("tool call 2: ") and error in errors[0]
    assert content == block(body)


def test_tagged_unclosed_and_stray_tags():
    cut = '<tool_call>\n{"name": "get_weather", "arg'  # generation stopped mid-call
    content, calls, errors = parse_tagged_tool_calls("Checking.\n" + cut)
    assert (content, calls) == ("Checking.\n" + cut, [])
    assert len(errors) == 1 and "tool call 1: <tool_call> is never closed" in errors[0]
    content, calls, errors = parse_tagged_tool_calls("oops</tool_call> " + block('{"name": "now"}'))
    assert calls == [call("now", {})] and len(errors) == 1 and "</tool_call> without a preceding" in errors[0]


def test_qwen3_reasoning():
    text = "<think>\nThe user wants weather.\n</think>\n\nChecking.\n" + block(
        '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    )
    assert QWEN3.parse_turn(text) == ToolTurn(
        {
            "role": "assistant",
            "content": "Checking.",
            "reasoning_content": "The user wants weather.",
            "tool_calls": [WEATHER],
        },
        [],
    )
    # a call written inside the reasoning is not a call
    inside = "<think>\nMaybe " + block('{"name": "now"}') + "\n</think>\n\nNo call."
    assert "tool_calls" not in QWEN3.parse_turn(inside).message
    # the opening tag was in the generation prompt; or reasoning cut off before its end
    assert QWEN3.parse_turn("Hmm.\n</think>\n\nHi.").message == {
        "role": "assistant",
        "content": "Hi.",
        "reasoning_content": "Hmm.",
    }
    assert QWEN3.parse_turn("<think>\nHmm, let me").message == {
        "role": "assistant",
        "content": "",
        "reasoning_content": "Hmm, let me",
    }
    # empty reasoning (thinking disabled) is not reported; ChatML leaves reasoning in the content
    assert QWEN3.parse_turn("<think>\n\n</think>\n\nHi.").message == {"role": "assistant", "content": "Hi."}
    assert CHATML.parse_turn("<think>\nHmm.\n</think>\n\nHi.").message["content"] == "<think>\nHmm.\n</think>\n\nHi."


def test_llama3_json_call():
    weather = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    assert parse_json_tool_call(weather) == ("", [WEATHER], [])
    assert parse_json_tool_call('<|python_tag|>{"name": "get_weather", "arguments": {"city": "Paris"}}') == (
        "",
        [WEATHER],
        [],
    )
    # plain answers, JSON answers that are not calls, and text mentioning braces are content
    assert parse_json_tool_call(" It is 22C. ") == ("It is 22C.", [], [])
    assert parse_json_tool_call('{"temperature": 22}') == ('{"temperature": 22}', [], [])
    assert parse_json_tool_call("{I think} so") == ("{I think} so", [], [])


@pytest.mark.parametrize(
    "text, error",
    [
        ('{"name": "get_weather", "parameters": {"city": "Par', "invalid JSON"),  # cut off
        ('<|python_tag|>brave_search.call(query="x")', "invalid JSON"),  # built-in tool syntax is not parsed
        ('{"name": "get_weather", "parameters": ["Paris"]}', "'parameters' must be a JSON object, got a list"),
        ('{"parameters": {"city": "Paris"}}', '"name" is missing'),
        ('<|python_tag|>[{"name": "get_weather"}]', "expected a JSON object"),
    ],
)
def test_llama3_malformed_call_is_an_error(text, error):
    content, calls, errors = parse_json_tool_call(text)
    assert (content, calls) == (text, [])
    assert len(errors) == 1 and error in errors[0]


def test_parse_tool_turn_and_parse_response_strip_any_end_of_turn_token():
    tokenizer = llama3_style_tokenizer()
    ids = tokenize(tokenizer, '{"name": "get_weather", "parameters": {"city": "Paris"}}')
    expected = {"role": "assistant", "content": "", "tool_calls": [WEATHER]}
    for end in ("<|eot_id|>", "<|eom_id|>"):
        end_ids = ids + [tokenizer.convert_tokens_to_ids(end)]
        assert parse_tool_turn(tokenizer, end_ids) == ToolTurn(expected, [])
        assert parse_response(tokenizer, torch.tensor(end_ids)) == expected
    # arguments that are not an object: parse_tool_turn reports them, parse_response normalises them to {} (API.md)
    bad = tokenize(tokenizer, '{"name": "get_weather", "parameters": [1]}') + [tokenizer.eos_token_id]
    turn = parse_tool_turn(tokenizer, bad)
    assert turn.message == {"role": "assistant", "content": '{"name": "get_weather", "parameters": [1]}'}
    assert len(turn.errors) == 1
    assert parse_response(tokenizer, bad)["tool_calls"] == [
        {"type": "function", "function": {"name": "get_weather", "arguments": {}}}]
    # invalid JSON: both fall back to the text
    cut = tokenize(tokenizer, '{"name": "get_weather", "parameters": {"ci') + [tokenizer.eos_token_id]
    assert parse_response(tokenizer, cut) == parse_tool_turn(tokenizer, cut).message
    # a JSON answer with a "name" but no parameters is content, not a call
    answer = tokenize(tokenizer, '{"name": "Alice"}') + [tokenizer.eos_token_id]
    assert parse_tool_turn(tokenizer, answer) == ToolTurn({"role": "assistant", "content": '{"name": "Alice"}'}, [])


def test_parse_tool_turn_prefix_and_reasoning_with_qwen3_template():
    tokenizer = qwen3_style_tokenizer()
    prompt = tokenizer.apply_chat_template([USER], tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    ids = tokenize(tokenizer, block('{"name": "get_weather", "arguments": {"city": "Paris"}}') + "<|im_end|>")
    assert parse_tool_turn(tokenizer, ids, prefix=prompt).message == {
        "role": "assistant",
        "content": "",
        "tool_calls": [WEATHER],
    }
    ids = tokenize(tokenizer, "Hmm.\n</think>\n\nHi.<|im_end|>")
    assert parse_response(tokenizer, ids, prefix="<|im_start|>assistant\n<think>\n") == {
        "role": "assistant",
        "content": "Hi.",
        "reasoning_content": "Hmm.",
    }


# -- round trips through the templates --------------------------------------------------------------------------------

ROUND_TRIPS = {
    "chatml": [
        {"role": "assistant", "content": "", "tool_calls": [WEATHER]},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [WEATHER, NESTED]},
    ],
    "qwen2_5_style": [
        {"role": "assistant", "content": "", "tool_calls": [WEATHER]},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [WEATHER, NESTED]},
    ],
    "qwen3_style": [
        {"role": "assistant", "content": "", "reasoning_content": "Need the weather.", "tool_calls": [WEATHER]},
        {"role": "assistant", "content": "Both.", "reasoning_content": "Two tools.", "tool_calls": [WEATHER, NESTED]},
    ],
    "llama3_1_style": [  # the template renders one call per turn and drops the content of a call turn
        {"role": "assistant", "content": "", "tool_calls": [WEATHER]},
        {"role": "assistant", "content": "", "tool_calls": [NESTED]},
    ],
}


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_round_trip_render_tokenize_parse(name):
    tokenizer = TOKENIZERS[name]()
    family = detect_family(tokenizer)
    end_ids = {tokenizer.convert_tokens_to_ids(token) for token in family.end_of_turn}
    prompt_ids = render_ids(tokenizer, [USER], {"tools": TOOLS}, add_generation_prompt=True)
    for message in ROUND_TRIPS[name]:
        ids = render_ids(tokenizer, [USER, message], {"tools": TOOLS})
        assert ids[: len(prompt_ids)] == prompt_ids
        completion = ids[len(prompt_ids) :]
        end = next(i for i, token in enumerate(completion) if token in end_ids)
        completion = completion[: end + 1]  # what a model stopping at its end-of-turn token generates
        assert parse_tool_turn(tokenizer, completion) == ToolTurn(message, [])
        assert parse_response(tokenizer, completion) == message


# -- prefix preservation of tool turns --------------------------------------------------------------------------------


def tool_result(content):
    return {"role": "tool", "content": content}


def assert_tool_turns_prefix_preserving(tokenizer, rounds):
    """Each round (assistant turn with calls, then its tool results): the conversation so far rendered without the
    results must be a token prefix of it rendered with the results and a generation prompt."""
    conversation = [USER]
    for assistant, results in rounds:
        conversation.append(assistant)
        before = render_ids(tokenizer, conversation, {"tools": TOOLS})
        conversation.extend(results)
        after = render_ids(tokenizer, conversation, {"tools": TOOLS}, add_generation_prompt=True)
        assert after[: len(before)] == before, f"not a prefix after {assistant}"


@pytest.mark.parametrize("name", ["chatml", "qwen2_5_style"])
def test_tool_turns_prefix_preserving_chatml_templates(name):
    tokenizer = TOKENIZERS[name]()
    assert_tool_turns_prefix_preserving(
        tokenizer,
        [
            ({"role": "assistant", "content": "", "tool_calls": [WEATHER]}, [tool_result("22C")]),
            (  # two calls, two results in one round (Qwen2.5 groups them into one user turn)
                {"role": "assistant", "content": "More.", "tool_calls": [WEATHER, NESTED]},
                [tool_result("22C"), tool_result('{"hits": 3}')],
            ),
        ],
    )


def test_tool_turns_prefix_preserving_llama3_template():
    assert_tool_turns_prefix_preserving(
        llama3_style_tokenizer(),
        [
            ({"role": "assistant", "content": "", "tool_calls": [WEATHER]}, [tool_result("22C")]),
            ({"role": "assistant", "content": "", "tool_calls": [NESTED]}, [tool_result('{"hits": 3}')]),
        ],
    )


def test_qwen2_5_tool_results_are_prefix_preserving_only_as_a_round():
    # Consecutive tool results share one user turn whose <|im_end|> follows the last one: rendering the results one
    # at a time is not prefix-preserving, so a round's results must be rendered together (multi_turn does).
    tokenizer = qwen2_5_style_tokenizer()
    conversation = [USER, {"role": "assistant", "content": "", "tool_calls": [WEATHER, NESTED]}, tool_result("22C")]
    one = render_ids(tokenizer, conversation)
    two = render_ids(tokenizer, [*conversation, tool_result("3 hits")])
    assert two[: len(one)] != one


def test_qwen3_tool_turns_prefix_preserving_only_with_reasoning():
    tokenizer = qwen3_style_tokenizer()
    with_reasoning = {"role": "assistant", "content": "", "reasoning_content": "Need it.", "tool_calls": [WEATHER]}
    assert_tool_turns_prefix_preserving(tokenizer, [(with_reasoning, [tool_result("22C")])])
    # Without reasoning, the last assistant turn gets an empty <think> block only while it is the last message:
    # once the tool result follows, the block disappears and the earlier rendering is no longer a prefix.
    without = {"role": "assistant", "content": "", "tool_calls": [WEATHER]}
    with pytest.raises(AssertionError, match="not a prefix"):
        assert_tool_turns_prefix_preserving(tokenizer, [(without, [tool_result("22C")])])


# -- construction-time check ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, family",
    [("chatml", "chatml"), ("qwen2_5_style", "chatml"), ("qwen3_style", "qwen3"), ("llama3_1_style", "llama3")],
)
def test_tool_call_family(name, family):
    assert tool_call_family(TOKENIZERS[name]()).name == family


# a template of no known family that renders tools (Mistral-like), and known families writing calls another way
MISTRAL_LIKE = (
    "{%- for m in messages %}{%- if m.tool_calls %}[TOOL_CALLS]{{ m.tool_calls | map(attribute='function') | list | tojson }}"
    "{%- else %}[{{ m.role }}]{{ m.content }}{%- endif %}{%- endfor %}"
)
CHATML_OTHER_CALLS = (
    "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content }}{%- for c in m.tool_calls or [] %}"
    "<function={{ c.function.name }}>{{ c.function.arguments | tojson }}</function>{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA_PYTHONIC_CALLS = (
    "{%- for m in messages %}{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + m.content }}"
    "{%- for c in m.tool_calls or [] %}[{{ c.function.name }}(city='Paris')]{%- endfor %}{{- '<|eot_id|>' }}{%- endfor %}"
)


@pytest.mark.parametrize(
    "template, match",
    [
        (None, "does not render tool calls and tool results"),  # the bundled plain ChatML
        (MISTRAL_LIKE, r"\[TOOL_CALLS\].*no known family"),
        (CHATML_OTHER_CALLS, r"'chatml' family.*<function=get_weather>"),
        (LLAMA_PYTHONIC_CALLS, r"'llama3' family.*\[get_weather\(city='Paris'\)\]"),
    ],
    ids=["no-tools", "unknown-family", "chatml-other-format", "llama3-pythonic"],
)
def test_tool_call_family_errors(template, match):
    tokenizer = tiny_tokenizer()
    if template is not None:
        tokenizer.chat_template = template
    with pytest.raises(ValueError, match=match) as error:
        tool_call_family(tokenizer)
    assert "trl.clone_chat_template" in str(error.value) and "chatml_training_chat_template" in str(error.value)
