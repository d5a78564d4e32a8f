"""Dataset format detection and validation: one place that decides what a dataset is, and says so.

A format is a pair (kind, conversational). Kinds:

| kind                  | columns                                   |
|-----------------------|-------------------------------------------|
| `language_modeling`   | `text` (or `dataset_text_field`) / `messages` |
| `prompt_completion`   | `prompt`, `completion`                    |
| `preference`          | `prompt`, `chosen`, `rejected`            |
| `implicit_preference` | `chosen`, `rejected`                      |
| `unpaired_preference` | `prompt`, `completion`, `label`           |
| `prompt_only`         | `prompt`                                  |
| `tokenized`           | `input_ids` (+ `labels`/`completion_mask`/`assistant_masks`) |

ShareGPT rows (`conversations` of `from`/`value` dicts) are converted to ChatML `messages` before detection.
"""

from __future__ import annotations

from dataclasses import dataclass

from .conversation import _is_message_list

KINDS = (
    "tokenized",
    "unpaired_preference",
    "preference",
    "implicit_preference",
    "prompt_completion",
    "language_modeling",
    "prompt_only",
)


@dataclass(frozen=True)
class DatasetFormat:
    """What a dataset holds. `describe()` gives the phrase used in reports, e.g. "conversational prompt-completion"."""

    kind: str
    conversational: bool

    def describe(self) -> str:
        if self.kind == "tokenized":
            return "pre-tokenized"
        style = "conversational" if self.conversational else "standard"
        return f"{style} {self.kind.replace('_', ' ').replace('prompt completion', 'prompt-completion')}"


def detect_format(column_names: list[str], example: dict, text_field: str = "text") -> DatasetFormat:
    """Detect the format of a dataset from its columns and one (ChatML) example.

    Args:
        column_names (`list[str]`): the dataset's columns.
        example (`dict`): one row, already converted to ChatML.
        text_field (`str`, *optional*, defaults to `"text"`): the text column of language-modelling data.

    Raises:
        `ValueError`: no known set of columns is present; the message lists the accepted sets.

    Example:
        ```python
        >>> detect_format(["prompt", "completion"], {"prompt": "2+2=", "completion": "4"}).describe()
        'standard prompt-completion'
        ```
    """
    columns = set(column_names)
    if "input_ids" in columns:
        kind = "tokenized"
    elif {"prompt", "completion", "label"} <= columns:
        kind = "unpaired_preference"
    elif {"prompt", "chosen", "rejected"} <= columns:
        kind = "preference"
    elif {"chosen", "rejected"} <= columns:
        kind = "implicit_preference"
    elif {"prompt", "completion"} <= columns:
        kind = "prompt_completion"
    elif "messages" in columns or text_field in columns:
        kind = "language_modeling"
    elif "prompt" in columns:
        kind = "prompt_only"
    else:
        raise ValueError(
            f"Could not recognise the dataset format from its columns {sorted(columns)}. Expected one of: "
            f"'{text_field}' or 'messages' (language modelling), 'prompt'+'completion', 'prompt'+'chosen'+'rejected', "
            "'chosen'+'rejected', 'prompt'+'completion'+'label', 'prompt', 'conversations' (ShareGPT) or 'input_ids'. "
            "Rename your columns, or pass `formatting_func` to build the text."
        )
    keys = ("messages", "prompt", "completion", "chosen", "rejected")
    conversational = any(_is_message_list(example.get(key)) for key in keys)
    if kind == "language_modeling" and "messages" not in columns:
        conversational = False
    return DatasetFormat(kind, conversational)


def require_format(fmt: DatasetFormat, allowed: tuple[str, ...], trainer: str, column_names: list[str]) -> None:
    """Raise a clear error when a trainer does not accept the detected format.

    Example:
        ```python
        >>> require_format(DatasetFormat("preference", False), ("language_modeling",), "SFTTrainer", ["chosen"])
        Traceback (most recent call last):
        ValueError: SFTTrainer does not accept a standard preference dataset ...
        ```
    """
    if fmt.kind not in allowed:
        raise ValueError(
            f"{trainer} does not accept a {fmt.describe()} dataset (columns {sorted(column_names)}). It accepts: "
            f"{', '.join(a.replace('_', ' ') for a in allowed)}."
        )


def check_example_types(example: dict, fmt: DatasetFormat, text_field: str = "text") -> None:
    """Check the value types of one row against its format, so bad data fails before tokenisation.

    Raises:
        `TypeError`: a column holds the wrong type (e.g. `completion` is a list while `prompt` is a string).
    """
    if fmt.kind == "tokenized":
        ids = example["input_ids"]
        if not isinstance(ids, list) or (ids and not isinstance(ids[0], int)):
            raise TypeError(f"Column 'input_ids' must hold lists of ints; got {type(ids).__name__}: {str(ids)[:80]}.")
        return
    keys = [k for k in ("messages", text_field, "prompt", "completion", "chosen", "rejected") if k in example]
    for key in keys:
        value = example[key]
        if key == "messages" and key != text_field and not _is_message_list(value):
            raise TypeError(
                f"Column 'messages' must hold a list of {{'role', 'content'}} messages; got {type(value).__name__}: "
                f"{str(value)[:80]}. Put plain text in a 'text' column (or set `dataset_text_field`)."
            )
        if fmt.conversational and key != text_field:
            if not _is_message_list(value):
                raise TypeError(
                    f"Column {key!r} must hold a list of {{'role', 'content'}} messages in a conversational dataset; "
                    f"got {type(value).__name__}: {str(value)[:80]}."
                )
        elif not isinstance(value, str):
            raise TypeError(
                f"Column {key!r} must hold strings in a standard (non-conversational) dataset; got "
                f"{type(value).__name__}: {str(value)[:80]}."
            )


def check_single_dataset(dataset, trainer: str, name: str) -> None:
    """A dict of splits is not a dataset: say which split to pass instead of failing on its column names.

    Example:
        ```python
        >>> check_single_dataset(DatasetDict({"train": ds}), "SFTTrainer", "train")
        Traceback (most recent call last):
        TypeError: SFTTrainer got a DatasetDict with splits ['train'] as its train dataset; pass one split ...
        ```
    """
    if isinstance(dataset, dict) or type(dataset).__name__ in ("DatasetDict", "IterableDatasetDict"):
        splits = sorted(dataset.keys())
        raise TypeError(
            f"{trainer} got a {type(dataset).__name__} with splits {splits} as its {name} dataset; pass one split, "
            f"e.g. `dataset[{splits[0]!r}]`."
        )
