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

ShareGPT rows (`conversations` of `from`/`value` dicts) are converted to ChatML `messages` before detection, with
ShareGPT's `human`/`gpt` speakers renamed to the `user`/`assistant` roles.

Before any of that, `check_dataset` checks the object itself (a `Dataset`, not a list of rows; no image column), and
`check_example_types` checks every row as it is tokenised, naming the row and column of a bad value.
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


def check_example_types(example: dict, fmt: DatasetFormat, text_field: str = "text", *, row: int | None = None,
                        name: str = "train") -> None:
    """Check the values of one row against its format, so bad data fails before tokenisation, naming the row.

    Every message of a conversational column needs a `role` and a `content` (a string or a list of content blocks);
    only an assistant message with `tool_calls` may leave its content out (or `None`).

    Args:
        example (`dict`): the row.
        fmt (`DatasetFormat`): the dataset's format, detected from its first row.
        text_field (`str`, *optional*, defaults to `"text"`): the text column of language-modelling data.
        row (`int`, *optional*): the row's index, for messages.
        name (`str`, *optional*, defaults to `"train"`): the dataset's name, for messages.

    Raises:
        `TypeError`: a column holds the wrong type (e.g. `completion` is a list while `prompt` is a string, or `None`),
            or a message's content is neither a string nor a list.
        `ValueError`: a message has no `role`, or no `content`.

    Example:
        ```python
        >>> row = {"prompt": "2+2=", "completion": None}
        >>> check_example_types(row, DatasetFormat("prompt_completion", False), row=3)
        Traceback (most recent call last):
        TypeError: Row 3 of the train dataset is malformed. Column 'completion' must hold strings ... NoneType: None.
        ```
    """
    where = "" if row is None else f"Row {row} of the {name} dataset is malformed. "
    if fmt.kind == "tokenized":
        ids = example["input_ids"]
        if not isinstance(ids, list) or (ids and not isinstance(ids[0], int)):
            raise TypeError(
                f"{where}Column 'input_ids' must hold lists of ints; got {type(ids).__name__}: {str(ids)[:80]}."
            )
        return
    keys = [k for k in ("messages", text_field, "prompt", "completion", "chosen", "rejected") if k in example]
    if fmt.kind == "language_modeling" and not fmt.conversational and text_field in example:
        keys = [text_field]  # only the text is trained (e.g. the output of formatting_func); other columns are not
    for key in keys:
        value = example[key]
        if (key == "messages" and key != text_field) or (fmt.conversational and key != text_field):
            # an empty list is a conversation with nothing in it: the loss-mask guards report such rows
            if not (_is_message_list(value) or value == []):
                if key == "messages":
                    raise TypeError(
                        f"{where}Column 'messages' must hold a list of {{'role', 'content'}} messages; got "
                        f"{type(value).__name__}: {str(value)[:80]}. Put plain text in a 'text' column (or set "
                        "`dataset_text_field`)."
                    )
                raise TypeError(
                    f"{where}Column {key!r} must hold a list of {{'role', 'content'}} messages in a conversational "
                    f"dataset; got {type(value).__name__}: {str(value)[:80]}."
                )
            _check_messages(value, key, row, name)
        elif not isinstance(value, str):
            raise TypeError(
                f"{where}Column {key!r} must hold strings in a standard (non-conversational) dataset; got "
                f"{type(value).__name__}: {str(value)[:80]}."
            )


def _check_messages(messages: list, column: str, row: int | None, name: str) -> None:
    for i, message in enumerate(messages):
        problem = _message_problem(message)
        if problem is None:
            continue
        error, text = problem
        where = "" if row is None else f"Row {row} of the {name} dataset: "
        raise error(f"{where}message {i} of column {column!r} {text.format(shown=str(message)[:80])}")


def _message_problem(message) -> tuple[type[Exception], str] | None:
    """What is wrong with one message (the exception class and a text with a `{shown}` slot), or None. The message is
    only turned into text when something is wrong: this runs on every message of every row."""
    if not isinstance(message, dict):
        return TypeError, f"must be a dict; got {type(message).__name__}: {{shown}}."
    if message.get("role") is None:
        return ValueError, ("has no 'role' (a string such as 'user' or 'assistant'): {shown}. Add the role, or remove "
                            "the row.")
    if not isinstance(message["role"], str):
        return TypeError, (f"has a 'role' of type {type(message['role']).__name__}: {{shown}}. Use a string such as "
                           "'user'.")
    content = message.get("content")
    if content is None:
        if message["role"] == "assistant" and message.get("tool_calls"):
            return None  # a pure tool call: the template renders the calls instead of text
        return ValueError, ("has no 'content': {shown}. Every message needs a 'content' string (only assistant "
                            "messages with 'tool_calls' may omit it); fill it in or remove the row.")
    if not isinstance(content, (str, list)):
        return TypeError, (f"has a 'content' of type {type(content).__name__}: {{shown}}. Use a string (or a list of "
                           "content blocks).")
    return None


IMAGE_COLUMNS = ("image", "images")


def check_dataset(dataset, trainer: str, name: str, model=None, tokenizer=None) -> None:
    """The checks every trainer's data path runs first, on the dataset object itself: it is one `Dataset` or
    `IterableDataset` (not a list of rows, a dict of columns or a dict of splits), and it has no image column.

    Image columns are refused here, on the text path: its trainers would drop the images without a word. A trainer
    given a vision-language model's processor takes its rows through `trl.data.vision` instead (SFT, DPO, KTO).

    Args:
        dataset: what the trainer received as its train or eval dataset.
        trainer (`str`): the trainer's name, for messages.
        name (`str`): the dataset's name ("train", "eval", "eval[key]"), for messages.
        model (`PreTrainedModel`, *optional*): the model being trained, named in messages.
        tokenizer (*optional*): named in messages when `model` is not given.

    Raises:
        `TypeError`: the dataset is not a `datasets.Dataset`/`IterableDataset`; the message says how to build one.
        `ValueError`: the dataset has an `image` or `images` column.

    Example:
        ```python
        >>> check_dataset([{"text": "hello"}], "SFTTrainer", "train")
        Traceback (most recent call last):
        TypeError: SFTTrainer got a list of 1 dicts as its train dataset; ... `datasets.Dataset.from_list(rows)` ...
        ```
    """
    _check_dataset_type(dataset, trainer, name)
    columns = dataset.column_names
    if columns is None:  # a stream whose features are unknown: its first row tells
        columns = list(next(iter(dataset), {}))
    for column in IMAGE_COLUMNS:
        if column in columns:
            raise ValueError(
                f"{trainer} got an {column!r} column in its {name} dataset, but it trains "
                f"{_describe_model(model, tokenizer)} on text only: the images would be dropped without a word. To "
                f"train on the text alone, remove the {column!r} column (`dataset.remove_columns({column!r})`). "
                "Training on images needs a vision-language model with its processor "
                "(`processing_class=AutoProcessor.from_pretrained(...)`), which SFTTrainer, DPOTrainer, KTOTrainer, "
                "GRPOTrainer and RLOOTrainer support (docs/vision.md)."
            )


def _check_dataset_type(dataset, trainer: str, name: str) -> None:
    kind = type(dataset).__name__
    if kind in ("DatasetDict", "IterableDatasetDict") or (
        isinstance(dataset, dict) and dataset and all(hasattr(v, "column_names") for v in dataset.values())
    ):
        splits = sorted(dataset.keys())
        raise TypeError(
            f"{trainer} got a {kind} with splits {splits} as its {name} dataset; pass one split, "
            f"e.g. `dataset[{splits[0]!r}]`."
        )
    if isinstance(dataset, dict):
        raise TypeError(
            f"{trainer} got a dict of columns {sorted(dataset)[:10]} as its {name} dataset; wrap it in a dataset: "
            "`datasets.Dataset.from_dict(columns)`."
        )
    if isinstance(dataset, (list, tuple)):
        what = f"a {kind} of {len(dataset)} {type(dataset[0]).__name__}s" if dataset else f"an empty {kind}"
        raise TypeError(
            f"{trainer} got {what} as its {name} dataset; it needs a `datasets.Dataset`. Wrap the rows: "
            "`datasets.Dataset.from_list(rows)`."
        )
    if not hasattr(dataset, "column_names") or not hasattr(dataset, "map"):
        hint = " (`datasets.Dataset.from_pandas(df)`)" if hasattr(dataset, "iloc") else ""
        if isinstance(dataset, str):
            hint = f" (load it first, e.g. `datasets.load_dataset({dataset!r}, split={name.split('[')[0]!r})`)"
        raise TypeError(
            f"{trainer} expects a `datasets.Dataset` or `datasets.IterableDataset` as its {name} dataset; got "
            f"{kind}{hint}."
        )


def _describe_model(model, tokenizer) -> str:
    """`Qwen3ForCausalLM ('Qwen/Qwen3-0.6B')`: the class of the model under any adapter wrapper, and where it came
    from; the tokenizer's origin when the model is not known."""
    if model is None:
        path = getattr(tokenizer, "name_or_path", "")
        return f"the model of tokenizer {path!r}" if path else "the model"
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    path = getattr(getattr(base, "config", None), "_name_or_path", "")
    return f"{type(base).__name__} ({path!r})" if path else type(base).__name__
