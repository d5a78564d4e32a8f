"""Dataset format detection and validation (`trl.data.formats`)."""

import pytest

from trl.data.formats import KINDS, DatasetFormat, check_example_types, detect_format, require_format


USER = [{"role": "user", "content": "What color is the sky?"}]
BLUE = [{"role": "assistant", "content": "It is blue."}]
GREEN = [{"role": "assistant", "content": "It is green."}]

# (kind, standard example, conversational example); `None` where a kind has no conversational form.
EXAMPLES = [
    ("language_modeling", {"text": "The sky is blue."}, {"messages": USER + BLUE}),
    ("prompt_completion", {"prompt": "The sky is", "completion": " blue."}, {"prompt": USER, "completion": BLUE}),
    (
        "preference",
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
        {"prompt": USER, "chosen": BLUE, "rejected": GREEN},
    ),
    (
        "implicit_preference",
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},
        {"chosen": USER + BLUE, "rejected": USER + GREEN},
    ),
    (
        "unpaired_preference",
        {"prompt": "The sky is", "completion": " blue.", "label": True},
        {"prompt": USER, "completion": BLUE, "label": True},
    ),
    ("prompt_only", {"prompt": "The sky is"}, {"prompt": USER}),
    ("tokenized", {"input_ids": [1, 2, 3]}, None),
]

DESCRIPTIONS = {
    ("language_modeling", False): "standard language modeling",
    ("language_modeling", True): "conversational language modeling",
    ("prompt_completion", False): "standard prompt-completion",
    ("prompt_completion", True): "conversational prompt-completion",
    ("preference", False): "standard preference",
    ("preference", True): "conversational preference",
    ("implicit_preference", False): "standard implicit preference",
    ("implicit_preference", True): "conversational implicit preference",
    ("unpaired_preference", False): "standard unpaired preference",
    ("unpaired_preference", True): "conversational unpaired preference",
    ("prompt_only", False): "standard prompt only",
    ("prompt_only", True): "conversational prompt only",
    ("tokenized", False): "pre-tokenized",
    ("tokenized", True): "pre-tokenized",
}


def test_examples_cover_every_kind():
    assert sorted(kind for kind, _, _ in EXAMPLES) == sorted(KINDS)


class TestDetectFormat:
    @pytest.mark.parametrize("kind, standard, conversational", EXAMPLES, ids=[e[0] for e in EXAMPLES])
    def test_every_kind(self, kind, standard, conversational):
        fmt = detect_format(list(standard), standard)
        assert fmt == DatasetFormat(kind, False)
        check_example_types(standard, fmt)
        if conversational is not None:
            fmt = detect_format(list(conversational), conversational)
            assert fmt == DatasetFormat(kind, True)
            check_example_types(conversational, fmt)

    def test_extra_columns_do_not_matter(self):
        example = {"prompt": USER, "completion": BLUE, "tools": "[]", "id": 7}
        assert detect_format(list(example), example) == DatasetFormat("prompt_completion", True)

    def test_custom_text_field(self):
        example = {"body": "The sky is blue."}
        assert detect_format(["body"], example, text_field="body") == DatasetFormat("language_modeling", False)
        with pytest.raises(ValueError, match=r"\['body'\]"):
            detect_format(["body"], example)  # "text" is the default field

    def test_text_column_is_never_conversational(self):
        # A `text` column next to message-list columns of another kind: the text decides, it is standard.
        example = {"text": "The sky is blue.", "chosen": BLUE}
        assert detect_format(["text"], example) == DatasetFormat("language_modeling", False)

    def test_tokenized_wins(self):
        example = {"input_ids": [1, 2], "prompt": "x", "completion": "y"}
        assert detect_format(list(example), example) == DatasetFormat("tokenized", False)

    def test_unknown_columns(self):
        with pytest.raises(ValueError, match=r"from its columns \['bar', 'foo'\]") as error:
            detect_format(["foo", "bar"], {"foo": 1, "bar": 2})
        message = str(error.value)
        assert "'prompt'+'completion'" in message and "'conversations' (ShareGPT)" in message
        assert "Rename your columns, or pass `formatting_func`" in message

    def test_unknown_columns_name_the_text_field(self):
        with pytest.raises(ValueError, match=r"'body' or 'messages' \(language modelling\)"):
            detect_format(["foo"], {"foo": 1}, text_field="body")


class TestDescribe:
    @pytest.mark.parametrize("key, expected", DESCRIPTIONS.items(), ids=[d for d in DESCRIPTIONS.values()])
    def test_describe(self, key, expected):
        assert DatasetFormat(*key).describe() == expected

    def test_frozen(self):
        with pytest.raises(AttributeError):
            DatasetFormat("prompt_only", False).kind = "preference"


class TestRequireFormat:
    ALLOWED = ("language_modeling", "prompt_completion", "tokenized")

    def test_allowed(self):
        for kind in self.ALLOWED:
            require_format(DatasetFormat(kind, False), self.ALLOWED, "SFTTrainer", ["x"])

    def test_refused(self):
        fmt = DatasetFormat("preference", True)
        with pytest.raises(ValueError) as error:
            require_format(fmt, self.ALLOWED, "SFTTrainer", ["rejected", "prompt", "chosen"])
        assert str(error.value) == (
            "SFTTrainer does not accept a conversational preference dataset (columns ['chosen', 'prompt', "
            "'rejected']). It accepts: language modeling, prompt completion, tokenized."
        )


class TestCheckExampleTypes:
    def test_completion_list_while_prompt_string(self):
        example = {"prompt": "The sky is", "completion": BLUE}
        fmt = detect_format(list(example), example)
        assert fmt == DatasetFormat("prompt_completion", True)  # one message list makes the row conversational
        with pytest.raises(TypeError, match=r"Column 'prompt' must hold a list of \{'role', 'content'\} messages in a "
                                            r"conversational dataset; got str: The sky is\."):
            check_example_types(example, fmt)

    def test_completion_string_while_prompt_list(self):
        example = {"prompt": USER, "completion": "It is blue."}
        with pytest.raises(TypeError, match=r"Column 'completion' must hold a list .* got str: It is blue\."):
            check_example_types(example, detect_format(list(example), example))

    def test_messages_as_a_string(self):
        example = {"messages": "user: hi\nassistant: hello"}
        fmt = detect_format(list(example), example)
        with pytest.raises(TypeError, match=r"(?s)Column 'messages' must hold a list of \{'role', 'content'\} messages; "
                                            r"got str: user: hi.*Put plain text in a 'text' column"):
            check_example_types(example, fmt)

    def test_messages_without_roles(self):
        example = {"messages": [{"from": "human", "value": "hi"}]}
        with pytest.raises(TypeError, match=r"Column 'messages' must hold a list .* got list"):
            check_example_types(example, detect_format(list(example), example))

    def test_standard_value_not_a_string(self):
        example = {"prompt": "The sky is", "completion": 3}
        with pytest.raises(TypeError, match=r"Column 'completion' must hold strings in a standard \(non-conversational\) "
                                            r"dataset; got int: 3\."):
            check_example_types(example, detect_format(list(example), example))

    def test_text_not_a_string(self):
        example = {"text": ["a", "b"]}
        with pytest.raises(TypeError, match=r"Column 'text' must hold strings .* got list: \['a', 'b'\]"):
            check_example_types(example, detect_format(list(example), example))

    def test_custom_text_field_is_checked(self):
        example = {"body": None}
        fmt = detect_format(["body"], example, text_field="body")
        with pytest.raises(TypeError, match=r"Column 'body' must hold strings .* got NoneType"):
            check_example_types(example, fmt, text_field="body")

    @pytest.mark.parametrize("ids, shown", [("1 2 3", "str: 1 2 3"), (["1", "2"], r"list: \['1', '2'\]")])
    def test_input_ids_not_ints(self, ids, shown):
        example = {"input_ids": ids}
        with pytest.raises(TypeError, match=rf"Column 'input_ids' must hold lists of ints; got {shown}\."):
            check_example_types(example, detect_format(["input_ids"], example))

    def test_long_values_are_shortened(self):
        example = {"text": list(range(1000))}
        with pytest.raises(TypeError) as error:
            check_example_types(example, DatasetFormat("language_modeling", False))
        assert len(str(error.value)) < 250

    def test_valid_rows_pass(self):
        check_example_types({"input_ids": []}, DatasetFormat("tokenized", False))
        check_example_types({"messages": USER + BLUE, "text": "x"}, DatasetFormat("language_modeling", True))
        check_example_types({"prompt": USER, "completion": BLUE, "label": False},
                            DatasetFormat("unpaired_preference", True))
