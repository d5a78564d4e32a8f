"""Odds Ratio Preference Optimization (ORPO), https://huggingface.co/papers/2403.07691: the odds-ratio term that is
added to the NLL of the chosen completion. One model, no reference.

Notation: `l_c`, `l_r` are the **length-averaged** log-probs of the chosen and rejected completion
(`log P(y|x) / |y|`, eq. 3 of the paper), so `P = exp(l)` is in (0, 1] and its odds are `P / (1 − P)`.

    log_odds = log(odds_c / odds_r) = (l_c − l_r) − (log(1 − e^{l_c}) − log(1 − e^{l_r}))     (eq. 4)
    L_OR     = −log σ(log_odds)                                                               (eq. 5)
    loss     = NLL(chosen) + λ · mean(L_OR)                                                   (eq. 6, λ = `beta`)

`log(1 − e^l)` is computed as `log(−expm1(l))` near 0 and `log1p(−exp(l))` below `−ln 2` (the usual stable
`log1mexp`), so a completion whose average probability is close to 1 keeps a finite, exact odds ratio. At `l = 0`
exactly (probability 1, infinite odds) `l` is capped at `−MIN_GAP`.

Conventions as `trl.losses.dpo`: inputs are `(B,)`, half precision is upcast to float32, the returned losses are per
pair and not reduced; metrics are detached.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._common import _up

Tensor = torch.Tensor

# a completion whose average log-prob is exactly 0 has infinite odds; capping it this close to 0 keeps every term finite
MIN_GAP = 1e-7


def log1mexp(x: Tensor) -> Tensor:
    """`log(1 − e^x)` for `x ≤ 0`, accurate everywhere (Mächler, "Accurately computing log(1 − exp(−|a|))").

    Example:
        ```python
        >>> log1mexp(torch.tensor([math.log(0.5)]))  # log(1 - 0.5)
        tensor([-0.6931])
        ```
    """
    x = x.clamp(max=-MIN_GAP)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_log_odds(chosen_logps: Tensor, rejected_logps: Tensor) -> Tensor:
    """`(B,)` log odds ratio `log(odds_c / odds_r)` of average log-probs (eq. 4).

    Example:
        ```python
        >>> orpo_log_odds(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.2)]))  # log((0.5/0.5) / (0.2/0.8))
        tensor([1.3863])
        ```
    """
    chosen, rejected = _up(chosen_logps), _up(rejected_logps)
    return (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))


def orpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, beta: float = 0.1) -> tuple[Tensor, dict[str, Tensor]]:
    """ORPO's odds-ratio term per pair, `λ · (−log σ(log_odds))`; the trainer adds the NLL of the chosen completion.

    Args:
        chosen_logps (`torch.Tensor`): `(B,)` average log-prob of each chosen completion's tokens under the policy.
        rejected_logps (`torch.Tensor`): `(B,)` same for the rejected completion.
        beta (`float`, *optional*, defaults to `0.1`): λ, the weight of the odds-ratio term (`ORPOConfig.beta`).

    Returns:
        `tuple[torch.Tensor, dict[str, torch.Tensor]]`: the `(B,)` losses and detached metrics: 0-d means
        `rewards/chosen` (`β·l_c`), `rewards/rejected` (`β·l_r`), `rewards/accuracies`, `rewards/margins`,
        `log_odds_ratio` (mean `log σ(log_odds)`), `log_odds_chosen` (mean `log_odds`), `logps/chosen`,
        `logps/rejected`; and the `(B,)` values `chosen_rewards`, `rejected_rewards`, `log_odds`, `log_sigmoid` so
        that a trainer can average exactly over accumulation steps and processes.

    Raises:
        `ValueError`: the inputs are not 1-D tensors of one length.

    Example:
        ```python
        >>> losses, metrics = orpo_loss(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.2)]), beta=0.1)
        >>> losses  # 0.1 * -log σ(log 4) = 0.1 * log(1.25)
        tensor([0.0223])
        ```
    """
    if chosen_logps.dim() != 1 or chosen_logps.shape != rejected_logps.shape:
        raise ValueError(
            f"orpo_loss expects two 1-D tensors of the same length (B,); got shapes {tuple(chosen_logps.shape)} and "
            f"{tuple(rejected_logps.shape)}."
        )
    log_odds = orpo_log_odds(chosen_logps, rejected_logps)
    log_sigmoid = F.logsigmoid(log_odds)
    losses = -beta * log_sigmoid
    with torch.no_grad():
        chosen_rewards = beta * _up(chosen_logps).detach()
        rejected_rewards = beta * _up(rejected_logps).detach()
        metrics = {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "log_odds_ratio": log_sigmoid.detach().mean(),
            "log_odds_chosen": log_odds.detach().mean(),
            "logps/chosen": _up(chosen_logps).detach().mean(),
            "logps/rejected": _up(rejected_logps).detach().mean(),
            "chosen_rewards": chosen_rewards,
            "rejected_rewards": rejected_rewards,
            "log_odds": log_odds.detach(),
            "log_sigmoid": log_sigmoid.detach(),
        }
    return losses, metrics
