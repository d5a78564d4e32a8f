"""Prompt-only data for the online trainers: format checks and prompt token ids, computed once before training.

Every row keeps its columns (the reward functions receive them) and gains `prompt_ids`: the prompt rendered by the
chat template with the generation prompt appended (conversational) or tokenised as it is (standard), without extra
special tokens (a chat template writes its own). Completions are then generated from exactly these ids.
"""

from __future__ import annotations

from .conversation import maybe_convert_to_chatml
from .formats import check_dataset, check_example_types, detect_format
from .tokenize import render_ids, row_template_kwargs
from .vision import text_block_messages


def _first_row(dataset) -> dict:
    for row in dataset:
        return row
    raise ValueError("The dataset is empty.")


def tokenize_prompt(row: dict, tokenizer, conversational: bool, chat_template_kwargs: dict | None = None,
                    row_index: int | None = None, name: str = "train") -> list[int]:
    """Token ids of one row's prompt, ready for generation. A conversational prompt that ends with an assistant
    message is continued (`continue_final_message`), not closed and followed by a new assistant turn. Text content
    blocks are rendered as the text template expects (`trl.data.vision.text_block_messages`; an image block is an
    error naming the row).

    Example:
        ```python
        >>> tokenize_prompt({"prompt": [{"role": "user", "content": "hi"}]}, tiny_tokenizer(), True)[-3:]
        [1, 68, 296, ...]
        ```
    """
    prompt = row["prompt"]
    if conversational:
        prompt = text_block_messages(prompt, tokenizer, column="prompt", row=row_index, name=name)
        kwargs = {**(chat_template_kwargs or {}), **row_template_kwargs(row)}
        if prompt and prompt[-1].get("role") == "assistant":  # a prefilled answer: generation continues it
            return render_ids(tokenizer, prompt, kwargs, continue_final_message=True)
        return render_ids(tokenizer, prompt, kwargs, add_generation_prompt=True)
    return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def prepare_prompt_dataset(dataset, tokenizer, trainer: str, name: str = "train", chat_template_kwargs=None,
                           num_proc: int | None = None, model=None):
    """Check that `dataset` has a `prompt` column of consistent type and add `prompt_ids`.

    Args:
        dataset (`datasets.Dataset` or `datasets.IterableDataset`): rows with a `prompt` (text or messages) and any
            other columns; or pre-tokenised rows with `prompt_ids` (lists of ints), used as they are (`prompt` is then
            decoded from them if absent). A streaming dataset is checked on its first rows and tokenised as it is read.
        tokenizer: the policy's tokenizer (needs a chat template for conversational prompts).
        trainer (`str`): the trainer's name, for messages.
        model (`PreTrainedModel`, *optional*): the policy, named in messages.

    Returns:
        `(dataset, conversational)`.

    Raises:
        `ValueError` / `TypeError`: not a `Dataset`, an image column, no `prompt` column, mixed types, a `None`
            prompt or a message without content (naming the row), a conversational prompt without a chat template,
            an empty prompt.
    """
    from datasets import Dataset, IterableDataset

    if isinstance(dataset, IterableDataset):
        return _prepare_streaming(dataset, tokenizer, trainer, name, chat_template_kwargs, model)
    check_dataset(dataset, trainer, name, model, tokenizer)
    if not isinstance(dataset, Dataset):
        raise TypeError(
            f"{trainer} needs a `datasets.Dataset` or `datasets.IterableDataset` as its {name} dataset; got "
            f"{type(dataset).__name__}. Load the prompts into a `Dataset` (e.g. `Dataset.from_list`)."
        )
    columns = list(dataset.column_names)
    if "prompt_ids" in columns:  # pre-tokenised prompts: generation starts from exactly these ids
        dataset = _check_prompt_ids(dataset, tokenizer, trainer, name)
        return dataset, isinstance(_first_row(dataset)["prompt"], list)
    if "prompt" not in columns:
        raise ValueError(
            f"{trainer} expects a 'prompt' column (text or a list of messages); the {name} dataset has columns "
            f"{columns}. Rename the column holding the prompts to 'prompt'."
        )
    first = _first_row(dataset)["prompt"]
    if isinstance(first, list) and first and isinstance(first[0], dict) and "from" in first[0]:  # ShareGPT messages
        dataset = dataset.map(lambda row: {"prompt": maybe_convert_to_chatml({"prompt": row["prompt"]})["prompt"]})
    example = _first_row(dataset)
    fmt = detect_format(["prompt"], {"prompt": example["prompt"]})
    check_example_types({"prompt": example["prompt"]}, fmt, row=0, name=name)
    if fmt.conversational and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"The {name} prompts are conversational but the tokenizer has no chat template. Give the tokenizer one "
            "(`tokenizer.chat_template = ...`, or `trl.clone_chat_template`), or use plain-text prompts."
        )

    def add_ids(row, index):
        check_example_types({"prompt": row["prompt"]}, fmt, row=index, name=name)
        ids = tokenize_prompt(row, tokenizer, fmt.conversational, chat_template_kwargs, row_index=index, name=name)
        return {"prompt_ids": ids}

    dataset = dataset.map(add_ids, with_indices=True, num_proc=num_proc,
                          desc=f"Tokenizing {name} prompts ({fmt.describe()})")
    empty = [i for i, ids in enumerate(dataset["prompt_ids"]) if not ids]
    if empty:
        raise ValueError(f"{len(empty)} {name} prompts are empty after tokenisation (e.g. rows {empty[:5]}).")
    return dataset, fmt.conversational


def first_rows(dataset, rows: int = 16):
    """The first rows of a streaming dataset (a list), for checks that must not read the whole stream; a map-style
    dataset as it is."""
    from datasets import IterableDataset

    return list(dataset.take(rows)) if isinstance(dataset, IterableDataset) else dataset


def _prepare_streaming(dataset, tokenizer, trainer: str, name: str, chat_template_kwargs, model):
    """[`prepare_prompt_dataset`] for a streaming dataset: the same checks on its first rows, and the prompts
    tokenised on the fly (`IterableDataset.map`), as the stream is read."""
    from datasets import Dataset

    head = first_rows(dataset)
    if not head:
        raise ValueError(f"The {name} dataset given to {trainer} is empty.")
    _, conversational = prepare_prompt_dataset(Dataset.from_list(head), tokenizer, trainer, name, chat_template_kwargs,
                                               model=model)
    if "prompt_ids" in head[0]:
        return dataset, conversational

    def add_ids(row):
        if isinstance(row["prompt"], list) and row["prompt"] and "from" in row["prompt"][0]:  # ShareGPT messages
            row = {**row, "prompt": maybe_convert_to_chatml({"prompt": row["prompt"]})["prompt"]}
        ids = tokenize_prompt(row, tokenizer, conversational, chat_template_kwargs)
        if not ids:
            raise ValueError(f"A {name} prompt of the streaming dataset is empty after tokenisation: {row['prompt']!r}.")
        return {"prompt": row["prompt"], "prompt_ids": ids}

    return dataset.map(add_ids), conversational


def _check_prompt_ids(dataset, tokenizer, trainer: str, name: str):
    for i, ids in enumerate(dataset["prompt_ids"]):
        if not isinstance(ids, list) or not ids or not all(isinstance(t, int) for t in ids):
            raise TypeError(f"Row {i} of the {name} dataset's 'prompt_ids' column must be a non-empty list of token "
                            f"ids; got {str(ids)[:80]}.")
    if "prompt" not in dataset.column_names:
        dataset = dataset.map(lambda row: {"prompt": tokenizer.decode(row["prompt_ids"])}, desc=None)
    return dataset
