"""Tests for `trl.data_utils.pack_dataset` and its best-fit-decreasing machinery."""

import random
from collections import Counter

import pytest
from datasets import Dataset, DatasetDict

from trl.data.packing import _best_fit_decreasing, _SegmentTree
from trl.data_utils import pack_dataset


EXAMPLES = {"input_ids": [[1, 2, 3], [4, 5], [6], [7, 8, 9, 10]]}


@pytest.fixture(autouse=True)
def _quiet_progress_bars():
    import datasets

    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


class TestSegmentTree:
    def test_best_fit_search(self):
        tree = _SegmentTree(10)
        assert tree.search(1) == 0  # nothing available
        for capacity in (2, 5, 9):
            tree.add(capacity)
        assert [tree.search(n) for n in (1, 2, 3, 5, 6, 9, 10)] == [2, 2, 5, 5, 9, 9, 0]
        tree.remove(5)
        assert tree.search(3) == 9
        tree.add(10)
        assert tree.search(10) == 10

    @pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 9])
    def test_matches_brute_force(self, size):
        rng = random.Random(size)
        tree, available = _SegmentTree(size), set()
        for _ in range(200):
            capacity = rng.randint(1, size)
            if capacity in available:
                tree.remove(capacity)
                available.discard(capacity)
            else:
                tree.add(capacity)
                available.add(capacity)
            query = rng.randint(1, size)
            assert tree.search(query) == min((c for c in available if c >= query), default=0)


def test_best_fit_decreasing_bins():
    # Sorted: 4 (item 3), 3 (item 0), 2 (item 1), 1 (item 2). The 4 fills bin 0; the 3 opens bin 1; the 2 does not
    # fit bin 1 (1 free) and opens bin 2; the 1 fits bin 1 exactly, the best fit.
    assert _best_fit_decreasing([3, 2, 1, 4], 4) == [[3], [0, 2], [1]]
    assert _best_fit_decreasing([], 4) == []


class TestBFD:
    def test_bins(self):
        packed = pack_dataset(Dataset.from_dict(EXAMPLES), seq_length=4)
        assert packed.to_dict() == {
            "input_ids": [[7, 8, 9, 10], [1, 2, 3, 6], [4, 5]],
            "seq_lengths": [[4], [3, 1], [2]],
        }

    def test_truncates_long_sequences(self):
        packed = pack_dataset(Dataset.from_dict(EXAMPLES), seq_length=3)
        # [7, 8, 9, 10] loses its 10; then 3, 3, 2+1.
        assert packed.to_dict() == {
            "input_ids": [[1, 2, 3], [7, 8, 9], [4, 5, 6]],
            "seq_lengths": [[3], [3], [2, 1]],
        }

    def test_split_loses_no_token(self):
        packed = pack_dataset(Dataset.from_dict(EXAMPLES), seq_length=3, strategy="bfd_split")
        # Documents: [1,2,3], [4,5], [6], [7,8,9], [10] -> sorted 3, 3, 2, 1, 1 (ties in input order).
        assert packed.to_dict() == {
            "input_ids": [[1, 2, 3], [7, 8, 9], [4, 5, 6], [10]],
            "seq_lengths": [[3], [3], [2, 1], [1]],
        }

    def test_deprecated_alias(self):
        with pytest.warns(FutureWarning, match="'bfd-requeue' is deprecated; use 'bfd_split'"):
            packed = pack_dataset(Dataset.from_dict(EXAMPLES), seq_length=3, strategy="bfd-requeue")
        assert packed["input_ids"] == [[1, 2, 3], [7, 8, 9], [4, 5, 6], [10]]

    def test_multiple_list_columns_and_dropped_columns(self):
        dataset = Dataset.from_dict(
            {
                "input_ids": [[1, 2, 3], [4, 5], [6], [7, 8, 9, 10]],
                "completion_mask": [[0, 1, 1], [0, 1], [1], [0, 0, 1, 1]],
                "assistant_masks": [[1, 1, 0], [1, 0], [0], [1, 1, 0, 0]],
                "text": ["a", "b", "c", "d"],  # not a list: dropped
            }
        )
        packed = pack_dataset(dataset, seq_length=4)
        assert packed.column_names == ["input_ids", "completion_mask", "assistant_masks", "seq_lengths"]
        assert packed.to_dict() == {
            "input_ids": [[7, 8, 9, 10], [1, 2, 3, 6], [4, 5]],
            "completion_mask": [[0, 0, 1, 1], [0, 1, 1, 1], [0, 1]],
            "assistant_masks": [[1, 1, 0, 0], [1, 1, 0, 0], [1, 0]],
            "seq_lengths": [[4], [3, 1], [2]],
        }

    def test_empty_sequences_dropped(self):
        dataset = Dataset.from_dict({"input_ids": [[], [1, 2], [], [3], []]})
        packed = pack_dataset(dataset, seq_length=4)
        assert packed.to_dict() == {"input_ids": [[1, 2, 3]], "seq_lengths": [[2, 1]]}

    def test_all_empty(self):
        packed = pack_dataset(Dataset.from_dict({"input_ids": [[], []]}), seq_length=4)
        assert len(packed) == 0

    def test_batches_are_packed_separately(self):
        packed = pack_dataset(Dataset.from_dict(EXAMPLES), seq_length=4, map_kwargs={"batch_size": 2})
        # Batch 1: [1,2,3], [4,5]; batch 2: [6], [7,8,9,10].
        assert packed["input_ids"] == [[1, 2, 3], [4, 5], [7, 8, 9, 10], [6]]


class TestWrapped:
    def test_chunks(self):
        packed = pack_dataset(Dataset.from_dict(EXAMPLES), seq_length=4, strategy="wrapped")
        assert packed.to_dict() == {"input_ids": [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]}

    def test_multiple_columns(self):
        dataset = Dataset.from_dict({"input_ids": [[1, 2, 3], [], [4, 5]], "labels": [[-1, 2, 3], [], [4, -1]]})
        packed = pack_dataset(dataset, seq_length=2, strategy="wrapped")
        assert packed.to_dict() == {"input_ids": [[1, 2], [3, 4], [5]], "labels": [[-1, 2], [3, 4], [-1]]}


class TestFormatsAndTypes:
    def test_format_is_restored(self):
        import torch

        dataset = Dataset.from_dict(EXAMPLES).with_format("torch")
        packed = pack_dataset(dataset, seq_length=4)
        assert packed.format["type"] == "torch"
        assert torch.equal(packed[1]["input_ids"], torch.tensor([1, 2, 3, 6]))

    def test_iterable_dataset(self):
        iterable = Dataset.from_dict({**EXAMPLES, "text": ["a", "b", "c", "d"]}).to_iterable_dataset()
        assert list(pack_dataset(iterable, seq_length=4)) == [
            {"input_ids": [7, 8, 9, 10], "seq_lengths": [4]},
            {"input_ids": [1, 2, 3, 6], "seq_lengths": [3, 1]},
            {"input_ids": [4, 5], "seq_lengths": [2]},
        ]
        with pytest.warns(UserWarning, match="ignores map_kwargs \\['num_proc'\\]"):
            wrapped = pack_dataset(iterable, seq_length=4, strategy="wrapped", map_kwargs={"num_proc": 2})
        assert [row["input_ids"] for row in wrapped] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]

    def test_dataset_dict(self):
        packed = pack_dataset(DatasetDict({"train": Dataset.from_dict(EXAMPLES)}), seq_length=4)
        assert packed["train"]["input_ids"] == [[7, 8, 9, 10], [1, 2, 3, 6], [4, 5]]

    def test_large_list_type_is_kept(self):
        import pyarrow as pa

        table = pa.table({"input_ids": pa.array(EXAMPLES["input_ids"], type=pa.large_list(pa.int32()))})
        packed = pack_dataset(Dataset(table), seq_length=4)
        assert packed.data.schema.field("input_ids").type == pa.large_list(pa.int32())
        assert packed["input_ids"] == [[7, 8, 9, 10], [1, 2, 3, 6], [4, 5]]


class TestErrors:
    def test_unknown_strategy(self):
        with pytest.raises(ValueError, match="Unknown packing strategy 'ffd'; expected one of \\['bfd', 'bfd_split'"):
            pack_dataset(Dataset.from_dict(EXAMPLES), seq_length=4, strategy="ffd")

    @pytest.mark.parametrize("seq_length", [0, -1, 2.0, True])
    def test_bad_seq_length(self, seq_length):
        with pytest.raises(ValueError, match="`seq_length` must be a positive integer"):
            pack_dataset(Dataset.from_dict(EXAMPLES), seq_length=seq_length)

    def test_mismatched_list_columns(self):
        dataset = Dataset.from_dict({"input_ids": [[1, 2], [3, 4, 5]], "completion_mask": [[1, 1], [1, 1]]})
        match = "in row 1 of the batch, 'input_ids' has 3 elements but 'completion_mask' has 2"
        with pytest.raises(ValueError, match=match):
            pack_dataset(dataset, seq_length=4)

    def test_no_list_column(self):
        with pytest.raises(ValueError, match="at least one list column"):
            pack_dataset(Dataset.from_dict({"text": ["a"]}), seq_length=4)

    def test_already_packed(self):
        packed = pack_dataset(Dataset.from_dict(EXAMPLES), seq_length=4)
        with pytest.raises(ValueError, match="already has a 'seq_lengths' column"):
            pack_dataset(packed, seq_length=4)

    def test_reserved_map_kwargs(self):
        with pytest.raises(ValueError, match="sets \\['remove_columns'\\] itself"):
            pack_dataset(Dataset.from_dict(EXAMPLES), seq_length=4, map_kwargs={"remove_columns": ["input_ids"]})


@pytest.mark.parametrize("strategy", ["bfd", "bfd_split", "wrapped"])
def test_randomized_invariants(strategy):
    rng = random.Random(0)
    seq_length = 16
    rows = [[rng.randrange(1000) for _ in range(rng.choice([0, 1, 2, 5, 9, 16, 17, 40]))] for _ in range(300)]
    # A second column that mirrors the first, so misaligned packing would show.
    dataset = Dataset.from_dict({"input_ids": rows, "mirror": [[-token for token in row] for row in rows]})
    packed = pack_dataset(dataset, seq_length=seq_length, strategy=strategy)

    input_ids = packed["input_ids"]
    assert all(0 < len(row) <= seq_length for row in input_ids)
    assert packed["mirror"] == [[-token for token in row] for row in input_ids]
    packed_tokens = Counter(token for row in input_ids for token in row)
    if strategy == "bfd":  # truncation keeps exactly the first `seq_length` tokens of every row
        assert packed_tokens == Counter(token for row in rows for token in row[:seq_length])
    else:
        assert packed_tokens == Counter(token for row in rows for token in row)
    if strategy == "wrapped":
        # Rows follow the input order: concatenating them gives back the concatenated input.
        assert [token for row in input_ids for token in row] == [token for row in rows for token in row]
    else:
        seq_lengths = packed["seq_lengths"]
        assert all(sum(lengths) == len(row) for lengths, row in zip(seq_lengths, input_ids))
        # Every document in a packed row is a contiguous piece of one input row.
        documents = []
        for row, lengths in zip(input_ids, seq_lengths):
            start = 0
            for length in lengths:
                documents.append(tuple(row[start : start + length]))
                start += length
        if strategy == "bfd":
            expected = [tuple(row[:seq_length]) for row in rows if row]
        else:
            expected = [tuple(row[i : i + seq_length]) for row in rows for i in range(0, len(row), seq_length)]
        assert Counter(documents) == Counter(expected)
        # A document opens a new bin only when it fits in no open bin, so any two bins hold more than `seq_length`
        # tokens together (all rows are in one `map` batch here).
        fills = sorted(len(row) for row in input_ids)
        assert fills[0] + fills[1] > seq_length
