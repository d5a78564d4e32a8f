"""The one place that turns per-token or per-sequence losses into the scalar that is differentiated.

Why counts over the whole optimiser step. With gradient accumulation over k micro-batches and data parallelism over
W ranks, the gradient that the optimiser applies is

    sum over micro-batches and ranks of grad(loss_micro) / W        (DDP averages gradients over ranks)

For it to equal the gradient of the mean loss over every loss token of the step, each micro-batch must contribute

    loss_micro = W * sum(token losses in the micro-batch) / N_step

where N_step counts the loss tokens of all k micro-batches on all W ranks. Dividing each micro-batch by its own token
count instead (the usual mistake) weights a token of a short micro-batch more than one of a long micro-batch, and so
changes the gradient when the same data is cut differently. The trainer counts N_step once per optimiser step
(`count_loss_tokens`, gathered over ranks) and passes it here.

The policy-gradient losses of the online trainers ([`reduce_policy_loss`], [`sequence_mean_loss`]) follow the same rule
with the counts of a [`~trl.rollout.StepCounts`]: tokens or sequences of the whole step, over all ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:  # only for annotations: the counts are duck-typed, so trl.losses never imports trl.rollout
    from trl.rollout import StepCounts

PolicyReduction = Literal["token", "sequence_mean", "sequence_sum", "constant_length", "local_token"]


def count_loss_tokens(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Number of positions that enter a causal LM loss: targets `labels[:, 1:]` that are not `ignore_index`.

    Example:
        ```python
        >>> count_loss_tokens(torch.tensor([[5, 6, -100, 7]]))
        tensor(2)
        ```
    """
    return (labels[..., 1:] != ignore_index).sum()


def token_weight(num_items_in_batch: torch.Tensor | int, world_size: int = 1) -> torch.Tensor | float:
    """Weight of one loss token so that summing `weight * token_loss` over a micro-batch gives its share of the
    optimiser step's token mean (see the module docstring).

    Args:
        num_items_in_batch (`torch.Tensor` or `int`): loss tokens in the whole optimiser step, over all ranks.
        world_size (`int`, *optional*, defaults to `1`): number of data-parallel ranks whose gradients are averaged.

    Raises:
        `ValueError`: the step has no loss token (nothing would be learned).

    Example:
        ```python
        >>> token_weight(8, world_size=2)
        0.25
        ```
    """
    on_accelerator = isinstance(num_items_in_batch, torch.Tensor) and num_items_in_batch.device.type != "cpu"
    if not on_accelerator and int(num_items_in_batch) == 0:  # on a GPU the check would sync every micro-step; the
        # dataset guards rule this out, and a 0 would still surface as a non-finite loss
        raise ValueError(
            "This optimiser step has no token that enters the loss (every label is -100): nothing would be learned. "
            "Check completion_only_loss / assistant_only_loss and max_length."
        )
    return world_size / num_items_in_batch


def token_mean(
    token_losses: torch.Tensor, mask: torch.Tensor, num_items_in_batch: torch.Tensor | int, world_size: int = 1
) -> torch.Tensor:
    """Sum of masked per-token losses, normalised by the loss-token count of the whole optimiser step.

    Args:
        token_losses (`torch.Tensor`): `(B, T)` per-token losses.
        mask (`torch.Tensor`): `(B, T)` 0/1 (or bool) loss mask.
        num_items_in_batch: loss tokens in the whole optimiser step, over all ranks.
        world_size (`int`): data-parallel ranks.

    Example:
        ```python
        >>> token_mean(torch.tensor([[1.0, 3.0]]), torch.tensor([[1, 1]]), num_items_in_batch=4)
        tensor(1.)
        ```
    """
    return (token_losses * mask).sum() * token_weight(num_items_in_batch, world_size)


# ----------------------------------------------------------------------------------------------------------------------
# Policy-gradient losses (GRPO family, RLOO)


def _per_count(count: torch.Tensor | int, world_size: int) -> torch.Tensor | float:
    """`world_size / count`, with a count of 0 read as 1.

    Unlike [`token_weight`], an empty step is not an error here: with `mask_truncated_completions` every completion
    of a step can be masked, and the loss of such a step is then 0 (its numerator is 0 too), not NaN. `clamp` keeps a
    count that lives on an accelerator there, without a host sync.
    """
    if isinstance(count, torch.Tensor):
        return world_size / count.clamp(min=1)
    return world_size / max(int(count), 1)


def _token_reduction(token_losses, mask, counts, world_size, max_completion_length):
    return (token_losses * mask).sum() * _per_count(counts.tokens, world_size)


def _sequence_mean_reduction(token_losses, mask, counts, world_size, max_completion_length):
    per_sequence = (token_losses * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_sequence.sum() * _per_count(counts.sequences, world_size)


def _sequence_sum_reduction(token_losses, mask, counts, world_size, max_completion_length):
    return (token_losses * mask).sum() * _per_count(counts.sequences, world_size)


def _constant_length_reduction(token_losses, mask, counts, world_size, max_completion_length):
    if max_completion_length is None or max_completion_length < 1:
        raise ValueError(
            f"The 'constant_length' reduction (Dr. GRPO) divides by max_completion_length; got {max_completion_length}. "
            "Pass the generation's max_completion_length (a positive int)."
        )
    return (token_losses * mask).sum() * _per_count(counts.sequences, world_size) / max_completion_length


def _local_token_reduction(token_losses, mask, counts, world_size, max_completion_length):
    return (token_losses * mask).sum() / mask.sum().clamp(min=1) / max(int(counts.micro_batches), 1)


POLICY_REDUCERS: dict[str, Callable[..., torch.Tensor]] = {
    "token": _token_reduction,
    "sequence_mean": _sequence_mean_reduction,
    "sequence_sum": _sequence_sum_reduction,
    "constant_length": _constant_length_reduction,
    "local_token": _local_token_reduction,
}


def reduce_policy_loss(
    token_losses: torch.Tensor,
    completion_mask: torch.Tensor,
    mode: PolicyReduction,
    counts: StepCounts,
    world_size: int = 1,
    max_completion_length: int | None = None,
) -> torch.Tensor:
    """The scalar to differentiate for one micro-batch of a policy-gradient loss, normalised over the optimiser step.

    With `W = world_size`, `m` the completion mask, `l` the token losses and `|y_i| = Σ_t m_i,t`:

    | mode | micro-batch loss | used by |
    |---|---|---|
    | `token` | `W · Σ l·m / counts.tokens` | `dapo`, `cispo`, `vespo` |
    | `sequence_mean` | `W · Σ_i (Σ_t l·m / max(|y_i|, 1)) / counts.sequences` | `grpo`, `sapo` |
    | `sequence_sum` | `W · Σ l·m / counts.sequences` | `luspo` |
    | `constant_length` | `W · Σ l·m / (counts.sequences · max_completion_length)` | `dr_grpo` ([Dr. GRPO](https://huggingface.co/papers/2503.20783)) |
    | `local_token` | `Σ l·m / max(Σ m, 1) / counts.micro_batches` | `bnpo` |

    For the first four modes, summing the micro-batch losses of a step (and averaging the gradients over ranks, as
    DDP does) gives the loss of the whole step computed at once, however the step is cut into micro-batches and ranks
    (see the module docstring). `local_token` is, by definition, the token mean of each micro-batch on its own (DDP
    then averages the ranks): it is **not** invariant to how a batch is cut; a token of a short micro-batch weighs
    more than one of a long micro-batch.

    A step whose count is 0 (every completion masked) gives a loss of 0, not an error.

    Args:
        token_losses (`torch.Tensor`): `(B, T)` per-token losses (e.g. from [`~trl.losses.policy.policy_loss`]).
        completion_mask (`torch.Tensor`): `(B, T)` 0/1 or bool; 1 on the tokens that enter the loss.
        mode (`str`): a key of `POLICY_REDUCERS` (see the table); `POLICY_REDUCTIONS` in `trl.losses.policy` maps each
            `loss_type` to its mode.
        counts ([`~trl.rollout.StepCounts`]): `tokens` and `sequences` of the whole optimiser step over all ranks, and
            `micro_batches`, the micro-batches of the step on one rank. Any object with these three attributes works.
        world_size (`int`, *optional*, defaults to `1`): data-parallel ranks whose gradients are averaged.
        max_completion_length (`int`, *optional*): the generation's length budget; required by `constant_length`.

    Returns:
        `torch.Tensor`: 0-d loss.

    Raises:
        `ValueError`: unknown `mode`, or `constant_length` without a positive `max_completion_length`.

    Example:
        ```python
        >>> from trl.rollout import StepCounts
        >>> losses = torch.tensor([[1.0, 3.0, 0.0], [2.0, 0.0, 0.0]])
        >>> mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
        >>> counts = StepCounts(tokens=torch.tensor(6), sequences=torch.tensor(4), micro_batches=2)
        >>> reduce_policy_loss(losses, mask, "token", counts)  # (1 + 3 + 2) / 6
        tensor(1.)
        >>> reduce_policy_loss(losses, mask, "sequence_mean", counts)  # (4 / 2 + 2 / 1) / 4
        tensor(1.)
        ```
    """
    if mode not in POLICY_REDUCERS:
        raise ValueError(f"Unknown policy-loss reduction {mode!r}; allowed: {sorted(POLICY_REDUCERS)}.")
    mask = completion_mask.to(token_losses.dtype)
    return POLICY_REDUCERS[mode](token_losses, mask, counts, world_size, max_completion_length)


def sequence_mean_loss(seq_losses: torch.Tensor, counts: StepCounts, world_size: int = 1) -> torch.Tensor:
    """Per-sequence losses (RLOO) reduced to their share of the mean over every sequence of the optimiser step:
    `W · Σ_i loss_i / counts.sequences`.

    Args:
        seq_losses (`torch.Tensor`): `(B,)` one loss per completion.
        counts ([`~trl.rollout.StepCounts`]): `sequences` is the number of completions of the whole step, all ranks.
        world_size (`int`, *optional*, defaults to `1`): data-parallel ranks.

    Returns:
        `torch.Tensor`: 0-d loss.

    Example:
        ```python
        >>> from trl.rollout import StepCounts
        >>> counts = StepCounts(tokens=torch.tensor(9), sequences=torch.tensor(4))
        >>> sequence_mean_loss(torch.tensor([1.0, 3.0]), counts, world_size=2)  # 2 * (1 + 3) / 4
        tensor(2.)
        ```
    """
    return seq_losses.sum() * _per_count(counts.sequences, world_size)
