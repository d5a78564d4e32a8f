"""KTO and reward-model losses against hand-worked values.

KTO batch (β = 0.1): logps [-1, -3, -2], ref_logps [-2, -2, -2.5], labels [desirable, undesirable, desirable]
    log-ratios h = [1, -1, 0.5], rewards β h = [0.1, -0.1, 0.05]

Reward batch: r_c = [1, 0.5, -1], r_r = [0, 1, -2], gaps r_c - r_r = [1, -0.5, 1]
"""

import math

import pytest
import torch

from trl.losses.kto import KTO_LOSSES, apo_zero_unpaired_terms, kto_kl, kto_loss, kto_terms
from trl.losses.reward import bradley_terry_loss

TOL = {"rtol": 1e-5, "atol": 1e-6}


def expect(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), **TOL)


def kto_batch(dtype=torch.float32, requires_grad=False):
    logps = torch.tensor([-1.0, -3.0, -2.0], dtype=dtype, requires_grad=requires_grad)
    ref_logps = torch.tensor([-2.0, -2.0, -2.5], dtype=dtype)
    return logps, ref_logps, torch.tensor([True, False, True])


# ----------------------------------------------------------------------------------------------------------------------
# KTO


def test_registry():
    assert KTO_LOSSES == {"kto": kto_terms, "apo_zero_unpaired": apo_zero_unpaired_terms}


def test_kto_with_kl_and_class_weights():
    # z = 0.2, λ_D = 1.5, λ_U = 0.5
    # row 0 desirable:   λ_D (1 - σ(β(h - z))) = 1.5 σ(0.1 * (0.2 - 1)) = 1.5 σ(-0.08) = 1.5 * 0.4800107 = 0.7200160
    # row 1 undesirable: λ_U (1 - σ(β(z - h))) = 0.5 σ(0.1 * (-1 - 0.2)) = 0.5 σ(-0.12) = 0.5 * 0.4700359 = 0.2350180
    # row 2 desirable:   1.5 σ(0.1 * (0.2 - 0.5)) = 1.5 σ(-0.03) = 1.5 * 0.4925006 = 0.7387509
    losses, metrics = kto_loss(
        *kto_batch(), torch.tensor(0.2), beta=0.1, desirable_weight=1.5, undesirable_weight=0.5, loss_type="kto"
    )
    expect(losses, [0.7200160, 0.2350180, 0.7387509])
    expect(metrics["kl"], 0.2)


def test_kto_without_kl():
    # z = 0: σ(-0.1) = 0.4750208 (row 0), σ(β h) = σ(-0.1) = 0.4750208 (row 1), σ(-0.05) = 0.4875026 (row 2)
    losses, metrics = kto_loss(*kto_batch(), beta=0.1)
    expect(losses, [0.4750208, 0.4750208, 0.4875026])
    expect(metrics["kl"], 0.0)


def test_apo_zero_unpaired_ignores_kl():
    # desirable 1 - σ(β h) = σ(-β h), undesirable σ(β h):
    # row 0: σ(-0.1) = 0.4750208; row 1: σ(-0.1) = 0.4750208; row 2: σ(-0.05) = 0.4875026; with λ_D = 2 on rows 0, 2
    expected = [0.9500416, 0.4750208, 0.9750052]
    for kl in (None, torch.tensor(0.2)):
        losses, _ = kto_loss(*kto_batch(), kl, beta=0.1, desirable_weight=2.0, loss_type="apo_zero_unpaired")
        expect(losses, expected)


def test_kto_metrics_are_sums_and_counts():
    # chosen rows 0, 2: rewards 0.1 + 0.05 = 0.15, logps -1 - 2 = -3; rejected row 1: reward -0.1, logps -3
    _, metrics = kto_loss(*kto_batch(requires_grad=True), torch.tensor(0.2), beta=0.1)
    expect(metrics["rewards/chosen_sum"], 0.15)
    expect(metrics["rewards/rejected_sum"], -0.1)
    expect(metrics["logps/chosen_sum"], -3.0)
    expect(metrics["logps/rejected_sum"], -3.0)
    expect(metrics["count/chosen"], 2.0)
    expect(metrics["count/rejected"], 1.0)
    assert not any(value.requires_grad for value in metrics.values())


def test_kto_undesirable_only_batch():
    # every row undesirable: 1 - σ(β(z - h)) = σ(β h) with z = 0: σ(0.1), σ(-0.1), σ(0.05) = 0.5249792, 0.4750208,
    # 0.5124974. No desirable row: chosen sums and count are 0 (no NaN); rejected sums 0.1 - 0.1 + 0.05 = 0.05 and -6
    logps, ref_logps, _ = kto_batch()
    losses, metrics = kto_loss(logps, ref_logps, torch.tensor([False, False, False]), beta=0.1)
    expect(losses, [0.5249792, 0.4750208, 0.5124974])
    expect(metrics["count/chosen"], 0.0)
    expect(metrics["rewards/chosen_sum"], 0.0)
    expect(metrics["logps/chosen_sum"], 0.0)
    expect(metrics["rewards/rejected_sum"], 0.05)
    expect(metrics["logps/rejected_sum"], -6.0)
    expect(metrics["count/rejected"], 3.0)
    assert all(torch.isfinite(value).all() for value in metrics.values())


def test_kto_gradient_signs_and_detached_reference_and_kl():
    # desirable: d/dh σ(β(z - h)) = -β σ(-0.08) σ(0.08) = -0.1 * 0.4800107 * 0.5199893 = -0.0249600 (row 0)
    # undesirable: d/dh σ(β(h - z)) = +β σ(-0.12) σ(0.12) = 0.1 * 0.4700359 * 0.5299641 = 0.0249102 (row 1)
    # row 2: -0.1 * σ(-0.03) σ(0.03) = -0.1 * 0.4925006 * 0.5074994 = -0.0249944
    logps = torch.tensor([-1.0, -3.0, -2.0], requires_grad=True)
    ref_logps = torch.tensor([-2.0, -2.0, -2.5], requires_grad=True)
    kl = torch.tensor(0.2, requires_grad=True)
    losses, _ = kto_loss(logps, ref_logps, torch.tensor([True, False, True]), kl, beta=0.1)
    losses.sum().backward()
    expect(logps.grad, [-0.0249600, 0.0249102, -0.0249944])
    assert ref_logps.grad is None and kl.grad is None


def test_kto_kl_estimate():
    # mean([-1 + 1.5, -2 + 2.5, -3 + 2.9]) = mean(0.5, 0.5, -0.1) = 0.3
    kl_logps = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    kl = kto_kl(kl_logps, torch.tensor([-1.5, -2.5, -2.9]))
    expect(kl, 0.3)
    assert not kl.requires_grad
    # a negative mean is clamped to 0: mean(1 - 2, -4 + 2) = -1.5
    expect(kto_kl(torch.tensor([-1.0, -4.0]), torch.tensor([-2.0, -2.0])), 0.0)


def test_kto_bf16_inputs():
    # every input is exact in bf16, and the loss upcasts: same values as float32 (test_kto_without_kl)
    logps, ref_logps, labels = kto_batch(torch.bfloat16, requires_grad=True)
    losses, metrics = kto_loss(logps, ref_logps, labels, torch.tensor(0.0, dtype=torch.bfloat16), beta=0.1)
    assert losses.dtype == torch.float32
    expect(losses, [0.4750208, 0.4750208, 0.4875026])
    losses.sum().backward()
    assert logps.grad.dtype == torch.bfloat16
    expect(kto_kl(logps.detach(), ref_logps), 0.5 / 3)  # mean(1, -1, 0.5)
    assert all(value.dtype == torch.float32 for value in metrics.values())


def test_kto_bad_input():
    logps, ref_logps, labels = kto_batch()
    with pytest.raises(ValueError, match=r"Unknown KTO loss_type 'bco'; allowed: \['kto', 'apo_zero_unpaired'\]"):
        kto_loss(logps, ref_logps, labels, loss_type="bco")
    with pytest.raises(ValueError, match="1-D tensors of the same length"):
        kto_loss(logps, ref_logps, labels[:2])


# ----------------------------------------------------------------------------------------------------------------------
# Reward


def reward_batch(dtype=torch.float32, requires_grad=False):
    chosen = torch.tensor([1.0, 0.5, -1.0], dtype=dtype, requires_grad=requires_grad)
    rejected = torch.tensor([0.0, 1.0, -2.0], dtype=dtype, requires_grad=requires_grad)
    return chosen, rejected


def test_bradley_terry_hand_values_and_metrics():
    # -log σ(gap): -log σ(1) = 0.3132617, -log σ(-0.5) = 0.9740770, -log σ(1) = 0.3132617
    losses, metrics = bradley_terry_loss(*reward_batch())
    expect(losses, [0.3132617, 0.9740770, 0.3132617])
    # accuracy 2/3 (rows 0, 2); margin mean(1, -0.5, 1) = 0.5; rewards {1, 0.5, -1, 0, 1, -2}: min -2, max 1,
    # mean -0.5 / 6 = -0.0833333
    expect(metrics["accuracy"], 2 / 3)
    expect(metrics["margin"], 0.5)
    expect(metrics["min_reward"], -2.0)
    expect(metrics["mean_reward"], -0.5 / 6)
    expect(metrics["max_reward"], 1.0)


def test_bradley_terry_with_margin():
    # -log σ(gap - m), m = [0.5, 0, 2]: -log σ(0.5) = 0.4740770, -log σ(-0.5) = 0.9740770, -log σ(-1) = 1.3132617
    losses, metrics = bradley_terry_loss(*reward_batch(), margin=torch.tensor([0.5, 0.0, 2.0]))
    expect(losses, [0.4740770, 0.9740770, 1.3132617])
    expect(metrics["margin"], 0.5)  # the metric is the raw gap, not gap - m


def test_bradley_terry_with_centering():
    # + c (r_c + r_r)², c = 0.01: (1)² = 1, (1.5)² = 2.25, (-3)² = 9 -> + [0.01, 0.0225, 0.09]
    # losses [0.3232617, 0.9965770, 0.4032617]; their mean is mean(BT) + c * mean((r_c + r_r)²) = ... + 0.0408333
    losses, _ = bradley_terry_loss(*reward_batch(), center_rewards_coefficient=0.01)
    expect(losses, [0.3232617, 0.9965770, 0.4032617])
    expect(losses.mean(), (0.3132617 * 2 + 0.9740770) / 3 + 0.01 * (1 + 2.25 + 9) / 3)
    # None and 0 disable it
    for coef in (None, 0.0):
        expect(
            bradley_terry_loss(*reward_batch(), center_rewards_coefficient=coef)[0], [0.3132617, 0.9740770, 0.3132617]
        )


def test_bradley_terry_gradient():
    # d(-log σ(g))/d r_c = -σ(-g): -σ(-1) = -0.2689414, -σ(0.5) = -0.6224593, -0.2689414; d/d r_r is the opposite
    chosen, rejected = reward_batch(requires_grad=True)
    bradley_terry_loss(chosen, rejected)[0].sum().backward()
    expect(chosen.grad, [-0.2689414, -0.6224593, -0.2689414])
    expect(rejected.grad, [0.2689414, 0.6224593, 0.2689414])


def test_bradley_terry_bf16_inputs():
    chosen, rejected = reward_batch(torch.bfloat16, requires_grad=True)
    losses, metrics = bradley_terry_loss(chosen, rejected, center_rewards_coefficient=0.01)
    assert losses.dtype == torch.float32 and metrics["mean_reward"].dtype == torch.float32
    expect(losses, [0.3232617, 0.9965770, 0.4032617])
    losses.sum().backward()
    assert chosen.grad.dtype == torch.bfloat16 and torch.isfinite(chosen.grad.float()).all()


def test_bradley_terry_rejects_broadcasting_shapes():
    # a (B, 1) model output next to (B,) would broadcast to (B, B)
    with pytest.raises(ValueError, match="1-D tensors of the same length"):
        bradley_terry_loss(torch.zeros(3, 1), torch.zeros(3))
    with pytest.raises(ValueError, match="margin"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(3), margin=torch.zeros(2))


def test_bradley_terry_is_symmetric_at_equal_rewards():
    # r_c = r_r: -log σ(0) = log 2, and the tie does not count as accurate
    losses, metrics = bradley_terry_loss(torch.zeros(2), torch.zeros(2))
    expect(losses, [math.log(2), math.log(2)])
    expect(metrics["accuracy"], 0.0)
