"""ShareGPT rows (`from`/`value` messages) are converted to ChatML (`role`/`content`) before the SFT, preference and
unpaired-preference data paths detect the format and tokenise: the prepared rows (token ids and masks) are exactly
those of the same data written in ChatML, for `Dataset` and `IterableDataset` alike.

ShareGPT's speaker names `human` and `gpt` become the roles `user` and `assistant`; other names (`system`, `user`,
`assistant`, ...) are kept. Each case is run with ShareGPT rows that use ChatML role names and with rows that use
`human`/`gpt`: both must give the tokens of the same ChatML rows (with `user`/`assistant`).
"""

import warnings

import pytest
from datasets import Dataset

from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer
from trl.data.conversation import maybe_convert_dataset_to_chatml, maybe_convert_to_chatml
from trl.data.preference import PreferenceDataOptions, prepare_preference_dataset
from trl.data.prepare import SFTDataOptions, prepare_sft_dataset
from trl.data.tiny import tiny_task_rows
from trl.data.unpaired import prepare_unpaired_dataset
from trl.models.tiny import tiny_model, tiny_tokenizer

SYSTEM = {"role": "system", "content": "Answer with letters only."}
# the speaker names ShareGPT rows use for ChatML's roles
ROLE_NAMES = {"chatml_roles": {}, "sharegpt_roles": {"user": "human", "assistant": "gpt"}}
MESSAGE_KEYS = ("prompt", "completion", "chosen", "rejected", "messages")


def _rows(form: str, num_rows: int = 6) -> list[dict]:
    """ChatML rows of the tiny task (a system message leads each prompt or conversation)."""
    rows = []
    for row in tiny_task_rows(form, "test", num_rows):
        row = dict(row)
        first = "messages" if "messages" in row else "prompt" if "prompt" in row else "chosen"
        row[first] = [SYSTEM, *row[first]]
        rows.append(row)
    return rows


def _to_sharegpt(rows: list[dict], roles: str = "sharegpt_roles") -> list[dict]:
    names = ROLE_NAMES[roles]
    return [{k: [{"from": names.get(m["role"], m["role"]), "value": m["content"]} for m in v]
             if k in MESSAGE_KEYS else v for k, v in row.items()} for row in rows]


def _implicit(rows: list[dict]) -> list[dict]:
    """Preference rows with the prompt folded into both completions."""
    return [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in rows]


def _dataset(rows: list[dict], streamed: bool):
    dataset = Dataset.from_list(rows)
    return dataset.to_iterable_dataset() if streamed else dataset


def _prepared(prepare, rows: list[dict], streamed: bool) -> list[dict]:
    with warnings.catch_warnings():  # streamed SFT data warns that it cannot be checked ahead of training
        warnings.simplefilter("ignore")
        dataset, fmt = prepare(_dataset(rows, streamed))
        prepared = list(dataset)
    assert fmt.conversational
    return prepared


def _assert_same(prepare, rows: list[dict], roles: str, streamed: bool) -> None:
    chatml = _prepared(prepare, rows, streamed)
    sharegpt = _prepared(prepare, _to_sharegpt(rows, roles), streamed)
    assert chatml and sharegpt == chatml


def _sft(dataset):
    return prepare_sft_dataset(dataset, tiny_tokenizer(), SFTDataOptions(max_length=128))


def _preference(dataset):
    return prepare_preference_dataset(dataset, tiny_tokenizer(), PreferenceDataOptions(max_length=128), "DPOTrainer")


def _unpaired(dataset):
    return prepare_unpaired_dataset(dataset, tiny_tokenizer(), PreferenceDataOptions(max_length=128), "KTOTrainer")


@pytest.mark.parametrize("streamed", [False, True], ids=["dataset", "iterable"])
@pytest.mark.parametrize("roles", ["chatml_roles", "sharegpt_roles"])
class TestSameTokensAsChatML:
    def test_sft_messages(self, roles, streamed):
        _assert_same(_sft, _rows("conversational"), roles, streamed)

    def test_sft_prompt_completion(self, roles, streamed):
        rows = _rows("conversational_prompt_completion")
        _assert_same(_sft, rows, roles, streamed)
        row = _prepared(_sft, _to_sharegpt(rows, roles), streamed)[0]
        assert 0 < sum(row["completion_mask"]) < len(row["input_ids"])  # the prompt is masked out

    def test_preference(self, roles, streamed):
        _assert_same(_preference, _rows("preference"), roles, streamed)

    def test_implicit_preference(self, roles, streamed):
        rows = _implicit(_rows("preference"))
        _assert_same(_preference, rows, roles, streamed)
        # the extracted prompt is the one of the explicit rows
        explicit = _prepared(_preference, _to_sharegpt(_rows("preference"), roles), streamed)
        assert _prepared(_preference, _to_sharegpt(rows, roles), streamed) == explicit

    def test_unpaired(self, roles, streamed):
        _assert_same(_unpaired, _rows("unpaired_preference"), roles, streamed)

    def test_paired_data_for_kto(self, roles, streamed):
        _assert_same(_unpaired, _rows("preference"), roles, streamed)


def test_sharegpt_conversations_column_becomes_messages():
    rows = _rows("conversational")
    conversations = [{"conversations": row["messages"]} for row in _to_sharegpt(rows)]
    assert _prepared(_sft, conversations, False) == _prepared(_sft, rows, False)


def test_human_and_gpt_become_user_and_assistant():
    example = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                                 {"from": "gpt", "value": "Hello"}, {"from": "observation", "value": "{}"}]}
    roles = [m["role"] for m in maybe_convert_to_chatml(example)["messages"]]
    assert roles == ["system", "user", "assistant", "observation"]  # names outside ShareGPT's two are kept


def test_chatml_roles_are_never_renamed():
    example = {"messages": [{"role": "human", "content": "Hi"}], "prompt": [{"role": "gpt", "content": "x"}]}
    assert maybe_convert_to_chatml(example) == example


def test_rendered_turns_are_user_and_assistant():
    rows = [{"conversations": [{"from": "human", "value": "sort: b a"}, {"from": "gpt", "value": "a b"}]}]
    text = tiny_tokenizer().decode(_prepared(_sft, rows, False)[0]["input_ids"])
    assert "<|im_start|>user\nsort: b a" in text and "<|im_start|>assistant\na b" in text
    assert "human" not in text and "gpt" not in text


def test_assistant_only_loss_finds_gpt_turns():
    rows = [{"conversations": [{"from": "human", "value": "sort: b a"}, {"from": "gpt", "value": "a b"}]}] * 2
    options = SFTDataOptions(max_length=128, assistant_only_loss=True)
    dataset, _ = prepare_sft_dataset(Dataset.from_list(rows), tiny_tokenizer(), options)
    row = dataset[0]
    trained = [t for t, m in zip(row["input_ids"], row["assistant_masks"]) if m]
    assert tiny_tokenizer().decode(trained).startswith("a b")


def test_chatml_and_standard_data_are_not_mapped():
    for form in ("conversational", "preference", "prompt_completion", "standard_preference"):
        dataset = Dataset.from_list(tiny_task_rows(form, "test", 2))
        assert maybe_convert_dataset_to_chatml(dataset) is dataset


@pytest.mark.parametrize(("form", "trainer_class", "config_class", "prepare"), [
    ("preference", DPOTrainer, DPOConfig, _preference),
    ("unpaired_preference", KTOTrainer, KTOConfig, _unpaired),
], ids=["dpo", "kto"])
def test_trainer_on_sharegpt_rows(tmp_path, form, trainer_class, config_class, prepare):
    rows = _to_sharegpt(_rows(form, num_rows=4))
    args = config_class(output_dir=str(tmp_path), report_to="none", max_steps=1)
    trainer = trainer_class(model=tiny_model(seed=0), args=args, processing_class=tiny_tokenizer(),
                            train_dataset=Dataset.from_list(rows))
    expected = _prepared(prepare, _rows(form, num_rows=4), False)
    assert {k: trainer.train_dataset[0][k] for k in expected[0]} == expected[0]


def test_conversations_beside_a_chatml_messages_column_is_left_alone():
    from trl.data.conversation import maybe_convert_dataset_to_chatml

    rows = [{"messages": [{"role": "user", "content": "A"}], "conversations": [{"from": "human", "value": "B"}]}]
    dataset = Dataset.from_list(rows)
    assert maybe_convert_dataset_to_chatml(dataset) is dataset
