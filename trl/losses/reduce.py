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
"""

from __future__ import annotations

import torch


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
