"""ShareGPT rows (`from`/`value` messages) are converted to ChatML (`role`/`content`) before the SFT, preference and
unpaired-preference data paths detect the format and tokenise: the prepared rows (token ids and masks) are exactly
those of the same data written in ChatML, for `Dataset` and `IterableDataset` alike.

Roles are kept as they are (`maybe_convert_to_chatml` renames keys, not roles), so each case is run with ChatML role
names and with ShareGPT's `human`/`gpt`, on both sides of the comparison.
"""

import warnings

import pytest
from datasets import Dataset

from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer
from trl.data.conversation import maybe_convert_dataset_to_chatml
from trl.data.preference import PreferenceDataOptions, prepare_preference_dataset
from trl.data.prepare import SFTDataOptions, prepare_sft_dataset
from trl.data.tiny import tiny_task_rows
from trl.data.unpaired import prepare_unpaired_dataset
from trl.models.tiny import tiny_model, tiny_tokenizer

SYSTEM = {"role": "system", "content": "Answer with letters only."}
ROLE_NAMES = {"chatml_roles": {}, "sharegpt_roles": {"user": "human", "assistant": "gpt"}}
MESSAGE_KEYS = ("prompt", "completion", "chosen", "rejected", "messages")


def _rows(form: str, roles: str, num_rows: int = 6) -> list[dict]:
    """ChatML rows of the tiny task (a system message leads each prompt or conversation), with roles renamed."""
    rows = []
    for row in tiny_task_rows(form, "test", num_rows):
        row = dict(row)
        first = "messages" if "messages" in row else "prompt" if "prompt" in row else "chosen"
        row[first] = [SYSTEM, *row[first]]
        for key in MESSAGE_KEYS:
            if key in row:
                row[key] = [{**m, "role": ROLE_NAMES[roles].get(m["role"], m["role"])} for m in row[key]]
        rows.append(row)
    return rows


def _to_sharegpt(rows: list[dict]) -> list[dict]:
    return [{k: [{"from": m["role"], "value": m["content"]} for m in v] if k in MESSAGE_KEYS else v
             for k, v in row.items()} for row in rows]


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


def _assert_same(prepare, rows: list[dict], streamed: bool) -> None:
    chatml = _prepared(prepare, rows, streamed)
    sharegpt = _prepared(prepare, _to_sharegpt(rows), streamed)
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
        _assert_same(_sft, _rows("conversational", roles), streamed)

    def test_sft_prompt_completion(self, roles, streamed):
        rows = _rows("conversational_prompt_completion", roles)
        _assert_same(_sft, rows, streamed)
        row = _prepared(_sft, _to_sharegpt(rows), streamed)[0]
        assert 0 < sum(row["completion_mask"]) < len(row["input_ids"])  # the prompt is masked out

    def test_preference(self, roles, streamed):
        _assert_same(_preference, _rows("preference", roles), streamed)

    def test_implicit_preference(self, roles, streamed):
        rows = _implicit(_rows("preference", roles))
        _assert_same(_preference, rows, streamed)
        # the extracted prompt is the one of the explicit rows
        explicit = _prepared(_preference, _to_sharegpt(_rows("preference", roles)), streamed)
        assert _prepared(_preference, _to_sharegpt(rows), streamed) == explicit

    def test_unpaired(self, roles, streamed):
        _assert_same(_unpaired, _rows("unpaired_preference", roles), streamed)

    def test_paired_data_for_kto(self, roles, streamed):
        _assert_same(_unpaired, _rows("preference", roles), streamed)


def test_sharegpt_conversations_column_becomes_messages():
    rows = _rows("conversational", "sharegpt_roles")
    conversations = [{"conversations": row["messages"]} for row in _to_sharegpt(rows)]
    assert _prepared(_sft, conversations, False) == _prepared(_sft, rows, False)


def test_chatml_and_standard_data_are_not_mapped():
    for form in ("conversational", "preference", "prompt_completion", "standard_preference"):
        dataset = Dataset.from_list(tiny_task_rows(form, "test", 2))
        assert maybe_convert_dataset_to_chatml(dataset) is dataset


@pytest.mark.parametrize(("form", "trainer_class", "config_class", "prepare"), [
    ("preference", DPOTrainer, DPOConfig, _preference),
    ("unpaired_preference", KTOTrainer, KTOConfig, _unpaired),
], ids=["dpo", "kto"])
def test_trainer_on_sharegpt_rows(tmp_path, form, trainer_class, config_class, prepare):
    rows = _to_sharegpt(_rows(form, "sharegpt_roles", num_rows=4))
    args = config_class(output_dir=str(tmp_path), report_to="none", max_steps=1)
    trainer = trainer_class(model=tiny_model(seed=0), args=args, processing_class=tiny_tokenizer(),
                            train_dataset=Dataset.from_list(rows))
    expected = _prepared(prepare, _rows(form, "sharegpt_roles", num_rows=4), False)
    assert {k: trainer.train_dataset[0][k] for k in expected[0]} == expected[0]


def test_conversations_beside_a_chatml_messages_column_is_left_alone():
    from trl.data.conversation import maybe_convert_dataset_to_chatml

    rows = [{"messages": [{"role": "user", "content": "A"}], "conversations": [{"from": "human", "value": "B"}]}]
    dataset = Dataset.from_list(rows)
    assert maybe_convert_dataset_to_chatml(dataset) is dataset
