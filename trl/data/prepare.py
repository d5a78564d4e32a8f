"""Dataset preparation for SFT: detect the format, tokenise with masks, truncate, check, pack.

Every step is reported or checked: rows are never dropped silently (see `trl.guards`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from .. import guards
from .conversation import maybe_convert_dataset_to_chatml
from .formats import check_dataset, check_example_types, detect_format, require_format
from .tokenize import end_of_turn_ids, tokenize_sft_example, truncate
from .vision import text_block_row

SFT_KINDS = ("language_modeling", "prompt_completion", "tokenized")
TOKEN_COLUMNS = ("input_ids", "labels", "completion_mask", "assistant_masks")


@dataclass
class SFTDataOptions:
    """The parts of `SFTConfig` that dataset preparation reads."""

    max_length: int | None
    truncation_mode: str = "keep_start"
    dataset_text_field: str = "text"
    completion_only_loss: bool | None = None
    assistant_only_loss: bool = False
    packing: bool = False
    packing_strategy: str = "bfd"
    shuffle_dataset: bool = False
    num_proc: int | None = None
    seed: int = 42
    guards: bool = True


_ANNOUNCED_TRAINING_TEMPLATES: set[str] = set()


def with_training_template(tokenizer):
    """The tokenizer to compute assistant masks with: `tokenizer` itself when its chat template has `{% generation %}`
    markers or is prefix-preserving (the prefix method of `trl.data.tokenize` then computes exact masks), else a
    shallow copy that renders with the family's training template
    (`trl.chat_template_utils.get_training_chat_template`), announced once per template with a warning that names
    the family. The given tokenizer is not changed, so the saved model keeps its original template.

    Raises:
        `ValueError`: the template is not prefix-preserving and of no family with a training template.
    """
    import copy

    from ..chat_template_utils import get_training_chat_template, has_generation_markers, \
        is_chat_template_prefix_preserving
    from ..template_families import detect_family

    if has_generation_markers(tokenizer) or is_chat_template_prefix_preserving(tokenizer):
        return tokenizer
    template = get_training_chat_template(tokenizer)
    if template is None:
        return tokenizer
    family = detect_family(tokenizer)
    if tokenizer.chat_template not in _ANNOUNCED_TRAINING_TEMPLATES:
        _ANNOUNCED_TRAINING_TEMPLATES.add(tokenizer.chat_template)
        warnings.warn(
            f"assistant_only_loss=True: the chat template ({family.name} family) is not prefix-preserving, so the "
            f"assistant masks are computed with its training template (trl.chat_template_utils."
            f"get_training_chat_template), which marks assistant turns with generation markers and renders "
            f"every turn as the original does when it is the latest one (so earlier assistant turns keep, e.g., their "
            f"reasoning, where the original drops it). The "
            f"tokenizer's own template is left unchanged.",
            stacklevel=3,
        )
    training = copy.copy(tokenizer)
    training.chat_template = template
    return training


def _first_row(dataset) -> dict:
    for row in dataset:
        return row
    raise ValueError("The dataset is empty: there is nothing to train on.")


def _loss_mask(row: dict, completion_only_loss: bool) -> list[int]:
    if "labels" in row:  # pre-tokenised rows may bring their own labels
        mask = [int(label != -100) for label in row["labels"]]
    elif completion_only_loss and "completion_mask" in row:
        mask = row["completion_mask"]
    else:
        mask = [1] * len(row["input_ids"])
    if "assistant_masks" in row:
        mask = [a and b for a, b in zip(mask, row["assistant_masks"])]
    return mask


def _tokenize_and_measure(row: dict, index: int, tokenizer, fmt, options: SFTDataOptions, completion_only_loss: bool,
                          eos_ids, name: str):
    check_example_types(row, fmt, options.dataset_text_field, row=index, name=name)
    if fmt.conversational:  # content blocks: joined for a template that expects strings; image blocks refused
        row = text_block_row(row, tokenizer, row_index=index, name=name)
    if fmt.kind != "tokenized":
        row = tokenize_sft_example(
            row, tokenizer, kind=fmt.kind, conversational=fmt.conversational,
            text_field=options.dataset_text_field, assistant_only_loss=options.assistant_only_loss,
            eos_token_id=tokenizer.eos_token_id, eos_ids=eos_ids,
        )
    mask = _loss_mask(row, completion_only_loss)
    out = dict(row)
    out["_loss_tokens"] = sum(mask[1:])  # position 0 is never a target of a causal LM
    out["_prompt_tokens"] = len(mask) - sum(mask) if completion_only_loss else 0
    if options.max_length is not None and (not options.packing or options.packing_strategy == "bfd"):
        out = truncate(out, options.max_length, options.truncation_mode)  # bfd packing would cut the same tokens
        mask = _loss_mask(out, completion_only_loss)
    out["_kept_loss_tokens"] = sum(mask[1:])
    out["_eos_trained"] = int(any(m and t in eos_ids for t, m in zip(out["input_ids"], mask)))
    return out


def prepare_sft_dataset(dataset, tokenizer, options: SFTDataOptions, formatting_func=None, name: str = "train",
                        model=None):
    """Turn a raw SFT dataset into tokenised rows (`input_ids`, `completion_mask`, optional `assistant_masks`),
    truncated, checked and optionally packed.

    Args:
        dataset (`datasets.Dataset` or `datasets.IterableDataset`): language-modelling, prompt-completion (standard or
            conversational, ShareGPT converted) or pre-tokenised rows.
        tokenizer: the tokenizer; its chat template renders conversational rows.
        options (`SFTDataOptions`): the relevant config fields.
        formatting_func (`Callable[[dict], str]`, *optional*): builds the text of each row.
        name (`str`): "train" or "eval", for messages.
        model (`PreTrainedModel`, *optional*): the model to train, named in messages.

    Returns:
        `(dataset, fmt)`: the prepared dataset and the detected `DatasetFormat`.

    Example:
        ```python
        >>> ds, fmt = prepare_sft_dataset(tiny_task_dataset(), tokenizer, SFTDataOptions(max_length=128))
        >>> fmt.describe(), ds.column_names
        ('conversational language modeling', ['input_ids', 'completion_mask'])
        ```
    """
    from datasets import Dataset

    check_dataset(dataset, "SFTTrainer", name, model, tokenizer)

    if getattr(dataset, "_format_type", None) == "custom":
        raise ValueError(
            f"The {name} dataset was built with `with_transform`, which cannot be prepared ahead of training. Apply "
            "the transform with `map`, or pass `dataset_kwargs={'skip_prepare_dataset': True}` with a collator."
        )
    map_kwargs = {"num_proc": options.num_proc} if isinstance(dataset, Dataset) else {}
    if formatting_func is not None:
        sample = formatting_func(_first_row(dataset))
        if not isinstance(sample, str):
            raise TypeError(
                f"`formatting_func` must return one string per row; it returned {type(sample).__name__}. "
                "Return the formatted text of the single example it receives."
            )
        # the formatted text replaces every raw column, so the format is detected from it alone (a row with
        # `chosen`/`rejected` formatted into text is language modelling, not preference data)
        raw_columns = list(dataset.column_names or _first_row(dataset).keys())
        dataset = dataset.map(lambda row: {options.dataset_text_field: formatting_func(row)},
                              remove_columns=[c for c in raw_columns if c != options.dataset_text_field], **map_kwargs)
    else:
        dataset = maybe_convert_dataset_to_chatml(dataset, **map_kwargs)
    columns = list(dataset.column_names or _first_row(dataset).keys())
    first = _first_row(dataset)
    fmt = detect_format(columns, first, options.dataset_text_field)
    require_format(fmt, SFT_KINDS, "SFTTrainer", columns)
    check_example_types(first, fmt, options.dataset_text_field, row=0, name=name)
    if fmt.conversational and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"The {name} dataset is conversational but the tokenizer {type(tokenizer).__name__} has no chat template. "
            "Set `SFTConfig(chat_template_path=...)` to a template file or a tokenizer that has one."
        )
    if options.assistant_only_loss and not fmt.conversational:
        raise ValueError(
            f"`assistant_only_loss=True` needs conversational data (messages with roles); the {name} dataset is "
            f"{fmt.describe()}."
        )
    if options.assistant_only_loss:
        tokenizer = with_training_template(tokenizer)
    # Prompt-completion rows train on the completion unless told otherwise; pre-tokenised rows on their own masks.
    completion_only_loss = options.completion_only_loss is not False and fmt.kind in ("prompt_completion", "tokenized")
    if options.completion_only_loss and fmt.kind == "language_modeling":
        warnings.warn(
            f"`completion_only_loss=True` has no effect on the {name} dataset: it is {fmt.describe()} data, which has "
            "no completion (every token is trained; use assistant_only_loss=True for conversations).",
            stacklevel=3,
        )
    eos_ids = end_of_turn_ids(tokenizer)
    if isinstance(dataset, Dataset):
        map_kwargs["desc"] = f"Tokenizing {name} dataset ({fmt.describe()})"
    fn_kwargs = dict(
        tokenizer=tokenizer, fmt=fmt, options=options, completion_only_loss=completion_only_loss, eos_ids=eos_ids,
        name=name,
    )
    removed = [c for c in columns if c not in TOKEN_COLUMNS] if fmt.kind == "tokenized" else columns
    dataset = dataset.map(_tokenize_and_measure, fn_kwargs=fn_kwargs, with_indices=True, remove_columns=removed,
                          **map_kwargs)
    if isinstance(dataset, Dataset):
        # Only turns and completions must end: plain-text documents cut by max_length (and pre-tokenised rows, the
        # user's own tokens) are ordinary language-model training, e.g. pretraining chunks.
        check_eos = fmt.conversational or fmt.kind == "prompt_completion"
        dataset = _check_rows(dataset, tokenizer, options, name, check_eos=check_eos)
    else:  # a stream cannot be inspected ahead of training: drop rows with nothing to learn, and say so once
        warnings.warn(
            f"The {name} dataset is streamed, so it cannot be checked ahead of training: rows with no loss token left "
            "after truncation will be skipped as they arrive, without being counted."
        )
        dataset = dataset.filter(lambda row: row["_kept_loss_tokens"] > 0)
    helper_columns = [c for c in ("_loss_tokens", "_prompt_tokens", "_kept_loss_tokens", "_eos_trained",
                                  "prompt_is_prefix") if c in (dataset.column_names or [])]
    dataset = dataset.remove_columns(helper_columns)
    if not completion_only_loss and "completion_mask" in (dataset.column_names or []) and fmt.kind != "tokenized":
        dataset = dataset.remove_columns("completion_mask")
    if options.shuffle_dataset:
        dataset = dataset.shuffle(seed=options.seed)
    if options.packing:
        from .packing import pack_dataset

        dataset = pack_dataset(dataset, options.max_length, options.packing_strategy)
    return dataset, fmt


def _check_rows(dataset, tokenizer, options: SFTDataOptions, name: str, check_eos: bool):
    loss_tokens = dataset["_loss_tokens"]
    kept = dataset["_kept_loss_tokens"]
    empty = [i for i, n in enumerate(loss_tokens) if n == 0]
    cut = [i for i, (n, k) in enumerate(zip(loss_tokens, kept)) if n > 0 and k == 0]
    guards.check_loss_masks(name, len(dataset), empty, options.guards)
    if cut:  # a few are dropped with a warning, most stop the run (trl.guards.check_truncation)
        prompt_tokens = dataset["_prompt_tokens"]
        longest = max(prompt_tokens[i] for i in cut)
        guards.check_truncation(name, len(dataset), cut, longest, options.max_length, options.guards)
    keep = [i for i, k in enumerate(kept) if k > 0]
    if len(keep) < len(dataset):
        warnings.warn(f"Dropped {len(dataset) - len(keep)} of {len(dataset)} {name} rows with no loss token left.")
        if not keep:
            raise ValueError(f"No {name} row has a token to train on; see the warnings above.")
        dataset = dataset.select(keep)
    eos_trained = dataset["_eos_trained"]
    if check_eos and (not options.packing or options.packing_strategy == "bfd"):
        end_tokens = "/".join(tokenizer.convert_ids_to_tokens(sorted(end_of_turn_ids(tokenizer))))
        guards.check_eos_trained(name, len(dataset), len(dataset) - sum(eos_trained), end_tokens, options.guards)
    if "prompt_is_prefix" in dataset.column_names:
        bad = len(dataset) - sum(dataset["prompt_is_prefix"])
        if bad:
            warnings.warn(
                f"In {bad} of {len(dataset)} {name} rows the tokenised prompt is not a prefix of the tokenised "
                "prompt+completion (the tokenizer merges across the boundary, or the template renders the prompt "
                "differently); the completion starts at their longest common prefix."
            )
    return dataset
