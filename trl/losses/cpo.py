"""Contrastive Preference Optimization (CPO), https://huggingface.co/papers/2401.08417, and the reference-free
variants sharing its trainer: SimPO (https://huggingface.co/papers/2405.14734) and AlphaPO's reward shape
(https://huggingface.co/papers/2501.03884). One small function per `loss_type`, picked through `CPO_LOSSES`.

Notation: `l_c`, `l_r` are the policy's log-probs of the chosen and rejected completion: sums over the completion's
tokens, or token averages for the length-normalised types (`CPO_LENGTH_NORMALISED`: `ipo`, `simpo`; the trainer
decides which it passes). With AlphaPO's `α ≠ 0` each is first mapped to the reward `u(l) = (1 − e^{−α·l}) / α`
(`(1 − p^{−α}) / α` with `p = e^l`), otherwise `u(l) = l`. Then `z = u_c − u_r` and, with `ε` = `label_smoothing`:

- `sigmoid`: `−(1−ε)·log σ(β·z) − ε·log σ(−β·z)` (CPO eq. 3 with conservative smoothing);
- `hinge`: `max(0, 1 − β·z)` (SLiC);
- `ipo`: `(z − 1/(2β))²`;
- `simpo`: `sigmoid` on `z − γ/β` (`γ` = `simpo_gamma`, SimPO's target margin).

The trainer adds `cpo_alpha · NLL(chosen)` (CPO's behaviour-cloning term). Conventions as `trl.losses.dpo`: `(B,)`
inputs, half precision upcast to float32, per-pair losses (not reduced), detached metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._common import _smoothed_logistic, _up

Tensor = torch.Tensor

# the loss types that compare length-averaged log-probs (as the reference trainer does)
CPO_LENGTH_NORMALISED = frozenset({"ipo", "simpo"})


@dataclass
class CPOLossParams:
    """Scalar hyper-parameters of the CPO losses (the subset of `CPOConfig` they read).

    Args:
        beta (`float`, *optional*, defaults to `0.1`): β, the inverse temperature (τ for IPO).
        label_smoothing (`float`, *optional*, defaults to `0.0`): ε in `[0, 0.5)` (`sigmoid`, `simpo`).
        simpo_gamma (`float`, *optional*, defaults to `0.5`): SimPO's target reward margin γ.
        alpha (`float`, *optional*, defaults to `0.0`): AlphaPO's reward-shape parameter; 0 keeps the log-prob.

    Example:
        ```python
        >>> CPOLossParams(beta=2.0, simpo_gamma=0.5).beta
        2.0
        ```
    """

    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    alpha: float = 0.0


def alphapo_reward(logps: Tensor, alpha: float) -> Tensor:
    """AlphaPO's reward `u(l) = (1 − e^{−α·l}) / α`; `u(l) = l` for `α = 0` (its limit).

    Example:
        ```python
        >>> alphapo_reward(torch.tensor([-1.0]), 1.0)  # 1 - e
        tensor([-1.7183])
        ```
    """
    logps = _up(logps)
    if alpha == 0.0:
        return logps
    return -torch.expm1(-alpha * logps) / alpha


def sigmoid_loss(z: Tensor, params: CPOLossParams) -> Tensor:
    """`−(1−ε)·log σ(β·z) − ε·log σ(−β·z)`."""
    return _smoothed_logistic(params.beta * z, params.label_smoothing)


def hinge_loss(z: Tensor, params: CPOLossParams) -> Tensor:
    """`max(0, 1 − β·z)`."""
    return torch.relu(1 - params.beta * z)


def ipo_loss(z: Tensor, params: CPOLossParams) -> Tensor:
    """`(z − 1/(2β))²`."""
    return (z - 1 / (2 * params.beta)) ** 2


def simpo_loss(z: Tensor, params: CPOLossParams) -> Tensor:
    """`sigmoid` on `z − γ/β`: `−(1−ε)·log σ(β·z − γ) − ε·log σ(γ − β·z)`."""
    return _smoothed_logistic(params.beta * (z - params.simpo_gamma / params.beta), params.label_smoothing)


CPO_LOSSES: dict[str, Callable[[Tensor, CPOLossParams], Tensor]] = {
    "sigmoid": sigmoid_loss,
    "hinge": hinge_loss,
    "ipo": ipo_loss,
    "simpo": simpo_loss,
}


def validate_cpo_loss_config(loss_type: str, beta: float, label_smoothing: float) -> None:
    """Check a CPO loss configuration (for `CPOConfig.__post_init__`).

    Raises:
        `ValueError`: an unknown `loss_type`, `beta ≤ 0`, or `label_smoothing` outside `[0, 0.5)`, naming the value.

    Example:
        ```python
        >>> validate_cpo_loss_config("simpo", beta=2.0, label_smoothing=0.0)
        ```
    """
    if loss_type not in CPO_LOSSES:
        raise ValueError(f"Unknown CPO loss_type {loss_type!r}; allowed: {sorted(CPO_LOSSES)}.")
    if not beta > 0:
        raise ValueError(f"beta must be > 0; got {beta}.")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(
            f"label_smoothing is the probability that a preference label is flipped and must be in [0, 0.5); got "
            f"{label_smoothing}."
        )


def cpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, loss_type: str = "sigmoid",
             params: CPOLossParams | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The CPO-family preference term of each pair (the trainer adds `cpo_alpha · NLL`).

    Args:
        chosen_logps (`torch.Tensor`): `(B,)` policy log-probs of the chosen completions (token averages for
            `CPO_LENGTH_NORMALISED` types, sums otherwise).
        rejected_logps (`torch.Tensor`): `(B,)` same for the rejected completions.
        loss_type (`str`, *optional*, defaults to `"sigmoid"`): a key of `CPO_LOSSES`.
        params ([`CPOLossParams`], *optional*): hyper-parameters; defaults to `CPOLossParams()`.

    Returns:
        `tuple[torch.Tensor, dict[str, torch.Tensor]]`: `(B,)` losses and detached metrics: 0-d means
        `rewards/chosen` (`β·u_c`), `rewards/rejected` (`β·u_r`), `rewards/accuracies`, `rewards/margins`,
        `logps/chosen`, `logps/rejected`, and the `(B,)` `chosen_rewards`, `rejected_rewards`.

    Raises:
        `ValueError`: unknown `loss_type`, bad `beta` / `label_smoothing`, or inputs that are not `(B,)` tensors.

    Example:
        ```python
        >>> cpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), "sigmoid", CPOLossParams(beta=0.5))[0]  # -log σ(1)
        tensor([0.3133])
        ```
    """
    params = params if params is not None else CPOLossParams()
    validate_cpo_loss_config(loss_type, params.beta, params.label_smoothing)
    if chosen_logps.dim() != 1 or chosen_logps.shape != rejected_logps.shape:
        raise ValueError(
            f"cpo_loss expects two 1-D tensors of the same length (B,); got shapes {tuple(chosen_logps.shape)} and "
            f"{tuple(rejected_logps.shape)}."
        )
    chosen = alphapo_reward(chosen_logps, params.alpha)
    rejected = alphapo_reward(rejected_logps, params.alpha)
    losses = CPO_LOSSES[loss_type](chosen - rejected, params)
    with torch.no_grad():
        chosen_rewards, rejected_rewards = params.beta * chosen.detach(), params.beta * rejected.detach()
        metrics = {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "logps/chosen": _up(chosen_logps).detach().mean(),
            "logps/rejected": _up(rejected_logps).detach().mean(),
            "chosen_rewards": chosen_rewards,
            "rejected_rewards": rejected_rewards,
        }
    return losses, metrics
