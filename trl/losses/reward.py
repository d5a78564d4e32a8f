"""Reward-model loss: the Bradley-Terry pairwise loss with an optional margin and reward centring."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import _up

Tensor = torch.Tensor


def bradley_terry_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    margin: Tensor | None = None,
    center_rewards_coefficient: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-pair Bradley-Terry loss of a reward model (InstructGPT, https://huggingface.co/papers/2203.02155, eq. 1):

        loss_i = −log σ(r_c,i − r_r,i − m_i) + c · (r_c,i + r_r,i)²

    - The margin `m` (Llama 2, https://huggingface.co/papers/2307.09288, eq. 2) asks for a larger reward gap on pairs
      whose preference is stronger.
    - The centring term (https://huggingface.co/papers/2312.09244) pulls each pair's rewards towards zero mean, since
      the Bradley-Terry likelihood alone does not fix their offset; averaged over rows it is TRL's
      `center_rewards_coefficient` term, `c · mean((r_c + r_r)²)`.

    Args:
        chosen_rewards (`torch.Tensor`): `(B,)` rewards of the chosen sequences (squeeze a `(B, 1)` model output
            first).
        rejected_rewards (`torch.Tensor`): `(B,)` rewards of the rejected sequences.
        margin (`torch.Tensor`, *optional*): `(B,)` required reward gaps; `None` means 0.
        center_rewards_coefficient (`float`, *optional*): `c`; `None` or 0 disables centring.

    Returns:
        `tuple[torch.Tensor, dict[str, torch.Tensor]]`: `(B,)` losses (float32 or wider) and detached 0-d metrics
        `accuracy` (fraction with `r_c > r_r`, ties count as wrong), `margin` (mean `r_c − r_r`), and `min_reward`,
        `mean_reward`, `max_reward` over both sides.

    Raises:
        `ValueError`: tensors that are not 1-D of the same length (a `(B, 1)` next to a `(B,)` would broadcast to
        `(B, B)`).

    Example:
        ```python
        >>> losses, metrics = bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]))
        >>> losses  # -log σ(1)
        tensor([0.3133])
        ```
    """
    shapes = {"chosen_rewards": tuple(chosen_rewards.shape), "rejected_rewards": tuple(rejected_rewards.shape)}
    if margin is not None:
        shapes["margin"] = tuple(margin.shape)
    if len(set(shapes.values())) != 1 or chosen_rewards.dim() != 1:
        raise ValueError(f"bradley_terry_loss expects 1-D tensors of the same length (B,); got shapes {shapes}.")
    chosen, rejected = _up(chosen_rewards), _up(rejected_rewards)
    gap = chosen - rejected
    losses = -F.logsigmoid(gap - _up(margin) if margin is not None else gap)
    if center_rewards_coefficient:
        losses = losses + center_rewards_coefficient * (chosen + rejected) ** 2

    with torch.no_grad():
        both = torch.cat([chosen, rejected]).detach()
        metrics = {
            "accuracy": (chosen > rejected).float().mean(),
            "margin": gap.detach().mean(),
            "min_reward": both.min(),
            "mean_reward": both.mean(),
            "max_reward": both.max(),
        }
    return losses, metrics
