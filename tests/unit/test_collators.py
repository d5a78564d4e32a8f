"""`DataCollatorForLanguageModeling`: padded, padding-free and packed batches, token for token."""

import pytest
import torch

from trl.data.collators import IGNORE_INDEX, DataCollatorForLanguageModeling
from trl.models.tiny import tiny_model


PAD = 3
X = IGNORE_INDEX

# Two prompt-completion rows and a language-modelling row (no completion_mask).
ROWS = [
    {"input_ids": [10, 11, 12, 13, 14], "completion_mask": [0, 0, 1, 1, 1]},
    {"input_ids": [20, 21, 22], "completion_mask": [0, 1, 1]},
    {"input_ids": [30, 31, 32, 33]},
]


def as_lists(batch):
    return {key: value.tolist() for key, value in batch.items()}


class TestPadded:
    def test_labels_positions_attention(self):
        batch = as_lists(DataCollatorForLanguageModeling(pad_token_id=PAD)(ROWS))
        assert batch == {
            "input_ids": [[10, 11, 12, 13, 14], [20, 21, 22, PAD, PAD], [30, 31, 32, 33, PAD]],
            "labels": [[X, X, 12, 13, 14], [X, 21, 22, X, X], [30, 31, 32, 33, X]],
            "position_ids": [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1], [0, 1, 2, 3, 0]],
            "attention_mask": [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]],
        }

    def test_completion_only_loss_off(self):
        batch = DataCollatorForLanguageModeling(pad_token_id=PAD, completion_only_loss=False)(ROWS[:2])
        assert batch["labels"].tolist() == [[10, 11, 12, 13, 14], [20, 21, 22, X, X]]

    def test_assistant_masks(self):
        rows = [{"input_ids": [1, 2, 3, 4, 5, 6], "assistant_masks": [0, 1, 1, 0, 1, 1]},
                {"input_ids": [7, 8, 9], "completion_mask": [0, 1, 1], "assistant_masks": [1, 1, 0]}]
        for completion_only_loss, second in ((True, [X, 8, X]), (False, [7, 8, X])):
            batch = DataCollatorForLanguageModeling(pad_token_id=PAD, completion_only_loss=completion_only_loss)(rows)
            assert batch["labels"].tolist() == [[X, 2, 3, X, 5, 6], second + [X, X, X]]

    def test_pretokenized_labels_are_kept(self):
        rows = [{"input_ids": [1, 2, 3], "labels": [X, 2, X], "completion_mask": [1, 1, 1]}, {"input_ids": [4, 5]}]
        batch = DataCollatorForLanguageModeling(pad_token_id=PAD)(rows)
        assert batch["labels"].tolist() == [[X, 2, X], [4, 5, X]]

    @pytest.mark.parametrize("multiple, width", [(None, 5), (1, 5), (4, 8), (5, 5), (8, 8)])
    def test_pad_to_multiple_of(self, multiple, width):
        batch = as_lists(DataCollatorForLanguageModeling(pad_token_id=PAD, pad_to_multiple_of=multiple)(ROWS))
        assert {len(row) for key in batch for row in batch[key]} == {width}
        assert batch["input_ids"][0] == [10, 11, 12, 13, 14] + [PAD] * (width - 5)
        assert batch["labels"][0] == [X, X, 12, 13, 14] + [X] * (width - 5)
        assert batch["attention_mask"][0] == [1] * 5 + [0] * (width - 5)

    def test_pad_equal_to_eos_still_trains_eos(self):
        eos = 2  # the tokenizer's pad token is its eos token
        rows = [{"input_ids": [10, 11, eos], "completion_mask": [0, 1, 1]}, {"input_ids": [20, eos]}]
        batch = as_lists(DataCollatorForLanguageModeling(pad_token_id=eos)(rows))
        assert batch["input_ids"] == [[10, 11, eos], [20, eos, eos]]
        assert batch["labels"] == [[X, 11, eos], [20, eos, X]]  # the real eos is a target, the padding is not
        assert batch["attention_mask"] == [[1, 1, 1], [1, 1, 0]]

    def test_only_pt(self):
        with pytest.raises(ValueError, match=r"Only return_tensors='pt' is supported; got 'np'"):
            DataCollatorForLanguageModeling(pad_token_id=PAD, return_tensors="np")(ROWS)


class TestPaddingFree:
    def test_flat_row(self):
        batch = as_lists(DataCollatorForLanguageModeling(pad_token_id=PAD, padding_free=True)(ROWS))
        assert batch == {
            "input_ids": [[10, 11, 12, 13, 14, 20, 21, 22, 30, 31, 32, 33]],
            # The first token of every document is never a target: its prediction belongs to the previous document.
            "labels": [[X, X, 12, 13, 14, X, 21, 22, X, 31, 32, 33]],
            "position_ids": [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]],
        }

    def test_pad_to_multiple_of(self):
        batch = as_lists(DataCollatorForLanguageModeling(pad_token_id=PAD, padding_free=True, pad_to_multiple_of=8)(ROWS))
        assert batch["input_ids"] == [[10, 11, 12, 13, 14, 20, 21, 22, 30, 31, 32, 33, PAD, PAD, PAD, PAD]]
        assert batch["labels"] == [[X, X, 12, 13, 14, X, 21, 22, X, 31, 32, 33, X, X, X, X]]
        # The padding is a document of its own: no real token attends to it.
        assert batch["position_ids"] == [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3]]
        assert "attention_mask" not in batch

    def test_pad_equal_to_eos_still_trains_eos(self):
        eos = 2
        rows = [{"input_ids": [10, eos]}, {"input_ids": [20, 21, eos]}]
        batch = DataCollatorForLanguageModeling(pad_token_id=eos, padding_free=True, pad_to_multiple_of=3)(rows)
        assert batch["labels"].tolist() == [[X, eos, X, 21, eos, X]]


class TestPacked:
    # Rows made by packing: each holds several documents, whose lengths are `seq_lengths`.
    PACKED = [
        {"input_ids": [10, 11, 12, 20, 21], "completion_mask": [0, 1, 1, 0, 1], "seq_lengths": [3, 2]},
        {"input_ids": [30, 31, 32], "completion_mask": [1, 1, 1], "seq_lengths": [3]},
    ]

    def test_padded_batch_of_packed_rows(self):
        batch = as_lists(DataCollatorForLanguageModeling(pad_token_id=PAD)(self.PACKED))
        assert batch == {
            "input_ids": [[10, 11, 12, 20, 21], [30, 31, 32, PAD, PAD]],
            "labels": [[X, 11, 12, X, 21], [X, 31, 32, X, X]],
            "position_ids": [[0, 1, 2, 0, 1], [0, 1, 2, 0, 1]],
        }  # no attention_mask: documents are separated by their positions

    def test_padding_free_batch_of_packed_rows(self):
        batch = as_lists(DataCollatorForLanguageModeling(pad_token_id=PAD, padding_free=True)(self.PACKED))
        assert batch == {
            "input_ids": [[10, 11, 12, 20, 21, 30, 31, 32]],
            "labels": [[X, 11, 12, X, 21, X, 31, 32]],
            "position_ids": [[0, 1, 2, 0, 1, 0, 1, 2]],
        }

    def test_without_completion_only_loss(self):
        batch = DataCollatorForLanguageModeling(pad_token_id=PAD, completion_only_loss=False)(self.PACKED)
        assert batch["labels"].tolist() == [[X, 11, 12, X, 21], [X, 31, 32, X, X]]


# ---- the model sees the same documents: padded vs padding-free ----------------------------------------------------

MODEL_ROWS = [
    {"input_ids": [5, 60, 70, 80, 90, 100, 2], "completion_mask": [0, 0, 0, 1, 1, 1, 1]},
    {"input_ids": [11, 120, 130], "completion_mask": [0, 1, 1]},
    {"input_ids": [14, 150, 160, 170, 2]},
    {"input_ids": [18]},
]


def per_token_log_probs(model, batch):
    # use_cache=False as in training: transformers only derives the per-document mask from `position_ids` when it
    # builds no KV cache.
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    with torch.no_grad():
        return model(**inputs, use_cache=False).logits.float().log_softmax(-1)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_padding_free_matches_padded_through_the_model(attn_implementation):
    model = tiny_model(
        num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1,
        head_dim=32, attn_implementation=attn_implementation,
    ).eval()
    assert model.config._attn_implementation == attn_implementation
    assert next(model.parameters()).dtype == torch.float32
    lengths = [len(row["input_ids"]) for row in MODEL_ROWS]

    padded = DataCollatorForLanguageModeling(pad_token_id=PAD)(MODEL_ROWS)
    flat = DataCollatorForLanguageModeling(pad_token_id=PAD, padding_free=True, pad_to_multiple_of=8)(MODEL_ROWS)
    padded_lp = per_token_log_probs(model, padded)
    flat_lp = per_token_log_probs(model, flat)[0, : sum(lengths)]
    expected = torch.cat([padded_lp[i, :n] for i, n in enumerate(lengths)])  # the non-pad positions, in order
    torch.testing.assert_close(flat_lp, expected, rtol=0, atol=1e-5)

    # The same, read at the targets: log-probs of the label tokens at every trained position.
    def target_log_probs(log_probs, labels):
        labels = labels[:, 1:]
        keep = labels != IGNORE_INDEX
        picked = log_probs[:, :-1].gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return picked[keep]

    flat_labels = flat["labels"][:, : sum(lengths)]
    torch.testing.assert_close(
        target_log_probs(flat_lp.unsqueeze(0), flat_labels), target_log_probs(padded_lp, padded["labels"]),
        rtol=0, atol=1e-5,
    )

    # Packed rows in a padded batch give the same log-probs as well.
    packed = DataCollatorForLanguageModeling(pad_token_id=PAD)([
        {"input_ids": sum((r["input_ids"] for r in MODEL_ROWS[:2]), []), "seq_lengths": lengths[:2]},
        {"input_ids": sum((r["input_ids"] for r in MODEL_ROWS[2:]), []), "seq_lengths": lengths[2:]},
    ])
    packed_lp = per_token_log_probs(model, packed)
    packed_real = torch.cat([packed_lp[0, : sum(lengths[:2])], packed_lp[1, : sum(lengths[2:])]])
    torch.testing.assert_close(packed_real, expected, rtol=0, atol=1e-5)

    # Sanity check of the comparison itself: without the document boundaries the log-probs differ.
    joined = {"input_ids": flat["input_ids"], "position_ids": torch.arange(flat["input_ids"].shape[1])[None]}
    assert not torch.allclose(per_token_log_probs(model, joined)[0, : sum(lengths)], expected, atol=1e-3)


def test_sft_trainer_outputs_of_padding_free_batch_match_padded(tmp_path):
    """With `compute_metrics`, `compute_loss(return_outputs=True)` reruns a plain forward; its logits of a padding-free
    batch must keep the documents apart too (the forward builds no KV cache)."""
    from datasets import Dataset

    from trl import SFTConfig, SFTTrainer
    from trl.models.tiny import tiny_tokenizer

    model = tiny_model(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=32)
    args = SFTConfig(output_dir=str(tmp_path), report_to="none", padding_free=True)
    trainer = SFTTrainer(model=model, args=args, processing_class=tiny_tokenizer(),
                         train_dataset=Dataset.from_list([{"text": "a b c"}]), compute_metrics=lambda pred: {})
    lengths = [len(row["input_ids"]) for row in MODEL_ROWS]
    expected_lp = per_token_log_probs(trainer.model.eval(), DataCollatorForLanguageModeling(pad_token_id=PAD)(MODEL_ROWS))
    expected = torch.cat([expected_lp[i, :n] for i, n in enumerate(lengths)])
    batch = trainer.data_collator(MODEL_ROWS)
    with torch.no_grad():
        _, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    torch.testing.assert_close(outputs.logits.float().log_softmax(-1)[0], expected, rtol=0, atol=1e-5)


def test_reward_collator_takes_the_reference_positional_order():
    # the reference's reward collator is (pad_token_id, pad_to_multiple_of, return_tensors); DPO's has max_length second
    from trl.data.collators import DataCollatorForPreference as PairCollator
    from trl.data.collators import RewardDataCollatorForPreference
    from trl.trainer.reward_trainer import DataCollatorForPreference

    assert DataCollatorForPreference is RewardDataCollatorForPreference
    rows = [{"chosen_ids": [1, 2, 3], "rejected_ids": [4, 5], "margin": 0.5}, {"chosen_ids": [6], "rejected_ids": [7]}]
    rows[1]["margin"] = 1.0
    batch = DataCollatorForPreference(9, 4, "pt")(rows)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 9], [6, 9, 9, 9], [4, 5, 9, 9], [7, 9, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0]]
    assert batch["margin"].tolist() == [0.5, 1.0]
    # the same batch as the shared pair collator without truncation (it is composed, not copied)
    expected = PairCollator(9, pad_to_multiple_of=4)(rows)
    assert all(torch.equal(batch[key], expected[key]) for key in expected)
    with pytest.raises(ValueError, match="return_tensors"):
        DataCollatorForPreference(9, None, "np")
