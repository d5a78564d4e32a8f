"""Geometric-Mean Policy Optimization (GMPO), https://huggingface.co/papers/2507.20673: GRPO with the geometric mean
of the token importance ratios instead of their arithmetic mean.

For completion `i` with advantage `A_i`, tokens `t` (mask `m`), `δ_i,t = logps − old_logps` and `s = sign(A_i)`:

    δ̂_i,t = s · min(s · δ_i,t, s · clip(δ_i,t, −ε_low, ε_high))       (PPO's pessimistic clip, in log space)
    ρ_i   = exp(mean_t δ̂_i,t)                                          (the geometric mean of the clipped ratios)
    loss_i = −A_i · ρ_i  [+ β · mean_t k3_i,t]                          (eq. 3 of the paper; a mean over completions)

Clipping the log-ratio to `[−ε_low, ε_high]` is the paper's ratio range `(e^{−ε}, e^{ε})`; its default `ε = 0.4` is
wider than GRPO's because the geometric mean already damps outlier tokens. `k3 = exp(ref − logps) − (ref − logps) − 1`
is the KL estimator of `trl.losses.policy`.

Conventions as `trl.losses.policy`: `old_logps`, `ref_logps` and `advantages` are detached; padded positions are
zeroed before any arithmetic; half precision is upcast to float32; a completion without a loss token has loss 0.
Reduce the `(B,)` result with [`~trl.losses.reduce.sequence_mean_loss`].
"""

from __future__ import annotations

import torch

from .policy import _masked_mean, _up

Tensor = torch.Tensor


def gmpo_loss(
    logps: Tensor,
    old_logps: Tensor | None,
    advantages: Tensor,
    completion_mask: Tensor,
    epsilon_low: float = 0.4,
    epsilon_high: float = 0.4,
    beta: float = 0.0,
    ref_logps: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GMPO's per-completion loss (see the module docstring).

    Args:
        logps (`torch.Tensor`): `(B, T)` log-probs of the completion tokens under the current policy.
        old_logps (`torch.Tensor` or `None`): `(B, T)` under the policy that generated them; `None` when on-policy.
        advantages (`torch.Tensor`): `(B,)`.
        completion_mask (`torch.Tensor`): `(B, T)` 0/1 or bool.
        epsilon_low (`float`, *optional*, defaults to `0.4`): lower bound `−ε_low` of the log-ratio.
        epsilon_high (`float`, *optional*, defaults to `0.4`): upper bound `ε_high` of the log-ratio.
        beta (`float`, *optional*, defaults to `0.0`): weight of the KL penalty (needs `ref_logps`).
        ref_logps (`torch.Tensor`, *optional*): `(B, T)` under the reference model.

    Returns:
        `tuple[torch.Tensor, dict[str, torch.Tensor]]`: `(B,)` losses and detached 0-d metrics, fractions of the loss
        tokens: `clip_ratio/low` (`δ < −ε_low` with `A < 0`), `clip_ratio/high` (`δ > ε_high` with `A > 0`),
        `clip_ratio/region` (either); with `beta != 0`, `kl` (mean `k3`).

    Raises:
        `ValueError`: `beta != 0` without `ref_logps`, or negative clipping bounds.

    Example:
        ```python
        >>> logps, old = torch.tensor([[-1.0, -1.0]]), torch.tensor([[-1.5, -1.1]])
        >>> losses, m = gmpo_loss(logps, old, torch.tensor([2.0]), torch.ones(1, 2))
        >>> losses  # δ = [0.5, 0.1] -> [0.4, 0.1]: -2 · e^0.25
        tensor([-2.5681])
        ```
    """
    if epsilon_low < 0 or epsilon_high < 0:
        raise ValueError(f"gmpo_loss: epsilon_low and epsilon_high must be >= 0; got {epsilon_low}, {epsilon_high}.")
    if beta != 0.0 and ref_logps is None:
        raise ValueError("gmpo_loss: beta != 0 needs ref_logps (the reference model's log-probs).")
    mask = completion_mask.bool()
    logps = torch.where(mask, _up(logps), 0.0)
    old_logps = logps.detach() if old_logps is None else torch.where(mask, _up(old_logps).detach(), 0.0)
    advantages = _up(advantages).detach().reshape(-1, 1).to(logps.dtype)
    sign = torch.where(advantages > 0, 1.0, -1.0).to(logps.dtype)  # (B, 1); A = 0 gives a zero loss either way
    log_ratio = logps - old_logps
    clipped = torch.clamp(log_ratio, -epsilon_low, epsilon_high)
    pessimistic = sign * torch.minimum(sign * log_ratio, sign * clipped)
    weights = mask.to(logps.dtype)
    tokens = weights.sum(-1)
    seq_log_ratio = (pessimistic * weights).sum(-1) / tokens.clamp(min=1.0)
    losses = -advantages[:, 0] * torch.exp(seq_log_ratio)
    metrics = {}
    if beta != 0.0:
        delta = torch.where(mask, _up(ref_logps).detach(), 0.0) - logps
        k3 = torch.exp(delta) - delta - 1
        losses = losses + beta * (k3 * weights).sum(-1) / tokens.clamp(min=1.0)
        metrics["kl"] = _masked_mean(k3.detach(), mask)
    losses = torch.where(tokens > 0, losses, 0.0)
    with torch.no_grad():
        low = (log_ratio < -epsilon_low) & (advantages < 0)
        high = (log_ratio > epsilon_high) & (advantages > 0)
        metrics.update({
            "clip_ratio/low": _masked_mean(low, mask),
            "clip_ratio/high": _masked_mean(high, mask),
            "clip_ratio/region": _masked_mean(low | high, mask),
        })
    return losses, metrics
