"""ORPO and CPO losses against hand-worked values (derivations in the comments) and a naive float64 autograd
reference."""

import math

import pytest
import torch

from trl.losses.cpo import CPO_LOSSES, CPOLossParams, alphapo_reward, cpo_loss, validate_cpo_loss_config
from trl.losses.orpo import log1mexp, orpo_log_odds, orpo_loss

TIGHT = {"rtol": 1e-5, "atol": 1e-6}


def _t(*values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


# ---- ORPO ---------------------------------------------------------------------------------------------------------

def test_orpo_hand_worked():
    # row 0: P_c = 0.5, P_r = 0.2 -> odds 1 and 1/4 -> log odds ratio log 4; σ(log 4) = 4/5 -> loss = -0.1·log 0.8
    # row 1: P_c = 0.1, P_r = 0.6 -> odds 1/9 and 3/2 -> ratio 2/27; σ = (2/27)/(29/27) = 2/29 -> loss = -0.1·log(2/29)
    chosen, rejected = _t(math.log(0.5), math.log(0.1)), _t(math.log(0.2), math.log(0.6))
    losses, metrics = orpo_loss(chosen, rejected, beta=0.1)
    torch.testing.assert_close(losses, _t(-0.1 * math.log(0.8), -0.1 * math.log(2 / 29)), **TIGHT)
    torch.testing.assert_close(metrics["log_odds"], _t(math.log(4), math.log(2 / 27)), **TIGHT)
    torch.testing.assert_close(metrics["log_odds_chosen"], torch.tensor((math.log(4) + math.log(2 / 27)) / 2), **TIGHT)
    torch.testing.assert_close(metrics["log_odds_ratio"], torch.tensor((math.log(0.8) + math.log(2 / 29)) / 2), **TIGHT)
    # rewards are β · average log-probs: row 0 chosen wins (-0.0693 > -0.1609), row 1 loses
    torch.testing.assert_close(metrics["chosen_rewards"], 0.1 * chosen, **TIGHT)
    assert float(metrics["rewards/accuracies"]) == 0.5
    torch.testing.assert_close(metrics["rewards/margins"], (0.1 * (chosen - rejected)).mean(), **TIGHT)


def test_orpo_matches_naive_float64_gradient_and_is_stable_near_probability_one():
    chosen = _t(-1e-4, -0.3, -2.0, -7.0, dtype=torch.float64).requires_grad_()
    rejected = _t(-0.9, -1e-3, -2.5, -0.05, dtype=torch.float64).requires_grad_()

    def naive(c, r):  # textbook: odds = p / (1 - p)
        pc, pr = c.exp(), r.exp()
        log_odds = torch.log(pc / (1 - pc)) - torch.log(pr / (1 - pr))
        return -0.3 * torch.log(torch.sigmoid(log_odds))

    expected = naive(chosen, rejected)
    (g_c, g_r) = torch.autograd.grad(expected.sum(), (chosen, rejected))
    c32, r32 = chosen.detach().float().requires_grad_(), rejected.detach().float().requires_grad_()
    losses, _ = orpo_loss(c32, r32, beta=0.3)
    losses.sum().backward()
    torch.testing.assert_close(losses.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c32.grad.double(), g_c, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(r32.grad.double(), g_r, rtol=1e-4, atol=1e-5)


def test_log1mexp_both_branches():
    x = _t(-1e-6, -0.1, -math.log(2), -5.0, -50.0, dtype=torch.float64)
    torch.testing.assert_close(log1mexp(x.float()).double(), torch.log(-torch.expm1(x)), rtol=1e-6, atol=1e-7)
    assert torch.isfinite(log1mexp(torch.zeros(1))).all()  # probability 1 is capped, not infinite
    assert torch.isfinite(orpo_log_odds(torch.zeros(1), _t(-1.0))).all()


def test_orpo_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"1-D tensors of the same length"):
        orpo_loss(torch.zeros(2, 1), torch.zeros(2, 1))


# ---- CPO ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("loss_type", "params", "expected"),
    [
        # z = l_c - l_r = -1 - (-3) = 2; β z = 1: -log σ(1) = log(1 + e^-1)
        ("sigmoid", CPOLossParams(beta=0.5), math.log1p(math.exp(-1))),
        # ε = 0.1: 0.9·log(1 + e^-1) + 0.1·log(1 + e^1)
        ("sigmoid", CPOLossParams(beta=0.5, label_smoothing=0.1),
         0.9 * math.log1p(math.exp(-1)) + 0.1 * math.log1p(math.exp(1))),
        ("hinge", CPOLossParams(beta=0.25), 0.5),  # max(0, 1 - 0.25·2)
        ("hinge", CPOLossParams(beta=0.5), 0.0),  # max(0, 1 - 1)
        ("ipo", CPOLossParams(beta=0.5), 1.0),  # (2 - 1/(2·0.5))^2
        ("ipo", CPOLossParams(beta=0.25), 0.0),  # (2 - 2)^2
        # β z - γ = 2·2 - 0.5 = 3.5: -log σ(3.5)
        ("simpo", CPOLossParams(beta=2.0, simpo_gamma=0.5), math.log1p(math.exp(-3.5))),
    ],
)
def test_cpo_hand_worked(loss_type, params, expected):
    losses, metrics = cpo_loss(_t(-1.0), _t(-3.0), loss_type, params)
    torch.testing.assert_close(losses, _t(expected), **TIGHT)
    torch.testing.assert_close(metrics["rewards/margins"], torch.tensor(params.beta * 2.0), **TIGHT)
    assert float(metrics["rewards/accuracies"]) == 1.0


def test_alphapo_reward_shape():
    # α = 1: u(l) = 1 - e^{-l}: u(-1) = 1 - e, u(-3) = 1 - e^3; z = e^3 - e; sigmoid with β = 0.1
    losses, metrics = cpo_loss(_t(-1.0), _t(-3.0), "sigmoid", CPOLossParams(beta=0.1, alpha=1.0))
    z = math.exp(3) - math.e
    torch.testing.assert_close(losses, _t(math.log1p(math.exp(-0.1 * z))), **TIGHT)
    torch.testing.assert_close(metrics["chosen_rewards"], _t(0.1 * (1 - math.e)), **TIGHT)
    # α → 0 is the log-prob itself; a small α is close to it
    torch.testing.assert_close(alphapo_reward(_t(-0.5), 0.0), _t(-0.5))
    torch.testing.assert_close(alphapo_reward(_t(-0.5), 1e-4), _t(-0.5), rtol=1e-3, atol=1e-4)


def test_cpo_gradient_matches_float64():
    c = _t(-1.2, -0.4, -2.0, dtype=torch.float64).requires_grad_()
    r = _t(-1.0, -3.0, -0.1, dtype=torch.float64).requires_grad_()
    for loss_type in CPO_LOSSES:
        params = CPOLossParams(beta=0.7, label_smoothing=0.05, simpo_gamma=0.3, alpha=0.25)
        u = lambda x: (1 - torch.exp(-0.25 * x)) / 0.25
        z = u(c) - u(r)
        naive = {
            "sigmoid": -0.95 * torch.log(torch.sigmoid(0.7 * z)) - 0.05 * torch.log(torch.sigmoid(-0.7 * z)),
            "hinge": torch.clamp(1 - 0.7 * z, min=0),
            "ipo": (z - 1 / 1.4) ** 2,
            "simpo": -0.95 * torch.log(torch.sigmoid(0.7 * z - 0.3)) - 0.05 * torch.log(torch.sigmoid(0.3 - 0.7 * z)),
        }[loss_type]
        grads = torch.autograd.grad(naive.sum(), (c, r))
        c32, r32 = c.detach().float().requires_grad_(), r.detach().float().requires_grad_()
        losses, _ = cpo_loss(c32, r32, loss_type, params)
        losses.sum().backward()
        torch.testing.assert_close(losses.double(), naive.detach(), rtol=1e-5, atol=1e-6, msg=loss_type)
        torch.testing.assert_close(c32.grad.double(), grads[0], rtol=1e-4, atol=1e-5, msg=loss_type)
        torch.testing.assert_close(r32.grad.double(), grads[1], rtol=1e-4, atol=1e-5, msg=loss_type)


def test_cpo_bad_config():
    with pytest.raises(ValueError, match=r"Unknown CPO loss_type 'kto'.*allowed"):
        validate_cpo_loss_config("kto", 0.1, 0.0)
    with pytest.raises(ValueError, match=r"beta must be > 0; got 0"):
        validate_cpo_loss_config("sigmoid", 0, 0.0)
    with pytest.raises(ValueError, match=r"\[0, 0.5\); got 0.5"):
        validate_cpo_loss_config("sigmoid", 0.1, 0.5)
