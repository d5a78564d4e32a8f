"""Shared parts of the `trl` training scripts: script arguments, dataset mixtures and the YAML-aware parser."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from transformers import HfArgumentParser

# the resolver of reward names lives with the reward functions, so that the trainers resolve `reward_funcs` strings the
# same way; it stays importable from here
from .._dotted import import_dotted
from ..rewards._resolve import resolve_reward_funcs

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


@dataclass
class ScriptArguments:
    r"""
    Which dataset a `trl` training script trains on.

    Parameters:
        dataset_name (`str`, *optional*):
            Hub id of the dataset, a local data file (`.json`, `.jsonl`, `.parquet`, `.csv`, `.arrow`, `.txt`), a
            folder written by `Dataset.save_to_disk`, or a folder of data files. Ignored when `--datasets` (a mixture) is set.
        dataset_config (`str`, *optional*):
            Configuration (subset) name of the dataset.
        dataset_train_split (`str`, *optional*, defaults to `"train"`):
            Split to train on.
        dataset_test_split (`str`, *optional*, defaults to `"test"`):
            Split to evaluate on (used when `eval_strategy` is not `"no"`).
        dataset_streaming (`bool`, *optional*, defaults to `False`):
            Stream the dataset instead of downloading it whole (needs `max_steps`).
        ignore_bias_buffers (`bool`, *optional*, defaults to `False`):
            Make DDP ignore boolean buffers (e.g. attention-bias masks) that it cannot broadcast.

    Example:
        ```python
        >>> from trl import ScriptArguments
        >>> ScriptArguments(dataset_name="trl-lib/Capybara").dataset_train_split
        'train'
        ```
    """

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub id, local data file (.json/.jsonl/.parquet/.csv/.arrow) or folder of the dataset."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration (subset) name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(default="test", metadata={"help": "Split to evaluate on."})
    dataset_streaming: bool = field(default=False, metadata={"help": "Stream the dataset (needs max_steps)."})
    ignore_bias_buffers: bool = field(
        default=False, metadata={"help": "Make DDP ignore boolean buffers it cannot broadcast."}
    )


@dataclass
class OnlineScriptArguments(ScriptArguments):
    r"""
    [`ScriptArguments`] of the online commands (`trl grpo`, `trl rloo`): the dataset, and what scores the completions.

    Parameters:
        reward_funcs (`list[str]`, *optional*):
            Reward functions, each one of (see [`resolve_reward_funcs`]):
            - the name of a function of `trl.rewards`, e.g. `think_format_reward`;
            - a dotted path `package.module.function`, imported from the current directory or the installed packages;
            - a Hub id or local folder of a sequence-classification reward model.
        reward_model_name_or_path (`str`, *optional*):
            Hub id or local folder of a sequence-classification reward model, scored before `reward_funcs`.

    Example:
        ```python
        >>> from trl.scripts.utils import OnlineScriptArguments
        >>> OnlineScriptArguments(dataset_name="trl-lib/DeepMath-103K", reward_funcs=["accuracy_reward"]).reward_funcs
        ['accuracy_reward']
        ```
    """

    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "Reward functions: names of trl.rewards functions (e.g. think_format_reward), dotted paths "
                          "`module.function` (the current directory is importable), or reward-model ids/folders."},
    )
    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub id or local folder of a sequence-classification reward model."}
    )


def import_callable(path: str, where: str) -> Any:
    """Import the callable a command-line flag names as a dotted path `package.module.attribute` (a function or a
    class), with the current directory importable (as for `python my_script.py`), so that a `my_tools.py` next to you
    is found as `my_tools.fn`.

    Args:
        path (`str`): the dotted path, e.g. `"my_tools.multiply"`.
        where (`str`): the flag and position, for messages, e.g. `"--tools[1]"`.

    Raises:
        `ValueError`: `path` is not a dotted path, or its module or attribute does not exist.
        `TypeError`: it names something that is not callable.

    Example:
        ```python
        >>> import_callable("math.floor", "--tools[0]")
        <built-in function floor>
        ```
    """
    if "." not in path or not all(part.isidentifier() for part in path.split(".")):
        raise ValueError(f"{where} is {path!r}: expected a dotted path `module.name` (e.g. `my_tools.multiply` for a "
                         "function `multiply` in my_tools.py in the current directory).")
    value = import_dotted(path, f"{where} is {path!r}")
    if not callable(value):
        raise TypeError(f"{where} is {path!r}: a {type(value).__name__}, not a function or class.")
    return value


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


class TrlParser(HfArgumentParser):
    """`transformers.HfArgumentParser` that also reads a YAML config file.

    - `--config file.yaml`: each key is a dataclass field and becomes that argument's default, so the command line
      still overrides it. Values are the field's values as YAML types (lists and dicts included).
    - A top-level `env:` mapping is exported to `os.environ` before parsing.
    - Keys that match no argument raise a `ValueError`, unless they are requested back as remaining strings.
    - Subparsers (created with `add_subparsers(parser_class=TrlParser)`) receive the config defaults too.

    Args:
        dataclass_types (`DataClassType` or `Iterable[DataClassType]`, *optional*):
            Dataclasses whose fields become arguments. A field named `config` is not allowed (it is the flag).
        **kwargs: passed to `argparse.ArgumentParser`.

    Example:
        ```python
        >>> from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser
        >>> parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig))
        >>> script_args, training_args, model_args = parser.parse_args_and_config(
        ...     ["--config", "sft.yaml", "--learning_rate", "1e-5"]
        ... )
        ```
    """

    def __init__(self, dataclass_types=None, **kwargs):
        if dataclass_types is None:
            dataclass_types = []
        elif dataclasses.is_dataclass(dataclass_types) or not isinstance(dataclass_types, Iterable):
            dataclass_types = [dataclass_types]
        for dataclass_type in dataclass_types:
            if "config" in {f.name for f in dataclasses.fields(dataclass_type)}:
                raise ValueError(
                    f"{dataclass_type.__name__} has a field named 'config', which TrlParser reserves for the "
                    "`--config` YAML file flag; rename the field."
                )
        # No prefix matching: an abbreviation could silently capture an option meant for `accelerate launch`.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(dataclass_types, **kwargs)
        self.add_argument(
            "--config", type=str, default=None, help="YAML file whose keys set the defaults of these arguments."
        )
        self._add_negative_flags(dataclass_types)

    def _add_negative_flags(self, dataclass_types) -> None:
        """`--no_<field>` for the `bool | None` fields whose `None` default means "on" (e.g. `gradient_checkpointing`):
        HfArgumentParser adds it only for fields whose default is `True`, as the reference's are."""
        for dataclass_type in dataclass_types:
            for f in dataclasses.fields(dataclass_type):
                if not f.init or f.default is not None or f.metadata.get("const") is not True:
                    continue
                flag = f"--no_{f.name}"
                if flag not in self._option_string_actions and f"--{f.name}" in self._option_string_actions:
                    self.add_argument(flag, action="store_false", dest=f.name, default=argparse.SUPPRESS,
                                      help=f"Turn `{f.name}` off.")

    def parse_args_and_config(
        self,
        args: Iterable[str] | None = None,
        return_remaining_strings: bool = False,
        fail_with_unknown_args: bool = True,
        separate_remaining_strings: bool = False,
    ) -> tuple:
        """Parse the command line, with defaults from the `--config` YAML file when one is given.

        Args:
            args (`Iterable[str]`, *optional*):
                Arguments to parse; defaults to `sys.argv[1:]`.
            return_remaining_strings (`bool`, *optional*, defaults to `False`):
                Return unknown arguments (config keys as `--key value` strings, then command-line leftovers) as a
                last element instead of failing on them.
            fail_with_unknown_args (`bool`, *optional*, defaults to `True`):
                Without `return_remaining_strings`, raise on unknown arguments; when `False` they are dropped with a
                warning.
            separate_remaining_strings (`bool`, *optional*, defaults to `False`):
                With `return_remaining_strings`, return config leftovers and command-line leftovers as two lists.

        Returns:
            `tuple`: one instance per dataclass, a `Namespace` of any extra (non-dataclass) arguments added to the
            parser, then the remaining strings if requested.

        Example:
            ```python
            >>> (training_args,) = TrlParser(SFTConfig).parse_args_and_config(["--config", "sft.yaml"])
            ```
        """
        args = list(sys.argv[1:] if args is None else args)
        config_path = self._config_path(args)
        config_remaining: list[str] = []
        restore: list[tuple[argparse.Action, Any, bool]] = []
        if config_path is not None:
            config = self._read_config(config_path)
            env = config.pop("env", None) or {}
            if not isinstance(env, dict):
                raise ValueError(f"`env` in {config_path} must be a mapping of variable names to values; got {env!r}.")
            os.environ.update({str(key): str(value) for key, value in env.items()})
            unknown = self._set_config_defaults(config, restore)
            if unknown and not return_remaining_strings and fail_with_unknown_args:
                self._restore(restore)
                raise ValueError(
                    f"Unknown key(s) {unknown} in config file {config_path}; every key must name an argument of "
                    "this command (run with --help to list them)."
                )
            for key in unknown:
                config_remaining += _as_cli_strings(key, config[key])
        try:
            outputs = list(
                self.parse_args_into_dataclasses(args, return_remaining_strings=True, look_for_args_file=False)
            )
        finally:
            self._restore(restore)
        cli_remaining = outputs.pop()
        if outputs and isinstance(outputs[-1], argparse.Namespace):
            namespace = outputs[-1]
            vars(namespace).pop("config", None)
            if not vars(namespace):
                outputs.pop()

        if return_remaining_strings:
            if separate_remaining_strings:
                return (*outputs, config_remaining, cli_remaining)
            return (*outputs, config_remaining + cli_remaining)
        if cli_remaining or config_remaining:
            if fail_with_unknown_args:
                raise ValueError(
                    f"Unknown argument(s): {cli_remaining + config_remaining}. Run with --help to list them."
                )
            warnings.warn(f"Ignoring unknown argument(s): {cli_remaining + config_remaining}.", stacklevel=2)
        return tuple(outputs)

    def set_defaults_with_config(self, **kwargs: Any) -> list[str]:
        """Make `kwargs` the defaults of the matching arguments (in subparsers too).

        Returns:
            `list[str]`: the unknown keys as `--key value` strings.

        Example:
            ```python
            >>> remaining = parser.set_defaults_with_config(learning_rate=1e-5, max_length=512)
            ```
        """
        unknown = self._set_config_defaults(kwargs, [])
        return [string for key in unknown for string in _as_cli_strings(key, kwargs[key])]

    @staticmethod
    def _config_path(args: list[str]) -> str | None:
        pre_parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        pre_parser.add_argument("--config", type=str, default=None)
        known, _ = pre_parser.parse_known_args(args)
        return known.config

    @staticmethod
    def _read_config(path: str) -> dict[str, Any]:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise ValueError(f"Cannot read config file {path!r}: {error}.") from None
        config = yaml.safe_load(text) or {}
        if not isinstance(config, dict):
            raise ValueError(f"Config file {path!r} must hold a mapping of argument names to values; got {config!r}.")
        return config

    def _set_config_defaults(self, config: dict[str, Any], restore: list) -> list[str]:
        """Set the defaults of matching actions, here and in subparsers; return the keys that matched nothing."""
        matched = set()
        for parser in _parsers(self):
            for action in parser._actions:
                if action.dest in config and action.dest != "config":
                    restore.append((action, action.default, action.required))
                    action.default = _convert(action, action.dest, config[action.dest])
                    action.required = False
                    matched.add(action.dest)
        return [key for key in config if key not in matched]

    @staticmethod
    def _restore(restore: list) -> None:
        # The defaults only hold for one parse, so that a parser can be reused with another config file.
        for action, default, required in reversed(restore):
            action.default, action.required = default, required
        restore.clear()


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in dict.fromkeys(action.choices.values()):
                found += _parsers(subparser)
    return found


def _convert(action: argparse.Action, key: str, value: Any) -> Any:
    # argparse converts string defaults with the argument's type, but YAML already yields ints, floats and bools.
    # Convert those too, so that e.g. `dataset_config: 2024` still reaches a `str` field as a string.
    if action.type is None or value is None or isinstance(value, (str, dict)):
        return value
    try:
        if isinstance(value, list):
            return [item if isinstance(item, (str, dict)) else action.type(str(item)) for item in value]
        return action.type(str(value))
    except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
        raise ValueError(f"Config key {key!r}: cannot use {value!r} ({error}).") from None


def _as_cli_strings(key: str, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bool):
        return [f"--{key}"] if value else []
    if isinstance(value, list):
        return [f"--{key}", *(str(item) for item in value)]
    if isinstance(value, dict):
        return [f"--{key}", json.dumps(value)]
    return [f"--{key}", str(value)]


def _launch_option_strings() -> set[str]:
    from accelerate.commands.launch import launch_command_parser

    options = {"--accelerate_config", "--accelerate-config"}
    for action in launch_command_parser()._actions:
        options.update(option for option in action.option_strings if option not in ("-h", "--help"))
    return options


def check_launch_leftovers(strings: list[str]) -> None:
    """Check that arguments a script did not recognise are `accelerate launch` options (or `--accelerate_config`).

    Raises:
        ValueError: naming the options that neither the script nor `accelerate launch` knows.

    Example:
        ```python
        >>> check_launch_leftovers(["--num_processes", "2"])  # fine
        >>> check_launch_leftovers(["--max_lenght", "8"])
        Traceback (most recent call last):
        ValueError: Unknown argument(s) ['--max_lenght'] ...
        ```
    """
    if not strings:
        return
    known = _launch_option_strings()
    unknown = []
    for position, string in enumerate(strings):
        is_option = string.startswith("-") and not _is_number(string)
        if is_option and string.split("=", 1)[0] not in known:
            unknown.append(string)
        elif not is_option and position == 0:  # a value with no option before it
            unknown.append(string)
    if unknown:
        raise ValueError(
            f"Unknown argument(s) {unknown}: they are neither options of this command nor of `accelerate launch`. "
            "Run with --help to list the options."
        )


def _is_number(string: str) -> bool:
    try:
        float(string)
    except ValueError:
        return False
    return True


def init_zero_verbose() -> None:
    """Show only errors: set the Python, transformers and datasets loggers to ERROR and route warnings to logging.

    Handy in scripts whose output is read by other programs.

    Example:
        ```python
        >>> from trl import init_zero_verbose
        >>> init_zero_verbose()
        ```
    """
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    logging.captureWarnings(True)  # warnings become WARNING log records, which the ERROR level hides
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
    except ImportError:
        pass
    try:
        import datasets

        datasets.utils.logging.set_verbosity_error()
    except ImportError:
        pass


def finish_training(trainer, training_args, dataset_name: str | None = None) -> None:
    """Save, optionally push, and close a run (see [`close_processes`])."""
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=dataset_name)
    close_processes(trainer)


# Process groups kept alive by `close_processes` until the script leaves with `os._exit` (see there).
_RELEASED_GROUPS: list = []


def close_processes(trainer) -> None:
    """Under several processes, leave together and release the process group.

    The group itself is kept alive, and [`run_script`] then ends the process with `os._exit`. Freeing a gloo group
    joins its worker threads while holding the GIL, and a worker may still be finishing a collective whose tensors
    need the GIL to be freed. That deadlocks: seen with py-spy in 2-process `trl sft` runs under CPU load, about 1
    in 10, where DDP's reducer released the group when `main` returned. At interpreter exit the same race aborts
    instead ("terminate called without an active exception").
    """
    import torch

    trainer.accelerator.wait_for_everyone()
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed:
        _RELEASED_GROUPS.append(torch.distributed.group.WORLD)
    if hasattr(trainer, "end"):  # transformers>=5.18: closes trackers, destroys the process group
        trainer.end()
    if distributed:
        trainer.accelerator.free_memory()
        trainer.model_wrapped = trainer.model
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _leave_after_distributed_run() -> None:
    """End a process whose group [`close_processes`] released: run the exit handlers (trackers such as wandb finish
    their run there, logging flushes), flush the streams, then `os._exit(0)`, so that no gloo group is freed (see
    there). Does nothing in a single-process run."""
    if not _RELEASED_GROUPS:
        return
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ---- what every training script does: data, model options, the `__main__` entry ----------------------------------


def load_script_dataset(
    script_args: ScriptArguments, dataset_args: DatasetMixtureConfig | None = None
) -> DatasetDict | IterableDatasetDict:
    """Load the data of a training script: the mixture when `datasets` is set, else `dataset_name`.

    Args:
        script_args ([`ScriptArguments`]): `dataset_name`, `dataset_config`, `dataset_streaming`.
        dataset_args ([`DatasetMixtureConfig`], *optional*): a mixture; it wins over `dataset_name` (with a warning).

    Raises:
        `ValueError`: neither a mixture nor `dataset_name` is given.

    Example:
        ```python
        >>> dataset = load_script_dataset(ScriptArguments(dataset_name="data/train.jsonl"), DatasetMixtureConfig())
        >>> dataset["train"]
        ```
    """
    if dataset_args is not None and dataset_args.datasets:
        if script_args.dataset_name is not None:
            warnings.warn(
                f"Both `datasets` (a mixture) and `dataset_name` ({script_args.dataset_name!r}) are set; training on "
                "the mixture and ignoring `dataset_name`.",
                stacklevel=2,
            )
        return get_dataset(dataset_args)
    if script_args.dataset_name is None:
        raise ValueError("No training data: pass `--dataset_name` (hub id, file or folder) or a `datasets` mixture.")
    return load_dataset_from_name(
        script_args.dataset_name, script_args.dataset_config, streaming=script_args.dataset_streaming
    )


def _split(dataset, name: str, what: str):
    if name not in dataset:
        raise ValueError(
            f"The dataset has no {what} split {name!r}; its splits are {list(dataset)}. Pick one with "
            f"`--dataset_{what}_split`" + (", or set `--eval_strategy no`." if what == "test" else ".")
        )
    return dataset[name]


def script_trainer_kwargs(
    command: str,
    script_args: ScriptArguments,
    training_args: Any,
    model_args: Any,
    dataset_args: DatasetMixtureConfig | None = None,
    environments_own_data: bool = False,
) -> dict[str, Any]:
    """The keyword arguments of a trainer built by a `trl <command>` script.

    - `training_args.model_init_kwargs` gets `revision`, `attn_implementation` and `dtype` from `model_args`,
      `trust_remote_code` from `training_args`, and a k-bit `device_map` when quantizing; keys the user set in
      `--model_init_kwargs` win.
    - The train split, and the test split unless `eval_strategy` is `"no"`, of [`load_script_dataset`].
    - The quantization and LoRA configs of `model_args` ([`get_quantization_config`], [`get_peft_config`]).
    - For the online commands ([`OnlineScriptArguments`]), `reward_funcs` from [`resolve_reward_funcs`], resolved
      before anything is loaded so that a bad name fails fast.

    Args:
        command (`str`): the command's name (e.g. `"dpo"`), for messages.
        script_args ([`ScriptArguments`]): which dataset and splits.
        training_args (`TrainingArguments`): the trainer's config; its `model_init_kwargs` are filled in.
        model_args ([`ModelConfig`]): model, LoRA and quantization options.
        dataset_args ([`DatasetMixtureConfig`], *optional*): a dataset mixture; overrides `dataset_name` when set.
        environments_own_data (`bool`, *optional*, defaults to `False`): an `environment_factory` is given, which may
            own the data and the reward: without a dataset, `train_dataset` is None, and without a reward,
            `reward_funcs` is None (the trainer checks what the environments provide).

    Returns:
        `dict[str, Any]`: `model`, `args`, `train_dataset`, `eval_dataset`, `quantization_config`, `peft_config`,
        and `reward_funcs` for the online commands.

    Raises:
        `ValueError`: no `model_name_or_path`; no data; a missing split; no reward or a bad reward name.

    Example:
        ```python
        >>> from trl import DPOTrainer
        >>> from trl.scripts.dpo import make_parser
        >>> trainer = DPOTrainer(**script_trainer_kwargs("dpo", *make_parser().parse_args_and_config()))
        ```
    """
    from trl.trainer.model_config import get_kbit_device_map, get_peft_config, get_quantization_config

    if model_args.model_name_or_path is None:
        raise ValueError(f"`trl {command}` needs a model: pass `--model_name_or_path` (hub id or local folder).")
    extra: dict[str, Any] = {}
    if isinstance(script_args, OnlineScriptArguments):
        extra["reward_funcs"] = resolve_reward_funcs(script_args.reward_funcs, script_args.reward_model_name_or_path)
        if not extra["reward_funcs"] and environments_own_data:
            extra["reward_funcs"] = None  # the environments' get_reward (the trainer checks there is one)
        elif not extra["reward_funcs"]:
            raise ValueError(
                f"`trl {command}` needs a reward: pass `--reward_funcs` (e.g. `--reward_funcs think_format_reward "
                "my_rewards.my_reward`) and/or `--reward_model_name_or_path`."
            )
    model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        "trust_remote_code": training_args.trust_remote_code,
    }
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        model_init_kwargs["device_map"] = get_kbit_device_map()
    training_args.model_init_kwargs = {**model_init_kwargs, **(training_args.model_init_kwargs or {})}

    train_dataset = eval_dataset = None
    no_data = script_args.dataset_name is None and not (dataset_args is not None and dataset_args.datasets)
    if not (environments_own_data and no_data):
        dataset = load_script_dataset(script_args, dataset_args)
        train_dataset = _split(dataset, script_args.dataset_train_split, "train")
        if training_args.eval_strategy != "no":
            eval_dataset = _split(dataset, script_args.dataset_test_split, "test")
    return {
        "model": model_args.model_name_or_path,
        "args": training_args,
        "train_dataset": train_dataset,
        "eval_dataset": eval_dataset,
        "quantization_config": quantization_config,
        "peft_config": get_peft_config(model_args),
        **extra,
    }


def run_script(make_parser, main) -> None:
    """The `__main__` entry of a training script (run directly or by `accelerate launch`): parse `sys.argv` with
    `make_parser()` and call `main(*parsed)`. Config-file keys that are `accelerate launch` options (the `trl` CLI
    forwards them to the launcher) are tolerated; unknown command-line arguments are an error.

    Example:
        ```python
        >>> if __name__ == "__main__":
        ...     run_script(make_parser, main)
        ```
    """
    parser = make_parser()
    *parsed, config_leftovers, cli_leftovers = parser.parse_args_and_config(
        return_remaining_strings=True, separate_remaining_strings=True
    )
    if cli_leftovers:
        parser.error(f"unrecognized arguments: {' '.join(cli_leftovers)}")
    check_launch_leftovers(config_leftovers)
    main(*parsed)
    _leave_after_distributed_run()


def command_parser(
    name: str,
    config_class,
    description: str,
    subparsers=None,
    prog: str | None = None,
    script_args_class: type[ScriptArguments] = ScriptArguments,
) -> TrlParser:
    """The parser of `trl <name>`: `(script_args_class, config_class, ModelConfig, DatasetMixtureConfig)`, standalone
    or as a subcommand of `subparsers` (created with `parser_class=TrlParser`). Its `--help` is the command's help
    (`trl.cli.format_command_help`: an example, the most used options, then every option by dataclass), whether it
    is reached through `trl <name>` or by running the script directly."""
    from trl.cli import format_command_help
    from trl.trainer.model_config import ModelConfig

    dataclass_types = (script_args_class, config_class, ModelConfig, DatasetMixtureConfig)
    if subparsers is not None:
        kwargs = {"prog": prog} if prog else {}
        parser = subparsers.add_parser(
            name, help=description, description=description, dataclass_types=dataclass_types, **kwargs
        )
    else:
        parser = TrlParser(dataclass_types, prog=prog, description=description)
    parser.format_help = lambda: format_command_help(parser, name)
    return parser
