"""Dataset preparation for unpaired preference data (KTO): prompt and completion token ids, a desirability label, and
the mismatched "KL completion" of each row.

Rows are `prompt`/`completion`/`label` (standard or conversational), or pre-tokenised `prompt_ids`/`completion_ids`/
`label`. Paired preference data (`prompt`/`chosen`/`rejected`, explicit or implicit prompt) is unpaired first: each
pair becomes a desirable row and an undesirable row. Prompt and completion are tokenised with the SFT path
(`tokenize_sft_example`), and a completion is the rest of the full rendering after the prompt, template text after
the end-of-turn token (ChatML's "\\n") included, as in DPO and the reference.

KL completions are paired here, once ([`kl_pairing`]): every row gets the completion of a row with a *different*
prompt, whatever the row order (paired data unpaired here lists a batch's chosen rows, then its rejected rows, so the
neighbour of a row may answer the same prompt). With distinct prompts, row `i` gets the completion of row `i + 1`.
Pairing at preparation time rather than inside each batch keeps the estimate independent of the sampler and of the
batch size, and makes the reference log-probs of KL completions cacheable.
"""

from __future__ import annotations

import warnings
from collections import Counter

from .. import guards
from .conversation import maybe_convert_dataset_to_chatml, unpair_preference_dataset
from .formats import DatasetFormat, check_dataset, check_example_types, detect_format
from .preference import PreferenceDataOptions, _completion_span, _first_row, check_pair, tokenize_rows
from .tokenize import tokenize_sft_example
from .vision import with_text_blocks_rendered

TOKENIZED_COLUMNS = ("prompt_ids", "completion_ids", "label")
# Per-row values that survive tokenisation: precomputed reference log-probs of the completion and KL completion.
PASSTHROUGH_COLUMNS = ("ref_logps", "ref_KL_logps")
_ACCEPTED = "'prompt'/'completion'/'label' (unpaired), 'prompt'/'chosen'/'rejected' or 'chosen'/'rejected' (paired)"


def tokenize_unpaired_example(row: dict, tokenizer, *, conversational: bool, eos_ids: set[int]) -> dict:
    """Tokenise one unpaired row into `prompt_ids`, `completion_ids` and a boolean `label`.

    Example:
        ```python
        >>> out = tokenize_unpaired_example({"prompt": "2+2=", "completion": " 4", "label": True}, tok,
        ...                                 conversational=False, eos_ids={tok.eos_token_id})
        >>> tok.decode(out["completion_ids"]), out["label"]
        (' 4<|im_end|>', True)
        ```
    """
    example = {k: v for k, v in row.items() if k in ("prompt", "completion", "tools", "chat_template_kwargs")}
    out = tokenize_sft_example(
        example, tokenizer, kind="prompt_completion", conversational=conversational,
        eos_token_id=tokenizer.eos_token_id, eos_ids=eos_ids,
    )
    start, _ = _completion_span(out)  # the completion is the full rendering minus the prompt, as in paired data
    return {"prompt_ids": out["input_ids"][:start], "completion_ids": out["input_ids"][start:],
            "label": bool(row["label"])}


def _tokenize_row(row: dict, index: int, *, fmt: DatasetFormat, name: str, tokenizer, eos_ids: set[int]) -> dict:
    check_example_types(row, fmt, row=index, name=name)
    _check_label(row["label"], index, name)
    return tokenize_unpaired_example(row, tokenizer, conversational=fmt.conversational, eos_ids=eos_ids)


def _check_label(value, row: int, name: str) -> None:
    if not isinstance(value, bool) and value not in (0, 1):
        raise TypeError(
            f"Row {row} of the {name} dataset is malformed. Column 'label' must hold booleans (True: desirable, "
            f"False: undesirable); got {type(value).__name__}: "
            f"{str(value)[:80]}."
        )


def kl_pairing(prompts: list) -> list[int]:
    """For each row, the index of the row whose completion is its KL completion: always a row with a different
    prompt, when the data has two prompts or more.

    Rows are grouped by prompt (groups in order of first appearance, rows in dataset order within a group) and row `k`
    of that order is paired with row `k + m` (cyclically), `m` being the size of the largest group. No row then meets
    its own prompt, and the KL completions are the completions themselves, each used once, as the KTO paper asks
    (the same outputs, paired with other prompts). With distinct prompts this is row `i + 1`. When one prompt holds
    more than half of the rows, no such one-to-one pairing exists: its rows that would meet their own prompt take the
    other prompts' completions in turn. With a single prompt, row `i` gets row `i + 1` (the only choice) and a warning
    says so.

    Args:
        prompts (`list`): one hashable-or-list prompt per row (e.g. `prompt_ids`).

    Returns:
        `list[int]`: `partner[i]`, the row whose completion pairs with row `i`'s prompt.

    Example:
        ```python
        >>> kl_pairing(["a", "b", "c"])
        [1, 2, 0]
        >>> kl_pairing(["a", "b", "a", "b"])  # unpaired data: chosen rows, then rejected rows
        [1, 0, 3, 2]
        ```
    """
    n = len(prompts)
    group_of: dict = {}
    groups = [group_of.setdefault(_key(p), len(group_of)) for p in prompts]
    if n == 0:
        return []
    if len(group_of) == 1:
        if n > 1:
            warnings.warn(
                f"All {n} rows share one prompt, so KTO's KL completions (another row's completion for the same "
                "prompt) cannot come from a different prompt; the KL reference point is then estimated on matched "
                "pairs. Use data with several prompts, or loss_type='apo_zero_unpaired' (no KL term).",
                stacklevel=3,
            )
        return [(i + 1) % n for i in range(n)]
    order = sorted(range(n), key=lambda i: (groups[i], i))
    largest = max(Counter(groups).values())
    partner = [0] * n
    for k, row in enumerate(order):
        partner[row] = order[(k + largest) % n]
    clashes = [row for row in range(n) if groups[partner[row]] == groups[row]]
    if clashes:  # only the group holding more than half of the rows can clash: lend it the others in turn
        others = [row for row in order if groups[row] != groups[clashes[0]]]
        for j, row in enumerate(clashes):
            partner[row] = others[j % len(others)]
    return partner


def _key(prompt):
    return tuple(prompt) if isinstance(prompt, list) else prompt


def _kl_columns(batch: dict) -> dict:
    partner = kl_pairing(batch["prompt_ids"])
    return {"kl_completion_ids": [batch["completion_ids"][j] for j in partner]}


def add_kl_completions(dataset):
    """Add `kl_completion_ids`: each row gets the completion of a row with another prompt ([`kl_pairing`]).

    A `datasets.Dataset` is paired over the whole dataset; an `IterableDataset` (no random access) within each chunk
    of 1,000 streamed rows.

    Example:
        ```python
        >>> ds = add_kl_completions(Dataset.from_dict({"prompt_ids": [[1], [2], [1], [2]],
        ...                                            "completion_ids": [[5], [6], [7], [8]]}))
        >>> ds["kl_completion_ids"]
        [[6], [5], [8], [7]]
        ```
    """
    from datasets import Dataset

    if isinstance(dataset, Dataset):
        partner = kl_pairing(dataset["prompt_ids"])
        completions = dataset["completion_ids"]
        return dataset.add_column("kl_completion_ids", [completions[j] for j in partner])
    return dataset.map(_kl_columns, batched=True, batch_size=1000)


def prepare_unpaired_dataset(dataset, tokenizer, options: PreferenceDataOptions, trainer: str, name: str = "train",
                             kl_completions: bool = True, model=None):
    """Turn unpaired (or paired, which is unpaired here) preference data into token ids, with checks.

    Rows whose prompt alone fills `max_length` teach nothing: they are dropped with a warning, and stop the run when
    they are most rows (with guards on, see `trl.guards`). Rows with an empty completion are an error, and so is a malformed row (a `None` value, a
    message without content), named by its index in the dataset as given (paired rows before unpairing). Data with only desirable or only undesirable
    rows trains, but the missing side is reported in a warning.

    Args:
        dataset (`Dataset` or `IterableDataset`): the rows.
        tokenizer: the tokenizer (with a chat template for conversational data).
        options ([`~trl.data.preference.PreferenceDataOptions`]): `max_length`, `num_proc`, `guards`.
        trainer (`str`): the trainer's name, for messages.
        name (`str`, *optional*, defaults to `"train"`): the dataset's name, for messages.
        kl_completions (`bool`, *optional*, defaults to `True`): add `kl_completion_ids` (see the module docstring).
        model (`PreTrainedModel`, *optional*): the model to train, named in messages.

    Returns:
        `(dataset, fmt)`: columns `prompt_ids`, `completion_ids`, `label` (and `kl_completion_ids`).

    Example:
        ```python
        >>> ds, fmt = prepare_unpaired_dataset(rows, tok, PreferenceDataOptions(max_length=256), "KTOTrainer")
        >>> ds.column_names
        ['label', 'prompt_ids', 'completion_ids', 'kl_completion_ids']
        ```
    """
    from datasets import Dataset

    check_dataset(dataset, trainer, name, model, tokenizer)
    dataset = with_text_blocks_rendered(dataset, tokenizer, name)  # text content blocks, for a text template

    map_kwargs = {"num_proc": options.num_proc} if isinstance(dataset, Dataset) else {}
    dataset = maybe_convert_dataset_to_chatml(dataset, **map_kwargs)
    columns = list(dataset.column_names or _first_row(dataset).keys())
    if set(TOKENIZED_COLUMNS[1:]) <= set(columns):
        fmt = DatasetFormat("tokenized", False)
        if "prompt_ids" not in columns:
            dataset = dataset.map(lambda row: {"prompt_ids": []}, **map_kwargs)
        _check_label(_first_row(dataset)["label"], 0, name)
    else:
        if {"chosen", "rejected"} <= set(columns) and "label" not in columns:
            # checked while still paired, so that errors name the row as given; an implicit prompt (the shared start
            # of chosen and rejected) is extracted in the same pass
            paired_fmt = detect_format(columns, _first_row(dataset))
            check_example_types(_first_row(dataset), paired_fmt, row=0, name=name)
            dataset = dataset.map(check_pair, fn_kwargs={"fmt": paired_fmt, "name": name}, with_indices=True,
                                  **map_kwargs)
            dataset = unpair_preference_dataset(dataset, num_proc=options.num_proc)
            columns = list(dataset.column_names or _first_row(dataset).keys())
        first = _first_row(dataset)
        if not {"prompt", "completion", "label"} <= set(columns):
            missing = sorted({"prompt", "completion", "label"} - set(columns))
            raise ValueError(
                f"{trainer} expects columns {_ACCEPTED}; the {name} dataset has {sorted(columns)} (missing {missing}). "
                "Add a boolean 'label' column (True for a desirable completion) to prompt-completion data."
            )
        fmt = detect_format(columns, first)
        check_example_types(first, fmt, row=0, name=name)
        _check_label(first["label"], 0, name)
        dataset = tokenize_rows(dataset, _tokenize_row, tokenizer, fmt, name, PASSTHROUGH_COLUMNS, map_kwargs)
    if isinstance(dataset, Dataset):
        dataset = _check_rows(dataset, options, name, trainer)
    if kl_completions and "kl_completion_ids" not in (dataset.column_names or []):
        dataset = add_kl_completions(dataset)
    return dataset, fmt


def _check_rows(dataset, options: PreferenceDataOptions, name: str, trainer: str):
    prompts, completions, labels = dataset["prompt_ids"], dataset["completion_ids"], dataset["label"]
    empty = [i for i, c in enumerate(completions) if not c]
    if empty:
        raise ValueError(
            f"{len(empty)} {name} rows have an empty completion (e.g. rows {empty[:5]}); every row needs a completion "
            "to score. Fix or remove those rows."
        )
    no_room = guards.check_prompts_fit(name, prompts, options.max_length, options.guards, "score")
    if no_room:
        warnings.warn(f"Dropped {len(no_room)} of {len(dataset)} {name} rows (see above).", stacklevel=3)
        drop = set(no_room)
        dataset = dataset.select([i for i in range(len(dataset)) if i not in drop])
        labels = dataset["label"]
    desirable = sum(bool(label) for label in labels)
    if desirable in (0, len(labels)):
        side, other = ("desirable", "undesirable") if desirable else ("undesirable", "desirable")
        warnings.warn(
            f"Every one of the {len(labels)} {name} rows is {side} (label={bool(desirable)}): {trainer} still trains "
            f"(each row is pushed against the KL reference point), but nothing shows it what {other} output looks "
            "like. KTO works best with both kinds of rows.",
            stacklevel=3,
        )
    return dataset
