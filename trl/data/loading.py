"""Loading the data a training script names: a hub id, a local file (json/jsonl/parquet/csv/arrow/txt) or folder, or
a mixture of several (`DatasetMixtureConfig`, `get_dataset`)."""

from __future__ import annotations

import dataclasses
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict


logger = logging.getLogger(__name__)

# File extension -> `datasets` packaged builder, for `dataset_name`/`path` values that point at a local file.
_FILE_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".arrow": "arrow",
    ".txt": "text",
}
# `datasets`' builders that read data files (a `path` of the mixture may name one, with `data_files`).
_PACKAGED_BUILDERS = {"json", "parquet", "csv", "arrow", "text", "pandas", "xml", "webdataset", "imagefolder",
                      "audiofolder"}


def _is_saved_to_disk(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


@contextmanager
def _no_download_count():
    """Keep `datasets` from sending its download-count request during a load.

    `datasets.load_dataset` sends a HEAD request to a counter on the Hub's storage (`increase_load_count`) for every
    packaged builder (`json`, `csv`, ...) and Hub dataset it loads, even for local files, unless offline. The library
    promises no telemetry, so the flag behind it is off for the loads made here, and put back afterwards so that the
    user's own `load_dataset` calls are untouched. Setting `HF_UPDATE_DOWNLOAD_COUNTS=1` keeps the counter on.
    """
    from datasets import config

    if os.environ.get("HF_UPDATE_DOWNLOAD_COUNTS", "").upper() in {"1", "ON", "YES", "TRUE"}:
        yield
        return
    before = getattr(config, "HF_UPDATE_DOWNLOAD_COUNTS", None)
    config.HF_UPDATE_DOWNLOAD_COUNTS = False
    try:
        yield
    finally:
        config.HF_UPDATE_DOWNLOAD_COUNTS = before


def _check_builder_data_files(data_files: Any, data_dir: str | None) -> None:
    """Local `data_files` of a packaged builder (`path="json"`, ...) that do not exist: name them, with no Hub lookup."""
    from trl.models.loading import check_local_path

    if isinstance(data_files, dict):
        data_files = list(data_files.values())
    for data_file in data_files if isinstance(data_files, (list, tuple)) else [data_files]:
        if isinstance(data_file, (list, tuple)):
            _check_builder_data_files(list(data_file), data_dir)
        elif isinstance(data_file, (str, os.PathLike)) and not any(c in str(data_file) for c in "*?[") and (
            "://" not in str(data_file)
        ):
            path = Path(data_dir or "").expanduser() / Path(data_file).expanduser()
            check_local_path(path, "Data file", _DATA_EXTENSIONS)


_DATA_EXTENSIONS = tuple(_FILE_BUILDERS)


def load_dataset_from_name(
    name: str,
    config: str | None = None,
    split: str | None = None,
    streaming: bool = False,
    **kwargs: Any,
) -> Dataset | DatasetDict | IterableDataset | IterableDatasetDict:
    """Load a dataset given as a Hub id, a local data file or a local folder.

    - A file with a known extension is read by the matching builder (`json`, `parquet`, `csv`, `arrow`, `text`); its
      rows form the `"train"` split.
    - A folder written by `save_to_disk` is read with `load_from_disk`.
    - Anything else (a Hub id, a folder of data files, a dataset script) goes to `load_dataset(name, config)`.

    `datasets`' download-count request is not sent (the library sends no telemetry; `HF_UPDATE_DOWNLOAD_COUNTS=1`
    turns it back on).

    Args:
        name (`str`): Hub id, file path or folder.
        config (`str`, *optional*): configuration (subset) name; ignored for local files.
        split (`str`, *optional*): return only this split (a `Dataset`) instead of the `DatasetDict`.
        streaming (`bool`, *optional*, defaults to `False`): return iterable datasets.
        **kwargs: passed to `datasets.load_dataset` (e.g. `data_dir`, `data_files`).

    Raises:
        `FileNotFoundError`: `name` can only be a local path (it starts with `/`, `./`, `../` or `~`, holds a
            backslash or more than one `/`, or ends with a data-file extension) and does not exist; or a local
            data file of a builder (`name="json"`, `data_files=...`) does not exist. Nothing is looked up on the Hub.
        `ConnectionError`, `FileNotFoundError`: a possible Hub id that is not a local path either, and that the Hub
            does not have (or cannot be reached); the message says both.

    Example:
        ```python
        >>> dataset = load_dataset_from_name("data/train.jsonl")
        >>> dataset["train"].column_names
        ['messages']
        ```
    """
    import datasets

    from trl.models.loading import check_local_path, explain_hub_failure

    path = Path(name).expanduser()
    if path.is_file() and path.suffix.lower() in _FILE_BUILDERS:
        kwargs["data_files"] = str(path)
        with _no_download_count():
            return datasets.load_dataset(
                _FILE_BUILDERS[path.suffix.lower()], split=split, streaming=streaming, **kwargs
            )
    if path.is_dir() and _is_saved_to_disk(path):
        dataset = datasets.load_from_disk(str(path))
        if split is not None:
            if isinstance(dataset, datasets.DatasetDict):
                if split not in dataset:
                    raise ValueError(f"{name!r} has no split {split!r}; it has {list(dataset)}.")
                dataset = dataset[split]
            elif split != "train":  # a single saved `Dataset` plays the part of the train split
                raise ValueError(f"{name!r} holds a single dataset (used as 'train'); got split {split!r}.")
        elif isinstance(dataset, datasets.Dataset):
            dataset = datasets.DatasetDict({"train": dataset})
        if streaming:
            if isinstance(dataset, datasets.DatasetDict):
                return datasets.IterableDatasetDict({k: v.to_iterable_dataset() for k, v in dataset.items()})
            return dataset.to_iterable_dataset()
        return dataset
    check_local_path(name, "Dataset", _DATA_EXTENSIONS)
    if name in _PACKAGED_BUILDERS and kwargs.get("data_files") is not None:
        _check_builder_data_files(kwargs["data_files"], kwargs.get("data_dir"))
    with _no_download_count(), explain_hub_failure(name, "Dataset", "file or folder"):
        return datasets.load_dataset(name, config, split=split, streaming=streaming, **kwargs)


@dataclass
class DatasetConfig:
    r"""
    One dataset of a [`DatasetMixtureConfig`].

    Parameters:
        path (`str`):
            Hub id, builder name (`"json"`, `"parquet"`, ...), local data file or local folder.
        name (`str`, *optional*):
            Configuration (subset) name.
        data_dir (`str`, *optional*):
            Folder inside the dataset to read.
        data_files (`str`, `list[str]` or `dict[str, str]`, *optional*):
            Data files to read, e.g. with `path="json"`.
        split (`str`, *optional*, defaults to `"train"`):
            Split to take.
        columns (`list[str]`, *optional*):
            Columns to keep; all columns when `None`.
        fraction (`float`, *optional*):
            Relative weight of this dataset in the mixture (see [`get_dataset`]). Set on every dataset or on none.

    Example:
        ```python
        >>> DatasetConfig(path="json", data_files="train.jsonl", columns=["messages"], fraction=0.7)
        ```
    """

    path: str
    name: str | None = None
    data_dir: str | None = None
    data_files: str | list[str] | dict[str, str] | None = None
    split: str = "train"
    columns: list[str] | None = None
    fraction: float | None = None

    def __post_init__(self):
        if isinstance(self.columns, str):
            self.columns = [self.columns]
        if self.fraction is not None:
            self.fraction = float(self.fraction)
            if self.fraction <= 0:
                raise ValueError(f"`fraction` must be positive; got {self.fraction} for dataset {self.path!r}.")


@dataclass
class DatasetMixtureConfig:
    r"""
    A mixture of datasets, loaded and concatenated by [`get_dataset`]. Usually written in the YAML config:

    ```yaml
    datasets:
      - path: trl-lib/Capybara
        columns: [messages]
        fraction: 0.7
      - path: data/extra.jsonl
        fraction: 0.3
    test_split_size: 0.05
    ```

    Parameters:
        datasets (`list[DatasetConfig]`, *optional*, defaults to `[]`):
            The datasets (dicts are turned into [`DatasetConfig`]). On the command line, a list of paths.
        streaming (`bool`, *optional*, defaults to `False`):
            Load every dataset as an `IterableDataset`. Incompatible with `fraction` and `test_split_size`.
        test_split_size (`float`, *optional*):
            Hold out this fraction (or, when >= 1, this number of rows) of the mixture as the `"test"` split.

    Example:
        ```python
        >>> from trl import DatasetMixtureConfig, get_dataset
        >>> mixture = DatasetMixtureConfig(datasets=[{"path": "a.jsonl"}, {"path": "b.jsonl"}], test_split_size=0.1)
        >>> get_dataset(mixture)
        ```
    """

    datasets: list[DatasetConfig] = field(
        default_factory=list,
        metadata={"help": "Datasets to mix: in YAML a list of dicts (path, name, data_dir, data_files, split, "
                  "columns, fraction); on the command line a list of paths."},
    )
    streaming: bool = field(default=False, metadata={"help": "Load the mixture's datasets as iterable datasets."})
    test_split_size: float | None = field(
        default=None, metadata={"help": "Hold out this fraction (or number of rows, if >= 1) as the test split."}
    )

    def __post_init__(self):
        converted = []
        for index, entry in enumerate(self.datasets or []):
            if isinstance(entry, dict):
                known = {f.name for f in dataclasses.fields(DatasetConfig)}
                unknown = sorted(set(entry) - known)
                if unknown or "path" not in entry:
                    raise ValueError(
                        f"Dataset #{index} of the mixture must have a 'path' and only the keys {sorted(known)}; "
                        f"got {sorted(entry)}."
                    )
                entry = DatasetConfig(**entry)
            elif isinstance(entry, str):
                entry = DatasetConfig(path=entry)
            elif not isinstance(entry, DatasetConfig):
                raise TypeError(f"Dataset #{index} of the mixture must be a dict or a DatasetConfig; got {entry!r}.")
            converted.append(entry)
        self.datasets = converted

        with_fraction = [entry.fraction is not None for entry in self.datasets]
        if any(with_fraction) and not all(with_fraction):
            raise ValueError(
                "`fraction` must be set on every dataset of the mixture or on none; got "
                f"{[entry.fraction for entry in self.datasets]}."
            )
        if self.streaming and any(with_fraction):
            raise ValueError("`fraction` is not supported with `streaming=True`; remove the fractions or streaming.")
        if self.test_split_size is not None:
            if self.streaming:
                raise ValueError("`test_split_size` is not supported with `streaming=True`.")
            if self.test_split_size <= 0:
                raise ValueError(f"`test_split_size` must be positive; got {self.test_split_size}.")
            if self.test_split_size >= 1:
                if self.test_split_size != int(self.test_split_size):
                    raise ValueError(
                        f"`test_split_size` must be a fraction in (0, 1) or a whole number of rows; "
                        f"got {self.test_split_size}."
                    )
                self.test_split_size = int(self.test_split_size)


def _load_mixture_entry(entry: DatasetConfig, streaming: bool):
    kwargs = {
        key: value
        for key, value in (("data_dir", entry.data_dir), ("data_files", entry.data_files))
        if value is not None
    }
    dataset = load_dataset_from_name(entry.path, entry.name, split=entry.split, streaming=streaming, **kwargs)
    if entry.columns is not None:
        missing = [column for column in entry.columns if column not in (dataset.column_names or entry.columns)]
        if missing:
            raise ValueError(
                f"Dataset {entry.path!r} has no column(s) {missing}; its columns are {dataset.column_names}."
            )
        dataset = dataset.select_columns(entry.columns)
    return dataset


def _mixture_sizes(lengths: list[int], fractions: list[float]) -> list[int]:
    # Normalise the weights, then take the largest mixture size N for which no dataset has to give more rows than it
    # has (w_i * N <= len_i for every i). Each dataset contributes its first round(w_i * N) rows.
    total = sum(fractions)
    weights = [fraction / total for fraction in fractions]
    size = min(length / weight for length, weight in zip(lengths, weights))
    return [min(length, round(weight * size)) for length, weight in zip(lengths, weights)]


def get_dataset(mixture_config: DatasetMixtureConfig) -> DatasetDict | IterableDatasetDict:
    """Load, trim and concatenate the datasets of a mixture.

    Each dataset is loaded (Hub id, builder with `data_files`, local file or folder), reduced to its `columns`, and
    the datasets are concatenated in order. With `fraction`s, the weights are normalised and the mixture is as large
    as possible without repeating rows: dataset `i` contributes its first `round(w_i * N)` rows. With
    `test_split_size`, the mixture is split by `train_test_split` (seed 0, so reruns get the same split).

    Args:
        mixture_config ([`DatasetMixtureConfig`]): the mixture.

    Returns:
        `DatasetDict` (or `IterableDatasetDict` when streaming) with a `"train"` split, plus `"test"` when
        `test_split_size` is set.

    Example:
        ```python
        >>> mixture = DatasetMixtureConfig(datasets=[
        ...     DatasetConfig(path="json", data_files="a.jsonl", fraction=3),
        ...     DatasetConfig(path="json", data_files="b.jsonl", fraction=1),
        ... ])
        >>> get_dataset(mixture)["train"]
        ```
    """
    import datasets

    if not mixture_config.datasets:
        raise ValueError("The dataset mixture is empty; give at least one dataset in `datasets`.")
    loaded = [_load_mixture_entry(entry, mixture_config.streaming) for entry in mixture_config.datasets]
    if mixture_config.datasets[0].fraction is not None:
        sizes = _mixture_sizes([len(dataset) for dataset in loaded], [e.fraction for e in mixture_config.datasets])
        loaded = [dataset.select(range(size)) for dataset, size in zip(loaded, sizes)]
        logger.info("Dataset mixture sizes: %s", dict(zip([e.path for e in mixture_config.datasets], sizes)))
    combined = loaded[0] if len(loaded) == 1 else datasets.concatenate_datasets(loaded)

    if mixture_config.test_split_size is not None:
        return combined.train_test_split(test_size=mixture_config.test_split_size, seed=0)
    if mixture_config.streaming:
        return datasets.IterableDatasetDict({"train": combined})
    return datasets.DatasetDict({"train": combined})
