"""Tests for `trl.chat_template_utils` on the bundled tokenizer (plain ChatML:
`<|im_start|>{role}\n{content}<|im_end|>\n` per message) and on hand-written variants of its template."""

import pytest
import torch

from trl.template_families import parse_tool_turn
from trl.chat_template_utils import (
    add_response_schema,
    chatml_plain_training_chat_template,
    chatml_training_chat_template,
    clone_chat_template,
    get_training_chat_template,
    has_generation_markers,
    is_chat_template_prefix_preserving,
    is_chat_template_stop_token_trained,
    parse_response,
    supports_tool_calling,
)
from trl.data.tokenize import assistant_mask_by_prefix
from trl.models.tiny import tiny_model, tiny_tokenizer


# The bundled template with the assistant turn wrapped in markers; `{stop}` says whether <|im_end|> is inside them.
MARKERS_TEMPLATE = (
    "{%- for m in messages %}{%- if m['role'] == 'assistant' %}{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- m['content'] }}{STOP_IN}{%- endgeneration %}{STOP_OUT}{{- '\\n' }}"
    "{%- else %}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
STOP_TRAINED = MARKERS_TEMPLATE.replace("{STOP_IN}", "{{- '<|im_end|>' }}").replace("{STOP_OUT}", "")
STOP_NOT_TRAINED = MARKERS_TEMPLATE.replace("{STOP_IN}", "").replace("{STOP_OUT}", "{{- '<|im_end|>' }}")
# Marks the final assistant turn, so an earlier rendering is never a prefix of a later one.
NOT_PREFIX_TEMPLATE = (
    "{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' }}"
    "{%- if loop.last and m['role'] == 'assistant' %}{{- '(final) ' }}{%- endif %}"
    "{{- m['content'] + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Of no known family (Mistral-style [INST] turns).
UNKNOWN_TEMPLATE = (
    "{%- for m in messages %}{%- if m['role'] == 'user' %}{{- '[INST] ' + m['content'] + ' [/INST]' }}"
    "{%- else %}{{- m['content'] + '</s>' }}{%- endif %}{%- endfor %}"
)
# Llama 3 turns (a known family, prefix-preserving, no markers).
LLAMA_LIKE_TEMPLATE = (
    "{%- for m in messages %}{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] "
    "+ '<|eot_id|>' }}{%- endfor %}"
)
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Bye?"},
    {"role": "assistant", "content": "Bye."},
]
TOOL_CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def tokenizer_with(template=None):
    tokenizer = tiny_tokenizer()
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer


# -- checks -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template, markers, prefix, stop",
    [
        (None, False, True, True),  # bundled ChatML: stop token trained through the prefix method
        (STOP_TRAINED, True, True, True),
        (STOP_NOT_TRAINED, True, True, False),
        (NOT_PREFIX_TEMPLATE, False, False, False),  # no markers and no prefix method: no mask at all
    ],
    ids=["chatml", "markers", "markers-stop-outside", "not-prefix"],
)
def test_checks(template, markers, prefix, stop):
    tokenizer = tokenizer_with(template)
    assert has_generation_markers(tokenizer) is markers
    assert has_generation_markers(tokenizer.chat_template) is markers
    assert is_chat_template_prefix_preserving(tokenizer) is prefix
    assert is_chat_template_stop_token_trained(tokenizer) is stop


def test_prefix_check_catches_template_dropping_past_reasoning():
    # drops "<think>...</think>" from assistant turns that are not the last one, as reasoning templates do
    template = (
        "{%- for m in messages %}{%- set c = m['content'] %}"
        "{%- if m['role'] == 'assistant' and not loop.last and '</think>' in c %}"
        "{%- set c = c.split('</think>')[-1].lstrip() %}{%- endif %}"
        "{{- '<|im_start|>' + m['role'] + '\\n' + c + '<|im_end|>\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    assert is_chat_template_prefix_preserving(tokenizer_with(template)) is False


def test_supports_tool_calling():
    assert supports_tool_calling(tokenizer_with()) is False  # plain ChatML drops the tool call
    assert supports_tool_calling(tokenizer_with(chatml_training_chat_template)) is True
    raising = "{{ raise_exception('no tools here') }}"
    assert supports_tool_calling(tokenizer_with(raising)) is False


# -- training templates -----------------------------------------------------------------------------------------------


def test_training_template_for_bundled_chatml():
    original = tokenizer_with()
    template = get_training_chat_template(original)
    # plain ChatML ignores tools, so the variant that ignores them is the one that renders identically
    assert template == chatml_plain_training_chat_template
    assert has_generation_markers(template)
    patched = tokenizer_with(template)
    for kwargs in ({}, {"add_generation_prompt": True}):
        messages = CONVERSATION if not kwargs else CONVERSATION[:2]
        assert patched.apply_chat_template(messages, tokenize=False, **kwargs) == original.apply_chat_template(
            messages, tokenize=False, **kwargs
        )
    out = patched.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = assistant_mask_by_prefix(original, CONVERSATION, {original.eos_token_id})
    assert list(out["input_ids"]) == ids
    assert list(out["assistant_masks"]) == mask
    trained = [t for t, m in zip(ids, mask) if m]
    assert original.decode(trained) == "Hello.<|im_end|>Bye.<|im_end|>"
    assert is_chat_template_stop_token_trained(patched) is True


def test_training_template_none_when_already_usable():
    assert get_training_chat_template(tokenizer_with(STOP_TRAINED)) is None
    assert get_training_chat_template(tokenizer_with(chatml_training_chat_template)) is None


def test_training_template_with_tools_is_prefix_preserving_and_masks_tool_calls():
    tokenizer = tokenizer_with(chatml_training_chat_template)
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
            "name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "22C"},
        {"role": "assistant", "content": "22C."},
    ]
    out = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = assistant_mask_by_prefix(tokenizer, messages, {tokenizer.eos_token_id})
    assert list(out["input_ids"]) == ids and list(out["assistant_masks"]) == mask
    trained = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert trained == TOOL_CALL_TEXT + "<|im_end|>22C.<|im_end|>"


@pytest.mark.parametrize(
    "template, match",
    [
        (UNKNOWN_TEMPLATE, "does not recognise"),
        # ChatML that the Qwen3 edits do not apply to: a <think> template without Qwen3's reasoning conditions
        ("{#- <think> -#}" + NOT_PREFIX_TEMPLATE, "variant we do not know"),
    ],
    ids=["unrecognised", "qwen3-unknown-variant"],
)
def test_training_template_errors(template, match):
    with pytest.raises(ValueError, match=match) as error:
        get_training_chat_template(tokenizer_with(template))
    assert "chat_template_path" in str(error.value)


def test_training_template_error_names_what_it_found():
    with pytest.raises(ValueError, match=r"known families \(.*llama3.*\).*'\[INST\] And 3 \+ 3\? \[/INST\]") as error:
        get_training_chat_template(tokenizer_with(UNKNOWN_TEMPLATE))
    assert "prefix method" in str(error.value)  # the unknown template is prefix-preserving


@pytest.mark.parametrize(
    "template",
    [LLAMA_LIKE_TEMPLATE, "{{- '<|im_start|>system\\nDefault.<|im_end|>\\n' }}" + tiny_tokenizer().chat_template],
    ids=["llama-like", "chatml-default-system"],
)
def test_training_template_generated_for_known_family_without_markers(template):
    original = tokenizer_with(template)
    training = get_training_chat_template(original)
    assert has_generation_markers(training)
    patched = tokenizer_with(training)
    assert patched.apply_chat_template(CONVERSATION, tokenize=False) == original.apply_chat_template(
        CONVERSATION, tokenize=False)
    out = patched.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    assert list(out["assistant_masks"]) == assistant_mask_by_prefix(original, CONVERSATION, {2})[1]


# -- clone_chat_template ----------------------------------------------------------------------------------------------


def test_clone_chat_template(tmp_path):
    source = tiny_tokenizer()
    source.add_tokens(["<|eot|>"], special_tokens=True)
    source.eos_token = "<|eot|>"
    source.chat_template = "{%- for m in messages %}{{- m['role'] + ': ' + m['content'] + '<|eot|>' }}{%- endfor %}"
    source.save_pretrained(tmp_path)

    model = tiny_model(
        num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
        head_dim=16,
    )
    tokenizer = tiny_tokenizer()
    model, tokenizer, added_ids = clone_chat_template(model, tokenizer, str(tmp_path))

    assert tokenizer.chat_template == source.chat_template
    assert added_ids == [tokenizer.convert_tokens_to_ids("<|eot|>")]
    assert tokenizer.eos_token == "<|eot|>"
    assert model.config.eos_token_id == tokenizer.eos_token_id == added_ids[0]
    assert model.generation_config.eos_token_id == added_ids[0]
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows % 64 == 0 and rows == len(tokenizer)
    assert "<extra_id_0>" in tokenizer.get_vocab()
    assert tokenizer.decode(tokenizer("<|eot|>")["input_ids"]) == "<|eot|>"  # a single special token
    logits = model(torch.tensor([[1, added_ids[0]]])).logits
    assert logits.shape[-1] == rows


# -- response parsing -------------------------------------------------------------------------------------------------


def test_parse_response_tool_calls():
    tokenizer = tiny_tokenizer()
    text = "Let me check.\n" + TOOL_CALL_TEXT + '\n<tool_call>\n{"name": "now"}\n</tool_call>'
    ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    assert parse_response(tokenizer, ids) == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"type": "function", "function": {"name": "now", "arguments": {}}},
        ],
    }
    # arguments given as a JSON string are decoded; arguments that are not an object are normalised to {} (as the
    # reference does; the agent loop's parse_tool_turn reports them as errors instead)
    text = '<tool_call>{"name": "a", "arguments": "{\\"x\\": 1}"}</tool_call>'
    calls = parse_response(tokenizer, torch.tensor(tokenizer(text)["input_ids"]))["tool_calls"]
    assert [c["function"]["arguments"] for c in calls] == [{"x": 1}]
    text += '<tool_call>{"name": "b", "arguments": 3}</tool_call><tool_call>{"name": "c", "arguments": ["x"]}</tool_call>'
    calls = parse_response(tokenizer, tokenizer(text)["input_ids"])["tool_calls"]
    assert [c["function"]["arguments"] for c in calls] == [{"x": 1}, {}, {}]
    assert len(parse_tool_turn(tokenizer, tokenizer(text)["input_ids"]).errors) == 2


@pytest.mark.parametrize(
    "text",
    [
        "Just text.",
        "<tool_call>{not json}</tool_call>",
        '<tool_call>{"arguments": {}}</tool_call>',  # no name
        '<tool_call>{"name": "get_weather"',  # unclosed: generation was cut off
        TOOL_CALL_TEXT + "<tool_call>",
    ],
)
def test_parse_response_falls_back_to_text(text):
    tokenizer = tiny_tokenizer()
    assert parse_response(tokenizer, tokenizer(text)["input_ids"]) == {"role": "assistant", "content": text}


def test_parse_response_prefix_adds_prefilled_text():
    tokenizer = tiny_tokenizer()
    prefix = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n"
    ids = tokenizer("Hmm.\n</think>\n\nHello.")["input_ids"]
    assert parse_response(tokenizer, ids, prefix=prefix)["content"] == "<think>\nHmm.\n</think>\n\nHello."
    prefix_ids = torch.tensor(tokenizer(prefix)["input_ids"])
    assert parse_response(tokenizer, ids, prefix=prefix_ids)["content"].startswith("<think>")


def test_add_response_schema():
    tokenizer = add_response_schema(tiny_tokenizer())
    parsed = tokenizer.parse_response("Sure.\n" + TOOL_CALL_TEXT + "<|im_end|>", prefix="")
    assert parsed["tool_calls"] == [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ]
    with pytest.raises(ValueError, match="ChatML"):
        add_response_schema(tokenizer_with(LLAMA_LIKE_TEMPLATE))
