"""The generation side of the online trainers beyond one backend call (docs/design.md §5).

- [`generate_rows`]: one completion per row of a generation batch, each run of identical consecutive prompts (the
  samples of one prompt) prefilled once by the backend, returned in the rows' order.
- [`rollout_from_func_output`]: the [`Rollout`] of a user `rollout_func`'s output (`GRPOTrainer(rollout_func=...)`),
  which replaces the backend: it is validated here, with errors naming the key and the row.

The online core (`trl/trainer/online.py`) calls these; neither reads a trainer.
"""

from __future__ import annotations

import torch

from ..rollout import Rollout
from .base import GenerationBackend, SamplingConfig

ROLLOUT_KEYS = ("prompt_ids", "completion_ids", "logprobs")  # what a rollout_func must return, one entry per row


def prompt_runs(prompt_ids: list[list[int]]) -> list[tuple[int, int]]:
    """`(start, length)` of the runs of identical consecutive prompts (the samples of one prompt).

    Example:
        ```python
        >>> prompt_runs([[1, 2], [1, 2], [3], [1, 2]])
        [(0, 2), (2, 1), (3, 1)]
        ```
    """
    runs = []
    for i, ids in enumerate(prompt_ids):
        if runs and prompt_ids[runs[-1][0]] == ids:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


def generate_rows(backend: GenerationBackend, prompt_ids: list[list[int]], sampling: SamplingConfig,
                  generator: torch.Generator | None = None) -> Rollout:
    """One completion per row of `prompt_ids`, in the rows' order. Each run of identical consecutive prompts is one
    `backend.generate(..., n=length of the run)` call's prompt, so it is prefilled once; runs of the same length are
    generated together. The caller syncs the backend's weights first."""
    by_count: dict[int, list[int]] = {}
    for start, length in prompt_runs(prompt_ids):
        by_count.setdefault(length, []).append(start)
    parts, order = [], []
    for n, starts in sorted(by_count.items()):
        parts.append(backend.generate([prompt_ids[s] for s in starts], n, sampling, generator))
        order.extend(s + k for s in starts for k in range(n))
    rollout = Rollout.cat(parts, pad_token_id=sampling.pad_token_id)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return rollout.select(inverse)  # back to the rows' order


def rollout_from_func_output(out: dict, num_rows: int, sampling: SamplingConfig, device) -> tuple[Rollout, dict]:
    """The [`Rollout`] of a `rollout_func`'s output, and its other keys (forwarded to the reward functions).

    `out` holds, per row (in the order of the prompts it was given): `prompt_ids` and `completion_ids` (lists of
    ids), `logprobs` (per completion token: its log-prob, None, or a list of candidate log-probs whose token ids are
    in the optional `logprob_token_ids`, as vLLM returns them; the sampled token's is kept, else the first), and
    optionally `env_mask` (one 0/1 per completion token, 0 where the environment rather than the policy wrote it). A
    completion counts as truncated when it does not end with an eos id. Raises `ValueError`, naming the key and the
    row, on a malformed output.
    """
    if not isinstance(out, dict) or any(key not in out for key in ROLLOUT_KEYS):
        found = sorted(out) if isinstance(out, dict) else type(out).__name__
        raise ValueError(f"rollout_func must return a dict with {list(ROLLOUT_KEYS)} (optionally 'env_mask', "
                         f"'logprob_token_ids' and extra reward columns); got {found}.")
    own = (*ROLLOUT_KEYS, "env_mask", "logprob_token_ids")
    for key in own:
        value = out.get(key, [])
        if not isinstance(value, (list, tuple)) or (key in out and len(value) != num_rows):
            raise ValueError(f"rollout_func returned {key!r} for {len(value) if hasattr(value, '__len__') else value} "
                             f"rows; expected a list of {num_rows}, one per prompt it was given.")
    prompts = [[int(i) for i in ids] for ids in out["prompt_ids"]]
    completions = [[int(i) for i in ids] for ids in out["completion_ids"]]
    if empty := [i for i, ids in enumerate(prompts) if not ids]:
        raise ValueError(f"rollout_func returned empty 'prompt_ids' for rows {empty[:5]}: every completion needs its "
                         "prompt's token ids.")
    for key in ("logprobs", "env_mask", "logprob_token_ids"):
        for i, (values, ids) in enumerate(zip(out.get(key, completions), completions)):
            if len(values) != len(ids):
                raise ValueError(f"rollout_func: row {i} has {len(ids)} completion ids but {len(values)} {key!r}.")
    if "env_mask" in out and any(v not in (0, 1) for row in out["env_mask"] for v in row):
        raise ValueError("rollout_func: 'env_mask' must hold 0 (environment token, not trained) or 1 (policy token).")
    candidates = out.get("logprob_token_ids", [[None] * len(ids) for ids in completions])
    logprobs = [[_sampled_logprob(lp, token, options, i) for lp, token, options in zip(row, ids, option_row)]
                for i, (row, ids, option_row) in enumerate(zip(out["logprobs"], completions, candidates))]

    eos = set(sampling.eos_token_ids)
    rollout = Rollout.from_lists(
        prompts, completions, pad_token_id=sampling.pad_token_id,
        is_truncated=[not ids or ids[-1] not in eos for ids in completions], sampling_logps=logprobs,
        tool_mask=out.get("env_mask"), device=device,
    )
    extra = {key: value for key, value in out.items() if key not in own}
    for key, value in extra.items():
        if not isinstance(value, (list, tuple)) or len(value) != num_rows:
            raise ValueError(f"rollout_func: the extra column {key!r} must be a list with one value per row "
                             f"({num_rows}); got {type(value).__name__}.")
    return rollout, {key: list(value) for key, value in extra.items()}


def _sampled_logprob(logprob, token: int, candidates, row: int) -> float:
    """One completion token's log-prob from a `rollout_func`: a number, None (0.0), or candidates' log-probs."""
    if logprob is None:
        return 0.0
    if isinstance(logprob, (list, tuple)):
        if not logprob:
            return 0.0
        ids = [int(i) for i in candidates] if isinstance(candidates, (list, tuple)) else []
        logprob = logprob[ids.index(token)] if token in ids else logprob[0]
    try:
        return float(logprob)
    except (TypeError, ValueError):
        raise ValueError(f"rollout_func: 'logprobs' of row {row} holds {logprob!r}; expected a number, None or a "
                         "list of candidate log-probs.") from None


__all__ = ["ROLLOUT_KEYS", "generate_rows", "prompt_runs", "rollout_from_func_output"]
