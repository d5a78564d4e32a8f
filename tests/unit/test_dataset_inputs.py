"""Bad datasets stop every data path (SFT, preference, unpaired preference, prompts) at preparation, with an error that
names what is wrong: a plain list instead of a `Dataset`, an image column, a message without content or a `None`
value (with its row and column). Plain-text documents cut by `max_length` are normal language-model training."""

import warnings

import pytest
from datasets import Dataset

from trl.data.formats import DatasetFormat, check_example_types
from trl.data.preference import PreferenceDataOptions, prepare_preference_dataset
from trl.data.prepare import SFTDataOptions, prepare_sft_dataset
from trl.data.prompts import prepare_prompt_dataset
from trl.data.unpaired import prepare_unpaired_dataset
from trl.guards import TrainingWillNotLearnError
from trl.models.tiny import tiny_model, tiny_tokenizer

USER = [{"role": "user", "content": "sort: c a b"}]
ASSISTANT = [{"role": "assistant", "content": "a b c"}]
OTHER = [{"role": "assistant", "content": "c b a"}]


def _sft(dataset, name="train", **kwargs):
    options = SFTDataOptions(max_length=kwargs.pop("max_length", 128))
    return prepare_sft_dataset(dataset, tiny_tokenizer(), options, name=name, **kwargs)


def _dpo(dataset, name="train", **kwargs):
    options = PreferenceDataOptions(max_length=128)
    return prepare_preference_dataset(dataset, tiny_tokenizer(), options, "DPOTrainer", name, **kwargs)


def _kto(dataset, name="train", **kwargs):
    options = PreferenceDataOptions(max_length=128)
    return prepare_unpaired_dataset(dataset, tiny_tokenizer(), options, "KTOTrainer", name, **kwargs)


def _grpo(dataset, name="train", **kwargs):
    return prepare_prompt_dataset(dataset, tiny_tokenizer(), "GRPOTrainer", name, **kwargs)


GOOD_ROWS = {
    _sft: [{"messages": USER + ASSISTANT}] * 2,
    _dpo: [{"prompt": USER, "chosen": ASSISTANT, "rejected": OTHER}] * 2,
    _kto: [{"prompt": USER, "completion": ASSISTANT, "label": True}, {"prompt": USER, "completion": OTHER,
                                                                      "label": False}],
    _grpo: [{"prompt": USER}] * 2,
}
PATHS = pytest.mark.parametrize("prepare", list(GOOD_ROWS), ids=["sft", "preference", "unpaired", "prompts"])


# ---- the dataset object ------------------------------------------------------------------------------------------


@PATHS
@pytest.mark.parametrize("name", ["train", "eval"])
def test_list_of_dicts_is_a_type_error_with_the_fix(prepare, name):
    with pytest.raises(TypeError, match=rf"got a list of 2 dicts as its {name} dataset.*"
                                        r"`datasets\.Dataset\.from_list\(rows\)`"):
        prepare(GOOD_ROWS[prepare], name=name)


def test_dict_of_columns_is_not_mistaken_for_splits():
    with pytest.raises(TypeError, match=r"got a dict of columns \['text'\].*`datasets\.Dataset\.from_dict"):
        _sft({"text": ["a", "b"]})


def test_other_objects_are_a_type_error():
    with pytest.raises(TypeError, match=r"expects a `datasets\.Dataset` or `datasets\.IterableDataset` as its train "
                                        r"dataset; got str"):
        _dpo("trl-lib/ultrafeedback_binarized")


# ---- image columns -----------------------------------------------------------------------------------------------


@PATHS
@pytest.mark.parametrize("column", ["image", "images"])
@pytest.mark.parametrize("streamed", [False, True], ids=["dataset", "iterable"])
def test_image_column_is_refused(prepare, column, streamed):
    rows = [{**row, column: None} for row in GOOD_ROWS[prepare]]
    dataset = Dataset.from_list(rows)
    dataset = dataset.to_iterable_dataset() if streamed else dataset
    model = tiny_model(seed=0)
    model.config._name_or_path = "org/tiny-text-model"
    with pytest.raises(ValueError, match=rf"(?s){column!r} column in its eval dataset.*Qwen3ForCausalLM "
                                         rf"\('org/tiny-text-model'\).*remove the {column!r} column"):
        prepare(dataset, name="eval", model=model)


def test_image_column_without_a_model_names_the_tokenizer():
    rows = [{"text": "abc", "image": None}]
    with pytest.raises(ValueError, match=r"'image' column in its train dataset.*vision-language model"):
        _sft(Dataset.from_list(rows))


# ---- rows: messages without content, None values -----------------------------------------------------------------

NO_CONTENT = [{"role": "user"}]


@pytest.mark.parametrize(("prepare", "rows", "column"), [
    (_sft, [{"messages": USER + ASSISTANT}, {"messages": NO_CONTENT + ASSISTANT}], "messages"),
    (_sft, [{"prompt": USER, "completion": ASSISTANT}, {"prompt": NO_CONTENT, "completion": ASSISTANT}], "prompt"),
    (_dpo, [{"prompt": USER, "chosen": ASSISTANT, "rejected": OTHER},
            {"prompt": USER, "chosen": [{"role": "assistant"}], "rejected": OTHER}], "chosen"),
    (_dpo, [{"chosen": USER + ASSISTANT, "rejected": USER + OTHER},
            {"chosen": NO_CONTENT + ASSISTANT, "rejected": NO_CONTENT + OTHER}], "chosen"),
    (_kto, [{"prompt": USER, "completion": ASSISTANT, "label": True},
            {"prompt": NO_CONTENT, "completion": OTHER, "label": False}], "prompt"),
    (_kto, [{"prompt": USER, "chosen": ASSISTANT, "rejected": OTHER},
            {"prompt": USER, "chosen": ASSISTANT, "rejected": [{"role": "assistant"}]}], "rejected"),
    (_grpo, [{"prompt": USER}, {"prompt": NO_CONTENT}], "prompt"),
], ids=["sft-messages", "sft-prompt", "dpo-chosen", "dpo-implicit", "kto-prompt", "kto-paired", "grpo-prompt"])
def test_message_without_content_names_row_and_column(prepare, rows, column):
    with pytest.raises(ValueError, match=rf"Row 1 of the train dataset: message 0 of column {column!r} has no "
                                         r"'content'.*only assistant messages with 'tool_calls' may omit it"):
        prepare(Dataset.from_list(rows))


@pytest.mark.parametrize(("prepare", "rows", "column"), [
    (_sft, [{"prompt": "2+2=", "completion": " 4"}, {"prompt": "3+3=", "completion": None}], "completion"),
    (_sft, [{"prompt": USER, "completion": ASSISTANT}, {"prompt": USER, "completion": None}], "completion"),
    (_sft, [{"prompt": "2+2=", "completion": " 4"}, {"prompt": None, "completion": " 6"}], "prompt"),
    (_sft, [{"text": "abc"}, {"text": None}], "text"),
    (_dpo, [{"prompt": "2+2=", "chosen": " 4", "rejected": " 5"}, {"prompt": "2+2=", "chosen": None,
                                                                   "rejected": " 5"}], "chosen"),
    (_dpo, [{"prompt": "2+2=", "chosen": " 4", "rejected": " 5"}, {"prompt": None, "chosen": " 4",
                                                                   "rejected": " 5"}], "prompt"),
    (_dpo, [{"chosen": "2+2= 4", "rejected": "2+2= 5"}, {"chosen": "2+2= 4", "rejected": None}], "rejected"),
    (_kto, [{"prompt": "2+2=", "completion": " 4", "label": True}, {"prompt": "2+2=", "completion": None,
                                                                    "label": False}], "completion"),
    (_kto, [{"prompt": "2+2=", "chosen": " 4", "rejected": " 5"}, {"prompt": "2+2=", "chosen": " 4",
                                                                   "rejected": None}], "rejected"),
    (_grpo, [{"prompt": "2+2="}, {"prompt": None}], "prompt"),
], ids=["sft-completion", "sft-conversational-completion", "sft-prompt", "sft-text", "dpo-chosen", "dpo-prompt",
        "dpo-implicit", "kto-completion", "kto-paired", "grpo-prompt"])
def test_none_value_names_row_and_column(prepare, rows, column):
    with pytest.raises(TypeError, match=rf"Row 1 of the train dataset is malformed\. Column {column!r} must hold .*"
                                        r"got NoneType: None"):
        prepare(Dataset.from_list(rows))


def test_none_in_a_streamed_dataset_names_the_row_as_it_arrives():
    rows = [{"prompt": "2+2=", "completion": " 4"}] * 3 + [{"prompt": "3+3=", "completion": None}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset, _ = _sft(Dataset.from_list(rows).to_iterable_dataset())
        with pytest.raises(TypeError, match=r"Row 3 of the train dataset is malformed\. Column 'completion'"):
            list(dataset)


class TestMessageChecks:
    CONVERSATIONAL = DatasetFormat("language_modeling", True)

    def test_assistant_tool_call_without_content_is_valid(self):
        call = {"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}
        messages = USER + [{"role": "assistant", "tool_calls": [call]}, {"role": "tool", "content": "3"}] + ASSISTANT
        check_example_types({"messages": messages}, self.CONVERSATIONAL, row=0, name="train")
        messages[1]["content"] = None
        check_example_types({"messages": messages}, self.CONVERSATIONAL, row=0, name="train")

    def test_user_message_with_tool_calls_still_needs_content(self):
        messages = [{"role": "user", "tool_calls": []}] + ASSISTANT
        with pytest.raises(ValueError, match=r"message 0 of column 'messages' has no 'content'"):
            check_example_types({"messages": messages}, self.CONVERSATIONAL)

    def test_message_without_role(self):
        messages = USER + [{"content": "a b c"}]
        with pytest.raises(ValueError, match=r"Row 4 of the eval dataset: message 1 of column 'messages' has no "
                                             r"'role'"):
            check_example_types({"messages": messages}, self.CONVERSATIONAL, row=4, name="eval")

    def test_message_content_of_a_wrong_type(self):
        messages = USER + [{"role": "assistant", "content": 3}]
        with pytest.raises(TypeError, match=r"message 1 of column 'messages' has a 'content' of type int"):
            check_example_types({"messages": messages}, self.CONVERSATIONAL)

    def test_without_a_row_the_message_is_unchanged(self):
        with pytest.raises(TypeError, match=r"^Column 'completion' must hold strings"):
            check_example_types({"prompt": "a", "completion": None}, DatasetFormat("prompt_completion", False))


# ---- the end-of-turn guard depends on the format -----------------------------------------------------------------

LONG_TEXT = " ".join(["the quick brown fox jumps over the lazy dog"] * 6)


def test_truncated_plain_text_documents_train_without_error():
    dataset, fmt = _sft(Dataset.from_list([{"text": LONG_TEXT}] * 3), max_length=16)
    assert fmt == DatasetFormat("language_modeling", False)
    assert [len(row["input_ids"]) for row in dataset] == [16] * 3


def test_truncated_formatted_text_trains_without_error():
    rows = [{"question": "q", "answer": LONG_TEXT}] * 3
    dataset, _ = _sft(Dataset.from_list(rows), max_length=16, formatting_func=lambda r: r["question"] + r["answer"])
    assert len(dataset) == 3


def test_truncated_conversations_still_stop():
    rows = [{"prompt": USER, "completion": [{"role": "assistant", "content": LONG_TEXT}]}] * 3
    with pytest.raises(TrainingWillNotLearnError, match=r"None of the 3 train rows trains the end-of-turn token"):
        _sft(Dataset.from_list(rows), max_length=16)


def test_truncated_prompt_completion_text_still_stops():
    rows = [{"prompt": "sort:", "completion": LONG_TEXT}] * 3
    with pytest.raises(TrainingWillNotLearnError, match=r"None of the 3 train rows trains the end-of-turn token"):
        _sft(Dataset.from_list(rows), max_length=16)


@pytest.mark.parametrize("row", [
    {"messages": USER + ASSISTANT},
    {"prompt": "sort: c a b", "completion": " a b c"},
    {"prompt": USER, "completion": ASSISTANT},
], ids=["messages", "prompt-completion", "conversational-prompt-completion"])
def test_formatting_func_text_is_what_is_trained(row):
    # the formatted text replaces the row's messages or prompt/completion (it was ignored on messages data)
    dataset, fmt = _sft(Dataset.from_list([row]), formatting_func=lambda r: "### formatted: sort c a b")
    assert fmt.describe() == "standard language modeling"
    assert tiny_tokenizer().decode(dataset[0]["input_ids"]).startswith("### formatted: sort c a b")


def test_formatting_func_makes_the_messages_column_unchecked():
    # only the formatted text is trained, so a message the function handles itself is not an error
    rows = [{"messages": USER + [{"role": "assistant", "content": None}]}]
    dataset, _ = _sft(Dataset.from_list(rows), formatting_func=lambda r: r["messages"][0]["content"] + " -> ?")
    assert tiny_tokenizer().decode(dataset[0]["input_ids"]).startswith("sort: c a b -> ?")
