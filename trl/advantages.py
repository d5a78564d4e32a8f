"""Advantage estimators of the online trainers, as pure functions of reward tensors.

Rows come prompt-major (see `trl.rollout`): the `G = num_generations` completions of a prompt are consecutive rows and
form a group. Rewards hold NaN where a reward function returned `None` for a completion (that function then does not
score it).

- GRPO: [`group_normalized_advantages`] (reward minus the group mean, optionally divided by a std; or GDPO's
  per-reward normalisation), plus [`group_reward_stats`] for the `reward_std` / `frac_reward_zero_std` metrics.
- RLOO: [`rloo_rewards`] (combined reward with the KL penalty) then [`leave_one_out_advantages`], optionally
  [`normalize_advantages`].

Standard deviations are unbiased (Bessel's correction, torch's default); a std over fewer than two values is taken as
0 instead of NaN (a lone completion has nothing to be compared with, so its advantage is 0).
"""

from __future__ import annotations

from typing import Literal

import torch

Tensor = torch.Tensor
ScaleRewards = Literal["group", "batch", "none"]
RewardAggregation = Literal["sum_then_normalize", "normalize_then_sum"]

SCALE_REWARDS = ("group", "batch", "none")
REWARD_AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")

# Added to every std before dividing, so that a group whose rewards are all equal gets advantages 0, not NaN.
STD_EPS = 1e-4


def _check_groups(num_rows: int, num_generations: int, minimum: int = 1) -> None:
    if num_generations < minimum:
        raise ValueError(f"num_generations must be >= {minimum}; got {num_generations}.")
    if num_rows % num_generations != 0:
        raise ValueError(
            f"The batch must hold whole groups: {num_rows} completions is not a multiple of num_generations="
            f"{num_generations}. Make the generation batch a multiple of num_generations."
        )


def _nanmean(x: Tensor, dim: int) -> Tensor:
    """Mean over the non-NaN entries along `dim` (keepdim); 0 where there is none."""
    valid = ~torch.isnan(x)
    return torch.where(valid, x, 0.0).sum(dim, keepdim=True) / valid.sum(dim, keepdim=True).clamp(min=1)


def _nanstd(x: Tensor, dim: int) -> Tensor:
    """Unbiased std over the non-NaN entries along `dim` (keepdim); 0 where there are fewer than two."""
    valid = ~torch.isnan(x)
    count = valid.sum(dim, keepdim=True)
    deviation = torch.where(valid, x - _nanmean(x, dim), 0.0)
    variance = deviation.pow(2).sum(dim, keepdim=True) / (count - 1).clamp(min=1)
    return torch.where(count >= 2, variance.sqrt(), 0.0)


def group_normalized_advantages(
    rewards: Tensor,
    weights: Tensor,
    num_generations: int,
    scale_rewards: ScaleRewards = "group",
    aggregation: RewardAggregation = "sum_then_normalize",
) -> Tensor:
    """GRPO's group-relative advantages ([DeepSeekMath](https://huggingface.co/papers/2402.03300), §4.1.2).

    - `sum_then_normalize` (default): the total reward `R_i = nansum_j w_j · rewards_i,j` minus the mean of `R` over
      the completion's group, divided by `std + 1e-4` where `std` is the std of `R` over the group (`"group"`), over
      the whole batch (`"batch"`: groups of easy or hard prompts, whose rewards barely vary, are not scaled up), or
      not divided at all (`"none"`, as [Dr. GRPO](https://huggingface.co/papers/2503.20783) recommends).
    - `normalize_then_sum` ([GDPO](https://huggingface.co/papers/2601.05242)): each reward column is normalised within
      its group, `(r − nanmean) / (nanstd + 1e-4)` over the completions it scores, then the weighted nansum over
      columns is normalised over the batch, `(x − mean) / (std + 1e-4)`. `scale_rewards` is not read: both
      normalisations are part of the method.

    A completion that no reward function scored (its row is all NaN) gets advantage 0. Its nansum, 0, still enters
    the group's (and the batch's) statistics, as in the reference implementation.

    Args:
        rewards (`torch.Tensor`): `(N, R)` one column per reward function, NaN where it returned `None`.
        weights (`torch.Tensor`): `(R,)` reward weights.
        num_generations (`int`): `G`, completions per prompt; `N` must be a multiple of it. With `G = 1` every
            advantage is 0 (the group std is taken as 0).
        scale_rewards (`str`, *optional*, defaults to `"group"`): `"group"`, `"batch"` or `"none"`.
        aggregation (`str`, *optional*, defaults to `"sum_then_normalize"`): or `"normalize_then_sum"`.

    Returns:
        `torch.Tensor`: `(N,)` advantages, in the dtype of `rewards` (float32 for half-precision input).

    Raises:
        `ValueError`: `N` is not a multiple of `num_generations`, `num_generations < 1`, `weights` does not have one
            entry per column, or an unknown `scale_rewards` / `aggregation`.

    Example:
        ```python
        >>> rewards = torch.tensor([[1.0], [0.0], [1.0], [1.0]])
        >>> group_normalized_advantages(rewards, torch.ones(1), num_generations=2)  # group std = 1/√2, then 0
        tensor([ 0.7070, -0.7070,  0.0000,  0.0000])
        ```
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"Unknown scale_rewards {scale_rewards!r}; allowed: {list(SCALE_REWARDS)}.")
    if aggregation not in REWARD_AGGREGATIONS:
        raise ValueError(f"Unknown reward aggregation {aggregation!r}; allowed: {list(REWARD_AGGREGATIONS)}.")
    if rewards.dim() != 2 or weights.shape != (rewards.shape[1],):
        raise ValueError(
            f"Expected rewards of shape (N, R) and weights of shape (R,); got {tuple(rewards.shape)} and "
            f"{tuple(weights.shape)}."
        )
    _check_groups(rewards.shape[0], num_generations)
    rewards = rewards.float() if rewards.dtype in (torch.float16, torch.bfloat16) else rewards
    weights = weights.to(rewards.dtype)
    unscored = torch.isnan(rewards).all(dim=1)  # (N,)
    groups = rewards.shape[0] // num_generations

    if aggregation == "sum_then_normalize":
        total = torch.nansum(rewards * weights, dim=1)  # (N,)
        grouped = total.view(groups, num_generations)
        advantages = (grouped - grouped.mean(1, keepdim=True)).reshape(-1)
        if scale_rewards == "group":
            advantages = advantages / (_nanstd(grouped, dim=1).expand(-1, num_generations).reshape(-1) + STD_EPS)
        elif scale_rewards == "batch":
            advantages = advantages / (_nanstd(total, dim=0) + STD_EPS)
    else:
        columns = rewards.view(groups, num_generations, -1)  # (groups, G, R)
        normalised = (columns - _nanmean(columns, dim=1)) / (_nanstd(columns, dim=1) + STD_EPS)
        total = torch.nansum(normalised.reshape_as(rewards) * weights, dim=1)  # (N,)
        advantages = (total - total.mean()) / (_nanstd(total, dim=0) + STD_EPS)

    return torch.where(unscored, 0.0, advantages)


def leave_one_out_advantages(rewards: Tensor, num_generations: int) -> Tensor:
    """RLOO's advantages ([Ahmadian et al.](https://huggingface.co/papers/2402.14740), eq. 6): each completion's
    reward minus the mean reward of the **other** scorable completions of its group.

    A completion whose reward is NaN (unscored) gets advantage 0 and is left out of the others' baselines; so is a
    completion whose group has no other scorable completion (there is no baseline).

    Args:
        rewards (`torch.Tensor`): `(N,)` combined rewards (see [`rloo_rewards`]), NaN for an unscored completion.
        num_generations (`int`): `G >= 2`, completions per prompt; `N` must be a multiple of it.

    Returns:
        `torch.Tensor`: `(N,)` advantages.

    Raises:
        `ValueError`: `num_generations < 2` (a leave-one-out baseline needs another sample) or `N` not a multiple.

    Example:
        ```python
        >>> leave_one_out_advantages(torch.tensor([1.0, 2.0, 6.0, 5.0, float("nan"), 1.0]), num_generations=3)
        tensor([-3.0000, -1.5000,  4.5000,  4.0000,  0.0000, -4.0000])
        ```
    """
    _check_groups(rewards.shape[0], num_generations, minimum=2)
    rewards = rewards.float() if rewards.dtype in (torch.float16, torch.bfloat16) else rewards
    grouped = rewards.view(-1, num_generations)
    scored = ~torch.isnan(grouped)
    values = torch.where(scored, grouped, 0.0)
    others_sum = values.sum(1, keepdim=True) - values
    others_count = scored.sum(1, keepdim=True) - scored.long()
    baseline = others_sum / others_count.clamp(min=1)
    return torch.where(scored & (others_count > 0), grouped - baseline, 0.0).reshape(-1)


def normalize_advantages(advantages: Tensor) -> Tensor:
    """`(A − mean(A)) / (std(A) + 1e-4)` over the batch (RLOO's `normalize_advantages`).

    Args:
        advantages (`torch.Tensor`): `(N,)`.

    Returns:
        `torch.Tensor`: `(N,)`; all zeros for a single completion.

    Example:
        ```python
        >>> normalize_advantages(torch.tensor([1.0, 3.0]))  # std = √2
        tensor([-0.7071,  0.7071])
        ```
    """
    return (advantages - advantages.mean()) / (_nanstd(advantages, dim=0) + STD_EPS)


def group_reward_stats(total_rewards: Tensor, num_generations: int, atol: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Per-group spread of the total rewards, for the `reward_std` and `frac_reward_zero_std` metrics.

    NaN entries (unscored completions, as [`rloo_rewards`] leaves them) are skipped.

    Args:
        total_rewards (`torch.Tensor`): `(N,)` combined reward of each completion.
        num_generations (`int`): `G`; `N` must be a multiple of it.
        atol (`float`, *optional*, defaults to `1e-6`): a std at most this is counted as zero (equal rewards can
            leave a rounding residue in the mean).

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: `(N // G,)` unbiased std of each group (0 with fewer than two scored
        completions), and `(N // G,)` bool, True where that std is zero (the group gives no learning signal).

    Raises:
        `ValueError`: `N` is not a multiple of `num_generations`.

    Example:
        ```python
        >>> std, zero = group_reward_stats(torch.tensor([1.0, 1.0, 0.0, 2.0]), num_generations=2)
        >>> std, zero
        (tensor([0.0000, 1.4142]), tensor([ True, False]))
        ```
    """
    _check_groups(total_rewards.shape[0], num_generations)
    std = _nanstd(total_rewards.view(-1, num_generations), dim=1).squeeze(1)
    return std, std <= atol


def rloo_rewards(
    rewards: Tensor,
    weights: Tensor,
    reward_clip_range: tuple[float, float] | None = None,
    kl: Tensor | None = None,
    beta: float = 0.0,
) -> Tensor:
    """RLOO's combined reward: the weighted nansum over reward functions, clipped to `reward_clip_range`, minus the
    KL penalty `β · kl` ([Ahmadian et al.](https://huggingface.co/papers/2402.14740), eq. 1: KL as a reward penalty).

    A completion that no reward function scored stays NaN (instead of the nansum's 0), so that
    [`leave_one_out_advantages`] leaves it out of its group's baselines and gives it advantage 0.

    Args:
        rewards (`torch.Tensor`): `(N, R)`, NaN where a reward function returned `None`.
        weights (`torch.Tensor`): `(R,)`.
        reward_clip_range (`tuple[float, float]`, *optional*): `(min, max)` applied to the weighted sum.
        kl (`torch.Tensor`, *optional*): `(N,)` sequence KL estimate `Σ_t m · (old_logps − ref_logps)` (k1).
        beta (`float`, *optional*, defaults to `0.0`): KL coefficient.

    Returns:
        `torch.Tensor`: `(N,)` rewards.

    Raises:
        `ValueError`: `beta != 0` without `kl`, or mismatched shapes.

    Example:
        ```python
        >>> rewards = torch.tensor([[1.0, 2.0], [float("nan"), 4.0], [float("nan"), float("nan")]])
        >>> rloo_rewards(rewards, torch.tensor([1.0, 0.5]), reward_clip_range=(0.0, 1.5))
        tensor([1.5000, 1.5000,    nan])
        ```
    """
    if rewards.dim() != 2 or weights.shape != (rewards.shape[1],):
        raise ValueError(
            f"Expected rewards of shape (N, R) and weights of shape (R,); got {tuple(rewards.shape)} and "
            f"{tuple(weights.shape)}."
        )
    if beta != 0 and kl is None:
        raise ValueError(f"rloo_rewards needs the sequence kl when beta != 0 (got beta={beta}).")
    rewards = rewards.float() if rewards.dtype in (torch.float16, torch.bfloat16) else rewards
    total = torch.nansum(rewards * weights.to(rewards.dtype), dim=1)
    total = torch.where(torch.isnan(rewards).all(dim=1), float("nan"), total)
    if reward_clip_range is not None:
        total = total.clamp(reward_clip_range[0], reward_clip_range[1])
    if beta != 0:
        total = total - beta * kl.to(total.dtype)
    return total
