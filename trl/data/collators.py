"""Collators: padded batches, or padding-free batches (one flat row with `position_ids`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


def _labels(example: dict, completion_only_loss: bool) -> list[int]:
    """Targets of one tokenised row: its ids where it is trained, -100 elsewhere."""
    ids = example["input_ids"]
    if "labels" in example:  # pre-tokenised data may bring its own labels
        return list(example["labels"])
    keep = [1] * len(ids)
    if completion_only_loss and "completion_mask" in example:
        keep = list(example["completion_mask"])
    if "assistant_masks" in example:
        keep = [a and b for a, b in zip(keep, example["assistant_masks"])]
    return [t if k else IGNORE_INDEX for t, k in zip(ids, keep)]


def _document_lengths(example: dict) -> list[int]:
    lengths = example.get("seq_lengths")
    return list(lengths) if lengths else [len(example["input_ids"])]


@dataclass
class DataCollatorForLanguageModeling:
    """Collate tokenised rows for causal language modelling.

    Rows hold `input_ids` and optionally `completion_mask`, `assistant_masks`, `labels` and `seq_lengths` (packed rows:
    the lengths of the documents in the row). Labels are -100 where a row is not trained.

    - Padded (default): right-padded `input_ids`, `attention_mask`, `labels`, and `position_ids` that restart at every
      packed document.
    - Padding-free: every row is concatenated into a single row of shape `(1, total)`; `position_ids` restart at each
      document and there is no `attention_mask`, so attention is block-diagonal per document (sdpa and eager build that
      mask from `position_ids`; flash attention uses varlen kernels). The first token of every document gets label -100:
      the prediction that precedes it belongs to the previous document.

    The pad token only fills padding: it never decides what is masked, so a tokenizer whose pad token is its eos still
    trains the eos token.

    Args:
        pad_token_id (`int`): id used to pad `input_ids`.
        completion_only_loss (`bool`, *optional*, defaults to `True`): use `completion_mask` when rows have one.
        padding_free (`bool`, *optional*, defaults to `False`): flatten the batch instead of padding.
        return_position_ids (`bool`, *optional*, defaults to `True`): return `position_ids`. Rows that hold several
            documents (padding-free or packed batches) need them to keep attention within each document, so `False`
            is an error there; it only drops them from batches of single-document rows.
        pad_to_multiple_of (`int`, *optional*): pad the sequence length to a multiple of this.
        return_tensors (`str`, *optional*, defaults to `"pt"`): only `"pt"`. Also accepted per call, as
            `collator(examples, return_tensors="pt")`.
        return_token_counts (`bool`, *optional*, defaults to `False`): also return `token_counts`, a `(rows,)` tensor
            of the real (non-padding) tokens in each row. Batches of packed or padding-free rows carry no
            `attention_mask`, so this is the only way to tell padding from a real pad/eos token; the trainers use it
            to log `num_tokens` without padding. Off by default, since a plain `model(**batch)` would not accept it.

    The fields are in the reference's order, so positional arguments mean the same thing (`return_token_counts` is
    ours and comes last).

    Example:
        ```python
        >>> collator = DataCollatorForLanguageModeling(pad_token_id=0)
        >>> batch = collator([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}])
        >>> batch["labels"].tolist()
        [[1, 2, 3], [4, 5, -100]]
        ```
    """

    pad_token_id: int
    completion_only_loss: bool = True
    padding_free: bool = False
    return_position_ids: bool = True
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"
    return_token_counts: bool = False

    def __post_init__(self):
        _check_return_tensors(self.return_tensors)
        if self.padding_free and not self.return_position_ids:
            raise ValueError(
                "DataCollatorForLanguageModeling(padding_free=True, return_position_ids=False): a padding-free batch "
                "is one row of concatenated sequences, and only its position_ids keep attention within each "
                "sequence. Keep return_position_ids=True, or use padding_free=False."
            )

    def __call__(self, examples: list[dict], return_tensors: str | None = None) -> dict[str, torch.Tensor]:
        _check_return_tensors(return_tensors or self.return_tensors)
        ids = [list(e["input_ids"]) for e in examples]
        labels = [_labels(e, self.completion_only_loss) for e in examples]
        # Rows that hold several documents (packing, or padding-free) separate them by restarting `position_ids`, and
        # carry no attention_mask: the model then builds a block-diagonal causal mask from the positions.
        by_position = self.padding_free or any(len(_document_lengths(e)) > 1 for e in examples)
        positions = []
        for e, row_labels in zip(examples, labels):
            row_positions, start = [], 0
            for length in _document_lengths(e):
                row_positions.extend(range(length))
                if by_position and start < len(row_labels):
                    row_labels[start] = IGNORE_INDEX
                start += length
            positions.append(row_positions)
        if self.padding_free:
            ids, labels, positions = [_concat(ids)], [_concat(labels)], [_concat(positions)]
        width = max(len(row) for row in ids)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        # Padding continues the positions of a fresh "document" (0, 1, ...) that no real token attends to.
        positions = [row + list(range(width - len(row))) for row in positions]
        batch = {
            "input_ids": _pad(ids, width, self.pad_token_id),
            "labels": _pad(labels, width, IGNORE_INDEX),
            "position_ids": _pad(positions, width, 0),
        }
        if not by_position:
            batch["attention_mask"] = _pad([[1] * len(row) for row in ids], width, 0)
        if self.return_token_counts:
            batch["token_counts"] = torch.tensor([len(row) for row in ids], dtype=torch.long)
        if not self.return_position_ids:
            if by_position:
                raise ValueError(
                    "DataCollatorForLanguageModeling(return_position_ids=False) got packed rows (a 'seq_lengths' "
                    "column with several documents): only position_ids keep attention within each document. Keep "
                    "return_position_ids=True for packed data."
                )
            del batch["position_ids"]
        return batch


def _concat(rows: list[list[int]]) -> list[int]:
    return [value for row in rows for value in row]


def _check_return_tensors(return_tensors: str) -> None:
    if return_tensors != "pt":
        raise ValueError(f"Only return_tensors='pt' is supported; got {return_tensors!r} (the batches are PyTorch tensors).")


def _pad(rows: list[list[int]], width: int, value: int) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def _prompt_completion(
    prompt: list[int], completion: list[int], max_length: int | None, truncation_mode: str = "keep_start"
) -> tuple[list[int], list[int]]:
    """`prompt + completion` and its completion mask, truncated to `max_length` (`keep_start` cuts the end of the
    completion; `keep_end` cuts the start of the sequence)."""
    ids, mask = list(prompt) + list(completion), [0] * len(prompt) + [1] * len(completion)
    if max_length is not None and len(ids) > max_length:
        window = slice(0, max_length) if truncation_mode == "keep_start" else slice(-max_length, None)
        ids, mask = ids[window], mask[window]
    return ids, mask


def _pad_prompt_completions(
    sequences: list[tuple[list[int], list[int]]], pad_token_id: int, pad_to_multiple_of: int | None
) -> dict[str, torch.Tensor]:
    """Right-pad `(ids, completion_mask)` sequences into `input_ids`, `attention_mask` and `completion_mask`."""
    width = max(len(ids) for ids, _ in sequences)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    return {
        "input_ids": _pad([ids for ids, _ in sequences], width, pad_token_id),
        "attention_mask": _pad([[1] * len(ids) for ids, _ in sequences], width, 0),
        "completion_mask": _pad([mask for _, mask in sequences], width, 0),
    }


def _flatten_prompt_completions(
    sequences: list[tuple[list[int], list[int]]], pad_token_id: int, pad_to_multiple_of: int | None
) -> dict[str, torch.Tensor | int]:
    """Concatenate `(ids, completion_mask)` sequences into one row, padding-free: `position_ids` restart at every
    sequence (so attention stays within it), `sequence_index` says which sequence each token belongs to (-1 on
    padding), and the first token of each sequence is never a completion target (it follows another sequence)."""
    ids, masks, positions, index = [], [], [], []
    for i, (seq_ids, seq_mask) in enumerate(sequences):
        ids += seq_ids
        masks += [0] + list(seq_mask[1:])
        positions += range(len(seq_ids))
        index += [i] * len(seq_ids)
    width = len(ids)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    extra = width - len(ids)
    return {
        "input_ids": _pad([ids + [pad_token_id] * extra], width, pad_token_id),
        "completion_mask": _pad([masks + [0] * extra], width, 0),
        "position_ids": _pad([positions + list(range(extra))], width, 0),
        "sequence_index": _pad([index + [-1] * extra], width, -1),
        "num_sequences": len(sequences),
        "max_sequence_length": max(len(seq_ids) for seq_ids, _ in sequences),
    }


@dataclass
class DataCollatorForPreference:
    """Collate preference rows (`prompt_ids`, `chosen_ids`, `rejected_ids`) into one batch of `2B` sequences:
    the `B` chosen sequences, then the `B` rejected ones, so a single forward scores both sides.

    `prompt_ids` may be absent (reward modelling on full `chosen_ids`/`rejected_ids` sequences, as the reference's
    reward collator takes them): each sequence is then its completion alone, all marked in `completion_mask`.

    Each sequence is `prompt + completion`, truncated to `max_length` before padding (`keep_start` cuts the end of the
    completion; `keep_end` cuts the start of the sequence), then right-padded. `completion_mask` marks completion
    tokens. Optional per-row columns are passed on as `(B,)` tensors: `ref_chosen_logps`, `ref_rejected_logps`
    (precomputed reference log-probs) and `margin` (reward modelling).

    Args:
        pad_token_id (`int`): id used to pad `input_ids`.
        max_length (`int`, *optional*): truncation length of each sequence.
        truncation_mode (`str`, *optional*, defaults to `"keep_start"`): `"keep_start"` or `"keep_end"`.
        pad_to_multiple_of (`int`, *optional*): pad the sequence length to a multiple of this.
        padding_free (`bool`, *optional*, defaults to `False`): concatenate the `2B` sequences into one row with
            `position_ids` and `sequence_index` instead of padding them (see `_flatten_prompt_completions`).
        return_tensors (`str`, *optional*, defaults to `"pt"`): only `"pt"`; also accepted per call.

    Example:
        ```python
        >>> collator = DataCollatorForPreference(pad_token_id=0)
        >>> batch = collator([{"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4, 5]}])
        >>> batch["input_ids"].tolist(), batch["completion_mask"].tolist()
        ([[1, 2, 3, 0], [1, 2, 4, 5]], [[0, 0, 1, 0], [0, 0, 1, 1]])
        ```
    """

    pad_token_id: int
    max_length: int | None = None
    truncation_mode: str = "keep_start"
    pad_to_multiple_of: int | None = None
    padding_free: bool = False
    return_tensors: str = "pt"

    def __post_init__(self):
        _check_return_tensors(self.return_tensors)

    def __call__(self, examples: list[dict], return_tensors: str | None = None) -> dict[str, torch.Tensor]:
        _check_return_tensors(return_tensors or self.return_tensors)
        sequences = [
            _prompt_completion(e.get("prompt_ids") or [], e[side], self.max_length, self.truncation_mode)
            for side in ("chosen_ids", "rejected_ids") for e in examples
        ]
        layout = _flatten_prompt_completions if self.padding_free else _pad_prompt_completions
        batch = layout(sequences, self.pad_token_id, self.pad_to_multiple_of)
        for key in ("ref_chosen_logps", "ref_rejected_logps", "margin"):
            if key in examples[0]:
                batch[key] = torch.tensor([float(e[key]) for e in examples])
        return batch


@dataclass
class RewardDataCollatorForPreference:
    """The reward trainer's collator, with the reference's signature `(pad_token_id, pad_to_multiple_of,
    return_tensors)`: [`DataCollatorForPreference`] (whose second field is DPO's `max_length`) without truncation
    (the reward trainer filters out pairs longer than `max_length` instead). Exposed as
    `trl.trainer.reward_trainer.DataCollatorForPreference`.

    Rows hold `chosen_ids` and `rejected_ids` (full sequences; `prompt_ids`, when present, is put in front) and an
    optional `margin`; the batch holds the `B` chosen sequences, then the `B` rejected ones.

    Args:
        pad_token_id (`int`): id used to pad `input_ids`.
        pad_to_multiple_of (`int`, *optional*): pad the sequence length to a multiple of this.
        return_tensors (`str`, *optional*, defaults to `"pt"`): only `"pt"`; also accepted per call.

    Example:
        ```python
        >>> collator = RewardDataCollatorForPreference(0, 4)
        >>> collator([{"chosen_ids": [1, 2, 3], "rejected_ids": [4, 5], "margin": 0.5}])["input_ids"].tolist()
        [[1, 2, 3, 0], [4, 5, 0, 0]]
        ```
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"

    def __post_init__(self):
        _check_return_tensors(self.return_tensors)

    def __call__(self, examples: list[dict], return_tensors: str | None = None) -> dict[str, torch.Tensor]:
        collate = DataCollatorForPreference(
            self.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors=self.return_tensors
        )
        return collate(examples, return_tensors)


@dataclass
class DataCollatorForUnpairedPreference:
    """Collate unpaired preference rows (`prompt_ids`, `completion_ids`, `label`, and `kl_completion_ids` for KTO's KL
    term) into one batch: the `B` sequences `prompt + completion`, then, with `kl_completions`, the `B` sequences
    `prompt + kl_completion`, so a single forward scores both.

    Each sequence is truncated to `max_length` from the right before padding, then right-padded; `completion_mask`
    marks completion tokens. `label` is a `(B,)` bool tensor. The optional per-row columns `ref_logps` and
    `ref_KL_logps` (precomputed reference log-probs) are passed on as `(B,)` float tensors.

    Args:
        pad_token_id (`int`): id used to pad `input_ids`.
        max_length (`int`, *optional*): truncation length of each sequence.
        pad_to_multiple_of (`int`, *optional*): pad the sequence length to a multiple of this.
        kl_completions (`bool`, *optional*, defaults to `True`): also emit the `prompt + kl_completion` sequences.
        return_tensors (`str`, *optional*, defaults to `"pt"`): only `"pt"`; also accepted per call.

    Example:
        ```python
        >>> collator = DataCollatorForUnpairedPreference(pad_token_id=0)
        >>> batch = collator([{"prompt_ids": [1, 2], "completion_ids": [3], "kl_completion_ids": [4, 5], "label": True}])
        >>> batch["input_ids"].tolist(), batch["completion_mask"].tolist(), batch["label"].tolist()
        ([[1, 2, 3, 0], [1, 2, 4, 5]], [[0, 0, 1, 0], [0, 0, 1, 1]], [True])
        ```
    """

    pad_token_id: int
    max_length: int | None = None
    pad_to_multiple_of: int | None = None
    kl_completions: bool = True
    return_tensors: str = "pt"

    def __post_init__(self):
        _check_return_tensors(self.return_tensors)

    def __call__(self, examples: list[dict], return_tensors: str | None = None) -> dict[str, torch.Tensor]:
        _check_return_tensors(return_tensors or self.return_tensors)
        sides = ("completion_ids", "kl_completion_ids") if self.kl_completions else ("completion_ids",)
        sequences = [_prompt_completion(e["prompt_ids"], e[side], self.max_length) for side in sides for e in examples]
        batch = _pad_prompt_completions(sequences, self.pad_token_id, self.pad_to_multiple_of)
        batch["label"] = torch.tensor([bool(e["label"]) for e in examples])
        for key in ("ref_logps", "ref_KL_logps"):
            if key in examples[0]:
                batch[key] = torch.tensor([float(e[key]) for e in examples])
        return batch
