"""Tests for the string-level dataset helpers in `trl.data_utils`.

Expected strings are written out by hand from the bundled tokenizer's ChatML template:
`<|im_start|>{role}\n{content}<|im_end|>\n` per message, plus `<|im_start|>assistant\n` as the generation prompt.
"""

import json

import pytest
from datasets import Dataset, DatasetDict

from trl.data_utils import (
    apply_chat_template,
    common_prefix_length,
    extract_prompt,
    get_dataset_column_names,
    is_conversational,
    is_conversational_from_value,
    maybe_apply_chat_template,
    maybe_convert_to_chatml,
    maybe_extract_prompt,
    maybe_unpair_preference_dataset,
    prepare_multimodal_messages,
    unpair_preference_dataset,
)
from trl.models.tiny import tiny_tokenizer


USER = {"role": "user", "content": "What color is the sky?"}
BLUE = {"role": "assistant", "content": "It is blue."}
GREEN = {"role": "assistant", "content": "It is green."}
# Rendered pieces of the ChatML template.
R_USER = "<|im_start|>user\nWhat color is the sky?<|im_end|>\n"
R_GEN = "<|im_start|>assistant\n"
R_BLUE = "<|im_start|>assistant\nIt is blue.<|im_end|>\n"
R_GREEN = "<|im_start|>assistant\nIt is green.<|im_end|>\n"

# The ChatML template, preceded by a line that shows whether tools were passed (`[]` must count as "no tools").
TOOLS_TEMPLATE = (
    "{%- if tools is not none %}{{- 'TOOLS:' }}{%- for tool in tools %}{{- tool['function']['name'] + ';' }}"
    "{%- endfor %}{{- '\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {}}},
}


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


# ---------------------------------------------------------------- format detection and conversion


class TestIsConversational:
    @pytest.mark.parametrize("key", ["prompt", "chosen", "rejected", "completion", "messages"])
    def test_conversational_keys(self, key):
        assert is_conversational({key: [USER]})

    def test_standard_and_edge_cases(self):
        assert not is_conversational({"prompt": "The sky is", "completion": " blue."})
        assert not is_conversational({"prompt": []})  # empty list: nothing to tell
        assert not is_conversational({"prompt": [{"content": "no role"}]})
        assert not is_conversational({"conversations": [USER]})  # not one of the recognised keys
        assert not is_conversational({"input_ids": [1, 2, 3]})

    def test_any_key_counts(self):
        assert is_conversational({"prompt": "The sky is", "chosen": [BLUE], "rejected": [GREEN]})


def test_is_conversational_from_value():
    assert is_conversational_from_value({"conversations": [{"from": "human", "value": "Hi"}]})
    assert not is_conversational_from_value({"conversations": [USER]})
    assert not is_conversational_from_value({"conversations": []})
    assert not is_conversational_from_value({"messages": [{"from": "human", "value": "Hi"}]})


def test_maybe_convert_to_chatml():
    example = {
        "conversations": [{"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Hello"}],
        "prompt": [{"from": "user", "value": "Q"}],
        "id": 7,
    }
    converted = maybe_convert_to_chatml(example)
    assert converted == {
        "prompt": [{"role": "user", "content": "Q"}],
        "id": 7,
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    }
    assert "conversations" in example and example["prompt"][0] == {"from": "user", "value": "Q"}  # input untouched
    already = {"messages": [USER, BLUE]}
    assert maybe_convert_to_chatml(already) == already


def test_maybe_convert_to_chatml_with_map():
    dataset = Dataset.from_dict({"conversations": [[{"from": "user", "value": "Hi"}]]})
    converted = dataset.map(maybe_convert_to_chatml, remove_columns="conversations")
    assert converted.to_dict() == {"messages": [[{"role": "user", "content": "Hi"}]]}


# ---------------------------------------------------------------- apply_chat_template


class TestApplyChatTemplate:
    def test_messages(self, tokenizer):
        assert apply_chat_template({"messages": [USER, BLUE]}, tokenizer) == {"text": R_USER + R_BLUE}

    def test_prompt_only(self, tokenizer):
        assert apply_chat_template({"prompt": [USER]}, tokenizer) == {"prompt": R_USER + R_GEN}

    def test_prompt_completion(self, tokenizer):
        output = apply_chat_template({"prompt": [USER], "completion": [BLUE]}, tokenizer)
        assert output == {"prompt": R_USER + R_GEN, "completion": "It is blue.<|im_end|>\n"}

    def test_explicit_preference(self, tokenizer):
        output = apply_chat_template({"prompt": [USER], "chosen": [BLUE], "rejected": [GREEN]}, tokenizer)
        assert output == {
            "prompt": R_USER + R_GEN,
            "chosen": "It is blue.<|im_end|>\n",
            "rejected": "It is green.<|im_end|>\n",
        }

    def test_implicit_preference(self, tokenizer):
        output = apply_chat_template({"chosen": [USER, BLUE], "rejected": [USER, GREEN]}, tokenizer)
        assert output == {"chosen": R_USER + R_BLUE, "rejected": R_USER + R_GREEN}

    def test_unpaired_preference(self, tokenizer):
        output = apply_chat_template({"prompt": [USER], "completion": [GREEN], "label": False}, tokenizer)
        assert output == {"prompt": R_USER + R_GEN, "completion": "It is green.<|im_end|>\n", "label": False}

    def test_tool_last_turn_gets_generation_prompt(self, tokenizer):
        tool = {"role": "tool", "content": "18C"}
        output = apply_chat_template({"prompt": [USER, tool]}, tokenizer)
        assert output == {"prompt": R_USER + "<|im_start|>tool\n18C<|im_end|>\n" + R_GEN}

    def test_assistant_last_turn_is_continued(self, tokenizer):
        prefill = {"role": "assistant", "content": "It is"}
        output = apply_chat_template({"prompt": [USER, prefill]}, tokenizer)
        # No end-of-turn after the prefill and no new generation prompt.
        assert output == {"prompt": R_USER + "<|im_start|>assistant\nIt is"}

    def test_prompt_cut_to_common_prefix(self, tokenizer):
        # Like DeepSeek-R1: the generation prompt adds "<think>\n", which the full conversation does not contain.
        generation_prompt = "'<|im_start|>assistant\\n'"
        template = tokenizer.chat_template.replace(generation_prompt, "'<|im_start|>assistant\\n<think>\\n'")
        assert template != tokenizer.chat_template
        output = apply_chat_template(
            {"prompt": [USER], "chosen": [BLUE], "rejected": [GREEN]}, tokenizer, chat_template=template
        )
        assert output == {
            "prompt": R_USER + R_GEN,
            "chosen": "It is blue.<|im_end|>\n",
            "rejected": "It is green.<|im_end|>\n",
        }
        assert output["prompt"] + output["chosen"] == R_USER + R_BLUE

    def test_extra_keys_are_ignored(self, tokenizer):
        output = apply_chat_template({"prompt": [USER], "images": [None], "id": 3}, tokenizer)
        assert output == {"prompt": R_USER + R_GEN}

    @pytest.mark.parametrize(
        "keys", [("prompt", "chosen"), ("completion",), ("messages", "prompt"), ("chosen", "rejected", "label")]
    )
    def test_invalid_key_sets(self, tokenizer, keys):
        with pytest.raises(ValueError, match="supported sets") as error:
            apply_chat_template({key: [USER] for key in keys}, tokenizer)
        for key in keys:
            assert repr(key) in str(error.value)
        assert "['prompt', 'completion', 'label']" in str(error.value)

    def test_non_conversational_value(self, tokenizer):
        with pytest.raises(TypeError, match="'completion' to be a non-empty list of messages"):
            apply_chat_template({"prompt": [USER], "completion": " blue."}, tokenizer)

    def test_invalid_last_role(self, tokenizer):
        with pytest.raises(ValueError, match="got 'system'"):
            apply_chat_template({"prompt": [{"role": "system", "content": "Be nice."}]}, tokenizer)


class TestTemplateOptions:
    def test_tools(self, tokenizer):
        output = apply_chat_template({"prompt": [USER]}, tokenizer, tools=[WEATHER_TOOL], chat_template=TOOLS_TEMPLATE)
        assert output == {"prompt": "TOOLS:get_weather;\n" + R_USER + R_GEN}

    def test_empty_tools_is_none(self, tokenizer):
        output = apply_chat_template({"prompt": [USER]}, tokenizer, tools=[], chat_template=TOOLS_TEMPLATE)
        assert output == {"prompt": R_USER + R_GEN}

    def test_tools_json_string(self, tokenizer):
        output = apply_chat_template(
            {"prompt": [USER]}, tokenizer, tools=json.dumps([WEATHER_TOOL]), chat_template=TOOLS_TEMPLATE
        )
        assert output == {"prompt": "TOOLS:get_weather;\n" + R_USER + R_GEN}
        with pytest.raises(ValueError, match="not valid JSON"):
            apply_chat_template({"prompt": [USER]}, tokenizer, tools="[{", chat_template=TOOLS_TEMPLATE)

    def test_per_row_tools_take_precedence(self, tokenizer):
        other = {"type": "function", "function": {**WEATHER_TOOL["function"], "name": "get_time"}}
        example = {"prompt": [USER], "tools": json.dumps([other])}
        output = apply_chat_template(example, tokenizer, tools=[WEATHER_TOOL], chat_template=TOOLS_TEMPLATE)
        assert output == {"prompt": "TOOLS:get_time;\n" + R_USER + R_GEN}
        example = {"prompt": [USER], "tools": None}  # a null cell falls back to the argument
        output = apply_chat_template(example, tokenizer, tools=[WEATHER_TOOL], chat_template=TOOLS_TEMPLATE)
        assert output == {"prompt": "TOOLS:get_weather;\n" + R_USER + R_GEN}

    def test_per_row_chat_template_kwargs(self, tokenizer):
        template = "{%- if flag %}{{- 'FLAG\n' }}{%- endif %}" + tokenizer.chat_template
        example = {"messages": [USER], "chat_template_kwargs": {"flag": True}}
        assert apply_chat_template(example, tokenizer, chat_template=template) == {"text": "FLAG\n" + R_USER}
        # The row overrides the call's keyword arguments.
        example = {"messages": [USER], "chat_template_kwargs": {"flag": False}}
        assert apply_chat_template(example, tokenizer, chat_template=template, flag=True) == {"text": R_USER}
        assert apply_chat_template({"messages": [USER]}, tokenizer, chat_template=template, flag=True) == {
            "text": "FLAG\n" + R_USER
        }


def test_maybe_apply_chat_template(tokenizer):
    standard = {"prompt": "The sky is", "completion": " blue."}
    assert maybe_apply_chat_template(standard, tokenizer) is standard
    assert maybe_apply_chat_template({"messages": [USER, BLUE]}, tokenizer) == {"text": R_USER + R_BLUE}


def test_apply_chat_template_with_map(tokenizer):
    dataset = Dataset.from_dict({"prompt": [[USER]], "completion": [[BLUE]], "id": [0]})
    rendered = dataset.map(maybe_apply_chat_template, fn_kwargs={"processing_class": tokenizer})
    assert rendered.to_dict() == {"prompt": [R_USER + R_GEN], "completion": ["It is blue.<|im_end|>\n"], "id": [0]}


# ---------------------------------------------------------------- prompt extraction


def test_common_prefix_length():
    assert common_prefix_length("abc", "abd") == 2
    assert common_prefix_length("abc", "abc") == 3
    assert common_prefix_length("", "abc") == 0
    assert common_prefix_length([1, 2, 3], [1, 2]) == 2
    assert common_prefix_length([USER, BLUE], [USER, GREEN]) == 1


class TestExtractPrompt:
    def test_strings_keep_space_with_completion(self):
        output = extract_prompt({"chosen": "The sky is blue.", "rejected": "The sky is green."})
        assert output == {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}

    def test_strings_without_space(self):
        # Character-level prefix: "b" is shared by "blue" and "bright".
        output = extract_prompt({"chosen": "The sky is blue.", "rejected": "The sky is bright."})
        assert output == {"prompt": "The sky is b", "chosen": "lue.", "rejected": "right."}

    def test_conversational(self):
        system = {"role": "system", "content": "Be brief."}
        output = extract_prompt({"chosen": [system, USER, BLUE], "rejected": [system, USER, GREEN], "id": 1})
        assert output == {"prompt": [system, USER], "chosen": [BLUE], "rejected": [GREEN], "id": 1}

    def test_errors(self):
        with pytest.raises(ValueError, match="'chosen' and 'rejected'.*\\['chosen'\\]"):
            extract_prompt({"chosen": "a"})
        with pytest.raises(TypeError, match="both strings or both lists"):
            extract_prompt({"chosen": "a", "rejected": [USER]})

    def test_maybe_extract_prompt(self):
        explicit = {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
        assert maybe_extract_prompt(explicit) is explicit
        not_preference = {"prompt": "The sky is", "completion": " blue."}
        assert maybe_extract_prompt(not_preference) is not_preference
        # A string prompt next to conversations that already contain it: extracted from the conversations.
        mixed = {"prompt": "What color is the sky?", "chosen": [USER, BLUE], "rejected": [USER, GREEN]}
        assert maybe_extract_prompt(mixed) == {"prompt": [USER], "chosen": [BLUE], "rejected": [GREEN]}
        implicit = {"chosen": "The sky is blue.", "rejected": "The sky is green."}
        assert maybe_extract_prompt(implicit) == {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}


# ---------------------------------------------------------------- unpairing

PAIRED = {"prompt": ["p0", "p1"], "chosen": ["c0", "c1"], "rejected": ["r0", "r1"], "id": [0, 1]}
# as the reference: a map batch's chosen rows, then its rejected rows
UNPAIRED = {
    "prompt": ["p0", "p1", "p0", "p1"],
    "completion": ["c0", "c1", "r0", "r1"],
    "label": [True, True, False, False],
    "id": [0, 1, 0, 1],
}


class TestUnpair:
    def test_dataset(self):
        assert unpair_preference_dataset(Dataset.from_dict(PAIRED)).to_dict() == UNPAIRED

    def test_implicit_prompt(self):
        dataset = Dataset.from_dict({"chosen": ["c0"], "rejected": ["r0"]})
        assert unpair_preference_dataset(dataset).to_dict() == {"completion": ["c0", "r0"], "label": [True, False]}

    def test_dataset_dict(self):
        dataset = DatasetDict({"train": Dataset.from_dict(PAIRED), "test": Dataset.from_dict(PAIRED).select([1])})
        unpaired = unpair_preference_dataset(dataset)
        assert isinstance(unpaired, DatasetDict)
        assert unpaired["train"].to_dict() == UNPAIRED
        assert unpaired["test"].to_dict() == {"prompt": ["p1", "p1"], "completion": ["c1", "r1"],
                                              "label": [True, False], "id": [1, 1]}

    def test_iterable_dataset(self):
        unpaired = unpair_preference_dataset(Dataset.from_dict(PAIRED).to_iterable_dataset())
        rows = list(unpaired)
        assert [row["completion"] for row in rows] == UNPAIRED["completion"]
        assert [row["label"] for row in rows] == UNPAIRED["label"]
        assert [row["id"] for row in rows] == UNPAIRED["id"]
        assert set(rows[0]) == {"prompt", "completion", "label", "id"}

    def test_maybe_unpair(self):
        unpaired = Dataset.from_dict(UNPAIRED)
        assert maybe_unpair_preference_dataset(unpaired) is unpaired
        assert maybe_unpair_preference_dataset(Dataset.from_dict(PAIRED)).to_dict() == UNPAIRED
        paired_dict = DatasetDict({"train": Dataset.from_dict(PAIRED)})
        assert maybe_unpair_preference_dataset(paired_dict)["train"].to_dict() == UNPAIRED

    def test_errors(self):
        with pytest.raises(ValueError, match="expects columns 'chosen' and 'rejected'; got \\['prompt', 'completion'"):
            unpair_preference_dataset(Dataset.from_dict({"prompt": ["p"], "completion": ["c"]}))
        with pytest.raises(ValueError, match="already has \\['label'\\]"):
            unpair_preference_dataset(Dataset.from_dict({"chosen": ["c"], "rejected": ["r"], "label": [1]}))


def test_get_dataset_column_names():
    dataset = Dataset.from_dict(PAIRED)
    assert get_dataset_column_names(dataset) == ["prompt", "chosen", "rejected", "id"]
    names = ["prompt", "chosen", "rejected", "id"]
    assert get_dataset_column_names(DatasetDict({"train": dataset})) == {"train": names}
    # An iterable dataset whose features are unknown until the first row is read.
    iterable = dataset.to_iterable_dataset().map(lambda row: row)
    assert iterable.column_names is None
    assert get_dataset_column_names(iterable) == ["prompt", "chosen", "rejected", "id"]


# ---------------------------------------------------------------- multimodal


class TestPrepareMultimodalMessages:
    def test_inserts_and_fills_placeholders(self):
        image1, image2 = object(), object()
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What's in these images?"},
            {"role": "assistant", "content": "Cats."},
            {"role": "user", "content": "Sure?"},
        ]
        prepared = prepare_multimodal_messages(messages, images=[image1, image2])
        assert prepared == [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": image1},
                    {"type": "image", "image": image2},
                    {"type": "text", "text": "What's in these images?"},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "Cats."}]},
            {"role": "user", "content": [{"type": "text", "text": "Sure?"}]},
        ]
        assert prepared[1]["content"][0]["image"] is image1  # not copied
        assert messages[1]["content"] == "What's in these images?"  # input untouched

    def test_existing_placeholders_and_filled_blocks(self):
        old, new = object(), object()
        messages = [
            {"role": "user", "content": [{"type": "image", "image": old}, {"type": "text", "text": "And"}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "this?"}]},
        ]
        prepared = prepare_multimodal_messages(messages, images=[new])
        assert prepared[0]["content"][0]["image"] is old
        assert prepared[1]["content"] == [{"type": "image", "image": new}, {"type": "text", "text": "this?"}]
        assert "image" not in messages[1]["content"][0]

    def test_no_images(self):
        assert prepare_multimodal_messages([{"role": "user", "content": "Hi"}]) == [
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]}
        ]

    def test_tool_messages(self):
        call = {"type": "function", "function": {"name": "f", "arguments": {}}}
        messages = [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "content": "42"},
        ]
        prepared = prepare_multimodal_messages(messages)
        assert prepared[1] == {"role": "assistant", "tool_calls": [call]}
        assert prepared[2] == {"role": "tool", "content": [{"type": "text", "text": "42"}]}

    def test_count_mismatch(self):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "?"}]}]
        with pytest.raises(ValueError, match="2 empty image placeholder\\(s\\) but 1 image"):
            prepare_multimodal_messages(messages, images=[object()])
        with pytest.raises(ValueError, match="2 empty image placeholder\\(s\\) but 0 image"):
            prepare_multimodal_messages(messages)

    def test_invalid_inputs(self):
        with pytest.raises(ValueError, match="Invalid message role 'bot'"):
            prepare_multimodal_messages([{"role": "bot", "content": "Hi"}])
        with pytest.raises(ValueError, match="no user message"):
            prepare_multimodal_messages([{"role": "system", "content": "Hi"}], images=[object()])
        with pytest.raises(ValueError, match="has no 'content'"):
            prepare_multimodal_messages([{"role": "user"}])
