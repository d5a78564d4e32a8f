"""Advantage estimators (trl.advantages) against hand-worked values.

Stds are unbiased (n - 1) and every division adds 1e-4. Values used below: √2 = 1.4142136, √0.5 = 0.7071068,
√(11/3) = 1.9148542, √(14/3) = 2.1602469.
"""

import pytest
import torch

from trl.advantages import (
    group_normalized_advantages,
    group_reward_stats,
    leave_one_out_advantages,
    normalize_advantages,
    rloo_rewards,
)

TOL = {"rtol": 1e-5, "atol": 1e-6}
NAN = float("nan")


def expect(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), **TOL)


# Two groups of G = 2, two reward functions with weights [1, 2]; row 1's second function returned None.
#   totals (weighted nansum): row 0: 1 + 2 * 0.5 = 2;  row 1: 0 + (skipped) = 0;  rows 2, 3: 2 + 2 * 1 = 4
#   group means [1, 1, 4, 4] -> centred [1, -1, 0, 0]
REWARDS = torch.tensor([[1.0, 0.5], [0.0, NAN], [2.0, 1.0], [2.0, 1.0]])
WEIGHTS = torch.tensor([1.0, 2.0])


# ----------------------------------------------------------------------------------------------------------------------
# group_normalized_advantages: sum_then_normalize


def test_group_scaling():
    # group 0: std of [2, 0] = √2 -> ±1 / (1.4142136 + 1e-4) = ±0.7070568; group 1 has std 0 -> 0 / 1e-4 = 0
    advantages = group_normalized_advantages(REWARDS, WEIGHTS, num_generations=2, scale_rewards="group")
    expect(advantages, [0.7070568, -0.7070568, 0.0, 0.0])


def test_batch_scaling():
    # centred by the group mean, divided by the std of all totals [2, 0, 4, 4]: mean 2.5, squared deviations
    # 0.25 + 6.25 + 2.25 + 2.25 = 11, std = √(11/3) = 1.9148542 -> ±1 / 1.9149542 = ±0.5222057
    advantages = group_normalized_advantages(REWARDS, WEIGHTS, num_generations=2, scale_rewards="batch")
    expect(advantages, [0.5222057, -0.5222057, 0.0, 0.0])


def test_no_scaling():
    advantages = group_normalized_advantages(REWARDS, WEIGHTS, num_generations=2, scale_rewards="none")
    expect(advantages, [1.0, -1.0, 0.0, 0.0])


def test_zero_variance_groups_get_zero_advantages():
    rewards = torch.tensor([[0.3], [0.3], [0.3], [1.0], [1.0], [1.0]])
    for scale in ("group", "batch", "none"):
        expect(group_normalized_advantages(rewards, torch.ones(1), 3, scale_rewards=scale), [0.0] * 6)


def test_all_none_row_gets_zero_advantage():
    # row 1: every function returned None -> its nansum 0 still enters the group statistics (as in the reference):
    # totals [1, 0], mean 0.5, std √0.5 -> row 0: 0.5 / (0.7071068 + 1e-4) = 0.7070068; row 1 is set to 0
    rewards = torch.tensor([[1.0, NAN], [NAN, NAN]])
    expect(group_normalized_advantages(rewards, torch.ones(2), num_generations=2), [0.7070068, 0.0])


def test_single_generation_gives_zero_advantages():
    # G = 1: a lone completion has no group to compare with; the undefined std is taken as 0 (no NaN)
    rewards = torch.tensor([[1.0], [5.0]])
    expect(group_normalized_advantages(rewards, torch.ones(1), num_generations=1), [0.0, 0.0])


def test_group_normalized_errors():
    with pytest.raises(ValueError, match="multiple of num_generations=3"):
        group_normalized_advantages(REWARDS, WEIGHTS, num_generations=3)
    with pytest.raises(ValueError, match="num_generations must be >= 1"):
        group_normalized_advantages(REWARDS, WEIGHTS, num_generations=0)
    with pytest.raises(ValueError, match="'global'"):
        group_normalized_advantages(REWARDS, WEIGHTS, num_generations=2, scale_rewards="global")
    with pytest.raises(ValueError, match="'mean'"):
        group_normalized_advantages(REWARDS, WEIGHTS, num_generations=2, aggregation="mean")
    with pytest.raises(ValueError, match=r"\(R,\)"):
        group_normalized_advantages(REWARDS, torch.ones(3), num_generations=2)


def test_half_precision_rewards():
    advantages = group_normalized_advantages(REWARDS.bfloat16(), WEIGHTS.bfloat16(), num_generations=2)
    assert advantages.dtype == torch.float32 and torch.isfinite(advantages).all()
    expect(advantages, [0.7070568, -0.7070568, 0.0, 0.0])  # every reward is exact in bf16


# ----------------------------------------------------------------------------------------------------------------------
# group_normalized_advantages: normalize_then_sum (GDPO)


def test_gdpo():
    # rewards, G = 2, weights [1, 2]:
    #   row  r_a  r_b
    #   0    1    0
    #   1    0    2
    #   2    1    1
    #   3    0    None
    # column a, both groups [1, 0]: mean 0.5, std √0.5 -> ±0.5 / 0.7072068 = ±a, a = 0.7070068
    # column b, group 0 [0, 2]: mean 1, std √2 -> ∓1 / 1.4143136 = ∓b, b = 0.7070568
    #           group 1 [1, None]: one scored value, std taken as 0 -> (1 - 1) / 1e-4 = 0; None stays out
    # weighted nansum: [a - 2b, -a + 2b, a, -a] = [-0.7071068, 0.7071068, 0.7070068, -0.7070068], mean 0
    # batch std: √((2 * 0.7071068² + 2 * 0.7070068²) / 3) = 0.8164389 -> divide by 0.8165389
    rewards = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, NAN]])
    advantages = group_normalized_advantages(rewards, WEIGHTS, num_generations=2, aggregation="normalize_then_sum")
    expect(advantages, [-0.8659806, 0.8659806, 0.8658581, -0.8658581])
    # scale_rewards is not read by GDPO
    for scale in ("batch", "none"):
        other = group_normalized_advantages(rewards, WEIGHTS, 2, scale_rewards=scale, aggregation="normalize_then_sum")
        torch.testing.assert_close(other, advantages, **TOL)


def test_gdpo_all_none_row_and_constant_columns():
    # row 3 all None -> 0. Everything else constant within groups -> every normalised column is 0 -> all 0
    rewards = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0], [NAN, NAN]])
    advantages = group_normalized_advantages(rewards, WEIGHTS, num_generations=2, aggregation="normalize_then_sum")
    expect(advantages, [0.0, 0.0, 0.0, 0.0])


# ----------------------------------------------------------------------------------------------------------------------
# RLOO


def test_leave_one_out():
    # group 0 [1, 2, 6]: 1 - (2 + 6)/2 = -3;  2 - (1 + 6)/2 = -1.5;  6 - (1 + 2)/2 = 4.5
    # group 1 [5, None, 1]: 5 - 1 = 4;  None -> 0;  1 - 5 = -4  (the unscored one is not in the baselines)
    # group 2 [None, 3, None]: the only scored completion has no other to compare with -> 0
    rewards = torch.tensor([1.0, 2.0, 6.0, 5.0, NAN, 1.0, NAN, 3.0, NAN])
    expect(leave_one_out_advantages(rewards, num_generations=3), [-3.0, -1.5, 4.5, 4.0, 0.0, -4.0, 0.0, 0.0, 0.0])


def test_leave_one_out_pairs_and_equal_rewards():
    # G = 2: each baseline is the other's reward; equal rewards -> 0
    expect(leave_one_out_advantages(torch.tensor([1.0, 3.0, 2.0, 2.0]), 2), [-2.0, 2.0, 0.0, 0.0])


def test_leave_one_out_errors():
    with pytest.raises(ValueError, match="num_generations must be >= 2"):
        leave_one_out_advantages(torch.tensor([1.0, 2.0]), num_generations=1)
    with pytest.raises(ValueError, match="multiple of num_generations=2"):
        leave_one_out_advantages(torch.tensor([1.0, 2.0, 3.0]), num_generations=2)


def test_normalize_advantages():
    # [1, 2, 3, 6]: mean 3, deviations [-2, -1, 0, 3], std √(14/3) = 2.1602469 -> divide by 2.1603469
    expect(normalize_advantages(torch.tensor([1.0, 2.0, 3.0, 6.0])), [-0.9257772, -0.4628886, 0.0, 1.3886659])
    expect(normalize_advantages(torch.tensor([4.0])), [0.0])  # a single completion: no NaN


def test_rloo_rewards():
    # weights [1, 0.5]: totals [1 + 1, 0 + 2, None, -3 + 0.5] = [2, 2, NaN, -2.5] (all-None stays NaN)
    # clip to (-1, 1.5): [1.5, 1.5, NaN, -1];  minus 0.1 * kl [0.5, -1, 2, 0]: [1.45, 1.6, NaN, -1]
    rewards = torch.tensor([[1.0, 2.0], [NAN, 4.0], [NAN, NAN], [-3.0, 1.0]])
    weights = torch.tensor([1.0, 0.5])
    kl = torch.tensor([0.5, -1.0, 2.0, 0.0])
    total = rloo_rewards(rewards, weights, reward_clip_range=(-1.0, 1.5), kl=kl, beta=0.1)
    torch.testing.assert_close(total, torch.tensor([1.45, 1.6, NAN, -1.0]), equal_nan=True, **TOL)
    torch.testing.assert_close(rloo_rewards(rewards, weights), torch.tensor([2.0, 2.0, NAN, -2.5]), equal_nan=True)
    with pytest.raises(ValueError, match="kl"):
        rloo_rewards(rewards, weights, beta=0.1)


def test_rloo_pipeline_unscored_completion():
    # an unscored completion stays NaN through rloo_rewards, so the leave-one-out step gives it 0 and leaves it out
    rewards = torch.tensor([[1.0], [NAN], [3.0], [2.0]])
    advantages = leave_one_out_advantages(rloo_rewards(rewards, torch.ones(1)), num_generations=4)
    # scored [1, 3, 2]: 1 - 2.5 = -1.5, 3 - 1.5 = 1.5, 2 - 2 = 0
    expect(advantages, [-1.5, 0.0, 1.5, 0.0])


# ----------------------------------------------------------------------------------------------------------------------
# Metrics


def test_group_reward_stats():
    # groups [1, 1] (std 0), [0, 2] (std √2), [3, None] (one scored value: std 0)
    std, zero_std = group_reward_stats(torch.tensor([1.0, 1.0, 0.0, 2.0, 3.0, NAN]), num_generations=2)
    expect(std, [0.0, 1.4142136, 0.0])
    assert zero_std.tolist() == [True, False, True]


def test_group_reward_stats_rounding_residue_counts_as_zero():
    # 0.1 three times: the mean can differ from 0.1 by an ulp; the std is still "zero"
    _, zero_std = group_reward_stats(torch.tensor([0.1, 0.1, 0.1]), num_generations=3)
    assert zero_std.tolist() == [True]
