"""String-level helpers for the dataset formats the trainers accept.

A row is *conversational* when its `prompt`/`completion`/`chosen`/`rejected`/`messages` hold lists of
`{"role": ..., "content": ...}` dicts, and *standard* when they hold plain strings. The functions here detect the
format, convert ShareGPT-style rows to ChatML, render conversations to text with a chat template, split implicit
prompts out of preference pairs and unpair preference datasets. They work on one row (a `dict`) so they can be
passed to `datasets.Dataset.map`; the unpairing helpers take a whole dataset.

Only the standard library is imported at module level; `datasets` is imported by the functions that need it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict

    DatasetType = TypeVar("DatasetType", Dataset, DatasetDict, IterableDataset, IterableDatasetDict)


# Keys whose values may hold a conversation, in the order the checks look at them.
_CONVERSATION_KEYS = ("prompt", "chosen", "rejected", "completion", "messages")
# Keys that decide which rendering `apply_chat_template` performs; any other key (images, tools, ids, ...) is ignored.
_TEMPLATE_KEYS = frozenset({"prompt", "chosen", "rejected", "completion", "messages", "label"})
_SUPPORTED_KEY_SETS = (
    ("messages",),  # language modeling
    ("prompt",),  # prompt-only
    ("prompt", "completion"),  # prompt-completion
    ("prompt", "chosen", "rejected"),  # preference with explicit prompt
    ("chosen", "rejected"),  # preference with implicit prompt
    ("prompt", "completion", "label"),  # unpaired preference
)
_MESSAGE_ROLES = ("system", "user", "assistant", "tool")
# ShareGPT's speaker names and the chat-template roles they stand for. Only the two names every ShareGPT dataset uses
# are renamed; others ("system", "tool", and tool-use names such as "function_call"/"observation", whose meaning
# differs between datasets) are kept as they are.
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant"}


def _is_message_list(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and isinstance(value[0], dict) and "role" in value[0]


def _is_from_value_list(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and isinstance(value[0], dict) and "from" in value[0]


def is_conversational(example: dict[str, Any]) -> bool:
    r"""
    Check whether an example is in a conversational format.

    Args:
        example (`dict[str, Any]`):
            A single data entry of a dataset. It is conversational if any of its `"prompt"`, `"chosen"`,
            `"rejected"`, `"completion"` or `"messages"` values is a list whose first element is a dict with a
            `"role"` key.

    Returns:
        `bool`: `True` if the example is conversational, `False` otherwise.

    Example:

    ```python
    >>> from trl.data_utils import is_conversational
    >>> is_conversational({"prompt": [{"role": "user", "content": "What color is the sky?"}]})
    True
    >>> is_conversational({"prompt": "The sky is"})
    False
    ```
    """
    return any(_is_message_list(example.get(key)) for key in _CONVERSATION_KEYS)


def is_conversational_from_value(example: dict[str, Any]) -> bool:
    r"""
    Check whether an example is in the ShareGPT-style conversational format (`from`/`value` keys).

    This format is not supported by the trainers directly; convert it with [`maybe_convert_to_chatml`].

    Args:
        example (`dict[str, Any]`):
            A single data entry of a dataset. It is in this format if its `"conversations"` value is a list whose
            first element is a dict with `"from"` and `"value"` keys.

    Returns:
        `bool`: `True` if the example uses the `from`/`value` format, `False` otherwise.

    Example:

    ```python
    >>> from trl.data_utils import is_conversational_from_value
    >>> is_conversational_from_value({"conversations": [{"from": "user", "value": "What color is the sky?"}]})
    True
    >>> is_conversational_from_value({"conversations": [{"role": "user", "content": "What color is the sky?"}]})
    False
    ```
    """
    conversations = example.get("conversations")
    return (
        isinstance(conversations, list)
        and len(conversations) > 0
        and isinstance(conversations[0], dict)
        and "from" in conversations[0]
        and "value" in conversations[0]
    )


def maybe_convert_to_chatml(example: dict[str, Any]) -> dict[str, Any]:
    r"""
    Convert a ShareGPT-style example (`from`/`value`) to ChatML (`role`/`content`).

    In the `"prompt"`, `"completion"`, `"chosen"`, `"rejected"`, `"messages"` and `"conversations"` lists, the
    `"from"` key of every message is renamed to `"role"` and `"value"` to `"content"`, and the `"conversations"` key
    itself is renamed to `"messages"`. Examples already in ChatML are returned with the same content. The input is
    not modified.

    ShareGPT's standard speaker names become chat-template roles: `"human"` becomes `"user"` and `"gpt"` becomes
    `"assistant"` (a chat template would otherwise render `<|im_start|>human` turns, and `assistant_only_loss` would
    find no assistant turn). Every other name (`"system"`, `"user"`, `"assistant"`, `"tool"`, and dataset-specific
    ones such as `"function_call"` or `"observation"`) is kept as it is; rename those before converting if your chat
    template expects other roles. Roles of messages already in ChatML (`"role"` keys) are never renamed.

    When used with `datasets.Dataset.map`, pass `remove_columns="conversations"` (if the column exists): `map` keeps
    input columns that the function does not return.

    Args:
        example (`dict[str, Any]`):
            A single data entry.

    Returns:
        `dict[str, Any]`: The example in ChatML format.

    Example:

    ```python
    >>> from trl.data_utils import maybe_convert_to_chatml
    >>> example = {"conversations": [{"from": "human", "value": "What color is the sky?"},
    ...                              {"from": "gpt", "value": "It is blue."}]}
    >>> maybe_convert_to_chatml(example)["messages"]
    [{'role': 'user', 'content': 'What color is the sky?'}, {'role': 'assistant', 'content': 'It is blue.'}]
    ```
    """
    converted = dict(example)
    for key in ("prompt", "completion", "chosen", "rejected", "messages", "conversations"):
        value = converted.get(key)
        if isinstance(value, list):
            converted[key] = [_message_to_chatml(message) for message in value]
    if "conversations" in converted:
        converted["messages"] = converted.pop("conversations")
    return converted


def _message_to_chatml(message: Any) -> Any:
    if not isinstance(message, dict):
        return message
    renames = {"from": "role", "value": "content"}
    converted = {renames.get(k, k): v for k, v in message.items()}
    if "from" in message:  # a ShareGPT speaker name, not a ChatML role
        converted["role"] = SHAREGPT_ROLES.get(message["from"], message["from"])
    return converted


def maybe_convert_dataset_to_chatml(dataset: DatasetType, **map_kwargs: Any) -> DatasetType:
    r"""
    Apply [`maybe_convert_to_chatml`] to every row of a dataset whose first row is ShareGPT-style.

    The first row decides: the dataset is converted when one of its message lists uses `from`/`value` keys, or when
    it has a `conversations` column and no `messages` column. ChatML and standard data are returned as they are, at
    the cost of reading one row. Works on `Dataset` and `IterableDataset` (where `map`, so the conversion, is lazy).

    Args:
        dataset (`Dataset` or `IterableDataset`):
            The dataset to convert.
        **map_kwargs:
            Passed to `dataset.map` (e.g. `num_proc` for a `Dataset`).

    Returns:
        The dataset in ChatML format.

    Example:

    ```python
    >>> from datasets import Dataset
    >>> ds = Dataset.from_list([{"prompt": [{"from": "user", "value": "Hi"}], "completion": "Hello."}])
    >>> maybe_convert_dataset_to_chatml(ds)[0]["prompt"]
    [{'role': 'user', 'content': 'Hi'}]
    ```
    """
    first = next(iter(dataset), None)
    if first is None:
        return dataset
    # a `conversations` column beside `messages` is left alone (converting it would overwrite `messages`)
    keys = (*_CONVERSATION_KEYS, *(() if "messages" in first else ("conversations",)))
    sharegpt = any(_is_from_value_list(first.get(key)) for key in keys)
    rename = "conversations" in first and "messages" not in first
    if not (sharegpt or rename):
        return dataset
    remove = ["conversations"] if "conversations" in first else None
    return dataset.map(maybe_convert_to_chatml, remove_columns=remove, **map_kwargs)


def _parse_tools(tools: Any) -> list | None:
    # Datasets often store a per-row `tools` list as a JSON string, because Arrow cannot hold a column of
    # heterogeneous JSON schemas.
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"Column 'tools' holds a string that is not valid JSON: {tools[:80]!r} ({error}). Store the tools as a list "
                "of JSON schemas, or as a string that `json.loads` turns into one."
            ) from None
    if tools is not None and not isinstance(tools, list):
        raise TypeError(f"`tools` must be a list of JSON schemas or functions, or a JSON string; got {type(tools)}.")
    return tools or None  # `[]` renders differently from "no tools" in some templates


def _check_template_keys(example: dict[str, Any]) -> frozenset[str]:
    keys = frozenset(example) & _TEMPLATE_KEYS
    if keys not in {frozenset(key_set) for key_set in _SUPPORTED_KEY_SETS}:
        expected = ", ".join(str(list(key_set)) for key_set in _SUPPORTED_KEY_SETS)
        raise ValueError(
            f"Cannot apply a chat template to an example with keys {list(example)}: the relevant keys "
            f"{[key for key in example if key in keys]} are not one of the supported sets {expected}."
        )
    for key in keys - {"label"}:
        if not _is_message_list(example[key]):
            raise TypeError(
                f"apply_chat_template expects {key!r} to be a non-empty list of messages "
                f"(dicts with 'role' and 'content'); got {type(example[key]).__name__}: {str(example[key])[:200]!r}. "
                "Use `maybe_apply_chat_template` for datasets that mix standard and conversational rows."
            )
    return keys


def _common_prefix(strings: Sequence[str]) -> str:
    prefix = strings[0]
    for other in strings[1:]:
        prefix = prefix[: common_prefix_length(prefix, other)]
    return prefix


def apply_chat_template(
    example: dict[str, Any],
    processing_class: Any,
    tools: list[dict | Callable] | str | None = None,
    **template_kwargs: Any,
) -> dict[str, Any]:
    r"""
    Render a conversational example to text with the chat template of `processing_class`.

    Supported key sets (other keys, e.g. `"images"`, `"tools"` or `"chat_template_kwargs"`, are allowed and not
    returned): `{"messages"}`, `{"prompt"}`, `{"prompt", "completion"}`, `{"prompt", "chosen", "rejected"}`,
    `{"chosen", "rejected"}` (implicit prompt) and `{"prompt", "completion", "label"}`.

    - `"messages"` is rendered whole and returned under the key `"text"`.
    - `"prompt"` gets the generation prompt when its last message is from the user or a tool; when its last message
      is from the assistant, that message is continued instead (`continue_final_message=True`).
    - `"completion"`/`"chosen"`/`"rejected"` are rendered together with the prompt, and the rendered prompt is cut to
      the longest common character prefix of the prompt alone and every prompt+continuation. Some templates (e.g.
      DeepSeek-R1) render a prompt alone differently from the same prompt followed by an answer; the cut keeps
      `prompt + completion` equal to the rendering of the whole conversation. For most templates it changes nothing.
    - `"label"` is passed through.

    Args:
        example (`dict[str, Any]`):
            A single conversational data entry.
        processing_class ([`~transformers.PreTrainedTokenizerBase`] or [`~transformers.ProcessorMixin`]):
            The tokenizer or processor whose chat template is applied.
        tools (`list[dict | Callable]` or `str`, *optional*):
            Tools (JSON schemas or Python functions) made available to the model. A JSON string is parsed, and an
            empty list is treated as `None`. A per-row `"tools"` value in `example` takes precedence when it is not
            `None`.
        **template_kwargs:
            Extra keyword arguments for the template renderer. A per-row `"chat_template_kwargs"` dict in `example`
            is merged on top of them (the row wins on conflicts).

    Returns:
        `dict[str, Any]`: The rendered strings, under the keys of the input (`"text"` instead of `"messages"`).

    Raises:
        `ValueError`: If the example's keys are not one of the supported sets, or the last prompt message has an
            unsupported role.
        `TypeError`: If a conversational key does not hold a list of messages.

    Example:

    ```python
    >>> from trl.data_utils import apply_chat_template
    >>> from trl.models.tiny import tiny_tokenizer
    >>> tokenizer = tiny_tokenizer()  # ChatML template
    >>> example = {"prompt": [{"role": "user", "content": "What color is the sky?"}],
    ...            "completion": [{"role": "assistant", "content": "It is blue."}]}
    >>> output = apply_chat_template(example, tokenizer)
    >>> output["prompt"]
    '<|im_start|>user\nWhat color is the sky?<|im_end|>\n<|im_start|>assistant\n'
    >>> output["completion"]
    'It is blue.<|im_end|>\n'
    ```
    """
    keys = _check_template_keys(example)
    row_tools = example.get("tools")
    tools = _parse_tools(row_tools if row_tools is not None else tools)
    row_kwargs = example.get("chat_template_kwargs") or {}
    if not isinstance(row_kwargs, dict):
        raise TypeError(f"A row's 'chat_template_kwargs' must be a dict; got {type(row_kwargs).__name__}.")
    kwargs = {**template_kwargs, **row_kwargs}

    def render(messages: list[dict], **extra: Any) -> str:
        from .tokenize import for_template  # tool-call arguments as JSON strings where the template needs them

        messages = for_template(processing_class, messages)
        text = processing_class.apply_chat_template(messages, tools=tools, tokenize=False, **kwargs, **extra)
        if not isinstance(text, str):  # processors may return a one-element batch
            text = text[0]
        return text

    output: dict[str, Any] = {}
    if "messages" in keys:
        output["text"] = render(example["messages"])
        return output

    continuations = [key for key in ("chosen", "rejected", "completion") if key in keys]
    if "prompt" not in keys:  # implicit prompt: each side is a whole conversation
        for key in continuations:
            output[key] = render(example[key])
        return output

    prompt_messages = example["prompt"]
    last_role = prompt_messages[-1].get("role")
    if last_role in ("user", "tool"):
        prompt = render(prompt_messages, add_generation_prompt=True)
    elif last_role == "assistant":
        # A prompt that ends with an assistant turn is a prefill: the completion continues that message.
        prompt = render(prompt_messages, continue_final_message=True)
    else:
        raise ValueError(
            f"The last prompt message must have role 'user', 'tool' or 'assistant'; got {last_role!r}."
        )
    full = {key: render(prompt_messages + example[key]) for key in continuations}
    prompt = _common_prefix([prompt, *full.values()])
    output["prompt"] = prompt
    for key in ("chosen", "rejected", "completion"):
        if key in full:
            output[key] = full[key][len(prompt) :]
    if "label" in keys:
        output["label"] = example["label"]
    return output


def maybe_apply_chat_template(
    example: dict[str, Any],
    processing_class: Any,
    tools: list[dict | Callable] | str | None = None,
    **template_kwargs: Any,
) -> dict[str, Any]:
    r"""
    Apply [`apply_chat_template`] if the example is conversational; return it unchanged otherwise.

    Args:
        example (`dict[str, Any]`):
            A single data entry, standard or conversational.
        processing_class ([`~transformers.PreTrainedTokenizerBase`] or [`~transformers.ProcessorMixin`]):
            The tokenizer or processor whose chat template is applied.
        tools (`list[dict | Callable]` or `str`, *optional*):
            Tools made available to the model, see [`apply_chat_template`].
        **template_kwargs:
            Extra keyword arguments for the template renderer.

    Returns:
        `dict[str, Any]`: The rendered example, or the input itself when it is not conversational.

    Example:

    ```python
    >>> from trl.data_utils import maybe_apply_chat_template
    >>> from trl.models.tiny import tiny_tokenizer
    >>> tokenizer = tiny_tokenizer()
    >>> maybe_apply_chat_template({"prompt": "The sky is", "completion": " blue."}, tokenizer)
    {'prompt': 'The sky is', 'completion': ' blue.'}
    >>> maybe_apply_chat_template({"messages": [{"role": "user", "content": "Hi"}]}, tokenizer)
    {'text': '<|im_start|>user\nHi<|im_end|>\n'}
    ```
    """
    if is_conversational(example):
        return apply_chat_template(example, processing_class, tools=tools, **template_kwargs)
    return example


def common_prefix_length(a: Sequence, b: Sequence) -> int:
    r"""
    Length of the longest common prefix of two sequences (strings, lists of messages, lists of token ids).

    Args:
        a (`Sequence`):
            First sequence.
        b (`Sequence`):
            Second sequence.

    Returns:
        `int`: The number of leading elements that are equal in `a` and `b`.

    Example:

    ```python
    >>> from trl.data_utils import common_prefix_length
    >>> common_prefix_length("The sky is blue", "The sky is green")
    11
    >>> common_prefix_length([1, 2, 3], [1, 2])
    2
    ```
    """
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def extract_prompt(example: dict[str, Any]) -> dict[str, Any]:
    r"""
    Move the shared beginning of an implicit-prompt preference example into an explicit `"prompt"`.

    The prompt is the longest common prefix of `"chosen"` and `"rejected"`: a list of messages for conversational
    examples, a string for standard ones. For strings, a space just before the point where the two differ stays with
    the completions rather than ending the prompt.

    Args:
        example (`dict[str, Any]`):
            A preference example with `"chosen"` and `"rejected"` keys. Other keys are returned unchanged; an
            existing `"prompt"` is overwritten.

    Returns:
        `dict[str, Any]`: The example with `"prompt"`, and `"chosen"`/`"rejected"` holding only the continuations.

    Raises:
        `ValueError`: If `"chosen"` or `"rejected"` is missing.

    Example:

    ```python
    >>> from trl.data_utils import extract_prompt
    >>> extract_prompt({"chosen": "The sky is blue.", "rejected": "The sky is green."})
    {'prompt': 'The sky is', 'chosen': ' blue.', 'rejected': ' green.'}
    >>> example = {"chosen": [{"role": "user", "content": "Sky color?"}, {"role": "assistant", "content": "Blue."}],
    ...            "rejected": [{"role": "user", "content": "Sky color?"}, {"role": "assistant", "content": "Green."}]}
    >>> extract_prompt(example)["prompt"]
    [{'role': 'user', 'content': 'Sky color?'}]
    ```
    """
    if "chosen" not in example or "rejected" not in example:
        raise ValueError(
            f"extract_prompt expects an example with keys 'chosen' and 'rejected'; got keys {sorted(example)}."
        )
    chosen, rejected = example["chosen"], example["rejected"]
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise TypeError(
            "extract_prompt expects 'chosen' and 'rejected' to be both strings or both lists of messages; got "
            f"{type(chosen).__name__} and {type(rejected).__name__}."
        )
    idx = common_prefix_length(chosen, rejected)
    if isinstance(chosen, str) and 0 < idx < min(len(chosen), len(rejected)) and chosen[idx - 1] == " ":
        idx -= 1  # "The sky is| blue" rather than "The sky is |blue"
    others = {key: value for key, value in example.items() if key not in ("prompt", "chosen", "rejected")}
    return {"prompt": chosen[:idx], "chosen": chosen[idx:], "rejected": rejected[idx:], **others}


def maybe_extract_prompt(example: dict[str, Any]) -> dict[str, Any]:
    r"""
    Apply [`extract_prompt`] to implicit-prompt preference examples; return other examples unchanged.

    The example is returned unchanged when it has no `"chosen"`/`"rejected"` pair, or when it already has a
    `"prompt"` in the same format (standard or conversational) as `"chosen"`. Some datasets carry a string
    `"prompt"` next to conversational `"chosen"`/`"rejected"` that already contain it; in that case the prompt is
    extracted again from the conversations.

    Args:
        example (`dict[str, Any]`):
            A single data entry.

    Returns:
        `dict[str, Any]`: The example with an explicit prompt, or the input itself.

    Example:

    ```python
    >>> from trl.data_utils import maybe_extract_prompt
    >>> maybe_extract_prompt({"chosen": "The sky is blue.", "rejected": "The sky is green."})
    {'prompt': 'The sky is', 'chosen': ' blue.', 'rejected': ' green.'}
    >>> maybe_extract_prompt({"prompt": "The sky is", "chosen": " blue.", "rejected": " green."})
    {'prompt': 'The sky is', 'chosen': ' blue.', 'rejected': ' green.'}
    ```
    """
    if "chosen" not in example or "rejected" not in example:
        return example
    if "prompt" in example:
        prompt_is_conversational = is_conversational({"prompt": example["prompt"]})
        chosen_is_conversational = is_conversational({"chosen": example["chosen"]})
        if prompt_is_conversational == chosen_is_conversational:
            return example
    return extract_prompt(example)


def _get_column_names(dataset: Any) -> list[str]:
    names = dataset.column_names
    if names is None:  # an IterableDataset whose features are unknown until the first row is read
        names = list(next(iter(dataset)).keys())
    return list(names)


def get_dataset_column_names(ds: Any) -> list[str] | dict[str, list[str]]:
    r"""
    Column names of a dataset, including an `IterableDataset` whose features are not resolved yet.

    Args:
        ds (`Dataset`, `DatasetDict`, `IterableDataset` or `IterableDatasetDict`):
            The dataset. For an iterable dataset without known features, the first row is read to find the names.

    Returns:
        `list[str]` or `dict[str, list[str]]`: The column names; a dict from split name to column names for a
        `DatasetDict`/`IterableDatasetDict`.

    Example:

    ```python
    >>> from datasets import Dataset
    >>> from trl.data_utils import get_dataset_column_names
    >>> get_dataset_column_names(Dataset.from_dict({"prompt": ["a"], "completion": ["b"]}))
    ['prompt', 'completion']
    ```
    """
    from datasets import DatasetDict, IterableDatasetDict

    if isinstance(ds, (DatasetDict, IterableDatasetDict)):
        return {split: _get_column_names(split_ds) for split, split_ds in ds.items()}
    return _get_column_names(ds)


def _unpair_batch(batch: dict[str, list], column_names: list[str]) -> dict[str, list]:
    # As the reference: a batch of B pairs becomes its B chosen rows, then its B rejected rows (in the same order).
    unpaired: dict[str, list] = {}
    for name in column_names:
        if name == "chosen":
            unpaired["completion"] = list(batch["chosen"]) + list(batch["rejected"])
            unpaired["label"] = [True] * len(batch["chosen"]) + [False] * len(batch["rejected"])
        elif name != "rejected":
            unpaired[name] = list(batch[name]) * 2
    return unpaired


def unpair_preference_dataset(
    dataset: DatasetType, num_proc: int | None = None, desc: str | None = None
) -> DatasetType:
    r"""
    Turn a paired preference dataset into an unpaired one (e.g. for KTO).

    Each `(prompt, chosen, rejected)` row becomes two rows: `(prompt, completion=chosen, label=True)` and
    `(prompt, completion=rejected, label=False)`. Every other column is duplicated. The prompt may be implicit (no
    `"prompt"` column). As in the reference, the rows are written per map batch (`batch_size` in `map`, 1,000 by
    default): a batch of `B` pairs becomes its `B` chosen rows, then its `B` rejected rows, in the same order.

    Args:
        dataset (`Dataset`, `DatasetDict`, `IterableDataset` or `IterableDatasetDict`):
            A preference dataset with `"chosen"` and `"rejected"` columns.
        num_proc (`int`, *optional*):
            Number of processes for `Dataset.map` (ignored by iterable datasets, which stream).
        desc (`str`, *optional*):
            Progress-bar description for `Dataset.map` (ignored by iterable datasets).

    Returns:
        The unpaired dataset, of the same type as `dataset`.

    Raises:
        `ValueError`: If `"chosen"` or `"rejected"` is missing, or a `"completion"` or `"label"` column already
            exists.

    Example:

    ```python
    >>> from datasets import Dataset
    >>> from trl.data_utils import unpair_preference_dataset
    >>> dataset = Dataset.from_dict({"prompt": ["The sky is"], "chosen": [" blue."], "rejected": [" green."]})
    >>> unpair_preference_dataset(dataset).to_dict()
    {'prompt': ['The sky is', 'The sky is'], 'completion': [' blue.', ' green.'], 'label': [True, False]}
    ```
    """
    from datasets import Dataset, DatasetDict, IterableDatasetDict

    if isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        return type(dataset)(
            {
                split: unpair_preference_dataset(split_ds, num_proc=num_proc, desc=desc)
                for split, split_ds in dataset.items()
            }
        )
    column_names = _get_column_names(dataset)
    if "chosen" not in column_names or "rejected" not in column_names:
        raise ValueError(
            f"unpair_preference_dataset expects columns 'chosen' and 'rejected'; got {column_names}."
        )
    clashes = [name for name in ("completion", "label") if name in column_names]
    if clashes:
        raise ValueError(
            "unpair_preference_dataset writes columns 'completion' and 'label', but the dataset already has "
            f"{clashes} (columns: {column_names}). Rename or remove them first."
        )
    map_kwargs: dict[str, Any] = {
        "batched": True,
        "remove_columns": column_names,
        "fn_kwargs": {"column_names": column_names},
    }
    if isinstance(dataset, Dataset):
        map_kwargs.update(num_proc=num_proc, desc=desc)
    return dataset.map(_unpair_batch, **map_kwargs)


def maybe_unpair_preference_dataset(
    dataset: DatasetType, num_proc: int | None = None, desc: str | None = None
) -> DatasetType:
    r"""
    Apply [`unpair_preference_dataset`] if the dataset has both `"chosen"` and `"rejected"` columns; otherwise return
    it unchanged.

    Args:
        dataset (`Dataset`, `DatasetDict`, `IterableDataset` or `IterableDatasetDict`):
            The dataset.
        num_proc (`int`, *optional*):
            Number of processes for `Dataset.map`.
        desc (`str`, *optional*):
            Progress-bar description for `Dataset.map`.

    Returns:
        The unpaired dataset, or the input itself.

    Example:

    ```python
    >>> from datasets import Dataset
    >>> from trl.data_utils import maybe_unpair_preference_dataset
    >>> dataset = Dataset.from_dict({"prompt": ["The sky is"], "completion": [" blue."], "label": [True]})
    >>> maybe_unpair_preference_dataset(dataset) is dataset
    True
    ```
    """
    column_names = get_dataset_column_names(dataset)
    if isinstance(column_names, dict):  # every split must be paired for the dict to be unpaired
        paired = bool(column_names) and all(
            "chosen" in names and "rejected" in names for names in column_names.values()
        )
    else:
        paired = "chosen" in column_names and "rejected" in column_names
    if paired:
        return unpair_preference_dataset(dataset, num_proc=num_proc, desc=desc)
    return dataset


def prepare_multimodal_messages(messages: list[dict[str, Any]], images: list | None = None) -> list[dict[str, Any]]:
    r"""
    Convert messages to typed content blocks and attach images to them.

    String contents become `[{"type": "text", "text": ...}]`. If `images` are given and the messages hold no empty
    image placeholder yet, one `{"type": "image"}` placeholder per image is inserted at the start of the first user
    message, before its text. The empty placeholders are then filled, in order, with `"image": <image>`; image blocks
    that already carry an image are kept as they are. The input is not modified, and the image objects are not
    copied.

    Args:
        messages (`list[dict[str, Any]]`):
            Messages with roles `"system"`, `"user"`, `"assistant"` or `"tool"`. An assistant message may have no
            `"content"` when it has `"tool_calls"`.
        images (`list`, *optional*):
            Images (e.g. `PIL.Image.Image`) for the empty placeholders.

    Returns:
        `list[dict[str, Any]]`: The messages with list contents and filled image blocks.

    Raises:
        `ValueError`: If a role is not supported, a message has no content (and no tool calls), images are given but
            there is no user message, or the number of empty placeholders differs from the number of images.

    Example:

    ```python
    >>> from trl.data_utils import prepare_multimodal_messages
    >>> messages = [{"role": "user", "content": "What's in this image?"},
    ...             {"role": "assistant", "content": "A cat."}]
    >>> prepared = prepare_multimodal_messages(messages, images=["<image>"])
    >>> prepared[0]["content"]
    [{'type': 'image', 'image': '<image>'}, {'type': 'text', 'text': "What's in this image?"}]
    >>> prepared[1]["content"]
    [{'type': 'text', 'text': 'A cat.'}]
    ```
    """
    images = list(images) if images is not None else []
    prepared: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role not in _MESSAGE_ROLES:
            raise ValueError(f"Invalid message role {role!r}; expected one of {list(_MESSAGE_ROLES)}.")
        message = dict(message)
        content = message.get("content")
        if content is None:
            if not (role == "assistant" and message.get("tool_calls")):
                raise ValueError(
                    f"A {role!r} message has no 'content'; only assistant messages with 'tool_calls' may omit it."
                )
        elif isinstance(content, str):
            message["content"] = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            message["content"] = [dict(block) if isinstance(block, dict) else block for block in content]
        else:
            raise TypeError(f"Message content must be a string or a list of blocks; got {type(content).__name__}.")
        prepared.append(message)

    def is_empty_placeholder(block: Any) -> bool:
        return isinstance(block, dict) and block.get("type") == "image" and block.get("image") is None

    placeholders = [
        block for message in prepared for block in message.get("content") or [] if is_empty_placeholder(block)
    ]
    if images and not placeholders:
        first_user = next((message for message in prepared if message["role"] == "user"), None)
        if first_user is None:
            raise ValueError(f"{len(images)} image(s) were given but there is no user message to attach them to.")
        placeholders = [{"type": "image"} for _ in images]
        first_user["content"] = placeholders + first_user["content"]
    if len(placeholders) != len(images):
        raise ValueError(
            f"The messages hold {len(placeholders)} empty image placeholder(s) but {len(images)} image(s) were given; "
            "the counts must match."
        )
    for block, image in zip(placeholders, images):
        block["image"] = image
    return prepared
