"""Policy-gradient losses (trl.losses.policy) and their reductions (trl.losses.reduce) against hand-worked values.

The shared batch, B = 2 completions, T = 3, the last token of row 1 is padding (P). Every input is exact in bf16.

    row  A    logps               old_logps            ref_logps            mask
    0    1    [-1,   -2,   -0.5]  [-1.25, -1.75, -0.5] [-1.25, -2,   -1]    [1, 1, 1]
    1    -2   [-1.5, -0.25, P]    [-1,    -0.5,  P]    [-1,    -0.5, P]    [1, 1, 0]

    log-ratio  logps - old = [0.25, -0.25, 0] and [-0.5, 0.25]
    token r    = [e^0.25, e^-0.25, 1] and [e^-0.5, e^0.25] = [1.2840254, 0.7788008, 1] and [0.6065307, 1.2840254]
    ref - logps = [-0.25, 0, -0.5] and [0.5, -0.25]
    k3(x) = e^x - x - 1: [0.0288008, 0, 0.1065307] and [0.1487213, 0.0288008]; mean over the 5 tokens 0.0625707

Values used below: σ(0.2840254) = 0.5705328, σ(-0.2211992) = 0.4449246, σ(1.05 * -0.3934693) = 0.3981588,
σ(1.05 * 0.2840254) = 0.5740090, e^-0.125 = 0.8824969, e^-3 = 0.0497871.
"""

import math

import pytest
import torch

from trl.losses.policy import (
    POLICY_LOSSES,
    POLICY_REDUCTIONS,
    PolicyLossParams,
    clip_metrics,
    importance_ratio,
    policy_loss,
    rloo_loss,
    validate_policy_loss_config,
    vespo_weight,
)
from trl.losses.reduce import POLICY_REDUCERS, reduce_policy_loss, sequence_mean_loss
from trl.rollout import StepCounts

TOL = {"rtol": 1e-5, "atol": 1e-6}
P = 0.0  # padding value; the losses must not read it


def batch(dtype=torch.float32, requires_grad=False):
    logps = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.25, P]], dtype=dtype, requires_grad=requires_grad)
    old_logps = torch.tensor([[-1.25, -1.75, -0.5], [-1.0, -0.5, P]], dtype=dtype)
    ref_logps = torch.tensor([[-1.25, -2.0, -1.0], [-1.0, -0.5, P]], dtype=dtype)
    advantages = torch.tensor([1.0, -2.0], dtype=dtype)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return logps, old_logps, ref_logps, advantages, mask


def run(requires_grad=False, dtype=torch.float32, **params):
    logps, old_logps, ref_logps, advantages, mask = batch(dtype, requires_grad)
    losses, metrics = policy_loss(logps, old_logps, advantages, mask, PolicyLossParams(**params), ref_logps=ref_logps)
    return losses, metrics, logps


def expect(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), **TOL)


def grad_of(losses, logps):
    losses.sum().backward()
    return logps.grad


# ----------------------------------------------------------------------------------------------------------------------
# Policy terms, one test per variant


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo", "luspo"])
def test_ppo_clip_family(loss_type):
    # -min(r A, clip(r, 0.8, 1.2) A)
    # row 0, A = 1:  min(1.2840254, 1.2) = 1.2;  min(0.7788008, 0.8) = 0.7788008 (a low ratio of a positive advantage
    #                is not clipped);  r = 1
    # row 1, A = -2: min(-1.2130613, -1.6) = -1.6;  min(-2.5680508, -2.4) = -2.5680508
    losses, metrics, logps = run(requires_grad=True, loss_type=loss_type)
    expect(losses, [[-1.2, -0.7788008, -1.0], [1.6, 2.5680508, 0.0]])
    # gradient -r A on the unclipped tokens, 0 where the clipped branch is the minimum
    expect(grad_of(losses, logps), [[0.0, -0.7788008, -1.0], [0.0, 2.5680508, 0.0]])
    # low: r < 0.8 with A < 0 (row 1 token 0); high: r > 1.2 with A > 0 (row 0 token 0); over 5 tokens
    expect(metrics["clip_ratio/low"], 0.2)
    expect(metrics["clip_ratio/high"], 0.2)
    expect(metrics["clip_ratio/region"], 0.4)
    assert set(metrics) == {"clip_ratio/low", "clip_ratio/high", "clip_ratio/region"}


def test_asymmetric_epsilons():
    # ε_low = 0.1, ε_high = 0.3: clip range [0.9, 1.3]
    # row 0: min(1.2840254, 1.2840254) unclipped; min(0.7788008, 0.9) = 0.7788008; 1
    # row 1: min(-1.2130613, -1.8) = -1.8; min(-2.5680508, -2.5680508)
    losses, metrics, _ = run(loss_type="dapo", epsilon_low=0.1, epsilon_high=0.3)
    expect(losses, [[-1.2840254, -0.7788008, -1.0], [1.8, 2.5680508, 0.0]])
    expect(metrics["clip_ratio/high"], 0.0)
    expect(metrics["clip_ratio/low"], 0.2)


def test_delta_caps_the_unclipped_ratio():
    # δ = 1.25: the unclipped term uses min(r, 1.25). Only row 1 token 1 changes: A = -2 is never clipped from above
    # by PPO, min(1.25 * -2, 1.2 * -2) = -2.5 -> loss 2.5 (instead of 2.5680508), with no gradient (r is capped).
    losses, _, logps = run(requires_grad=True, loss_type="dapo", delta=1.25)
    expect(losses, [[-1.2, -0.7788008, -1.0], [1.6, 2.5, 0.0]])
    expect(grad_of(losses, logps), [[0.0, -0.7788008, -1.0], [0.0, 0.0, 0.0]])


def test_cispo_value_and_stop_gradient():
    # -sg(min(r, 1.25)) A logps, weights w = [1.25, 0.7788008, 1] and [0.6065307, 1.25]
    # row 0 (A = 1):  -1.25 * -1 = 1.25;  -0.7788008 * -2 = 1.5576016;  -1 * -0.5 = 0.5
    # row 1 (A = -2): -0.6065307 * -2 * -1.5 = -1.8195921;  -1.25 * -2 * -0.25 = -0.625
    losses, metrics, logps = run(requires_grad=True, loss_type="cispo", epsilon_high=1.25)
    expect(losses, [[1.25, 1.5576016, 0.5], [-1.8195921, -0.625, 0.0]])
    # the weight is detached: d/dlogps = -w A, even for the capped tokens (a ratio gradient would add -w A logps)
    expect(grad_of(losses, logps), [[-1.25, -0.7788008, -1.0], [1.2130613, 2.5, 0.0]])
    # r > 1.25 on row 0 token 0 (A > 0) and row 1 token 1 (A < 0, not counted, as the reference): 1 of 5 tokens
    expect(metrics["cispo_clip_ratio"], 0.2)


def test_sapo_value():
    # -σ(τ (r - 1)) (4 / τ) A, τ = 1 for A > 0, τ = 1.05 otherwise
    # row 0: -4 * [0.5705328, 0.4449246, 0.5] = [-2.2821313, -1.7796983, -2]
    # row 1: 2 * 4 / 1.05 * [0.3981588, 0.5740090] = [3.0335907, 4.3734016]
    losses, _, _ = run(loss_type="sapo")
    expect(losses, [[-2.2821313, -1.7796983, -2.0], [3.0335907, 4.3734016, 0.0]])


def test_sapo_gradient_at_ratio_one_equals_ppo():
    # on-policy (r = 1): d/dlogps -σ(τ(r - 1)) (4/τ) A = -σ'(0) τ (4/τ) A = -A for either temperature
    logps, _, _, advantages, mask = batch(requires_grad=True)
    losses, _ = policy_loss(logps, None, advantages, mask, PolicyLossParams(loss_type="sapo"))
    expect(grad_of(losses, logps), [[-1.0, -1.0, -1.0], [2.0, 2.0, 0.0]])


def test_vespo_weight():
    # φ(w) = w^k e^(λ (1 - w)); φ(1) = 1 for both signs
    # A ≥ 0 (k, λ) = (2, 3): φ(2) = 4 e^-3 = 0.1991483;  A < 0 (3, 2): φ(0.5) = 0.125 e = 0.3397852
    params = PolicyLossParams(loss_type="vespo")
    log_w = torch.tensor([0.0, 0.0, math.log(2.0), math.log(0.5)])
    phi = vespo_weight(log_w, torch.tensor([1.0, -1.0, 1.0, -1.0]), params)
    expect(phi, [1.0, 1.0, 0.1991483, 0.3397852])
    # A = 0 counts as positive (the paper's choice; the loss is 0 anyway)
    expect(vespo_weight(torch.tensor([math.log(2.0)]), torch.tensor([0.0]), params), [0.1991483])
    # a huge log-ratio is clamped to ±20 and gives a finite weight: φ(e^20) = 0
    expect(vespo_weight(torch.tensor([500.0, -500.0]), torch.tensor([1.0, 1.0]), params), [0.0, 0.0])


def test_vespo_loss():
    # w = exp(Σ_t log-ratio): row 0: 0.25 - 0.25 + 0 = 0 -> φ = 1
    # row 1: -0.25 -> w = 0.7788008, A < 0: log φ = 3 * -0.25 + 2 * (1 - 0.7788008) = -0.3076016, φ = 0.7352082
    # loss -φ A logps: row 0: [1, 2, 0.5]; row 1: 2 φ [-1.5, -0.25] = [-2.2056246, -0.3676041]
    losses, metrics, logps = run(requires_grad=True, loss_type="vespo")
    expect(losses, [[1.0, 2.0, 0.5], [-2.2056246, -0.3676041, 0.0]])
    # φ is detached: d/dlogps = -φ A
    expect(grad_of(losses, logps), [[-1.0, -1.0, -1.0], [1.4704164, 1.4704164, 0.0]])
    expect(metrics["vespo/phi_seq_mean"], (1.0 + 0.7352082) / 2)


# ----------------------------------------------------------------------------------------------------------------------
# Sequence-level importance sampling (GSPO)


def test_gspo_sequence_ratio_value():
    # s_i = exp(mean_t log-ratio): row 0: exp(0 / 3) = 1; row 1: exp(-0.25 / 2) = 0.8824969, on both real tokens
    logps, old_logps, _, _, mask = batch()
    ratio = importance_ratio(logps, old_logps, mask, "sequence")
    expect(ratio[0], [1.0, 1.0, 1.0])
    expect(ratio[1, :2], [0.8824969, 0.8824969])
    # grpo: row 0 -1 per token; row 1 s in [0.8, 1.2]: -(-2 s) = 1.7649938
    losses, _, _ = run(loss_type="grpo", importance_sampling_level="sequence")
    expect(losses, [[-1.0, -1.0, -1.0], [1.7649938, 1.7649938, 0.0]])


def _naive_gspo(logps, old_logps, advantages, mask, eps_low, eps_high):
    """GSPO written from the paper: s_i = exp(mean_t(logps - old)), loss = mean_i -min(s A, clip(s) A)."""
    m = mask.to(logps.dtype)
    s = torch.exp(((logps - old_logps) * m).sum(-1) / m.sum(-1))
    return (-torch.min(s * advantages, torch.clamp(s, 1 - eps_low, 1 + eps_high) * advantages)).mean()


def test_gspo_gradient_matches_naive_reference():
    torch.manual_seed(0)
    B, T = 6, 5
    logps = (-torch.rand(B, T, dtype=torch.float64) * 2).requires_grad_()
    old_logps = logps.detach() + 0.3 * torch.randn(B, T, dtype=torch.float64)
    advantages = torch.tensor([1.0, -1.0, 0.5, -2.0, 1.5, -0.5], dtype=torch.float64)
    lengths = torch.tensor([5, 3, 1, 4, 2, 5])
    mask = (torch.arange(T) < lengths[:, None]).long()
    params = PolicyLossParams(
        loss_type="grpo", importance_sampling_level="sequence", epsilon_low=0.1, epsilon_high=0.1
    )

    losses, _ = policy_loss(logps, old_logps, advantages, mask, params)
    counts = StepCounts(tokens=mask.sum(), sequences=torch.tensor(B))
    loss = reduce_policy_loss(losses, mask, POLICY_REDUCTIONS["grpo"], counts)
    (grad,) = torch.autograd.grad(loss, logps)

    reference = _naive_gspo(logps, old_logps, advantages, mask, 0.1, 0.1)
    (reference_grad,) = torch.autograd.grad(reference, logps)
    s = torch.exp(((logps - old_logps) * mask).sum(-1) / mask.sum(-1))
    clipped = (s < 0.9) | (s > 1.1)
    assert clipped.any() and (~clipped).any()  # both branches are exercised
    torch.testing.assert_close(loss, reference, **TOL)
    torch.testing.assert_close(grad, reference_grad, **TOL)


# ----------------------------------------------------------------------------------------------------------------------
# KL, entropy, masks


def test_kl_term_and_metric():
    # on-policy dapo, β = 0.1: loss = -A + β k3
    # row 0: [-1 + 0.0028801, -1, -1 + 0.0106531]; row 1: [2 + 0.0148721, 2 + 0.0028801]
    logps, _, ref_logps, advantages, mask = batch(requires_grad=True)
    losses, metrics = policy_loss(logps, None, advantages, mask, PolicyLossParams(beta=0.1), ref_logps=ref_logps)
    expect(losses, [[-0.9971199, -1.0, -0.9893469], [2.0148721, 2.0028801, 0.0]])
    expect(metrics["kl"], 0.0625707)  # without β
    # d/dlogps β k3 = β (1 - e^(ref - logps)): row 0: 0.1 * (1 - 0.7788008) = 0.0221199, 0, 0.1 * 0.3934693
    # row 1: 0.1 * (1 - 1.6487213) = -0.0648721, 0.0221199; plus -A
    expect(grad_of(losses, logps), [[-0.9778801, -1.0, -0.9606531], [1.9351279, 2.0221199, 0.0]])


def test_kl_bias_correction_keeps_the_ratio_gradient():
    # A = 0 isolates the KL: loss = β r k3. Its gradient is β (∇r k3 + r ∇k3) = β r (k3 + 1 - e^d) = β r (logps - ref)
    # row 0: 0.1 * 1.2840254 * 0.25 = 0.0321006, 0, 0.1 * 1 * 0.5 = 0.05
    # row 1: 0.1 * 0.6065307 * -0.5 = -0.0303265, 0.1 * 1.2840254 * 0.25 = 0.0321006
    logps, old_logps, ref_logps, _, mask = batch(requires_grad=True)
    params = PolicyLossParams(beta=0.1, use_bias_correction_kl=True)
    losses, metrics = policy_loss(logps, old_logps, torch.zeros(2), mask, params, ref_logps=ref_logps)
    # values β r k3: 0.1 * [1.2840254 * 0.0288008, 0, 0.1065307] and 0.1 * [0.6065307 * 0.1487213, 1.2840254 * 0.0288008]
    expect(losses, [[0.0036981, 0.0, 0.0106531], [0.0090204, 0.0036981, 0.0]])
    expect(metrics["kl"], 0.0541393)  # mean of r k3
    expect(grad_of(losses, logps), [[0.0321006, 0.0, 0.05], [-0.0303265, 0.0321006, 0.0]])


def test_kl_needs_ref_logps():
    logps, old_logps, _, advantages, mask = batch()
    with pytest.raises(ValueError, match="ref_logps"):
        policy_loss(logps, old_logps, advantages, mask, PolicyLossParams(beta=0.1))


def test_entropy_mask_gates_only_the_policy_term():
    # dapo with β = 0.1; entropy_mask keeps row 0 tokens 0, 2 and row 1 token 1
    # row 0: [-1.2 + 0.0028801, 0 + 0, -1 + 0.0106531];  row 1: [0 + 0.0148721, 2.5680508 + 0.0028801]
    logps, old_logps, ref_logps, advantages, mask = batch()
    entropy_mask = torch.tensor([[True, False, True], [False, True, True]])
    losses, _ = policy_loss(
        logps, old_logps, advantages, mask, PolicyLossParams(beta=0.1), ref_logps=ref_logps, entropy_mask=entropy_mask
    )
    expect(losses, [[-1.1971199, 0.0, -0.9893469], [0.0148721, 2.5709309, 0.0]])


def test_on_policy_is_reinforce():
    # old_logps = None: r = 1 with gradient r ∇logps, so every variant of the PPO-clip family gives -A per token
    logps, _, _, advantages, mask = batch(requires_grad=True)
    losses, metrics = policy_loss(logps, None, advantages, mask, PolicyLossParams())
    expect(losses, [[-1.0, -1.0, -1.0], [2.0, 2.0, 0.0]])
    expect(metrics["clip_ratio/region"], 0.0)
    expect(grad_of(losses, logps), [[-1.0, -1.0, -1.0], [2.0, 2.0, 0.0]])


@pytest.mark.parametrize("loss_type", sorted(POLICY_LOSSES))
def test_fully_masked_row_and_garbage_padding(loss_type):
    # a third row with no completion token, and -inf at padded positions: its losses and gradient are 0, the other
    # rows and the metrics are unchanged, and nothing is NaN
    logps, old_logps, ref_logps, advantages, mask = batch()
    pad = torch.full((1, 3), float("-inf"))
    logps3 = torch.cat([logps, pad]).requires_grad_()
    old3, ref3 = torch.cat([old_logps, pad]), torch.cat([ref_logps, pad])
    mask3 = torch.cat([mask, torch.zeros(1, 3, dtype=mask.dtype)])
    params = PolicyLossParams(loss_type=loss_type, beta=0.1, epsilon_high=1.25 if loss_type == "cispo" else 0.2)

    losses, metrics = policy_loss(logps, old_logps, advantages, mask, params, ref_logps=ref_logps)
    losses3, metrics3 = policy_loss(logps3, old3, torch.cat([advantages, torch.ones(1)]), mask3, params, ref3)
    torch.testing.assert_close(losses3[:2], losses, **TOL)
    expect(losses3[2], [0.0, 0.0, 0.0])
    assert metrics3.keys() == metrics.keys()
    for key in metrics:
        torch.testing.assert_close(metrics3[key], metrics[key], **TOL)
    grad = grad_of(losses3, logps3)
    assert torch.isfinite(grad).all() and (grad[2] == 0).all()


@pytest.mark.parametrize("loss_type", sorted(POLICY_LOSSES))
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_bf16_inputs_run_and_stay_finite(loss_type, level):
    if loss_type == "vespo" and level == "sequence":
        pytest.skip("vespo rejects sequence-level importance sampling")
    params = PolicyLossParams(loss_type=loss_type, importance_sampling_level=level, beta=0.1)
    logps, old_logps, ref_logps, advantages, mask = batch(torch.bfloat16, requires_grad=True)
    losses, metrics = policy_loss(logps, old_logps, advantages, mask, params, ref_logps=ref_logps)
    assert losses.dtype == torch.float32 and torch.isfinite(losses).all()
    assert all(torch.isfinite(v) for v in metrics.values())
    grad = grad_of(losses, logps)
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad.float()).all()
    # every input is exact in bf16 and the loss upcasts first, so it matches float32
    logps, old_logps, ref_logps, advantages, mask = batch()
    reference, _ = policy_loss(logps, old_logps, advantages, mask, params, ref_logps)
    torch.testing.assert_close(losses, reference, **TOL)


def test_clip_metrics_definition():
    # low needs r < 1 - ε_low AND A < 0; high needs r > 1 + ε_high AND A > 0; padding is ignored
    ratio = torch.tensor([[0.5, 1.5, 1.0], [0.5, 1.5, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    m = clip_metrics(ratio, torch.tensor([1.0, -1.0]), mask, 0.2, 0.2)
    # row 0 (A > 0): token 1 high; row 1 (A < 0): token 0 low
    expect(m["clip_ratio/low"], 0.2)
    expect(m["clip_ratio/high"], 0.2)
    expect(m["clip_ratio/region"], 0.4)


def test_metrics_are_detached_scalars():
    _, metrics, _ = run(requires_grad=True, loss_type="vespo", beta=0.1)
    assert {"clip_ratio/low", "clip_ratio/high", "clip_ratio/region", "kl", "vespo/phi_seq_mean"} == set(metrics)
    assert all(v.dim() == 0 and not v.requires_grad for v in metrics.values())


# ----------------------------------------------------------------------------------------------------------------------
# Validation


def test_tables_agree():
    assert set(POLICY_LOSSES) == set(POLICY_REDUCTIONS)
    assert set(POLICY_REDUCTIONS.values()) <= set(POLICY_REDUCERS)


def test_validate_policy_loss_config():
    assert validate_policy_loss_config("dapo", "token") is None
    assert validate_policy_loss_config("luspo", "sequence") is None
    assert "sequence" in validate_policy_loss_config("luspo", "token")
    with pytest.raises(ValueError, match=r"'ppo'.*bnpo.*vespo"):
        validate_policy_loss_config("ppo", "token")
    with pytest.raises(ValueError, match="'segment'"):
        validate_policy_loss_config("dapo", "segment")
    with pytest.raises(ValueError, match="vespo"):
        validate_policy_loss_config("vespo", "sequence")


def test_params_validate_at_construction():
    with pytest.raises(ValueError, match="'ppo'"):
        PolicyLossParams(loss_type="ppo")
    with pytest.raises(ValueError, match="vespo"):
        PolicyLossParams(loss_type="vespo", importance_sampling_level="sequence")
    with pytest.raises(ValueError, match="temperature"):
        PolicyLossParams(loss_type="sapo", sapo_temperature_neg=0.0)


def test_advantages_shape_is_checked():
    logps, old_logps, _, _, mask = batch()
    with pytest.raises(ValueError, match="one value per completion"):
        policy_loss(logps, old_logps, torch.ones(3), mask, PolicyLossParams())


# ----------------------------------------------------------------------------------------------------------------------
# RLOO


def test_rloo_loss():
    # ρ = exp(Σ logps - Σ old): row 0: exp(0) = 1 -> -A = -1
    # row 1: exp(-0.25) = 0.7788008 < 0.8 with A = -2: min(-1.5576016, -1.6) = -1.6 -> 1.6 (clipped, no gradient)
    logps, old_logps, _, advantages, mask = batch(requires_grad=True)
    losses, metrics = rloo_loss(logps, old_logps, advantages, mask, 0.2, 0.2)
    expect(losses, [-1.0, 1.6])
    expect(metrics["clip_ratio/low"], 0.5)
    expect(metrics["clip_ratio/high"], 0.0)
    expect(metrics["clip_ratio/region"], 0.5)
    # row 0: d(-ρ A)/dlogps_t = -ρ A = -1 on every real token
    expect(grad_of(losses, logps), [[-1.0, -1.0, -1.0], [0.0, 0.0, 0.0]])


def test_rloo_loss_high_clip_and_masked_row():
    # row 0: old = logps except token 0 lowered by 0.25 -> ρ = e^0.25 = 1.2840254 > 1.2 with A = 3:
    #        min(3 * 1.2840254, 3 * 1.2) = 3.6 -> -3.6 (clipped high)
    # row 1: ρ = e^-0.25 = 0.7788008, now inside [1 - 0.3, 1.2] with A = -2: -ρ A = 1.5576016
    # row 2: no completion token -> 0, and not counted in the metrics
    logps, old_logps, _, _, mask = batch()
    old = logps.clone()
    old[0, 0] -= 0.25
    old[1] = old_logps[1]
    mask3 = torch.cat([mask, torch.zeros(1, 3, dtype=mask.dtype)])
    logps3 = torch.cat([logps, torch.zeros(1, 3)])
    losses, metrics = rloo_loss(
        logps3, torch.cat([old, torch.zeros(1, 3)]), torch.tensor([3.0, -2.0, 5.0]), mask3, 0.3
    )
    expect(losses, [-3.6, 1.5576016, 0.0])
    expect(metrics["clip_ratio/high"], 0.5)  # over the 2 completions that have tokens
    expect(metrics["clip_ratio/low"], 0.0)


def test_rloo_loss_huge_ratio_keeps_gradients_finite():
    # Σ log-ratio = 200 would overflow exp; the cap at 50 keeps the clipped branch's gradient 0 instead of NaN
    logps = torch.tensor([[100.0, 100.0]], requires_grad=True)
    losses, _ = rloo_loss(logps, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2))
    expect(losses, [-1.2])
    expect(grad_of(losses, logps), [[0.0, 0.0]])


# ----------------------------------------------------------------------------------------------------------------------
# Reductions
#
# token losses l = [[1, 2, 3], [4, 5, 99 (padding)]], lengths [3, 2], masked sum 15. The micro-batch is part of an
# optimiser step with 10 tokens and 4 sequences over all ranks, and 2 micro-batches per rank.

L = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 99.0]])
M = torch.tensor([[1, 1, 1], [1, 1, 0]])
COUNTS = StepCounts(tokens=torch.tensor(10), sequences=torch.tensor(4), micro_batches=2)


@pytest.mark.parametrize(
    "mode, world_size, expected",
    [
        ("token", 1, 1.5),  # 15 / 10
        ("token", 2, 3.0),  # 2 * 15 / 10
        ("sequence_mean", 1, 1.625),  # (6 / 3 + 9 / 2) / 4
        ("sequence_mean", 2, 3.25),
        ("sequence_sum", 1, 3.75),  # 15 / 4
        ("constant_length", 1, 0.75),  # 15 / (4 * 5)
        ("constant_length", 2, 1.5),
        ("local_token", 1, 1.5),  # 15 / 5 / 2
        ("local_token", 2, 1.5),  # DDP averages the ranks: no world-size factor
    ],
)
def test_reduce_policy_loss_values(mode, world_size, expected):
    expect(reduce_policy_loss(L, M, mode, COUNTS, world_size=world_size, max_completion_length=5), expected)


def test_reduce_policy_loss_accepts_int_counts_and_bool_mask():
    counts = StepCounts(tokens=10, sequences=4, micro_batches=2)
    expect(reduce_policy_loss(L, M.bool(), "sequence_mean", counts), 1.625)


def test_reduce_policy_loss_empty_step_is_zero():
    # every completion masked (e.g. all truncated with mask_truncated_completions): 0, not NaN
    counts = StepCounts(tokens=torch.tensor(0), sequences=torch.tensor(0), micro_batches=1)
    zero_mask = torch.zeros_like(M)
    for mode in POLICY_REDUCERS:
        expect(reduce_policy_loss(L, zero_mask, mode, counts, max_completion_length=5), 0.0)


def test_reduce_policy_loss_errors():
    with pytest.raises(ValueError, match="'mean'"):
        reduce_policy_loss(L, M, "mean", COUNTS)
    with pytest.raises(ValueError, match="max_completion_length"):
        reduce_policy_loss(L, M, "constant_length", COUNTS)


def test_sequence_mean_loss():
    # W * Σ / sequences = 2 * (1 + 3) / 4
    counts = StepCounts(tokens=torch.tensor(9), sequences=torch.tensor(4))
    expect(sequence_mean_loss(torch.tensor([1.0, 3.0]), counts, world_size=2), 2.0)


def _split_batch():
    torch.manual_seed(1)
    B, T = 6, 4
    token_losses = torch.randn(B, T, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 1, 3, 0, 2, 4])  # row 3 is fully masked
    mask = (torch.arange(T) < lengths[:, None]).long()
    return token_losses, mask


@pytest.mark.parametrize("mode", ["token", "sequence_mean", "sequence_sum", "constant_length"])
def test_reduction_is_invariant_to_micro_batches_and_ranks(mode):
    token_losses, mask = _split_batch()
    counts = StepCounts(tokens=mask.sum(), sequences=torch.tensor(mask.shape[0]), micro_batches=1)
    whole = reduce_policy_loss(token_losses, mask, mode, counts, max_completion_length=4)
    (whole_grad,) = torch.autograd.grad(whole, token_losses)

    # one rank, three micro-batches of unequal size (counts of the whole step)
    split = sum(
        reduce_policy_loss(token_losses[rows], mask[rows], mode, counts, max_completion_length=4)
        for rows in (slice(0, 1), slice(1, 4), slice(4, 6))
    )
    (split_grad,) = torch.autograd.grad(split, token_losses)
    torch.testing.assert_close(split, whole, **TOL)
    torch.testing.assert_close(split_grad, whole_grad, **TOL)

    # two ranks, each with two micro-batches; DDP averages the ranks' gradients
    ranks = [(slice(0, 2), slice(2, 3)), (slice(3, 4), slice(4, 6))]
    rank_grads = []
    for micro_batches in ranks:
        rank_loss = sum(
            reduce_policy_loss(token_losses[rows], mask[rows], mode, counts, world_size=2, max_completion_length=4)
            for rows in micro_batches
        )
        rank_grads.append(torch.autograd.grad(rank_loss, token_losses)[0])
    torch.testing.assert_close((rank_grads[0] + rank_grads[1]) / 2, whole_grad, **TOL)


def test_local_token_reduction_depends_on_the_split():
    # BNPO's local token mean, by definition: a token of a short micro-batch weighs more
    # whole batch [[1, 2, 3], [4, 5]]: 15 / 5 = 3;  split per row, 2 micro-batches: (6 / 3 + 9 / 2) / 2 = 3.25
    whole = reduce_policy_loss(L, M, "local_token", StepCounts(torch.tensor(5), torch.tensor(2), micro_batches=1))
    counts = StepCounts(torch.tensor(5), torch.tensor(2), micro_batches=2)
    split = sum(reduce_policy_loss(L[i : i + 1], M[i : i + 1], "local_token", counts) for i in range(2))
    expect(whole, 3.0)
    expect(split, 3.25)


def test_policy_loss_then_reduce_end_to_end():
    # dapo on the shared batch, token reduction over a step of 10 tokens:
    # Σ losses = -1.2 - 0.7788008 - 1 + 1.6 + 2.5680508 = 1.18925 -> / 10
    losses, _, _ = run(loss_type="dapo")
    expect(reduce_policy_loss(losses, batch()[4], POLICY_REDUCTIONS["dapo"], COUNTS), 0.118925)


def test_sequence_level_bias_corrected_kl_has_gspo_gradient():
    """At sequence level the KL is multiplied by s_i = exp(mean_t(logps - old)) itself: its gradient spreads over the
    sequence (s_i * mean_t(k3) * sum_u grad logp_u / |y_i| + s_i * grad k3_t), as with a naive implementation."""
    logps, old_logps, ref_logps, advantages, mask = batch(torch.float64, requires_grad=True)
    params = PolicyLossParams(loss_type="dapo", beta=1.0, importance_sampling_level="sequence",
                              use_bias_correction_kl=True)
    losses, _ = policy_loss(logps, old_logps, torch.zeros(2, dtype=torch.float64), mask, params, ref_logps=ref_logps)
    # naive: with A = 0 only the KL term is left
    m = mask.bool()
    s = torch.exp(torch.where(m, logps - old_logps, 0.0).sum(-1) / m.sum(-1)).unsqueeze(-1)
    d = torch.where(m, ref_logps - logps, 0.0)
    naive = torch.where(m, s * (torch.exp(d) - d - 1), 0.0)
    torch.testing.assert_close(losses, naive, **TOL)
    grad, = torch.autograd.grad(losses.sum(), logps)
    naive_grad, = torch.autograd.grad(naive.sum(), logps)
    torch.testing.assert_close(grad, naive_grad, **TOL)
