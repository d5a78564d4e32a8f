"""Token-exact loss masks of `trl.data.tokenize`, across chat-template styles.

Every test decodes the tokens that enter the loss and compares them, as text, with what must be trained: each
assistant message's content followed by the end-of-turn token, and nothing else (no system/user turn, no assistant
header, not the "\\n" that ChatML writes after `<|im_end|>`). All templates run on the bundled byte-level BPE tokenizer.
"""

import json

import pytest

from trl.data.tokenize import (
    assistant_mask,
    assistant_mask_by_prefix,
    common_prefix_length,
    has_generation_markers,
    render_ids,
    row_template_kwargs,
    tokenize_sft_example,
    truncate,
)
from trl.models.tiny import tiny_tokenizer

# ---- templates ----------------------------------------------------------------------------------------------------

# (b) ChatML with `{% generation %}` markers around the assistant content and its `<|im_end|>`: renders the same text
# as the bundled template, so it must give the same ids and the same mask.
CHATML_GENERATION = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Same, but the markers also wrap the "\n" after `<|im_end|>` (as some training templates do).
CHATML_GENERATION_WITH_NEWLINE = CHATML_GENERATION.replace(
    "{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}",
    "{{- message['content'] + '<|im_end|>\\n' }}{% endgeneration %}",
)

# (c) Not prefix-preserving: like Qwen3, the `<think>` block of every assistant message but the last is dropped.
THINK_STRIPPING = (
    "{%- for message in messages %}{%- set content = message['content'] %}"
    "{%- if message['role'] == 'assistant' and not loop.last %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# (c) Not prefix-preserving: a marker is written into the last message only.
LAST_MESSAGE_MARKER = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] }}{%- if loop.last %}{{- ' [last]' }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# (c) Like DeepSeek-R1: the generation prompt opens a `<think>` block that rendered assistant turns do not contain.
THINKING_GENERATION_PROMPT = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}"
)

# (d) Llama-3 style: a begin-of-text token, `<|start_header_id|>role<|end_header_id|>\n\n` headers, contents ended by
# `<|eot_id|>` and nothing between turns. The four special tokens are added to the bundled tokenizer.
LLAMA3_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
LLAMA3 = (
    "{{- '<|begin_of_text|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# Prints the tools' names and a `greeting` template kwarg in a system block, then plain ChatML.
TOOLS_AND_KWARGS = (
    "{%- if tools %}{{- '<|im_start|>system\\nTools:' }}{%- for tool in tools %}{{- ' ' + tool['function']['name'] }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- if greeting is defined %}{{- '<|im_start|>system\\n' + greeting + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# ---- data ---------------------------------------------------------------------------------------------------------

SYSTEM = {"role": "system", "content": "Be brief."}
USER_1 = {"role": "user", "content": "Hi there"}
ASSISTANT_1 = {"role": "assistant", "content": "Hello! How can I help?"}
USER_2 = {"role": "user", "content": "sort: c a b"}
ASSISTANT_2 = {"role": "assistant", "content": "a b c"}
CONVERSATION = [SYSTEM, USER_1, ASSISTANT_1, USER_2, ASSISTANT_2]
CHATML_TEXT = (
    "<|im_start|>system\nBe brief.<|im_end|>\n"
    "<|im_start|>user\nHi there<|im_end|>\n"
    "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
    "<|im_start|>user\nsort: c a b<|im_end|>\n"
    "<|im_start|>assistant\na b c<|im_end|>\n"
)
TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather of a city.", "parameters": {"type": "object"}},
}


@pytest.fixture
def tokenizer():
    return tiny_tokenizer()  # a fresh instance per test: tests swap its chat template


@pytest.fixture
def eos_ids(tokenizer):
    return {tokenizer.eos_token_id}


def trained_spans(tokenizer, ids, mask):
    """The decoded text of every maximal run of masked-in tokens."""
    assert len(ids) == len(mask)
    spans, current = [], []
    for token, keep in zip(ids, mask):
        if keep:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    return spans


def sft(example, tokenizer, *, kind, conversational, assistant_only_loss=False, eos_ids=None):
    eos_ids = eos_ids or {tokenizer.eos_token_id}
    return tokenize_sft_example(
        example, tokenizer, kind=kind, conversational=conversational, assistant_only_loss=assistant_only_loss,
        eos_token_id=tokenizer.eos_token_id, eos_ids=eos_ids,
    )


# ---- conversational language modelling: assistant masks -----------------------------------------------------------


class TestAssistantMasks:
    def test_chatml_prefix_method(self, tokenizer, eos_ids):
        assert not has_generation_markers(tokenizer.chat_template)
        ids, mask = assistant_mask_by_prefix(tokenizer, CONVERSATION, eos_ids)
        assert tokenizer.decode(ids) == CHATML_TEXT
        # Contents + <|im_end|>; not the "<|im_start|>assistant\n" header, not the "\n" after <|im_end|>.
        assert trained_spans(tokenizer, ids, mask) == ["Hello! How can I help?<|im_end|>", "a b c<|im_end|>"]
        assert tokenizer.decode(ids[-1:]) == "\n" and mask[-1] == 0
        # `assistant_mask` falls back to the prefix method for a template without markers.
        assert assistant_mask(tokenizer, CONVERSATION, eos_ids) == (ids, mask)

    def test_generation_markers(self, tokenizer, eos_ids):
        chatml = assistant_mask_by_prefix(tokenizer, CONVERSATION, eos_ids)
        tokenizer.chat_template = CHATML_GENERATION
        assert has_generation_markers(tokenizer.chat_template)
        ids, mask = assistant_mask(tokenizer, CONVERSATION, eos_ids)
        assert tokenizer.decode(ids) == CHATML_TEXT
        assert trained_spans(tokenizer, ids, mask) == ["Hello! How can I help?<|im_end|>", "a b c<|im_end|>"]
        # Same rendered text as the bundled ChatML template -> the same ids and exactly the same mask.
        assert (ids, mask) == chatml
        # The prefix method, run on the marked template, agrees with the markers.
        assert assistant_mask_by_prefix(tokenizer, CONVERSATION, eos_ids) == chatml

    def test_generation_markers_around_trailing_newline(self, tokenizer, eos_ids):
        # The template marks "<|im_end|>\n" as assistant output; the "\n" is written after the end-of-turn token, so
        # generation never produces it and it is not a target.
        chatml = assistant_mask_by_prefix(tokenizer, CONVERSATION, eos_ids)
        tokenizer.chat_template = CHATML_GENERATION_WITH_NEWLINE
        ids, mask = assistant_mask(tokenizer, CONVERSATION, eos_ids)
        assert tokenizer.decode(ids) == CHATML_TEXT
        assert trained_spans(tokenizer, ids, mask) == ["Hello! How can I help?<|im_end|>", "a b c<|im_end|>"]
        assert (ids, mask) == chatml

    def test_llama3_style_template(self, tokenizer):
        tokenizer.add_tokens(LLAMA3_TOKENS, special_tokens=True)
        tokenizer.chat_template = LLAMA3
        eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
        ids, mask = assistant_mask_by_prefix(tokenizer, CONVERSATION, {eot})
        assert tokenizer.decode(ids) == (
            "<|begin_of_text|>"
            "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nsort: c a b<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\na b c<|eot_id|>"
        )
        assert trained_spans(tokenizer, ids, mask) == ["Hello! How can I help?<|eot_id|>", "a b c<|eot_id|>"]
        assert mask[-1] == 1  # nothing follows the last <|eot_id|>

    def test_llama3_style_through_tokenize_sft_example(self, tokenizer):
        tokenizer.add_tokens(LLAMA3_TOKENS, special_tokens=True)
        tokenizer.chat_template = LLAMA3
        eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
        out = sft({"messages": CONVERSATION}, tokenizer, kind="language_modeling", conversational=True,
                  assistant_only_loss=True, eos_ids={eot})
        assert trained_spans(tokenizer, out["input_ids"], out["assistant_masks"]) == [
            "Hello! How can I help?<|eot_id|>", "a b c<|eot_id|>"
        ]
        assert out["completion_mask"] == [1] * len(out["input_ids"])

    def test_conversation_without_system_and_single_turn(self, tokenizer, eos_ids):
        ids, mask = assistant_mask_by_prefix(tokenizer, [USER_1, ASSISTANT_1], eos_ids)
        assert trained_spans(tokenizer, ids, mask) == ["Hello! How can I help?<|im_end|>"]
        ids, mask = assistant_mask_by_prefix(tokenizer, [SYSTEM, USER_1], eos_ids)
        assert sum(mask) == 0  # no assistant turn: nothing to train

    def test_tokenize_sft_example_messages(self, tokenizer):
        plain = sft({"messages": CONVERSATION}, tokenizer, kind="language_modeling", conversational=True)
        assert sorted(plain) == ["completion_mask", "input_ids"]
        assert tokenizer.decode(plain["input_ids"]) == CHATML_TEXT  # no eos appended to a rendered conversation
        masked = sft({"messages": CONVERSATION}, tokenizer, kind="language_modeling", conversational=True,
                     assistant_only_loss=True)
        assert masked["input_ids"] == plain["input_ids"]
        assert trained_spans(tokenizer, masked["input_ids"], masked["assistant_masks"]) == [
            "Hello! How can I help?<|im_end|>", "a b c<|im_end|>"
        ]


class TestNotPrefixPreserving:
    def test_think_stripping_names_the_turn(self, tokenizer, eos_ids):
        tokenizer.chat_template = THINK_STRIPPING
        thinking = {"role": "assistant", "content": "<think>\ngreet back</think>\nHello! How can I help?"}
        messages = [SYSTEM, USER_1, thinking, USER_2, ASSISTANT_2]
        with pytest.raises(ValueError, match=r"not prefix-preserving at turn 3 \(role 'user'\)"):
            assistant_mask_by_prefix(tokenizer, messages, eos_ids)
        with pytest.raises(ValueError, match=r"turn 3 .*generation %\}"):
            sft({"messages": messages}, tokenizer, kind="language_modeling", conversational=True,
                assistant_only_loss=True)
        # Without an earlier <think> block the template renders turn by turn as a prefix and the mask is exact.
        ids, mask = assistant_mask_by_prefix(tokenizer, CONVERSATION, eos_ids)
        assert trained_spans(tokenizer, ids, mask) == ["Hello! How can I help?<|im_end|>", "a b c<|im_end|>"]
        # Without assistant_only_loss the conversation is only rendered: no error.
        out = sft({"messages": messages}, tokenizer, kind="language_modeling", conversational=True)
        assert "greet back" not in tokenizer.decode(out["input_ids"])

    def test_last_message_marker_names_the_turn(self, tokenizer, eos_ids):
        tokenizer.chat_template = LAST_MESSAGE_MARKER
        with pytest.raises(ValueError, match=r"turn 1 \(role 'user'\)"):
            assistant_mask_by_prefix(tokenizer, CONVERSATION, eos_ids)
        with pytest.raises(ValueError, match=r"turn 1 \(role 'assistant'\)"):
            sft({"messages": [USER_1, ASSISTANT_1]}, tokenizer, kind="language_modeling", conversational=True,
                assistant_only_loss=True)

    def test_generation_prompt_not_in_assistant_turn(self, tokenizer, eos_ids):
        tokenizer.chat_template = THINKING_GENERATION_PROMPT
        with pytest.raises(ValueError, match=r"turn 2 \(role 'assistant'\).*generation prompt is not a prefix"):
            assistant_mask_by_prefix(tokenizer, CONVERSATION, eos_ids)


# ---- prompt-completion --------------------------------------------------------------------------------------------


class TestPromptCompletion:
    def test_standard(self, tokenizer):
        example = {"prompt": "reverse: a b c\nanswer:", "completion": " c b a"}
        out = sft(example, tokenizer, kind="prompt_completion", conversational=False)
        ids, mask = out["input_ids"], out["completion_mask"]
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids) == "reverse: a b c\nanswer: c b a<|im_end|>"
        assert trained_spans(tokenizer, ids, mask) == [" c b a<|im_end|>"]
        assert tokenizer.decode(ids[: mask.index(1)]) == example["prompt"]
        assert out["prompt_is_prefix"] == 1
        assert "assistant_masks" not in out

    def test_standard_completion_already_ending_with_eos(self, tokenizer):
        out = sft({"prompt": "2+2=", "completion": " 4<|im_end|>"}, tokenizer, kind="prompt_completion",
                  conversational=False)
        assert tokenizer.decode(out["input_ids"]) == "2+2= 4<|im_end|>"  # not a second eos
        assert trained_spans(tokenizer, out["input_ids"], out["completion_mask"]) == [" 4<|im_end|>"]

    def test_standard_prompt_merged_across_the_boundary(self, tokenizer):
        # "Hel" + "lo" tokenises as one "Hello" token: the prompt's tokens are not a prefix of the full row.
        assert tokenizer("Hello")["input_ids"] != tokenizer("Hel")["input_ids"] + tokenizer("lo")["input_ids"]
        example = {"prompt": "Hel", "completion": "lo world"}
        out = sft(example, tokenizer, kind="prompt_completion", conversational=False)
        prompt_ids = tokenizer("Hel")["input_ids"]
        start = common_prefix_length(prompt_ids, out["input_ids"])
        assert start < len(prompt_ids)
        assert out["prompt_is_prefix"] == 0
        assert out["completion_mask"] == [0] * start + [1] * (len(out["input_ids"]) - start)
        assert tokenizer.decode(out["input_ids"]) == "Hello world<|im_end|>"

    def test_conversational(self, tokenizer):
        example = {"prompt": [SYSTEM, USER_2], "completion": [ASSISTANT_2]}
        out = sft(example, tokenizer, kind="prompt_completion", conversational=True)
        ids, mask = out["input_ids"], out["completion_mask"]
        assert tokenizer.decode(ids) == (
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nsort: c a b<|im_end|>\n"
            "<|im_start|>assistant\na b c<|im_end|>\n"
        )
        # The completion starts right after the generation prompt and, as in the reference (the full rendering
        # minus the prompt's), keeps the template's "\n" after <|im_end|>.
        assert trained_spans(tokenizer, ids, mask) == ["a b c<|im_end|>\n"]
        assert tokenizer.decode(ids[: mask.index(1)]).endswith("<|im_start|>assistant\n")
        assert mask[-1] == 1
        assert out["prompt_is_prefix"] == 1

    def test_conversational_multi_turn_prompt_with_assistant_only_loss(self, tokenizer):
        example = {"prompt": [SYSTEM, USER_1, ASSISTANT_1, USER_2], "completion": [ASSISTANT_2]}
        out = sft(example, tokenizer, kind="prompt_completion", conversational=True, assistant_only_loss=True)
        assert tokenizer.decode(out["input_ids"]) == CHATML_TEXT
        assert trained_spans(tokenizer, out["input_ids"], out["completion_mask"]) == ["a b c<|im_end|>\n"]
        # The assistant mask also covers the prompt's assistant turn; the loss uses both masks together.
        assert trained_spans(tokenizer, out["input_ids"], out["assistant_masks"]) == [
            "Hello! How can I help?<|im_end|>", "a b c<|im_end|>"
        ]
        both = [a and c for a, c in zip(out["assistant_masks"], out["completion_mask"])]
        assert trained_spans(tokenizer, out["input_ids"], both) == ["a b c<|im_end|>"]

    def test_conversational_generation_markers_same_masks(self, tokenizer):
        example = {"prompt": [SYSTEM, USER_1, ASSISTANT_1, USER_2], "completion": [ASSISTANT_2]}
        chatml = sft(example, tokenizer, kind="prompt_completion", conversational=True, assistant_only_loss=True)
        tokenizer.chat_template = CHATML_GENERATION
        marked = sft(example, tokenizer, kind="prompt_completion", conversational=True, assistant_only_loss=True)
        assert marked == chatml

    def test_prompt_ending_with_assistant_turn_is_continued(self, tokenizer):
        # A prefill: the completion continues the prompt's last (assistant) message.
        prefill = {"role": "assistant", "content": "The answer is"}
        example = {"prompt": [USER_2, prefill], "completion": [{"role": "assistant", "content": " a b c"}]}
        prompt_ids = render_ids(tokenizer, example["prompt"], continue_final_message=True)
        assert tokenizer.decode(prompt_ids) == "<|im_start|>user\nsort: c a b<|im_end|>\n<|im_start|>assistant\nThe answer is"
        out = sft(example, tokenizer, kind="prompt_completion", conversational=True)
        ids, mask = out["input_ids"], out["completion_mask"]
        assert ids[: len(prompt_ids)] == prompt_ids
        assert out["prompt_is_prefix"] == 1
        assert mask.index(1) == len(prompt_ids)
        assert tokenizer.decode(ids) == (
            "<|im_start|>user\nsort: c a b<|im_end|>\n<|im_start|>assistant\nThe answer is a b c<|im_end|>\n"
        )
        # Only the continuation and its end of turn: neither the prefill nor a second assistant header.
        assert trained_spans(tokenizer, ids, mask) == [" a b c<|im_end|>\n"]

    def test_prompt_ending_with_assistant_turn_under_assistant_only_loss(self, tokenizer):
        prefill = {"role": "assistant", "content": "The answer is"}
        example = {"prompt": [USER_2, prefill], "completion": [{"role": "assistant", "content": " a b c"}]}
        out = sft(example, tokenizer, kind="prompt_completion", conversational=True, assistant_only_loss=True)
        both = [a and c for a, c in zip(out["assistant_masks"], out["completion_mask"])]
        assert trained_spans(tokenizer, out["input_ids"], both) == [" a b c<|im_end|>"]


class TestTemplateArguments:
    @pytest.mark.parametrize("tools", [[TOOL], json.dumps([TOOL])], ids=["list", "json-string"])
    def test_tools_reach_the_template(self, tokenizer, tools):
        tokenizer.chat_template = TOOLS_AND_KWARGS
        example = {"prompt": [USER_2], "completion": [ASSISTANT_2], "tools": tools}
        assert row_template_kwargs(example) == {"tools": [TOOL]}
        out = sft(example, tokenizer, kind="prompt_completion", conversational=True)
        assert tokenizer.decode(out["input_ids"]) == (
            "<|im_start|>system\nTools: get_weather<|im_end|>\n<|im_start|>user\nsort: c a b<|im_end|>\n"
            "<|im_start|>assistant\na b c<|im_end|>\n"
        )
        assert trained_spans(tokenizer, out["input_ids"], out["completion_mask"]) == ["a b c<|im_end|>\n"]

    def test_tools_and_kwargs_with_assistant_only_loss(self, tokenizer):
        tokenizer.chat_template = TOOLS_AND_KWARGS
        example = {"messages": [USER_1, ASSISTANT_1], "tools": json.dumps([TOOL]),
                   "chat_template_kwargs": {"greeting": "Welcome"}}
        out = sft(example, tokenizer, kind="language_modeling", conversational=True, assistant_only_loss=True)
        assert tokenizer.decode(out["input_ids"]) == (
            "<|im_start|>system\nTools: get_weather<|im_end|>\n<|im_start|>system\nWelcome<|im_end|>\n"
            "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
        )
        assert trained_spans(tokenizer, out["input_ids"], out["assistant_masks"]) == [
            "Hello! How can I help?<|im_end|>"
        ]

    def test_chat_template_kwargs_reach_the_template(self, tokenizer):
        tokenizer.chat_template = TOOLS_AND_KWARGS
        example = {"prompt": [USER_2], "completion": [ASSISTANT_2], "chat_template_kwargs": {"greeting": "Welcome"}}
        out = sft(example, tokenizer, kind="prompt_completion", conversational=True)
        assert tokenizer.decode(out["input_ids"]).startswith("<|im_start|>system\nWelcome<|im_end|>\n<|im_start|>user")
        assert trained_spans(tokenizer, out["input_ids"], out["completion_mask"]) == ["a b c<|im_end|>\n"]

    @pytest.mark.parametrize("tools", [None, [], "[]"])
    def test_no_tools(self, tokenizer, tools):
        assert row_template_kwargs({"tools": tools}) == {}

    def test_invalid_tools_json(self):
        with pytest.raises(ValueError, match=r"'tools' holds a string that is not valid JSON: '\[\{\"type\": \"function\",'.*list of JSON schemas"):
            row_template_kwargs({"tools": '[{"type": "function",'})

    def test_standard_rows_ignore_template_columns(self, tokenizer):
        # `tools` only means something to a chat template; a standard row is tokenised as plain text.
        out = sft({"text": "hello", "tools": "not json"}, tokenizer, kind="language_modeling", conversational=False)
        assert tokenizer.decode(out["input_ids"]) == "hello<|im_end|>"


# ---- truncation ---------------------------------------------------------------------------------------------------


class TestTruncate:
    ROW = {
        "input_ids": [10, 11, 12, 13, 14, 15],
        "completion_mask": [0, 0, 1, 1, 1, 1],
        "assistant_masks": [0, 0, 0, 1, 1, 0],
        "prompt_is_prefix": 1,
        "seq_lengths": [6],  # a list that is not token-aligned
    }

    def test_keep_start(self):
        out = truncate(dict(self.ROW), 4, "keep_start")
        assert out == {
            "input_ids": [10, 11, 12, 13],
            "completion_mask": [0, 0, 1, 1],
            "assistant_masks": [0, 0, 0, 1],
            "prompt_is_prefix": 1,
            "seq_lengths": [6],
        }

    def test_keep_end(self):
        out = truncate(dict(self.ROW), 4, "keep_end")
        assert out == {
            "input_ids": [12, 13, 14, 15],
            "completion_mask": [1, 1, 1, 1],
            "assistant_masks": [0, 1, 1, 0],
            "prompt_is_prefix": 1,
            "seq_lengths": [6],
        }

    @pytest.mark.parametrize("max_length", [6, 7])
    def test_short_rows_unchanged(self, max_length):
        row = dict(self.ROW)
        assert truncate(row, max_length, "keep_start") is row
        assert truncate(row, max_length, "keep_end") is row

    def test_truncated_conversation_keeps_masks_aligned(self, tokenizer):
        out = sft({"messages": CONVERSATION}, tokenizer, kind="language_modeling", conversational=True,
                  assistant_only_loss=True)
        n = len(out["input_ids"])
        cut = truncate(out, n - 3, "keep_start")  # drops " c", "<|im_end|>" and "\n"
        assert {len(v) for v in cut.values()} == {n - 3}
        assert trained_spans(tokenizer, cut["input_ids"], cut["assistant_masks"]) == [
            "Hello! How can I help?<|im_end|>", "a b"
        ]


def test_tool_call_arguments_become_json_strings_only_where_the_template_needs_it():
    """DeepSeek-V3.1 concatenates `arguments` into its text and raises on a dict: SFT rows and `apply_chat_template`
    give it JSON strings (what the model writes); a template that takes dicts gets the messages unchanged."""
    from tests.template_data import deepseek_v3_1_tokenizer
    from trl import apply_chat_template
    from trl.data.tokenize import end_of_turn_ids, for_template, tokenize_sft_example

    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    messages = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": "22C"}, {"role": "assistant", "content": "It is 22C."}]
    chatml = tiny_tokenizer()
    assert for_template(chatml, messages) is messages
    tokenizer = deepseek_v3_1_tokenizer()
    with pytest.raises(TypeError):  # the template itself on dict arguments
        tokenizer.apply_chat_template(messages, tokenize=False)
    assert for_template(tokenizer, messages)[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'
    out = tokenize_sft_example({"messages": messages}, tokenizer, kind="language_modeling", conversational=True,
                               assistant_only_loss=True, eos_token_id=tokenizer.eos_token_id,
                               eos_ids=end_of_turn_ids(tokenizer))
    trained = tokenizer.decode([i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m])
    assert trained == ('<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}'
                       '<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>It is 22C.<｜end▁of▁sentence｜>')
    assert '<｜tool▁sep｜>{"city": "Paris"}' in apply_chat_template({"messages": messages}, tokenizer)["text"]
