"""DPO-family losses against hand-worked values.

The shared batch (β = 0.1), two pairs:

    row   chosen  rejected  ref_chosen  ref_rejected  |y_c|  |y_r|
    0     -1      -3        -2          -2.5          2      4
    1     -4      -2        -3          -3            4      2

    log-ratios      h_c = [1, -1],      h_r = [-0.5, 1]
    normalised      h̄_c = [1/2, -1/4],  h̄_r = [-0.5/4, 1/2] = [-0.125, 0.5]
    margin          Δ = β (h_c - h_r) = [0.1 * 1.5, 0.1 * -2] = [0.15, -0.2]

Values used below (natural log): σ(0.15) = 0.5374298, σ(-0.15) = 0.4625702, log σ(0.15) = -0.6209570,
log σ(-0.15) = log σ(0.15) - 0.15 = -0.7709570, σ(0.2) = 0.5498340, σ(-0.2) = 0.4501660, log σ(-0.2) = -0.7981389,
log σ(0.2) = -0.5981389. All inputs are exact in bf16, so the bf16 test can reuse the float32 expectations.
"""

import math

import pytest
import torch

from trl.losses.dpo import (
    DPO_LOSSES,
    EXO_DEFAULT_EPSILON,
    F_DIVERGENCE_LOSSES,
    DPOLossParams,
    PreferenceLogps,
    bco_batch_reward_mean,
    dpo_loss,
    f_divergence_logratios,
    ld_logps,
    preference_metrics,
    validate_dpo_loss_config,
    wpo_pair_weights,
    wpo_weights,
)

TOL = {"rtol": 1e-5, "atol": 1e-6}


def batch(dtype=torch.float32, requires_grad=False, **overrides) -> PreferenceLogps:
    def t(values):
        return torch.tensor(values, dtype=dtype, requires_grad=requires_grad)

    fields = {
        "chosen_logps": t([-1.0, -4.0]),
        "rejected_logps": t([-3.0, -2.0]),
        "ref_chosen_logps": t([-2.0, -3.0]),
        "ref_rejected_logps": t([-2.5, -3.0]),
        "chosen_lengths": torch.tensor([2, 4]),
        "rejected_lengths": torch.tensor([4, 2]),
    }
    fields.update(overrides)
    return PreferenceLogps(**fields)


def run(name: str, p: PreferenceLogps | None = None, **params) -> torch.Tensor:
    losses, _ = DPO_LOSSES[name](p if p is not None else batch(), DPOLossParams(**params))
    return losses


def expect(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), **TOL)


# ----------------------------------------------------------------------------------------------------------------------
# Hand values, one test per variant


def test_sigmoid():
    # -log σ(Δ): -log σ(0.15) = 0.6209570, -log σ(-0.2) = 0.7981389
    expect(run("sigmoid"), [0.6209570, 0.7981389])


def test_sigmoid_label_smoothing_is_conservative_dpo():
    # cDPO, ε = 0.1: (1-ε)(-log σ(Δ)) + ε(-log σ(-Δ)), both terms positive
    # row 0: 0.9 * 0.6209570 + 0.1 * 0.7709570 = 0.5588613 + 0.0770957 = 0.6359570
    # row 1: 0.9 * 0.7981389 + 0.1 * 0.5981389 = 0.7183250 + 0.0598139 = 0.7781389
    expect(run("sigmoid", label_smoothing=0.1), [0.6359570, 0.7781389])


def test_sigmoid_norm():
    # Δ = β (h̄_c - h̄_r): 0.1 * (0.5 + 0.125) = 0.0625 and 0.1 * (-0.25 - 0.5) = -0.075
    # -log σ(0.0625) = 0.6623854, -log σ(-0.075) = 0.7313501
    expect(run("sigmoid_norm"), [0.6623854, 0.7313501])


def test_hinge():
    # relu(1 - Δ): 1 - 0.15 = 0.85, 1 + 0.2 = 1.2; with β = 1, Δ = [1.5, -2]: a margin past 1 costs nothing -> [0, 3]
    expect(run("hinge"), [0.85, 1.2])
    expect(run("hinge", beta=1.0), [0.0, 3.0])


def test_ipo():
    # ((h̄_c - h̄_r) - 1/(2β))², 1/(2β) = 5: (0.625 - 5)² = 19.140625, (-0.75 - 5)² = 33.0625
    expect(run("ipo"), [19.140625, 33.0625])


def test_exo_pair_default_epsilon():
    # σ(Δ)(log σ(Δ) - log(1-ε)) + σ(-Δ)(log σ(-Δ) - log ε), ε = 1e-3 (label_smoothing = 0),
    # log(0.999) = -0.0010005, log(0.001) = -6.9077553
    # row 0: 0.5374298 * (-0.6209570 + 0.0010005) + 0.4625702 * (-0.7709570 + 6.9077553)
    #      = -0.3331835 + 2.8387000 = 2.5055166
    # row 1: 0.4501660 * (-0.7981389 + 0.0010005) + 0.5498340 * (-0.5981389 + 6.9077553)
    #      = -0.3588445 + 3.4692415 = 3.1103970
    assert EXO_DEFAULT_EPSILON == 1e-3
    expect(run("exo_pair"), [2.5055166, 3.1103970])


def test_exo_pair_with_label_smoothing():
    # ε = 0.1: log 0.9 = -0.1053605, log 0.1 = -2.3025851
    # row 0: 0.5374298 * (-0.6209570 + 0.1053605) + 0.4625702 * (-0.7709570 + 2.3025851) = -0.2770952 + 0.7084837
    #      = 0.4313885
    # row 1: 0.4501660 * (-0.7981389 + 0.1053605) + 0.5498340 * (-0.5981389 + 2.3025851) = -0.3118655 + 0.9371627
    #      = 0.6252972
    expect(run("exo_pair", label_smoothing=0.1), [0.4313885, 0.6252972])


def test_nca_pair():
    # -log σ(βh_c) - ½ log σ(-βh_c) - ½ log σ(-βh_r)
    # row 0: βh_c = 0.1, βh_r = -0.05: 0.6443967 + ½ 0.7443967 + ½ 0.6684596 = 0.6443967 + 0.3721984 + 0.3342298
    #      = 1.3508248
    # row 1: βh_c = -0.1, βh_r = 0.1: 0.7443967 + ½ 0.6443967 + ½ 0.7443967 = 1.4387933
    expect(run("nca_pair"), [1.3508248, 1.4387933])


def test_robust():
    # ((1-ε)(-log σ(Δ)) - ε(-log σ(-Δ))) / (1-2ε), ε = 0.1
    # row 0: (0.5588613 - 0.0770957) / 0.8 = 0.6022070
    # row 1: (0.7183250 - 0.0598139) / 0.8 = 0.8231389
    expect(run("robust", label_smoothing=0.1), [0.6022070, 0.8231389])
    # ε = 0 is plain sigmoid
    expect(run("robust"), [0.6209570, 0.7981389])


def test_bco_pair_with_running_mean_delta():
    # -log σ(βh_c - δ) - log σ(-(βh_r - δ)), δ = 0.05 given by the trainer
    # row 0: -log σ(0.1 - 0.05) - log σ(0.05 + 0.05) = 0.6684596 + 0.6443967 = 1.3128563
    # row 1: -log σ(-0.1 - 0.05) - log σ(-(0.1 - 0.05)) = 0.7709570 + 0.7184596 = 1.4894167
    expect(run("bco_pair", batch(bco_delta=0.05)), [1.3128563, 1.4894167])
    expect(run("bco_pair", batch(bco_delta=torch.tensor(0.05))), [1.3128563, 1.4894167])


def test_bco_pair_without_delta_uses_the_batch_mean():
    # δ = mean(β [h_c; h_r]) = 0.1 * (1 - 1 - 0.5 + 1) / 4 = 0.0125
    # row 0: -log σ(0.0875) - log σ(0.0625) = 0.6503539 + 0.6623854 = 1.3127393
    # row 1: -log σ(-0.1125) - log σ(-0.0875) = 0.7509784 + 0.7378539 = 1.4888323
    expect(bco_batch_reward_mean(batch(), beta=0.1), 0.0125)
    expect(run("bco_pair"), [1.3127393, 1.4888323])


def test_sppo_hard():
    # (h_c - 1/(2β))² + (h_r + 1/(2β))²: (1-5)² + (-0.5+5)² = 16 + 20.25 = 36.25; (-1-5)² + (1+5)² = 72
    expect(run("sppo_hard"), [36.25, 72.0])


def aot_batch() -> PreferenceLogps:
    # policy margins c - r = [1, 3, 2], reference margins [0.5, -1, 2]; h_c = [1, 1, 1], h_r = [0.5, -3, 1]
    return PreferenceLogps(
        chosen_logps=torch.tensor([-1.0, -1.0, -1.0]),
        rejected_logps=torch.tensor([-2.0, -4.0, -3.0]),
        ref_chosen_logps=torch.tensor([-2.0, -2.0, -2.0]),
        ref_rejected_logps=torch.tensor([-2.5, -1.0, -4.0]),
        chosen_lengths=torch.tensor([1, 1, 1]),
        rejected_lengths=torch.tensor([1, 1, 1]),
    )


def test_aot_sorts_margins_across_the_batch():
    # sorted policy margins [1, 2, 3] against sorted reference margins [-1, 0.5, 2]: Δ = 0.1 * [2, 1.5, 1]
    # -log σ(0.2) = 0.5981389, -log σ(0.15) = 0.6209570, -log σ(0.1) = 0.6443967
    # (row by row it would be Δ = 0.1 * [0.5, 4, 0]: sorting changes the pairing)
    expect(run("aot", aot_batch()), [0.5981389, 0.6209570, 0.6443967])
    # on the shared batch: margins [2, -2] -> [-2, 2], ref [0.5, 0] -> [0, 0.5], Δ = [-0.2, 0.15] (rank order)
    expect(run("aot"), [0.7981389, 0.6209570])
    # with ε = 0.1, rank 0: 0.9 * 0.7981389 + 0.1 * 0.5981389 = 0.7781389
    expect(run("aot", label_smoothing=0.1)[0], 0.7781389)


def test_aot_unpaired_sorts_each_side():
    # sorted h_c [1, 1, 1] against sorted h_r [-3, 0.5, 1]: Δ = 0.1 * [4, 0.5, 0]
    # -log σ(0.4) = 0.5130153, -log σ(0.05) = 0.6684596, -log σ(0) = log 2 = 0.6931472
    expect(run("aot_unpaired", aot_batch()), [0.5130153, 0.6684596, math.log(2)])


def test_apo_zero():
    # (1 - σ(βh_c)) + σ(βh_r): row 0: σ(-0.1) + σ(-0.05) = 0.4750208 + 0.4875026 = 0.9625234
    #                          row 1: σ(0.1) + σ(0.1) = 0.5249792 * 2 = 1.0499584
    expect(run("apo_zero"), [0.9625234, 1.0499584])


def test_apo_down():
    # σ(βh_c) + (1 - σ(β(h_c - h_r))): row 0: σ(0.1) + σ(-0.15) = 0.5249792 + 0.4625702 = 0.9875494
    #                                  row 1: σ(-0.1) + σ(0.2) = 0.4750208 + 0.5498340 = 1.0248548
    expect(run("apo_down"), [0.9875494, 1.0248548])


def test_discopop():
    # w = σ(Δ/τ), τ = 0.05; (1-w)(-log σ(Δ)) + w exp(-Δ)
    # row 0: w = σ(3) = 0.9525741: 0.0474259 * 0.6209570 + 0.9525741 * exp(-0.15) (0.8607080) = 0.0294494 + 0.8198882
    #      = 0.8493376
    # row 1: w = σ(-4) = 0.0179862: 0.9820138 * 0.7981389 + 0.0179862 * exp(0.2) (1.2214028) = 0.7837834 + 0.0219684
    #      = 0.8057518
    expect(run("discopop"), [0.8493376, 0.8057518])


def test_discopop_is_finite_for_a_very_negative_margin():
    # β = 1. Row 0: Δ = h_c - h_r = -100, where w = σ(-2000) underflows to 0 and exp(100) overflows float32; the loss
    # is (1 - 0) * -log σ(-100) + exp(log σ(-2000) + 100) = 100 + exp(-1900) = 100.
    # Row 1: Δ = 0, w = σ(0) = ½: ½ log 2 + ½ exp(0) = 0.3465736 + 0.5 = 0.8465736
    zeros = torch.tensor([0.0, 0.0])
    p = batch(chosen_logps=torch.tensor([-100.0, 0.0]), ref_chosen_logps=zeros, rejected_logps=zeros,
              ref_rejected_logps=zeros)  # fmt: skip
    expect(run("discopop", p, beta=1.0), [100.0, 0.8465736])


def test_sft():
    # -chosen_logps / |y_c|: 1/2 = 0.5, 4/4 = 1.0; a zero length counts as 1
    expect(run("sft"), [0.5, 1.0])
    expect(run("sft", batch(chosen_lengths=torch.tensor([0, 4]))), [1.0, 1.0])


def test_registry_holds_every_api_loss_type():
    api = ["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
           "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]  # fmt: skip
    assert sorted(DPO_LOSSES) == sorted(api)
    assert F_DIVERGENCE_LOSSES == {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"}


# ----------------------------------------------------------------------------------------------------------------------
# f-divergences


def test_f_divergence_transforms():
    h = torch.tensor([1.0, -0.5])
    expect(f_divergence_logratios(h, "reverse_kl"), [1.0, -0.5])
    expect(f_divergence_logratios(h, "forward_kl"), [-math.exp(-1.0), -math.exp(0.5)])  # -exp(-h)
    expect(f_divergence_logratios(h, "js_divergence"), [-0.3132617, -0.9740770])  # log σ(h)
    expect(f_divergence_logratios(h, "alpha_divergence", 0.5), [-1.2130613, -2.5680508])  # -exp(-h/2) / 0.5


def test_sigmoid_forward_kl():
    # s = -exp(-h): row 0: s_c = -exp(-1) = -0.3678794, s_r = -exp(0.5) = -1.6487213, Δ = 0.1 * 1.2808418 = 0.1280842
    #               row 1: s_c = -exp(1) = -2.7182818, s_r = -0.3678794, Δ = 0.1 * -2.3504024 = -0.2350402
    # -log σ(0.1280842) = 0.6311544, -log σ(-0.2350402) = 0.8175570
    expect(run("sigmoid", f_divergence_type="forward_kl"), [0.6311544, 0.8175570])


def test_sigmoid_js_divergence():
    # s = log σ(h): row 0: log σ(1) - log σ(-0.5) = -0.3132617 + 0.9740770 = 0.6608153, Δ = 0.0660815
    #               row 1: log σ(-1) - log σ(1) = -1.3132617 + 0.3132617 = -1, Δ = -0.1
    # -log σ(0.0660815) = 0.6606522, -log σ(-0.1) = 0.7443967
    expect(run("sigmoid", f_divergence_type="js_divergence"), [0.6606522, 0.7443967])
    # hinge on the same margins: 1 - 0.0660815 = 0.9339185, 1 + 0.1 = 1.1
    expect(run("hinge", f_divergence_type="js_divergence"), [0.9339185, 1.1])


def test_sigmoid_alpha_divergence():
    # s = -exp(-αh)/α, α = 0.5: row 0: -2 exp(-0.5) = -1.2130613, -2 exp(0.25) = -2.5680508, Δ = 0.1354990
    #                           row 1: -2 exp(0.5) = -3.2974425, -1.2130613, Δ = -0.2084381
    # -log σ(0.1354990) = 0.6276909, -log σ(-0.2084381) = 0.8027872
    expect(run("sigmoid", f_divergence_type="alpha_divergence"), [0.6276909, 0.8027872])


def test_ipo_forward_kl_transforms_the_normalised_ratios():
    # row 0: s̄_c = -exp(-0.5) = -0.6065307, s̄_r = -exp(0.125) = -1.1331485; (0.5266178 - 5)² = 20.0111484
    expect(run("ipo", f_divergence_type="forward_kl")[0], 20.0111484)


def test_sft_ignores_the_f_divergence():
    expect(run("sft", f_divergence_type="forward_kl"), [0.5, 1.0])


# ----------------------------------------------------------------------------------------------------------------------
# Gradients


def test_sigmoid_gradient_hand_values_and_reference_is_detached():
    # d(-log σ(Δ))/d chosen_logps = -β σ(-Δ): row 0: -0.1 * σ(-0.15) = -0.0462570; row 1: -0.1 * σ(0.2) = -0.0549834
    # and the opposite for rejected_logps; the reference receives no gradient
    p = batch(requires_grad=True)
    losses, _ = dpo_loss(p, "sigmoid")
    losses.sum().backward()
    expect(p.chosen_logps.grad, [-0.0462570, -0.0549834])
    expect(p.rejected_logps.grad, [0.0462570, 0.0549834])
    assert p.ref_chosen_logps.grad is None and p.ref_rejected_logps.grad is None


@pytest.mark.parametrize("name", sorted(DPO_LOSSES))
def test_gradient_signs(name):
    """Raising the chosen log-prob lowers every loss but APO-down (which lowers both sides on purpose, and at this
    point, σ'(0.1) > σ'(0.15), pushes the chosen down); raising the rejected one never lowers a loss."""
    p = batch(requires_grad=True)
    losses = run(name, p, label_smoothing=0.1 if name in {"robust", "exo_pair"} else 0.0)
    losses.sum().backward()
    if name == "apo_down":
        assert (p.chosen_logps.grad > 0).all()
    else:
        assert (p.chosen_logps.grad < 0).all(), p.chosen_logps.grad
    if name == "sft":
        assert p.rejected_logps.grad is None  # the rejected side is not in the graph
    else:
        assert (p.rejected_logps.grad > 0).all(), p.rejected_logps.grad
    assert p.ref_chosen_logps.grad is None and p.ref_rejected_logps.grad is None


def test_bco_delta_is_not_differentiated():
    delta = torch.tensor(0.05, requires_grad=True)
    run("bco_pair", batch(requires_grad=True, bco_delta=delta)).sum().backward()
    assert delta.grad is None


# ----------------------------------------------------------------------------------------------------------------------
# Metrics, combination, dtypes


def test_metrics_hand_values():
    # rewards β h: chosen [0.1, -0.1], rejected [-0.05, 0.1]; row 0 correct, row 1 not
    _, metrics = dpo_loss(batch(requires_grad=True), ["ipo"])  # every variant reports the same rewards
    expect(metrics["rewards/chosen"], 0.0)
    expect(metrics["rewards/rejected"], 0.025)
    expect(metrics["rewards/accuracies"], 0.5)
    expect(metrics["rewards/margins"], -0.025)  # mean(0.15, -0.2)
    expect(metrics["logps/chosen"], -2.5)
    expect(metrics["logps/rejected"], -2.5)
    expect(metrics["chosen_rewards"], [0.1, -0.1])
    expect(metrics["rejected_rewards"], [-0.05, 0.1])
    assert not any(value.requires_grad for value in metrics.values())


def test_metrics_are_the_same_for_every_variant():
    reference = preference_metrics(batch(), beta=0.1)
    for name in DPO_LOSSES:
        _, metrics = DPO_LOSSES[name](batch(), DPOLossParams(beta=0.1))
        assert metrics.keys() == reference.keys()
        for key in reference:
            torch.testing.assert_close(metrics[key], reference[key])


def test_multi_loss_is_the_weighted_sum():
    # MPO: 0.8 sigmoid + 0.2 bco_pair (δ = batch mean) + 1.0 sft
    # row 0: 0.8 * 0.6209570 + 0.2 * 1.3127393 + 0.5 = 1.2593135
    # row 1: 0.8 * 0.7981389 + 0.2 * 1.4888323 + 1.0 = 1.9362776
    losses, _ = dpo_loss(batch(), ["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0])
    expect(losses, [1.2593135, 1.9362776])
    # no weights: plain sum, 0.6209570 + 0.5 and 0.7981389 + 1.0
    losses, _ = dpo_loss(batch(), ["sigmoid", "sft"])
    expect(losses, [1.1209570, 1.7981389])
    # a string is one loss type
    losses, _ = dpo_loss(batch(), "hinge")
    expect(losses, [0.85, 1.2])


@pytest.mark.parametrize("name", sorted(DPO_LOSSES))
def test_bf16_inputs_match_float32(name):
    # every input value is exact in bf16 and the losses upcast before any arithmetic
    p = batch(dtype=torch.bfloat16, requires_grad=True)
    losses = run(name, p)
    assert losses.dtype == torch.float32
    torch.testing.assert_close(losses, run(name), **TOL)
    losses.sum().backward()
    assert p.chosen_logps.grad.dtype == torch.bfloat16 and torch.isfinite(p.chosen_logps.grad.float()).all()


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="1-D tensors of the same length"):
        batch(chosen_logps=torch.tensor([[-1.0], [-4.0]]))


# ----------------------------------------------------------------------------------------------------------------------
# Validation


def test_validate_normalises_a_string():
    assert validate_dpo_loss_config("sigmoid") == ["sigmoid"]
    assert validate_dpo_loss_config(("sigmoid", "sft"), [1.0, 0.5]) == ["sigmoid", "sft"]


def test_unknown_loss_type_names_it_and_the_allowed_ones():
    with pytest.raises(ValueError, match=r"Unknown DPO loss_type 'sigmod'; allowed: \[.*'sigmoid'.*'sppo_hard'"):
        validate_dpo_loss_config(["sigmod"])
    with pytest.raises(ValueError, match="Unknown DPO loss_type 'dpo'"):
        dpo_loss(batch(), ["dpo"])


def test_wrong_number_of_weights():
    with pytest.raises(ValueError, match="got 1 weights .* for 2 loss types"):
        validate_dpo_loss_config(["sigmoid", "sft"], [1.0])
    with pytest.raises(ValueError, match="one weight per loss type"):
        dpo_loss(batch(), ["sigmoid"], [1.0, 2.0])


def test_f_divergence_with_a_disallowed_loss_type():
    with pytest.raises(
        ValueError, match=r"f_divergence_type='forward_kl' is not supported with loss_type \['bco_pair'\]"
    ):
        validate_dpo_loss_config(["sigmoid", "bco_pair"], f_divergence_type="forward_kl")
    with pytest.raises(ValueError, match="Unknown f_divergence_type 'kl'"):
        validate_dpo_loss_config("sigmoid", f_divergence_type="kl")
    with pytest.raises(ValueError, match="f_alpha_divergence_coef must be > 0"):
        validate_dpo_loss_config("sigmoid", f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.0)
    # reverse_kl is allowed everywhere
    validate_dpo_loss_config(sorted(DPO_LOSSES), f_divergence_type="reverse_kl")


def test_label_smoothing_range():
    for bad in (-0.1, 0.5, 0.7):
        with pytest.raises(ValueError, match=r"label_smoothing .* \[0, 0.5\); got"):
            validate_dpo_loss_config("robust", label_smoothing=bad)
    validate_dpo_loss_config("exo_pair", label_smoothing=0.0)  # EXO then uses its default ε = 1e-3


def test_weighting_is_rejected_with_aot():
    with pytest.raises(ValueError, match=r"use_weighting=True \(WPO\) is not supported with loss_type \['aot'\]"):
        validate_dpo_loss_config(["sigmoid", "aot"], use_weighting=True)
    with pytest.raises(ValueError, match="aot_unpaired"):
        validate_dpo_loss_config("aot_unpaired", use_weighting=True)
    validate_dpo_loss_config("sigmoid", use_weighting=True)


def test_other_scalar_checks():
    with pytest.raises(ValueError, match="at least one loss"):
        validate_dpo_loss_config([])
    with pytest.raises(ValueError, match="discopop_tau must be > 0"):
        validate_dpo_loss_config("discopop", discopop_tau=0.0)
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(batch(), "ipo", params=DPOLossParams(beta=0.0))


# ----------------------------------------------------------------------------------------------------------------------
# LD-DPO and WPO


def test_ld_logps_hand_values():
    # row 0: completion after one prompt position, shared length 2, α = 0.5: -1 - 2 + 0.5 * (-3) = -4.5
    # row 1: completion then padding, shared length 2: -0.5 - 1.5 = -2.0 (the NaNs are outside the mask)
    nan = float("nan")
    logps = torch.tensor([[nan, -1.0, -2.0, -3.0], [-0.5, -1.5, nan, nan]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])
    expect(ld_logps(logps, mask, torch.tensor([2, 2]), alpha=0.5), [-4.5, -2.0])
    # α = 1 is the plain sum; α = 0 keeps only the shared prefix
    expect(ld_logps(logps, mask, torch.tensor([2, 2]), alpha=1.0), [-6.0, -2.0])
    expect(ld_logps(logps, mask, torch.tensor([1, 1]), alpha=0.0), [-1.0, -0.5])
    with pytest.raises(ValueError, match=r"ld_alpha must be in \[0, 1\]; got 1.5"):
        ld_logps(logps, mask, torch.tensor([2, 2]), alpha=1.5)


def test_ld_logps_gradient_weights():
    # d/d logp_t is 1 up to the shared length and α beyond it
    logps = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    ld_logps(logps, torch.ones(1, 3), torch.tensor([1]), alpha=0.25).sum().backward()
    expect(logps.grad, [[1.0, 0.25, 0.25]])


def test_wpo_weights_hand_values():
    # w = exp(mean_t(log p_t - log Σ_v p_v²))
    # row 0: p = [0.5, 0.25], Σp² = [0.5, 0.25]: every aligned probability is 1 -> w = 1
    # row 1: p = [0.1, 0.4], Σp² = [0.2, 0.5]: exp(½ (log 0.5 + log 0.8)) = sqrt(0.4) = 0.6324555
    # row 2: only the first token is in the mask: 0.1 / 0.2 = 0.5
    probs = torch.tensor([[0.5, 0.25], [0.1, 0.4], [0.1, 0.4]])
    sum_sq = torch.tensor([[0.5, 0.25], [0.2, 0.5], [0.2, 0.5]])
    mask = torch.tensor([[1, 1], [1, 1], [1, 0]])
    logps = probs.log().requires_grad_()
    weights = wpo_weights(logps, mask, sum_sq.log())
    expect(weights, [1.0, math.sqrt(0.4), 0.5])
    assert not weights.requires_grad
    # unaligned: exp(mean log p): sqrt(0.5 * 0.25) = 0.3535534, sqrt(0.1 * 0.4) = 0.2, 0.1
    expect(wpo_weights(logps, mask), [math.sqrt(0.125), 0.2, 0.1])
    # an empty mask gives weight exp(0) = 1
    expect(wpo_weights(logps[:1], torch.zeros(1, 2)), [1.0])


def test_wpo_pair_weights_multiply_and_clip_at_one():
    # 0.5 * 0.6324555 = 0.3162278; 1.5 * 0.8 = 1.2 -> 1
    expect(wpo_pair_weights(torch.tensor([0.5, 1.5]), torch.tensor([math.sqrt(0.4), 0.8])), [0.3162278, 1.0])
