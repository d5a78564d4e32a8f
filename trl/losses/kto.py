"""KTO-family losses on unpaired completions labelled desirable or undesirable, picked through `KTO_LOSSES`.

Notation: `h = log π(y|x) − log π_ref(y|x)` is a completion's log-ratio (sums over its tokens), `z` the KL reference
point of [`kto_kl`]. Reference log-probs and `z` are detached; bf16 / fp16 inputs are upcast to float32.

Metrics are returned as sums and counts over the desirable ("chosen") and undesirable ("rejected") rows rather than as
means, because a micro-batch may hold rows of one side only (a mean would be NaN) and because means of unequal
micro-batches do not average to the step's mean. The trainer accumulates them and divides once:
`rewards/chosen = Σ rewards/chosen_sum / Σ count/chosen`, `rewards/margins = rewards/chosen − rewards/rejected`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from ._common import _up

Tensor = torch.Tensor


def kto_kl(kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    """KTO's reference point `z = max(0, mean(log π(y'|x) − log π_ref(y'|x)))`, detached
    (https://huggingface.co/papers/2402.01306).

    `y'` are mismatched completions (each prompt paired with another row's completion), so the mean estimates
    `KL(π ‖ π_ref)` without being tied to the row's own label. It is clamped at 0 because a KL is non-negative, and
    detached because the paper does not back-propagate through it. Pass the log-probs gathered from all ranks to get
    the global estimate.

    Args:
        kl_logps (`torch.Tensor`): `(N,)` policy log-probs of the mismatched completions.
        ref_kl_logps (`torch.Tensor`): `(N,)` reference log-probs of the same completions.

    Returns:
        `torch.Tensor`: 0-d estimate.

    Example:
        ```python
        >>> kto_kl(torch.tensor([-1.0, -4.0]), torch.tensor([-2.0, -2.0]))  # mean(1, -2) = -0.5, clamped
        tensor(0.)
        ```
    """
    with torch.no_grad():
        return (_up(kl_logps) - _up(ref_kl_logps)).mean().clamp(min=0)


def kto_terms(logratios: Tensor, kl: Tensor | float, beta: float) -> tuple[Tensor, Tensor]:
    """KTO (https://huggingface.co/papers/2402.01306) value terms, before the class weights λ_D, λ_U:

        desirable:   1 − σ(β (h − z)),   undesirable: 1 − σ(β (z − h)).

    Args:
        logratios (`torch.Tensor`): `(B,)` log-ratios `h`.
        kl (`torch.Tensor` or `float`): the reference point `z`.
        beta (`float`): β.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: `(B,)` losses if every row were desirable, and if every row were
        undesirable.

    Example:
        ```python
        >>> kto_terms(torch.tensor([0.0]), 0.0, beta=0.1)
        (tensor([0.5000]), tensor([0.5000]))
        ```
    """
    # 1 − σ(x) is written σ(−x), which keeps its precision when σ(x) is close to 1.
    return torch.sigmoid(beta * (kl - logratios)), torch.sigmoid(beta * (logratios - kl))


def apo_zero_unpaired_terms(logratios: Tensor, kl: Tensor | float, beta: float) -> tuple[Tensor, Tensor]:
    """Unpaired APO-zero (https://huggingface.co/papers/2408.06266): desirable `1 − σ(β h)`, undesirable `σ(β h)`.

    Anchored at the reference itself, so the KL reference point `kl` is ignored.

    Example:
        ```python
        >>> apo_zero_unpaired_terms(torch.tensor([0.0]), None, beta=0.1)
        (tensor([0.5000]), tensor([0.5000]))
        ```
    """
    return torch.sigmoid(-beta * logratios), torch.sigmoid(beta * logratios)


KTO_LOSSES: dict[str, Callable[[Tensor, Tensor | float, float], tuple[Tensor, Tensor]]] = {
    "kto": kto_terms,
    "apo_zero_unpaired": apo_zero_unpaired_terms,
}


def kto_loss(
    logps: Tensor,
    ref_logps: Tensor,
    labels: Tensor,
    kl: Tensor | float | None = None,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-row KTO loss: `λ_D · desirable_term` on rows labelled desirable, `λ_U · undesirable_term` on the others.

    Args:
        logps (`torch.Tensor`): `(B,)` policy log-probs of each completion (sum over its tokens).
        ref_logps (`torch.Tensor`): `(B,)` reference log-probs (detached here).
        labels (`torch.Tensor`): `(B,)` bool, `True` for desirable completions.
        kl (`torch.Tensor` or `float`, *optional*): the reference point `z` of [`kto_kl`] (0-d); `None` means 0.
            Ignored by `apo_zero_unpaired`.
        beta (`float`, *optional*, defaults to `0.1`): β.
        desirable_weight (`float`, *optional*, defaults to `1.0`): λ_D.
        undesirable_weight (`float`, *optional*, defaults to `1.0`): λ_U.
        loss_type (`str`, *optional*, defaults to `"kto"`): a key of `KTO_LOSSES`.

    Returns:
        `tuple[torch.Tensor, dict[str, torch.Tensor]]`: `(B,)` losses (float32 or wider) and detached 0-d metrics
        `rewards/chosen_sum`, `rewards/rejected_sum` (sums of `β·h`), `logps/chosen_sum`, `logps/rejected_sum`,
        `count/chosen`, `count/rejected` and `kl` (see the module docstring for how to average them).

    Raises:
        `ValueError`: unknown `loss_type`, or tensors that are not 1-D of the same length.

    Example:
        ```python
        >>> losses, metrics = kto_loss(
        ...     torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0]), torch.tensor([True, False]), beta=0.1)
        >>> losses  # σ(-0.1), σ(-0.1)
        tensor([0.4750, 0.4750])
        ```
    """
    if loss_type not in KTO_LOSSES:
        raise ValueError(f"Unknown KTO loss_type {loss_type!r}; allowed: {list(KTO_LOSSES)}.")
    shapes = {"logps": tuple(logps.shape), "ref_logps": tuple(ref_logps.shape), "labels": tuple(labels.shape)}
    if len(set(shapes.values())) != 1 or logps.dim() != 1:
        raise ValueError(f"kto_loss expects 1-D tensors of the same length (B,); got shapes {shapes}.")
    labels = labels.bool()
    logratios = _up(logps) - _up(ref_logps).detach()
    kl = 0.0 if kl is None else (_up(kl).detach() if isinstance(kl, Tensor) else kl)
    desirable, undesirable = KTO_LOSSES[loss_type](logratios, kl, beta)
    losses = torch.where(labels, desirable_weight * desirable, undesirable_weight * undesirable)

    with torch.no_grad():
        rewards = beta * logratios.detach()
        policy_logps = _up(logps).detach()
        # torch.where rather than a 0/1 product, so that an infinite value on one side cannot turn the other's sum NaN
        metrics = {
            "rewards/chosen_sum": torch.where(labels, rewards, 0.0).sum(),
            "rewards/rejected_sum": torch.where(labels, 0.0, rewards).sum(),
            "logps/chosen_sum": torch.where(labels, policy_logps, 0.0).sum(),
            "logps/rejected_sum": torch.where(labels, 0.0, policy_logps).sum(),
            "count/chosen": labels.sum().to(rewards.dtype),
            "count/rejected": (~labels).sum().to(rewards.dtype),
            "kl": torch.as_tensor(kl, dtype=rewards.dtype, device=rewards.device),
        }
    return losses, metrics
