"""Packing of tokenized datasets into rows of at most `seq_length` tokens.

Packing works on Arrow tables: each `map` batch arrives as a `pyarrow.Table`, the token lists are handled as one flat
values array plus offsets, and the packed rows are built with a single `take` per column. No Python list of tokens
is ever materialised, so packing costs about as much as reading the data once.

`numpy` and `pyarrow` are imported inside the functions that need them, so that `trl.data` imports with the standard
library and torch only.
"""

from __future__ import annotations

import inspect
import warnings
from collections import defaultdict, deque
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict

    DatasetType = TypeVar("DatasetType", Dataset, DatasetDict, IterableDataset, IterableDatasetDict)


PackingStrategy = Literal["bfd", "bfd_split", "wrapped"]
_STRATEGIES: tuple[str, ...] = ("bfd", "bfd_split", "wrapped")
_DEPRECATED_STRATEGIES = {"bfd-requeue": "bfd_split"}
# `pack_dataset` sets these itself: the packing function needs whole Arrow batches and replaces every column.
_RESERVED_MAP_KWARGS = ("function", "batched", "remove_columns", "fn_kwargs", "with_indices", "input_columns")


class _SegmentTree:
    """Max segment tree over the bin capacities `1..size`, answering "smallest available capacity >= x".

    Leaf `c - 1` holds `c` while at least one open bin has exactly `c` free slots, and `0` otherwise; each inner node
    holds the max of its children. Because leaves are sorted by capacity, descending towards the leftmost child whose
    max is `>= x` finds the best fit in O(log size).

    Example:

    ```python
    >>> tree = _SegmentTree(8)
    >>> tree.add(3)
    >>> tree.add(6)
    >>> tree.search(2), tree.search(4), tree.search(7)
    (3, 6, 0)
    ```
    """

    def __init__(self, size: int):
        self.size = size
        self._leaves = 1 << max(size - 1, 0).bit_length()  # smallest power of two >= size
        self._tree = [0] * (2 * self._leaves)

    def _set(self, capacity: int, value: int) -> None:
        tree = self._tree
        i = self._leaves + capacity - 1
        tree[i] = value
        i >>= 1
        while i:
            best = max(tree[2 * i], tree[2 * i + 1])
            if tree[i] == best:  # ancestors are unchanged too
                break
            tree[i] = best
            i >>= 1

    def add(self, capacity: int) -> None:
        """Mark `capacity` as available."""
        self._set(capacity, capacity)

    def remove(self, capacity: int) -> None:
        """Mark `capacity` as no longer available."""
        self._set(capacity, 0)

    def search(self, length: int) -> int:
        """The smallest available capacity `>= length`, or `0` if there is none."""
        tree = self._tree
        if tree[1] < length:
            return 0
        i = 1
        while i < self._leaves:
            i = 2 * i if tree[2 * i] >= length else 2 * i + 1
        return tree[i]


def _best_fit_decreasing(lengths: list[int], seq_length: int) -> list[list[int]]:
    """Assign items of the given lengths (each `1..seq_length`) to bins of capacity `seq_length`.

    Items are placed longest first (ties in input order) into the open bin with the least free space that still fits
    them, or into a new bin. Returns the bins in creation order, each as the list of its item indices in placement
    order.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: equal lengths keep input order
    tree = _SegmentTree(seq_length)
    tree.add(seq_length)  # a fresh bin is always available; open bins never have `seq_length` free slots
    bins_by_space: dict[int, deque[int]] = defaultdict(deque)
    bins: list[list[int]] = []
    for idx in order:
        length = lengths[idx]
        space = tree.search(length)
        if space == seq_length:
            bin_id = len(bins)
            bins.append([])
        else:
            bin_id = bins_by_space[space].popleft()
            if not bins_by_space[space]:
                tree.remove(space)
        bins[bin_id].append(idx)
        space -= length
        if space > 0:
            if not bins_by_space[space]:
                tree.add(space)
            bins_by_space[space].append(bin_id)
    return bins


def _is_list_type(type_: pa.DataType) -> bool:
    import pyarrow as pa

    return pa.types.is_list(type_) or pa.types.is_large_list(type_) or pa.types.is_fixed_size_list(type_)


def _exclusive_cumsum(values: np.ndarray) -> np.ndarray:
    import numpy as np

    out = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(values, out=out[1:])
    return out


def _list_columns(table: pa.Table) -> tuple[list[str], dict[str, pa.Array], np.ndarray]:
    """The list columns of `table` (combined into single arrays) and their shared per-row lengths."""
    import numpy as np
    import pyarrow.compute as pc

    names = [name for name, column in zip(table.column_names, table.columns) if _is_list_type(column.type)]
    if not names:
        raise ValueError(
            f"pack_dataset needs at least one list column (e.g. 'input_ids') to pack; got columns "
            f"{dict(zip(table.column_names, map(str, table.schema.types)))}."
        )
    columns = {name: table[name].combine_chunks() for name in names}
    lengths = None
    for name in names:
        column_lengths = pc.list_value_length(columns[name]).fill_null(0).to_numpy(zero_copy_only=False)
        column_lengths = column_lengths.astype(np.int64)
        if lengths is None:
            lengths = column_lengths
        elif not np.array_equal(lengths, column_lengths):
            row = int(np.flatnonzero(lengths != column_lengths)[0])
            raise ValueError(
                f"pack_dataset packs all list columns with the same offsets, so they must have equal lengths in every "
                f"row; in row {row} of the batch, {names[0]!r} has {lengths[row]} elements but {name!r} has "
                f"{column_lengths[row]}."
            )
    return names, columns, lengths


def _packed_list(column: pa.Array, values: pa.Array, offsets: np.ndarray) -> pa.Array:
    import numpy as np
    import pyarrow as pa

    if pa.types.is_large_list(column.type):
        return pa.LargeListArray.from_arrays(pa.array(offsets, type=pa.int64()), values, type=column.type)
    if pa.types.is_list(column.type):
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32), type=pa.int32()), values, type=column.type)
    # fixed-size lists become variable-size lists, since packed rows have varying lengths
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32), type=pa.int32()), values)


def _pack_wrapped(examples: pa.Table, seq_length: int) -> pa.Table:
    """Concatenate all list columns of the batch and cut them into rows of `seq_length` (the last may be shorter)."""
    import numpy as np
    import pyarrow as pa

    names, columns, lengths = _list_columns(examples)
    total = int(lengths.sum())
    offsets = np.append(np.arange(0, total, seq_length, dtype=np.int64), total)
    if total == 0:
        offsets = np.zeros(1, dtype=np.int64)
    packed = {name: _packed_list(columns[name], columns[name].flatten(), offsets) for name in names}
    return pa.table(packed)


def _segments(lengths: np.ndarray, seq_length: int, split: bool) -> tuple[np.ndarray, np.ndarray]:
    """Start (in the flat values) and length of every document to pack; empty rows yield no document.

    With `split`, rows longer than `seq_length` give several documents of at most `seq_length` tokens; otherwise they
    are truncated to their first `seq_length` tokens.
    """
    import numpy as np

    row_starts = _exclusive_cumsum(lengths)[:-1]
    keep = lengths > 0
    row_starts, lengths = row_starts[keep], lengths[keep]
    if not split:
        return row_starts, np.minimum(lengths, seq_length)
    num_chunks = -(-lengths // seq_length)  # ceil division
    chunk_row = np.repeat(np.arange(len(lengths)), num_chunks)
    chunk_idx = np.arange(len(chunk_row)) - np.repeat(_exclusive_cumsum(num_chunks)[:-1], num_chunks)
    starts = row_starts[chunk_row] + chunk_idx * seq_length
    chunk_lengths = np.minimum(lengths[chunk_row] - chunk_idx * seq_length, seq_length)
    return starts, chunk_lengths


def _pack_bfd(examples: pa.Table, seq_length: int, split: bool = False) -> pa.Table:
    """Best-fit-decreasing packing of the batch's documents; adds `seq_lengths` (document lengths per packed row)."""
    import numpy as np
    import pyarrow as pa

    names, columns, lengths = _list_columns(examples)
    starts, doc_lengths = _segments(lengths, seq_length, split)
    bins = _best_fit_decreasing(doc_lengths.tolist(), seq_length)
    order = np.fromiter((idx for bin_ in bins for idx in bin_), dtype=np.int64, count=len(doc_lengths))
    starts, doc_lengths = starts[order], doc_lengths[order]

    # Token positions in the flat values, document after document: start of each document, then +0, +1, ...
    doc_offsets = _exclusive_cumsum(doc_lengths)
    indices = np.repeat(starts - doc_offsets[:-1], doc_lengths) + np.arange(doc_offsets[-1], dtype=np.int64)
    docs_per_bin = _exclusive_cumsum(np.fromiter((len(bin_) for bin_ in bins), dtype=np.int64, count=len(bins)))
    row_offsets = doc_offsets[docs_per_bin]

    indices = pa.array(indices, type=pa.int64())
    packed = {name: _packed_list(columns[name], columns[name].flatten().take(indices), row_offsets) for name in names}
    packed["seq_lengths"] = pa.ListArray.from_arrays(
        pa.array(docs_per_bin.astype(np.int32), type=pa.int32()), pa.array(doc_lengths, type=pa.int32())
    )
    return pa.table(packed)


def _check_not_packed(column_names: list[str]) -> None:
    if "seq_lengths" in column_names:
        raise ValueError(
            f"The dataset already has a 'seq_lengths' column (columns: {column_names}); it looks packed already. "
            "Pack the unpacked dataset, or remove the column first."
        )


def _pack_batch(examples: pa.Table, seq_length: int, strategy: str) -> pa.Table:
    _check_not_packed(examples.column_names)
    if strategy == "wrapped":
        return _pack_wrapped(examples, seq_length)
    return _pack_bfd(examples, seq_length, split=strategy == "bfd_split")


def _get_dataset_format(dataset: Any) -> str | None:
    """The format type (`"torch"`, `"arrow"`, ...) of a `Dataset` or `IterableDataset`; `None` for Python objects."""
    fmt = getattr(dataset, "format", None)
    if isinstance(fmt, dict):  # Dataset
        return fmt.get("type")
    formatting = getattr(dataset, "_formatting", None)  # IterableDataset keeps its format here
    return getattr(formatting, "format_type", None)


def _restore_format(packed: Any, original: Any) -> Any:
    from datasets import Dataset

    if isinstance(original, Dataset):
        fmt = original.format
        columns = fmt.get("columns")
        if columns is not None and set(columns) != set(original.column_names):  # a column subset was selected
            new_columns = [name for name in packed.column_names if name not in original.column_names]  # seq_lengths
            columns = [name for name in columns if name in packed.column_names] + new_columns
        else:
            columns = None
        output_all_columns = fmt.get("output_all_columns", False)
        return packed.with_format(
            fmt["type"], columns=columns, output_all_columns=output_all_columns, **fmt["format_kwargs"]
        )
    return packed.with_format(_get_dataset_format(original))


def pack_dataset(
    dataset: DatasetType,
    seq_length: int,
    strategy: PackingStrategy = "bfd",
    map_kwargs: dict[str, Any] | None = None,
) -> DatasetType:
    r"""
    Pack the token-list columns of a dataset into rows of at most `seq_length` tokens.

    Every list column (e.g. `input_ids`, `completion_mask`, `assistant_masks`) is packed with the same offsets, so
    their elements stay aligned; they must have equal lengths in every row. Empty sequences are dropped. Non-list
    columns (e.g. strings or scalar labels) cannot be split or merged and are **dropped** from the result. Packing is
    done per `map` batch (`map_kwargs["batch_size"]`, 1000 by default): sequences from different batches never share a
    packed row. The dataset's format (e.g. `"torch"`) is restored on the result.

    Strategies:

    - `"bfd"` (Best-Fit-Decreasing): sequences are placed longest first into the packed row with the least free
      space that still fits them (found with a segment tree in O(log seq_length)). Sequences longer than `seq_length`
      are **truncated** to their first `seq_length` tokens. Adds a `seq_lengths` column holding the length of every
      document in the packed row, from which `position_ids` can be rebuilt.
    - `"bfd_split"`: like `"bfd"`, but sequences longer than `seq_length` are first split into chunks of at most
      `seq_length` tokens, so no token is lost. Each chunk counts as a separate document in `seq_lengths`.
      `"bfd-requeue"` is a deprecated alias.
    - `"wrapped"`: all sequences are concatenated and cut into rows of exactly `seq_length` tokens (the last row of
      each batch may be shorter), ignoring document boundaries. No `seq_lengths` column.

    Args:
        dataset (`Dataset`, `DatasetDict`, `IterableDataset` or `IterableDatasetDict`):
            A tokenized dataset with at least one list column.
        seq_length (`int`):
            Maximum number of tokens in a packed row.
        strategy (`str`, *optional*, defaults to `"bfd"`):
            One of `"bfd"`, `"bfd_split"` or `"wrapped"`.
        map_kwargs (`dict[str, Any]`, *optional*):
            Extra arguments for `dataset.map`, e.g. `batch_size`, `num_proc` or `desc`. Arguments an
            `IterableDataset` does not accept (such as `num_proc`) are ignored with a warning.

    Returns:
        The packed dataset, of the same type and format as `dataset`.

    Raises:
        `ValueError`: If `strategy` is unknown, `seq_length` is not a positive integer, the dataset has no list column
            or already has a `seq_lengths` column, `map_kwargs` sets an argument that packing controls, or two list
            columns differ in length in some row.

    Example:

    ```python
    >>> from datasets import Dataset
    >>> from trl.data_utils import pack_dataset
    >>> dataset = Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5], [6], [7, 8, 9, 10]]})
    >>> pack_dataset(dataset, seq_length=4).to_dict()
    {'input_ids': [[7, 8, 9, 10], [1, 2, 3, 6], [4, 5]], 'seq_lengths': [[4], [3, 1], [2]]}
    >>> pack_dataset(dataset, seq_length=4, strategy="wrapped").to_dict()
    {'input_ids': [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]}
    ```
    """
    from datasets import Dataset, DatasetDict, IterableDatasetDict

    if isinstance(seq_length, bool) or not isinstance(seq_length, int) or seq_length < 1:
        raise ValueError(f"`seq_length` must be a positive integer; got {seq_length!r}.")
    if strategy in _DEPRECATED_STRATEGIES:
        new = _DEPRECATED_STRATEGIES[strategy]
        warnings.warn(
            f"The packing strategy {strategy!r} is deprecated; use {new!r} instead.", FutureWarning, stacklevel=2
        )
        strategy = new
    if strategy not in _STRATEGIES:
        raise ValueError(f"Unknown packing strategy {strategy!r}; expected one of {list(_STRATEGIES)}.")
    map_kwargs = dict(map_kwargs or {})
    reserved = [key for key in _RESERVED_MAP_KWARGS if key in map_kwargs]
    if reserved:
        raise ValueError(f"pack_dataset sets {reserved} itself; remove them from `map_kwargs`.")

    if isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        return type(dataset)(
            {split: pack_dataset(ds, seq_length, strategy, map_kwargs) for split, ds in dataset.items()}
        )

    column_names = dataset.column_names  # None for an IterableDataset with unresolved features
    if column_names is not None:
        _check_not_packed(column_names)
    if isinstance(dataset, Dataset):
        # Dataset.map merges the output with the input columns that are not removed
        map_kwargs["remove_columns"] = list(column_names)
    else:
        # IterableDataset.map on Arrow batches keeps only the function's output table; there `remove_columns` would
        # delete the packed columns of the same name.
        accepted = inspect.signature(type(dataset).map).parameters
        ignored = [key for key in map_kwargs if key not in accepted]
        if ignored:
            warnings.warn(
                f"pack_dataset ignores map_kwargs {ignored}: {type(dataset).__name__}.map does not accept them.",
                stacklevel=2,
            )
            map_kwargs = {key: value for key, value in map_kwargs.items() if key in accepted}

    packed = dataset.with_format("arrow").map(
        _pack_batch,
        batched=True,
        fn_kwargs={"seq_length": seq_length, "strategy": strategy},
        **map_kwargs,
    )
    return _restore_format(packed, dataset)
