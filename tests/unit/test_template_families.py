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
    REAL_TEMPLATES_DIR,
    REAL_TOKENIZERS,
    chat_template,
    deepseek_r1_distill_tokenizer,
    lfm2_5_tokenizer,
    llama3_style_tokenizer,
    qwen2_5_style_tokenizer,
    qwen3_style_tokenizer,
    real_chat_template,
    real_template_source,
)
from trl.chat_template_utils import (
    chatml_plain_training_chat_template,
    chatml_training_chat_template,
    parse_response,
    supports_tool_calling,
)
from trl.data.tokenize import render_ids
from trl.models.tiny import tiny_tokenizer
from trl.template_families import (
    CHATML,
    DEEPSEEK_CALLS_BEGIN,
    DEEPSEEK_CALLS_END,
    FAMILIES,
    LLAMA3,
    QWEN3,
    ToolTurn,
    detect_family,
    parse_cohere_tool_calls,
    parse_deepseek_tool_calls,
    parse_glm_tool_calls,
    parse_harmony,
    parse_json_tool_call,
    parse_olmo3_tool_calls,
    parse_pythonic_tool_calls,
    parse_tagged_tool_calls,
    parse_tool_turn,
    render_tool_messages,
    tool_call_family,
    with_json_string_arguments,
)


def call(name, arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def tool(name, properties):
    # every parameter has a description, and objects their values' type: Command R+'s template requires them
    parameters = {"type": "object", "properties": {
        k: {"type": v, "description": f"The {k}.", **({"additionalProperties": {"type": "string"}} if v == "object" else {})}
        for k, v in properties.items()
    }}
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
    # more specific families come first: lfm2, nemotron3, qwen3 and olmo3 templates are ChatML too, cohere2's has
    # command_r's <|CHATBOT_TOKEN|>, glm4_moe's <|assistant|> is phi3's
    assert [family.name for family in FAMILIES] == [
        "gpt_oss", "deepseek", "glm4_moe", "cohere2", "command_r", "lfm2", "nemotron3", "qwen3", "olmo3", "chatml",
        "llama3", "gemma", "phi3",
    ]


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
    # arguments that are not an object: parse_tool_turn reports them, parse_response normalises them to {} (as the reference does)
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


# -- the vendors' real templates (tests/data/chat_templates/real) ----------------------------------------------------

REAL_FAMILIES = {
    "qwen2_5": "chatml",
    "qwen3": "qwen3",
    "llama3_2": "llama3",
    "deepseek_r1_distill": "deepseek",
    "gpt_oss": "gpt_oss",
    "glm4_moe": "glm4_moe",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "phi3_5": "phi3",
    "cohere2": "cohere2",
    "lfm2_5": "lfm2",
    "llama3_3": "llama3",
    "nemotron3": "nemotron3",
    "command_r_plus": "command_r",
    "gemma1": "gemma",
    "phi3_mini": "phi3",
    "command_r_plus_default": "command_r",
    "deepseek_v3": "deepseek",
    "lfm2": "lfm2",
    "llama3_1": "llama3",
    "phi3_mini_with_system": "phi3",
    "olmo3_1_instruct": "olmo3",
    "deepseek_v3_1": "deepseek",
}
REAL_TOOL_FAMILIES = ["qwen2_5", "qwen3", "llama3_2", "deepseek_r1_distill", "gpt_oss", "glm4_moe", "cohere2", "lfm2_5",
                      "llama3_3", "nemotron3", "command_r_plus", "llama3_1", "olmo3_1_instruct",
                      "deepseek_v3_1"]
REAL_ALL_TOKENIZERS = REAL_TOKENIZERS


def test_every_real_template_has_a_source_and_a_family():
    names = sorted(path.stem for path in REAL_TEMPLATES_DIR.glob("*.jinja"))
    assert names == sorted(REAL_FAMILIES) == sorted(REAL_ALL_TOKENIZERS)
    for name in names:
        assert "/" in real_template_source(name)  # names the model repository


@pytest.mark.parametrize("name", sorted(REAL_FAMILIES))
def test_real_template_recognised_by_its_family_only(name):
    template = real_chat_template(name)
    family = detect_family(template)
    assert family is not None and family.name == REAL_FAMILIES[name]
    # no family earlier in the detection order claims it (a family only "extends" those after it)
    earlier = FAMILIES[: FAMILIES.index(family)]
    assert [f.name for f in earlier if f.recognize(template)] == []
    assert detect_family(REAL_ALL_TOKENIZERS[name]()) is family


@pytest.mark.parametrize("name", sorted(REAL_FAMILIES))
def test_real_supports_tool_calling(name):
    assert supports_tool_calling(REAL_ALL_TOKENIZERS[name]()) == (name in REAL_TOOL_FAMILIES)


@pytest.mark.parametrize("name", REAL_TOOL_FAMILIES)
def test_real_tool_call_family(name):
    assert tool_call_family(REAL_ALL_TOKENIZERS[name]()).name == REAL_FAMILIES[name]


def test_supports_tool_calling_retries_json_string_arguments():
    tokenizer = deepseek_r1_distill_tokenizer()
    conversation = [USER, {"role": "assistant", "content": "", "tool_calls": [WEATHER]}]
    with pytest.raises(TypeError):  # the template concatenates the arguments: a dict is rejected
        tokenizer.apply_chat_template(conversation, tokenize=False)
    assert '{"city": "Paris"}' in render_tool_messages(tokenizer, conversation)
    assert with_json_string_arguments(conversation)[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'
    assert conversation[1]["tool_calls"][0] == WEATHER  # not modified
    assert supports_tool_calling(tokenizer)


def message(content, reasoning=None, calls=None, reasoning_key="reasoning_content"):
    out = {"role": "assistant", "content": content}
    if reasoning is not None:
        out[reasoning_key] = reasoning
    if calls is not None:
        out["tool_calls"] = calls
    return out


# name -> [(message rendered by the template, message parsed back)]; the templates decide what a turn keeps (Llama
# and Cohere drop the content of a call turn, GPT-OSS and LFM2.5 read reasoning from "thinking", Llama and GPT-OSS
# render one call per turn)
REAL_ROUND_TRIPS = {
    "qwen2_5": [
        (message("", calls=[WEATHER]),) * 2,
        (message("Let me look.", calls=[WEATHER, NESTED]),) * 2,
        (message("It is 22C."),) * 2,
    ],
    "qwen3": [
        (message("", "Need the weather.", [WEATHER]),) * 2,
        (message("Both.", "Two tools.", [WEATHER, NESTED]),) * 2,
        (message("It is 22C.", "Easy."),) * 2,
    ],
    "llama3_2": [
        (message("", calls=[WEATHER]),) * 2,
        (message("", calls=[NESTED]),) * 2,
        (message("It is 22C."),) * 2,
    ],
    "deepseek_r1_distill": [
        (message("", calls=[WEATHER]),) * 2,
        (message("", calls=[WEATHER, NESTED]),) * 2,
        (message("It is 22C."),) * 2,
    ],
    "gpt_oss": [
        (message("", "Need the weather.", [WEATHER], "thinking"), message("", "Need the weather.", [WEATHER])),
        (message("", calls=[NESTED]),) * 2,
        (message("It is 22C.", "Easy.", reasoning_key="thinking"), message("It is 22C.", "Easy.")),
    ],
    "glm4_moe": [
        (message("", "Need the weather.", [WEATHER]),) * 2,
        (message("Both.", calls=[WEATHER, NESTED]),) * 2,
        (message("It is 22C.", "Easy."),) * 2,
    ],
    "cohere2": [
        (message("", "Plan: call both.", [WEATHER, NESTED]),) * 2,
        (message("", calls=[WEATHER]),) * 2,
        (message("It is 22C."),) * 2,
    ],
    "lfm2_5": [
        (message("", "Need the weather.", [WEATHER], "thinking"), message("", "Need the weather.", [WEATHER])),
        (message("Let me look.", calls=[WEATHER, NESTED]),) * 2,
        (message("It is 22C.", "Easy.", reasoning_key="thinking"), message("It is 22C.", "Easy.")),
    ],
    "llama3_3": [
        (message("", calls=[WEATHER]),) * 2,
        (message("", calls=[NESTED]),) * 2,
        (message("It is 22C."),) * 2,
    ],
    "nemotron3": [
        (message("", "Need the weather.", [WEATHER]),) * 2,
        (message("Both.", calls=[WEATHER, NESTED]),) * 2,
        (message("It is 22C.", "Easy."),) * 2,
        (message("It is 22C."),) * 2,
    ],
    "command_r_plus": [
        (message("", calls=[WEATHER]),) * 2,
        (message("Let me look.", calls=[WEATHER, NESTED]),) * 2,
        (message("It is 22C."),) * 2,
    ],
    "gemma1": [(message("It is 22C."),) * 2],
    "phi3_mini": [(message("It is 22C."),) * 2],
    "command_r_plus_default": [(message("It is 22C."),) * 2],
    "deepseek_v3": [(message("It is 22C."),) * 2],
    "phi3_mini_with_system": [(message("It is 22C."),) * 2],
    "llama3_1": [
        (message("", calls=[WEATHER]),) * 2,
        (message("", calls=[NESTED]),) * 2,
        (message("It is 22C."),) * 2,
    ],
    # LFM2 renders an assistant message by its content: a call is the text the model writes
    "lfm2": [
        (message("<|tool_call_start|>[get_weather(city='Paris')]<|tool_call_end|>"), message("", calls=[WEATHER])),
        (message("It is 22C."),) * 2,
    ],
    "gemma2": [(message("It is 22C."),) * 2],
    "gemma3": [(message("It is 22C."),) * 2],
    "phi3_5": [(message("It is 22C."),) * 2],
    # OLMo 3: calls one a line in <function_calls>, arguments as JSON values (NESTED's true, quotes and objects)
    "olmo3_1_instruct": [
        (message("It is 22C."),) * 2,
        (message("", calls=[WEATHER]),) * 2,
        (message("Let me look.", calls=[WEATHER, NESTED]),) * 2,
        (message("", calls=[NESTED, call("now", {})]),) * 2,
    ],
    # DeepSeek-V3.1: name<｜tool▁sep｜>{JSON} calls (JSON-string arguments), content before them, no fence
    "deepseek_v3_1": [
        (message("It is 22C."),) * 2,
        (message("", calls=[WEATHER]),) * 2,
        (message("Let me look.", calls=[WEATHER, NESTED]),) * 2,
        (message("", calls=[NESTED, call("now", {})]),) * 2,
    ],
}
# tokens that end a generated turn (GPT-OSS: <|end|> ends a message inside the turn)
STOPS = {"gpt_oss": ("<|call|>", "<|return|>")}


def generated_ids(tokenizer, family, name, rendered_message):
    """The ids a model generates for `rendered_message`: the rendering of [user, message] after the rendering of
    [user] and the assistant header, up to and including the first end-of-turn token."""
    tools = {"tools": TOOLS} if name in REAL_TOOL_FAMILIES else {}
    prompt = render_tool_messages(tokenizer, [USER], **tools)
    full = render_tool_messages(tokenizer, [USER, rendered_message], **tools)
    if "<|SYSTEM_TOKEN|>Write 'Action:'" in prompt:  # Command R+ (tool_use) ends every conversation with it
        closing = prompt[prompt.rindex("<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>Write 'Action:'"):]
        assert full.endswith(closing)
        prompt, full = prompt[: -len(closing)], full[: -len(closing)]
    if not full.startswith(prompt) and prompt.endswith(tokenizer.eos_token):  # Phi-3 ends a conversation with eos
        prompt = prompt[: -len(tokenizer.eos_token)]
    assert full.startswith(prompt)
    turn = full[len(prompt) :]
    if family.assistant_header and not prompt.endswith(family.assistant_header):
        assert turn.startswith(family.assistant_header), turn[:80]
        turn = turn[len(family.assistant_header) :]
    stops = [(turn.find(t), t) for t in STOPS.get(name, family.end_of_turn) if t in turn]
    if stops:
        at, token = min(stops)
        turn = turn[: at + len(token)]
    return tokenize(tokenizer, turn)


@pytest.mark.parametrize("name", sorted(REAL_ROUND_TRIPS))
def test_real_round_trip_render_parse(name):
    tokenizer = REAL_ALL_TOKENIZERS[name]()
    family = detect_family(tokenizer)
    for rendered, expected in REAL_ROUND_TRIPS[name]:
        ids = generated_ids(tokenizer, family, name, rendered)
        assert parse_tool_turn(tokenizer, ids) == ToolTurn(expected, []), tokenizer.decode(ids)
        assert parse_response(tokenizer, ids) == expected


@pytest.mark.parametrize(
    "name, generated, expected",
    [  # reasoning after the opening tag the generation prompt wrote
        ("deepseek_r1_distill", "Need it.\n</think>\n\nIt is 22C.<｜end▁of▁sentence｜>", message("It is 22C.", "Need it.")),
        ("qwen3", "Need it.\n</think>\n\nIt is 22C.<|im_end|>", message("It is 22C.", "Need it.")),
        # OLMo 3's turn ends with eos as the last message, with <|im_end|> before the next one: either is dropped
        ("olmo3_1_instruct", 'Checking.<function_calls>get_weather(city="Paris")</function_calls><|im_end|>',
         message("Checking.", calls=[WEATHER])),
        ("olmo3_1_instruct", "It is 22C.<|endoftext|>", message("It is 22C.")),
        # DeepSeek-V3.1 (thinking off: the generation prompt ends with </think>)
        ("deepseek_v3_1", "It is 22C.<｜end▁of▁sentence｜>", message("It is 22C.")),
        ("deepseek_v3_1", ("Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>"
                           '{"city": "Paris"}<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>'),
         message("Checking.", calls=[WEATHER])),
        (  # GPT-OSS as the model writes it: recipient after the channel, <|constrain|>
            "gpt_oss",
            (
                "<|channel|>analysis<|message|>Need it.<|end|><|start|>assistant<|channel|>commentary "
                'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>'
            ),
            message("", "Need it.", [WEATHER]),
        ),
    ],
)
def test_real_parse_generated_turn_with_prompt(name, generated, expected):
    tokenizer = REAL_ALL_TOKENIZERS[name]()
    prompt = tokenizer.apply_chat_template([USER], tokenize=False, add_generation_prompt=True)
    ids = tokenize(tokenizer, generated)
    assert parse_tool_turn(tokenizer, ids, prefix=prompt) == ToolTurn(expected, [])


@pytest.mark.parametrize(
    "parser, text, error",
    [
        (parse_deepseek_tool_calls, DEEPSEEK_CALLS_BEGIN + "<｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{bad\n```"
         "<｜tool▁call▁end｜>" + DEEPSEEK_CALLS_END, "not JSON"),
        (parse_deepseek_tool_calls, DEEPSEEK_CALLS_BEGIN + "<｜tool▁call▁begin｜>f {}<｜tool▁call▁end｜>"
         + DEEPSEEK_CALLS_END, "no <｜tool▁sep｜>"),
        (parse_deepseek_tool_calls, DEEPSEEK_CALLS_BEGIN + "<｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n{}"
         "<｜tool▁call▁end｜>" + DEEPSEEK_CALLS_END, "not in a ```json block"),
        (parse_deepseek_tool_calls, DEEPSEEK_CALLS_BEGIN + "<｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n[1]",
         "never closed"),
        # DeepSeek-V3.1's name<｜tool▁sep｜>{JSON} form
        (parse_deepseek_tool_calls, DEEPSEEK_CALLS_BEGIN + "<｜tool▁call▁begin｜>f<｜tool▁sep｜>{bad<｜tool▁call▁end｜>"
         + DEEPSEEK_CALLS_END, "not JSON"),
        (parse_deepseek_tool_calls, DEEPSEEK_CALLS_BEGIN + "<｜tool▁call▁begin｜><｜tool▁sep｜>{}<｜tool▁call▁end｜>"
         + DEEPSEEK_CALLS_END, "no function name"),
        (parse_deepseek_tool_calls, DEEPSEEK_CALLS_BEGIN + "<｜tool▁call▁begin｜>f<｜tool▁sep｜>[1]<｜tool▁call▁end｜>"
         + DEEPSEEK_CALLS_END, "must be a JSON object"),
        (parse_deepseek_tool_calls, DEEPSEEK_CALLS_BEGIN + '<｜tool▁call▁begin｜>f<｜tool▁sep｜>{"city": "Par',
         "never closed"),
        (parse_glm_tool_calls, "<tool_call>\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n</tool_call>",
         "no function name"),
        (parse_glm_tool_calls, "<tool_call>f\n<arg_key>city</arg_key>\n</tool_call>", "expected <arg_key>"),
        (parse_glm_tool_calls, "<tool_call>f\n<arg_key>city</arg_key>\n<arg_value>Par", "never closed"),
        (parse_pythonic_tool_calls, "<|tool_call_start|>[f(city='Paris']<|tool_call_end|>", "invalid Python"),
        (parse_pythonic_tool_calls, "<|tool_call_start|>[f('Paris')]<|tool_call_end|>", "by keyword"),
        (parse_pythonic_tool_calls, "<|tool_call_start|>[f(x=__import__('os').getcwd())]<|tool_call_end|>",
         "not a literal"),
        (parse_pythonic_tool_calls, "<|tool_call_start|>[os.system(x=1)]<|tool_call_end|>", "expected name("),
        (parse_pythonic_tool_calls, "<|tool_call_start|>[f(x=1)", "never closed"),
        (parse_harmony, " to=functions.f<|channel|>commentary json<|message|>{bad<|call|>", "not JSON"),
        (parse_harmony, " to=functions.f<|channel|>commentary json<|message|>[1]<|call|>", "must be a JSON object"),
        (parse_cohere_tool_calls, "<|START_ACTION|>[{bad]<|END_ACTION|>", "invalid JSON"),
        (parse_cohere_tool_calls, '<|START_ACTION|>[{"parameters": {}}]<|END_ACTION|>', '"tool_name"'),
        (parse_olmo3_tool_calls, '<function_calls>f(city="Paris"</function_calls>', "invalid call syntax"),
        (parse_olmo3_tool_calls, '<function_calls>f("Paris")</function_calls>', "by keyword"),
        (parse_olmo3_tool_calls, "<function_calls>f(x=__import__('os').getcwd())</function_calls>", "not a literal"),
        (parse_olmo3_tool_calls, "<function_calls>os.system(x=1)</function_calls>", "expected name("),
        (parse_olmo3_tool_calls, "<function_calls>x = f(a=1)</function_calls>", "expected name("),
        (parse_olmo3_tool_calls, '<function_calls>f(a=1)\nthen g</function_calls>', "invalid call syntax"),
        (parse_olmo3_tool_calls, '<function_calls>f(a={"k": 1}', "never closed"),
        (parse_olmo3_tool_calls, "<function_calls>f(a=1)\x00</function_calls>", "invalid call syntax"),
        (parse_olmo3_tool_calls, "<function_calls>f(a=" + "[" * 400 + "]" * 400 + ")</function_calls>",
         "invalid call syntax"),  # nesting past the parser's limit is an error, not a crash
        (parse_pythonic_tool_calls, "<|tool_call_start|>[f(a=" + "[" * 400 + "]" * 400 + ")]<|tool_call_end|>",
         "invalid Python call syntax"),
    ],
)
def test_real_family_malformed_calls_are_errors(parser, text, error):
    content, calls, errors = parser(text)
    assert calls == [] and len(errors) == 1 and error in errors[0], errors
    assert content  # the malformed call stays in the content


def test_malformed_call_keeps_valid_ones_and_never_evaluates():
    text = "<|tool_call_start|>[get_weather(city='Paris')]<|tool_call_end|> <|tool_call_start|>[f(1)]<|tool_call_end|>"
    content, calls, errors = parse_pythonic_tool_calls(text)
    assert calls == [WEATHER] and len(errors) == 1 and errors[0].startswith("tool call 2: ")
    assert content == "<|tool_call_start|>[f(1)]<|tool_call_end|>"
    # Python and JSON literals alike
    text = "<|tool_call_start|>[f(a=True, b=null, c=-2.5, d=[1, (2, 3)], e={'k': None})]<|tool_call_end|>"
    assert parse_pythonic_tool_calls(text)[1] == [call("f", {"a": True, "b": None, "c": -2.5, "d": [1, [2, 3]],
                                                              "e": {"k": None}})]
    # GLM values: JSON when they parse, the raw string otherwise
    text = "<tool_call>f\n<arg_key>a</arg_key>\n<arg_value>[1, 2]</arg_value>\n<arg_key>b</arg_key>\n<arg_value>x y</arg_value>\n</tool_call>"
    assert parse_glm_tool_calls(text) == ("", [call("f", {"a": [1, 2], "b": "x y"})], [])
    # DeepSeek V3.1's call format
    text = DEEPSEEK_CALLS_BEGIN + '<｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜>' + DEEPSEEK_CALLS_END
    assert parse_deepseek_tool_calls(text) == ("", [WEATHER], [])
    # parse_response with strict=False: malformed calls give the whole text as content
    tokenizer = lfm2_5_tokenizer()
    ids = tokenize(tokenizer, "<|tool_call_start|>[f(1)]<|tool_call_end|><|im_end|>")
    assert parse_response(tokenizer, ids) == {"role": "assistant", "content": "<|tool_call_start|>[f(1)]<|tool_call_end|>"}


def test_olmo3_calls_read_json_values():
    """OLMo 3's template writes each argument with `tojson`: JSON literals, escapes and nested values come back as
    written; a value spread over lines and Python literals are read too; content around the block is kept."""
    text = ('Sure.<function_calls>f(a=true, b=false, c=null, d=-2.5e1, e="caf\\u00e9 \\"x\\"\\n", '
            'g={"k": [1, {"m": null}], "t": true})\ng()</function_calls>')
    assert parse_olmo3_tool_calls(text) == ("Sure.", [
        call("f", {"a": True, "b": False, "c": None, "d": -25.0, "e": 'café "x"\n', "g": {"k": [1, {"m": None}], "t": True}}),
        call("g", {}),
    ], [])
    text = "<function_calls>f(a={\n  \"k\": [1,\n 2]\n}, b='x', c=True, d=None)</function_calls>"
    assert parse_olmo3_tool_calls(text) == ("", [call("f", {"a": {"k": [1, 2]}, "b": "x", "c": True, "d": None})], [])
    # a malformed block keeps the valid blocks' calls; an empty block is no call
    text = '<function_calls>get_weather(city="Paris")</function_calls><function_calls>f(1)</function_calls>'
    content, calls, errors = parse_olmo3_tool_calls(text)
    assert calls == [WEATHER] and len(errors) == 1 and errors[0].startswith("tool call 2: ")
    assert content == "<function_calls>f(1)</function_calls>"
    assert parse_olmo3_tool_calls("Hi.<function_calls></function_calls>") == ("Hi.", [], [])


# -- GPT-OSS: two calls in one assistant turn --------------------------------------------------------------------------

TIME = call("get_time", {})


def test_gpt_oss_two_calls_parse_but_the_real_template_renders_the_first_only():
    tokenizer = REAL_ALL_TOKENIZERS["gpt_oss"]()
    # harmony writes one call per message; a generation that goes on past the first <|call|> parses to both calls
    text = (
        '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>'
        "<|start|>assistant<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>{}<|call|>"
    )
    ids = tokenize(tokenizer, text)
    assert parse_tool_turn(tokenizer, ids) == ToolTurn(message("", calls=[WEATHER, TIME]), [])
    assert parse_response(tokenizer, ids) == message("", calls=[WEATHER, TIME])
    # the vendor's template renders message.tool_calls[0] only ("We assume max 1 tool call per message") and names
    # every following tool result after that call
    two = [USER, message("", calls=[WEATHER, TIME]), {"role": "tool", "content": "22C"}, {"role": "tool", "content": "12:00"}]
    rendered = tokenizer.apply_chat_template(two, tokenize=False)
    assert "get_time" not in rendered.split("<|start|>user")[-1]
    assert rendered.count("<|start|>functions.get_weather to=assistant") == 2
    # the same calls as two assistant messages, one call each (what a harmony model generates, as <|call|> stops
    # generation), render both calls with their own results
    one_each = [USER, message("", calls=[WEATHER]), {"role": "tool", "content": "22C"}, message("", calls=[TIME]),
                {"role": "tool", "content": "12:00"}, message("22C at noon.")]
    rendered = tokenizer.apply_chat_template(one_each, tokenize=False)
    assert "<|start|>assistant to=functions.get_time<|channel|>commentary json<|message|>{}<|call|>" in rendered
    assert "<|start|>functions.get_time to=assistant<|channel|>commentary<|message|>\"12:00\"<|end|>" in rendered


def test_deepseek_v3_tool_calls_render_only_outside_transformers():
    """DeepSeek-V3's template (December 2024) writes calls only for an assistant message whose content is None, and
    transformers drops None-valued keys before rendering, so through apply_chat_template the calls are never written
    (supports_tool_calling is False); rendered by Jinja itself, its one-call form (no <｜tool▁calls▁end｜>) and its
    two-call form parse back to the calls."""
    import jinja2

    tokenizer = REAL_ALL_TOKENIZERS["deepseek_v3"]()
    rendered = render_tool_messages(tokenizer, [USER, message("", calls=[WEATHER]), {"role": "tool", "content": "22C"}])
    assert "get_weather" not in rendered and "22C" in rendered  # content "": an empty answer, the call is dropped
    with pytest.raises(jinja2.exceptions.UndefinedError):  # content None: removed by transformers, then read
        render_tool_messages(tokenizer, [USER, message(None, calls=[WEATHER])])
    assert not supports_tool_calling(tokenizer)
    template = jinja2.Environment().from_string(real_chat_template("deepseek_v3"))
    for calls in ([WEATHER], [WEATHER, NESTED]):
        text = template.render(messages=with_json_string_arguments([USER, message(None, calls=calls)]),
                               bos_token=tokenizer.bos_token)
        generated = text.split("<｜Assistant｜>", 1)[1]
        ids = tokenize(tokenizer, generated)
        assert parse_tool_turn(tokenizer, ids) == ToolTurn(message("", calls=calls), []), generated
        assert parse_response(tokenizer, ids) == message("", calls=calls)


def test_deepseek_v3_1_calls_prompts_and_tool_rounds():
    """DeepSeek-V3.1 writes `<｜Assistant｜></think>` before a turn that follows a user message (thinking off, the
    default) and nothing after tool results, concatenates the arguments (dict arguments raise; the agent loop's
    renderer retries with JSON strings), and writes calls as `name<｜tool▁sep｜>{JSON}` after any content."""
    tokenizer = REAL_ALL_TOKENIZERS["deepseek_v3_1"]()
    with pytest.raises(TypeError):
        tokenizer.apply_chat_template([USER, message("", calls=[WEATHER])], tokenize=False)
    assert supports_tool_calling(tokenizer)
    prompt = tokenizer.apply_chat_template([USER], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<｜User｜>What is the weather in Paris?<｜Assistant｜></think>")
    thinking = tokenizer.apply_chat_template([USER], tokenize=False, add_generation_prompt=True, enable_thinking=True)
    assert thinking.endswith("<｜Assistant｜><think>")
    # thinking on: the reasoning the model writes after <think> is split off, with or without the prompt
    ids = tokenize(tokenizer, "Need it.</think>It is 22C.<｜end▁of▁sentence｜>")
    for prefix in (thinking, None):
        assert parse_tool_turn(tokenizer, ids, prefix=prefix) == ToolTurn(message("It is 22C.", "Need it."), [])
    # after tool results there is no header: the generation prompt adds nothing, and the calling turn before it
    # (the last <｜Assistant｜> of the prompt) is not read into the answer
    rounds = [USER, message("", calls=[WEATHER]), {"role": "tool", "content": "22C"}]
    after_tools = render_tool_messages(tokenizer, rounds, add_generation_prompt=True)
    assert after_tools == render_tool_messages(tokenizer, rounds)
    assert after_tools.endswith("<｜tool▁calls▁end｜><｜end▁of▁sentence｜><｜tool▁output▁begin｜>22C<｜tool▁output▁end｜>")
    ids = tokenize(tokenizer, "It is 22C.<｜end▁of▁sentence｜>")
    assert parse_tool_turn(tokenizer, ids, prefix=after_tools) == ToolTurn(message("It is 22C."), [])
    assert parse_response(tokenizer, ids, prefix=after_tools) == message("It is 22C.")
    # nested JSON written over several lines, and a tool named "function" (V3's call type), read as V3.1 calls
    text = (DEEPSEEK_CALLS_BEGIN + "<｜tool▁call▁begin｜>search<｜tool▁sep｜>"
            + json.dumps(NESTED["function"]["arguments"], indent=2) + "<｜tool▁call▁end｜>"
            + '<｜tool▁call▁begin｜>function<｜tool▁sep｜>{\n  "x": [1]\n}<｜tool▁call▁end｜>' + DEEPSEEK_CALLS_END)
    assert parse_deepseek_tool_calls("Both." + text) == ("Both.", [NESTED, call("function", {"x": [1]})], [])
    # a malformed call keeps the valid ones and stays in the content
    text = (DEEPSEEK_CALLS_BEGIN + '<｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜>'
            + "<｜tool▁call▁begin｜>f<｜tool▁sep｜>{oops}<｜tool▁call▁end｜>" + DEEPSEEK_CALLS_END)
    content, calls, errors = parse_deepseek_tool_calls(text)
    assert calls == [WEATHER] and len(errors) == 1 and errors[0].startswith("tool call 2: f: ")
    assert content == text


def test_llama3_1_template_is_llama3_3s():
    """The Llama 3.1 template (from its GGUF) and the Llama 3.3 one (llama.cpp's verbatim copy) are the same text."""
    assert real_chat_template("llama3_1") == real_chat_template("llama3_3")
