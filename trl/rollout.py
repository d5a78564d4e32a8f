"""The typed record passed between the stages of an online step: generate -> score -> advantages -> loss.

A backend fills the token fields; the trainer adds rewards, advantages and the log-probs that the loss needs. Nothing
else travels between stages (no ad-hoc dicts). Row `i` of every field is the same completion; rows come prompt-major
(all samples of the first prompt, then of the second, ...), so `G` consecutive rows form one group.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class StepCounts:
    """What the loss of one micro-batch is normalised by: counts over the whole optimiser step (every accumulated
    micro-batch, every data-parallel rank). See `trl.losses.reduce`.

    Args:
        tokens (`torch.Tensor`): completion tokens that enter the loss.
        sequences (`torch.Tensor`): completions.
        micro_batches (`int`): micro-batches of the step on one rank.
    """

    tokens: torch.Tensor
    sequences: torch.Tensor
    micro_batches: int = 1


@dataclass
class Rollout:
    """Completions of a batch of prompts and everything computed about them.

    Token fields (from the generation backend):
        prompt_ids (`torch.Tensor`): `(N, P)` prompt token ids, left-padded.
        prompt_mask (`torch.Tensor`): `(N, P)` 1 on real prompt tokens.
        completion_ids (`torch.Tensor`): `(N, C)` generated token ids, right-padded; exactly what was sampled.
        completion_mask (`torch.Tensor`): `(N, C)` 1 on generated tokens up to and including the first EOS (and on
            the tool turns between the rounds of a multi-turn rollout).
        is_truncated (`torch.Tensor`): `(N,)` bool, True when no EOS came within `max_completion_length`.
        sampling_logps (`torch.Tensor`, *optional*): `(N, C)` log-prob of each sampled token under the distribution
            it was sampled from (after temperature and any filtering), 0 on padding.
        tool_mask (`torch.Tensor`, *optional*): `(N, C)` 0 on completion tokens that the policy did not generate (the
            tool turns of a multi-turn rollout, or environment output from a `rollout_func`), which stay out of the
            loss, the entropy, the KL and the length metrics; None when every token is generated.

    Filled by the trainer:
        prompts (`list`): `(N,)` the prompt of each completion as the dataset gave it (text or messages).
        completions (`list`): `(N,)` decoded completions (text, or a list with one assistant message).
        columns (`dict[str, list]`): the other dataset columns, one value per completion (reward kwargs).
        rewards (`torch.Tensor`): `(N, R)` one column per reward function, NaN where a function returned None.
        advantages (`torch.Tensor`): `(N,)`.
        old_logps (`torch.Tensor`): `(N, C)` log-probs under the policy that generated (None when on-policy: the
            loss then uses the detached current log-probs).
        ref_logps (`torch.Tensor`): `(N, C)` log-probs under the reference model (only when `beta != 0`).
        step_counts ([`StepCounts`]): normalisers of the optimiser step this micro-batch belongs to.
    """

    prompt_ids: torch.Tensor  # (N, P)
    prompt_mask: torch.Tensor  # (N, P)
    completion_ids: torch.Tensor  # (N, C)
    completion_mask: torch.Tensor  # (N, C)
    is_truncated: torch.Tensor  # (N,)
    sampling_logps: torch.Tensor | None = None  # (N, C)
    tool_mask: torch.Tensor | None = None  # (N, C)
    prompts: list | None = None  # (N,)
    completions: list | None = None  # (N,)
    columns: dict[str, list] = field(default_factory=dict)  # each (N,)
    rewards: torch.Tensor | None = None  # (N, R)
    advantages: torch.Tensor | None = None  # (N,)
    old_logps: torch.Tensor | None = None  # (N, C)
    ref_logps: torch.Tensor | None = None  # (N, C)
    step_counts: StepCounts | None = None

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def completion_lengths(self) -> torch.Tensor:
        """`(N,)` tokens of each completion (EOS included)."""
        return self.completion_mask.sum(-1)

    @property
    def generated_lengths(self) -> torch.Tensor:
        """`(N,)` tokens of each completion that the policy generated (tool-result tokens left out)."""
        mask = self.completion_mask if self.tool_mask is None else self.completion_mask * self.tool_mask
        return mask.sum(-1)

    def as_dict(self) -> dict[str, Any]:
        """Every field but `step_counts` (which belongs to one optimiser step), as stored in a checkpoint: tensors,
        lists and dicts only, so it loads with `torch.load(..., weights_only=True)`; `Rollout(**d)` rebuilds it."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "step_counts"}

    def select(self, index: torch.Tensor | list[int] | slice) -> Rollout:
        """The rows `index` of every per-row field (tensors, lists and columns); `step_counts` is kept.

        Example:
            ```python
            >>> first_group = rollout.select(slice(0, 8))
            ```
        """
        if isinstance(index, slice):
            rows = list(range(len(self)))[index]
        else:
            rows = index.tolist() if isinstance(index, torch.Tensor) else list(index)
        tensor_index = torch.as_tensor(rows, dtype=torch.long)

        def pick(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return value[tensor_index.to(value.device)]
            if isinstance(value, list):
                return [value[i] for i in rows]
            if isinstance(value, dict):
                return {k: pick(v) for k, v in value.items()}
            return value

        return dataclasses.replace(self, **{f.name: pick(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def trim(self) -> Rollout:
        """Drop the padding columns that no row of this rollout uses: prompt columns on the left, completion columns
        on the right (a micro-batch cut from a generation batch is padded to the whole batch's longest).

        Example:
            ```python
            >>> micro = rollout.select(slice(0, 4)).trim()
            ```
        """
        first = int((self.prompt_mask.sum(0) > 0).nonzero()[0]) if self.prompt_mask.any() else 0
        used = (self.completion_mask.sum(0) > 0).nonzero()
        last = int(used[-1]) + 1 if len(used) else 1

        def columns(value, start, end):
            return value[:, start:end] if value is not None else None

        return dataclasses.replace(
            self, prompt_ids=self.prompt_ids[:, first:], prompt_mask=self.prompt_mask[:, first:],
            completion_ids=columns(self.completion_ids, 0, last), completion_mask=columns(self.completion_mask, 0, last),
            sampling_logps=columns(self.sampling_logps, 0, last), tool_mask=columns(self.tool_mask, 0, last),
            old_logps=columns(self.old_logps, 0, last),
            ref_logps=columns(self.ref_logps, 0, last),
        )

    def to(self, device: torch.device | str) -> Rollout:
        """A copy with every tensor field on `device`."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)

    @staticmethod
    def from_lists(
        prompt_ids: list[list[int]],
        completion_ids: list[list[int]],
        *,
        pad_token_id: int,
        is_truncated: list[bool],
        sampling_logps: list[list[float]] | None = None,
        tool_mask: list[list[int]] | None = None,
        device: torch.device | str | None = None,
    ) -> Rollout:
        """A rollout from per-row lists: prompts left-padded, completions (and their log-probs and tool masks)
        right-padded to the longest (at least one column), `completion_mask` 1 on every completion token.

        Example:
            ```python
            >>> rollout = Rollout.from_lists([[5, 6], [7]], [[8, 2], [9]], pad_token_id=0, is_truncated=[False, True])
            >>> rollout.prompt_ids.tolist(), rollout.completion_mask.tolist()
            ([[5, 6], [0, 7]], [[1, 1], [1, 0]])
            ```
        """
        prompt_width = max([1, *map(len, prompt_ids)])
        width = max([1, *map(len, completion_ids)])

        def right_padded(rows: list[list], fill, dtype) -> torch.Tensor:
            return torch.tensor([list(r) + [fill] * (width - len(r)) for r in rows], dtype=dtype, device=device)

        return Rollout(
            prompt_ids=torch.tensor([[pad_token_id] * (prompt_width - len(p)) + list(p) for p in prompt_ids],
                                    dtype=torch.long, device=device),
            prompt_mask=torch.tensor([[0] * (prompt_width - len(p)) + [1] * len(p) for p in prompt_ids],
                                     dtype=torch.long, device=device),
            completion_ids=right_padded(completion_ids, pad_token_id, torch.long),
            completion_mask=right_padded([[1] * len(c) for c in completion_ids], 0, torch.long),
            is_truncated=torch.tensor(list(is_truncated), dtype=torch.bool, device=device),
            sampling_logps=None if sampling_logps is None else right_padded(sampling_logps, 0.0, torch.float32),
            tool_mask=None if tool_mask is None else right_padded(tool_mask, 0, torch.long),
        )

    @staticmethod
    def cat(rollouts: list[Rollout], pad_token_id: int) -> Rollout:
        """Concatenate rollouts row-wise: prompts re-padded on the left, completions on the right to the longest."""
        if len(rollouts) == 1:
            return rollouts[0]

        def stack(name: str, side: str, value: float) -> torch.Tensor | None:
            tensors = [getattr(r, name) for r in rollouts]
            if any(t is None for t in tensors):
                return None
            width = max(t.shape[1] for t in tensors)
            padded = []
            for t in tensors:
                pad = (width - t.shape[1], 0) if side == "left" else (0, width - t.shape[1])
                padded.append(torch.nn.functional.pad(t, pad, value=value))
            return torch.cat(padded)

        def join(name: str):
            values = [getattr(r, name) for r in rollouts]
            if any(v is None for v in values):
                return None
            return torch.cat(values) if isinstance(values[0], torch.Tensor) else [x for v in values for x in v]

        columns = {k: [x for r in rollouts for x in r.columns[k]] for k in rollouts[0].columns}
        return Rollout(
            prompt_ids=stack("prompt_ids", "left", pad_token_id),
            prompt_mask=stack("prompt_mask", "left", 0),
            completion_ids=stack("completion_ids", "right", pad_token_id),
            completion_mask=stack("completion_mask", "right", 0),
            is_truncated=join("is_truncated"),
            sampling_logps=stack("sampling_logps", "right", 0.0),
            tool_mask=stack("tool_mask", "right", 0),
            prompts=join("prompts"),
            completions=join("completions"),
            columns=columns,
            rewards=join("rewards"),
            advantages=join("advantages"),
            old_logps=stack("old_logps", "right", 0.0),
            ref_logps=stack("ref_logps", "right", 0.0),
        )
