"""Dataset preparation for preference trainers (DPO, reward modelling): prompt, chosen and rejected token ids.

Each side is tokenised with the SFT path (`tokenize_sft_example`), so rendering and eos handling are the same
everywhere: the prompt is the longest token prefix shared by the rendered prompt and both full sequences, and each
completion is the rest of its full rendering, as in the reference: template text after the end-of-turn token (such
as ChatML's "\\n") is kept, so a reward model is scored at the rendering's final token.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from .. import guards
from .conversation import common_prefix_length, extract_prompt, maybe_convert_dataset_to_chatml
from .formats import DatasetFormat, check_dataset, check_example_types, detect_format, require_format
from .tokenize import end_of_turn_ids, tokenize_sft_example
from .vision import with_text_blocks_rendered

TOKENIZED_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
# Per-pair values that survive tokenisation: precomputed reference log-probs (DPO) and a reward margin (reward models).
PASSTHROUGH_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps", "margin")


@dataclass
class PreferenceDataOptions:
    """The parts of a preference config that dataset preparation reads."""

    max_length: int | None
    num_proc: int | None = None
    guards: bool = True


def _completion_span(out: dict) -> tuple[int, int]:
    mask = out["completion_mask"]
    start = mask.index(1) if 1 in mask else len(mask)
    end = len(mask) - mask[::-1].index(1) if 1 in mask else len(mask)
    return start, end


def tokenize_preference_example(row: dict, tokenizer, *, conversational: bool, eos_ids: set[int]) -> dict:
    """Tokenise one explicit-prompt preference row into `prompt_ids`, `chosen_ids` and `rejected_ids`.

    Example:
        ```python
        >>> out = tokenize_preference_example({"prompt": "2+2=", "chosen": " 4", "rejected": " 5"}, tok,
        ...                                   conversational=False, eos_ids={tok.eos_token_id})
        >>> tok.decode(out["chosen_ids"])
        ' 4<|im_end|>'
        ```
    """
    sides = {}
    for side in ("chosen", "rejected"):
        example = {k: v for k, v in row.items() if k in ("prompt", "tools", "chat_template_kwargs")}
        example["completion"] = row[side]
        sides[side] = tokenize_sft_example(
            example, tokenizer, kind="prompt_completion", conversational=conversational,
            eos_token_id=tokenizer.eos_token_id, eos_ids=eos_ids,
        )
    (c_start, _), (r_start, _) = _completion_span(sides["chosen"]), _completion_span(sides["rejected"])
    chosen, rejected = sides["chosen"]["input_ids"], sides["rejected"]["input_ids"]
    prompt_len = min(c_start, r_start, common_prefix_length(chosen, rejected))
    # A completion is the full rendering minus the prompt, template text after the end-of-turn token included.
    return {"prompt_ids": chosen[:prompt_len], "chosen_ids": chosen[prompt_len:], "rejected_ids": rejected[prompt_len:]}


def check_pair(row: dict, index: int, *, fmt: DatasetFormat, name: str) -> dict:
    """Check one preference row (naming it by `index`) and, for an implicit prompt, move the shared start of `chosen`
    and `rejected` into `prompt`. Returns the row's updated columns, for `Dataset.map(..., with_indices=True)`."""
    check_example_types(row, fmt, row=index, name=name)
    return extract_prompt(row) if fmt.kind == "implicit_preference" else {}


def _tokenize_pair(row: dict, index: int, *, fmt: DatasetFormat, name: str, tokenizer, eos_ids: set[int]) -> dict:
    row = {**row, **check_pair(row, index, fmt=fmt, name=name)}
    return tokenize_preference_example(row, tokenizer, conversational=fmt.conversational, eos_ids=eos_ids)


def _first_row(dataset) -> dict:
    for row in dataset:
        return row
    raise ValueError("The dataset is empty: there is nothing to train on.")


def tokenize_rows(dataset, tokenize_row, tokenizer, fmt: DatasetFormat, name: str, passthrough: tuple[str, ...],
                  map_kwargs: dict):
    """The one tokenise-and-map step of paired (DPO, reward) and unpaired (KTO) preference data.

    `tokenize_row(row, index, fmt=, name=, tokenizer=, eos_ids=)` returns a row's token columns; every other column
    is removed except `passthrough` (precomputed values that survive tokenisation). Conversational data needs a chat
    template: without one this is an error naming the tokenizer and the fix.
    """
    from datasets import Dataset

    if fmt.conversational and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"The {name} dataset is conversational but the tokenizer {type(tokenizer).__name__} has no chat "
            "template. Set `chat_template_path=...` in the config, or give the tokenizer a template."
        )
    fn_kwargs = {"fmt": fmt, "name": name, "tokenizer": tokenizer, "eos_ids": end_of_turn_ids(tokenizer)}
    map_kwargs = {**map_kwargs}
    if isinstance(dataset, Dataset):
        map_kwargs["desc"] = f"Tokenizing {name} dataset ({fmt.describe()})"
    return dataset.map(
        tokenize_row, fn_kwargs=fn_kwargs, with_indices=True,
        remove_columns=[c for c in dataset.column_names or _first_row(dataset) if c not in passthrough],
        **map_kwargs,
    )


def prepare_preference_dataset(dataset, tokenizer, options: PreferenceDataOptions, trainer: str, name: str = "train",
                               model=None):
    """Turn a preference dataset (explicit or implicit prompt, standard or conversational, or pre-tokenised
    `prompt_ids`/`chosen_ids`/`rejected_ids`) into token ids, with checks.

    Rows whose prompt alone fills `max_length` and rows whose chosen and rejected completions are identical teach
    nothing: they are dropped with a warning, except that identical pairs, or prompts that fill `max_length` in most
    rows, stop the run (with guards on, see `trl.guards`). A malformed row (a `None`
    value, a message without content) is an error naming the row and the column; `model` is named in messages.

    Returns:
        `(dataset, fmt)`.

    Example:
        ```python
        >>> ds, fmt = prepare_preference_dataset(prefs, tok, PreferenceDataOptions(max_length=256), "DPOTrainer")
        >>> ds.column_names
        ['prompt_ids', 'chosen_ids', 'rejected_ids']
        ```
    """
    from datasets import Dataset

    check_dataset(dataset, trainer, name, model, tokenizer)
    dataset = with_text_blocks_rendered(dataset, tokenizer, name)  # text content blocks, for a text template

    map_kwargs = {"num_proc": options.num_proc} if isinstance(dataset, Dataset) else {}
    dataset = maybe_convert_dataset_to_chatml(dataset, **map_kwargs)
    columns = list(dataset.column_names or _first_row(dataset).keys())
    if {"chosen_ids", "rejected_ids"} <= set(columns):
        fmt = DatasetFormat("tokenized", False)
        if "prompt_ids" not in columns:
            dataset = dataset.map(lambda row: {"prompt_ids": []}, **map_kwargs)
    else:
        first = _first_row(dataset)
        fmt = detect_format(columns, first)
        require_format(fmt, ("preference", "implicit_preference"), trainer, columns)
        check_example_types(first, fmt, row=0, name=name)
        # an implicit prompt (the shared start of chosen and rejected) is extracted in the same pass
        dataset = tokenize_rows(dataset, _tokenize_pair, tokenizer, fmt, name, PASSTHROUGH_COLUMNS, map_kwargs)
    if isinstance(dataset, Dataset):
        dataset = _check_pairs(dataset, options, name)
    return dataset, fmt


def _check_pairs(dataset, options: PreferenceDataOptions, name: str):
    prompts, chosen, rejected = dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"]
    identical = [i for i, (c, r) in enumerate(zip(chosen, rejected)) if c == r]
    if identical:
        guards.report(
            f"{len(identical)} of {len(dataset)} {name} pairs have identical chosen and rejected completions "
            f"(e.g. rows {identical[:5]}): they carry no preference.",
            "Remove them from the dataset. With guards=False they are dropped.",
            options.guards,
            "identical_pairs",
        )
    no_room = guards.check_prompts_fit(name, prompts, options.max_length, options.guards, "compare")
    empty = [i for i, (c, r) in enumerate(zip(chosen, rejected)) if not c or not r]
    if empty:
        raise ValueError(
            f"{len(empty)} {name} rows have an empty chosen or rejected completion (e.g. rows {empty[:5]}); every "
            "pair needs two completions. Fix or remove those rows."
        )
    drop = set(identical) | set(no_room)
    if drop:
        warnings.warn(f"Dropped {len(drop)} of {len(dataset)} {name} rows (see above).")
        dataset = dataset.select([i for i in range(len(dataset)) if i not in drop])
    return dataset
