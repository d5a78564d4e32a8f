"""DPO-family preference losses on sequence log-probs: one small function per `loss_type`, picked through `DPO_LOSSES`.

Every variant maps a [`PreferenceLogps`] of `(B,)` tensors and a [`DPOLossParams`] to `(losses (B,), metrics)`.
Notation used in the docstrings:

- log-ratio `h_c = log π(y_c|x) − log π_ref(y_c|x)` (chosen), `h_r` (rejected), both sums over completion tokens;
  `h̄ = h / |y|` is the length-normalised log-ratio;
- `s = f(h)` is the log-ratio after the f-divergence transform ([`f_divergence_logratios`]; identity for the default
  `reverse_kl`), and `Δ = β · (s_c − s_r)`;
- `ε` is `label_smoothing`.

Conventions:

- Reference log-probs are detached here, whatever the caller passes: gradients flow only into the policy.
- bf16 / fp16 inputs are upcast to float32 before any arithmetic, so losses and metrics are float32; the gradient still
  reaches the low-precision inputs.
- The returned losses are per pair, not reduced: the trainer averages them (see `trl.losses.reduce`). For `aot` and
  `aot_unpaired`, entry `i` belongs to the `i`-th smallest margin of the batch, not to row `i`: only their sum or mean is
  meaningful, which is why WPO weighting is rejected for them.
- Metrics (detached, identical for every variant, see [`preference_metrics`]): `rewards/chosen`, `rewards/rejected`,
  `rewards/accuracies`, `rewards/margins`, `logps/chosen`, `logps/rejected` as 0-d batch means, plus the raw `(B,)`
  rewards under `chosen_rewards` / `rejected_rewards`, so that a trainer can average exactly over accumulation steps
  and ranks instead of averaging means of unequal micro-batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ._common import _smoothed_logistic, _up

Tensor = torch.Tensor
FDivergenceType = Literal["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"]

# EXO with K = 2 needs a target distribution [1 − ε, ε] with ε > 0 (log ε appears in the loss). When the user leaves
# label_smoothing at 0 we use the paper's value for pairwise data (https://huggingface.co/papers/2402.00856).
EXO_DEFAULT_EPSILON = 1e-3


@dataclass
class PreferenceLogps:
    """Sequence log-probs of a batch of preference pairs, the single input of every DPO loss.

    Args:
        chosen_logps (`torch.Tensor`): `(B,)` sum of the chosen completion's token log-probs under the policy.
        rejected_logps (`torch.Tensor`): `(B,)` same for the rejected completion.
        ref_chosen_logps (`torch.Tensor`): `(B,)` chosen log-probs under the reference model (detached by the losses).
        ref_rejected_logps (`torch.Tensor`): `(B,)` rejected log-probs under the reference model.
        chosen_lengths (`torch.Tensor`): `(B,)` number of chosen completion tokens; read by the length-normalised
            variants (`ipo`, `sigmoid_norm`, `sft`). A length of 0 is treated as 1 (the row's log-prob sum is 0).
        rejected_lengths (`torch.Tensor`): `(B,)` number of rejected completion tokens.
        bco_delta (`torch.Tensor` or `float`, *optional*): the reward shift δ of `bco_pair`. A pure function cannot
            keep state, so the trainer keeps δ as the running mean of all implicit rewards seen so far, **including
            this batch** (update with [`bco_batch_reward_mean`] first, then pass the mean here). `None` uses this
            batch's mean alone, which is what the running mean is on the first step.

    Raises:
        `ValueError`: the tensors are not all 1-D with the same length.

    Example:
        ```python
        >>> p = PreferenceLogps(
        ...     chosen_logps=torch.tensor([-1.0]), rejected_logps=torch.tensor([-3.0]),
        ...     ref_chosen_logps=torch.tensor([-2.0]), ref_rejected_logps=torch.tensor([-2.5]),
        ...     chosen_lengths=torch.tensor([2]), rejected_lengths=torch.tensor([4]))
        ```
    """

    chosen_logps: Tensor  # (B,)
    rejected_logps: Tensor  # (B,)
    ref_chosen_logps: Tensor  # (B,)
    ref_rejected_logps: Tensor  # (B,)
    chosen_lengths: Tensor  # (B,)
    rejected_lengths: Tensor  # (B,)
    bco_delta: Tensor | float | None = None  # 0-d

    def __post_init__(self):
        # A (B, 1) tensor next to a (B,) one would broadcast to (B, B) and give a plausible-looking wrong loss.
        names = ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
        names += ("chosen_lengths", "rejected_lengths")
        shapes = {name: tuple(getattr(self, name).shape) for name in names}
        if len(set(shapes.values())) != 1 or len(shapes["chosen_logps"]) != 1:
            raise ValueError(f"PreferenceLogps expects 1-D tensors of the same length (B,); got shapes {shapes}.")


@dataclass
class DPOLossParams:
    """Scalar hyper-parameters of the DPO losses (the subset of `DPOConfig` that the losses read).

    Args:
        beta (`float`, *optional*, defaults to `0.1`): β, the inverse temperature of the implicit reward (τ for IPO;
            the reciprocal of the margin for hinge).
        label_smoothing (`float`, *optional*, defaults to `0.0`): ε, the assumed probability that a preference label
            is flipped, in `[0, 0.5)`. Read by `sigmoid`, `sigmoid_norm`, `robust`, `exo_pair`, `aot`, `aot_unpaired`.
        f_divergence_type (`str`, *optional*, defaults to `"reverse_kl"`): divergence that regularises the policy
            towards the reference ([`f_divergence_logratios`]).
        f_alpha_divergence_coef (`float`, *optional*, defaults to `0.5`): α of the alpha-divergence, `> 0`.
        discopop_tau (`float`, *optional*, defaults to `0.05`): τ of DiscoPOP's mixing sigmoid, `> 0`.

    Example:
        ```python
        >>> DPOLossParams(beta=0.5, label_smoothing=0.1).beta
        0.5
        ```
    """

    beta: float = 0.1
    label_smoothing: float = 0.0
    f_divergence_type: FDivergenceType = "reverse_kl"
    f_alpha_divergence_coef: float = 0.5
    discopop_tau: float = 0.05


# ----------------------------------------------------------------------------------------------------------------------
# Shared pieces


def _logratios(p: PreferenceLogps, normalise: bool = False) -> tuple[Tensor, Tensor]:
    """`(h_c, h_r)`, each `(B,)`; divided by the completion lengths when `normalise`."""
    chosen = _up(p.chosen_logps) - _up(p.ref_chosen_logps).detach()
    rejected = _up(p.rejected_logps) - _up(p.ref_rejected_logps).detach()
    if normalise:
        chosen = chosen / p.chosen_lengths.clamp(min=1).to(chosen.dtype)
        rejected = rejected / p.rejected_lengths.clamp(min=1).to(rejected.dtype)
    return chosen, rejected


def _reverse_kl(logratios: Tensor, alpha: float) -> Tensor:
    return logratios


def _forward_kl(logratios: Tensor, alpha: float) -> Tensor:
    return -torch.exp(-logratios)


def _js_divergence(logratios: Tensor, alpha: float) -> Tensor:
    return F.logsigmoid(logratios)


def _alpha_divergence(logratios: Tensor, alpha: float) -> Tensor:
    return -torch.exp(-alpha * logratios) / alpha


F_DIVERGENCES: dict[str, Callable[[Tensor, float], Tensor]] = {
    "reverse_kl": _reverse_kl,
    "forward_kl": _forward_kl,
    "js_divergence": _js_divergence,
    "alpha_divergence": _alpha_divergence,
}


def f_divergence_logratios(logratios: Tensor, f_divergence_type: str = "reverse_kl", alpha: float = 0.5) -> Tensor:
    """The implicit reward of f-DPO per unit β: `f'(u)` at `u = π/π_ref = exp(h)`, up to an additive constant.

    f-DPO (https://huggingface.co/papers/2309.16240) replaces DPO's reverse-KL regulariser by any
    f-divergence, which turns the implicit reward `β·h` into `β·f'(exp(h))`. Constants of `f'` cancel in `s_c − s_r`
    (every loss that allows a non-default divergence uses only that difference), so they are dropped:

    | type | f(u) | f'(u) | returned `s` |
    |---|---|---|---|
    | `reverse_kl` | `u log u` | `log u + 1` | `h` |
    | `forward_kl` | `−log u` | `−1/u` | `−exp(−h)` |
    | `js_divergence` | `u log u − (u+1) log((u+1)/2)` | `log(2u/(1+u))` | `log σ(h)` |
    | `alpha_divergence` | `(u^(1−α) − (1−α)u − α)/(α(α−1))` | `(1 − u^(−α))/α` | `−exp(−α h)/α` |

    The `forward_kl` and `alpha_divergence` transforms exponentiate `−h`: in float32 they overflow once `h` is below
    about `−88` (resp. `−88/α`), which is one reason to use them with length-normalised losses (`ipo`, `sigmoid_norm`).

    Args:
        logratios (`torch.Tensor`): `(B,)` log-ratios `h` (summed or length-normalised).
        f_divergence_type (`str`, *optional*, defaults to `"reverse_kl"`): a key of `F_DIVERGENCES`.
        alpha (`float`, *optional*, defaults to `0.5`): α of the alpha-divergence.

    Returns:
        `torch.Tensor`: `(B,)` transformed log-ratios `s`.

    Example:
        ```python
        >>> f_divergence_logratios(torch.tensor([0.0, 1.0]), "forward_kl")  # -exp(0), -exp(-1)
        tensor([-1.0000, -0.3679])
        ```
    """
    return F_DIVERGENCES[f_divergence_type](logratios, alpha)


def _margin(p: PreferenceLogps, params: DPOLossParams, normalise: bool = False) -> Tensor:
    """`Δ = β (s_c − s_r)`, `(B,)`."""
    chosen, rejected = _logratios(p, normalise)
    alpha = params.f_alpha_divergence_coef
    s_c = f_divergence_logratios(chosen, params.f_divergence_type, alpha)
    s_r = f_divergence_logratios(rejected, params.f_divergence_type, alpha)
    return params.beta * (s_c - s_r)


def preference_metrics(p: PreferenceLogps, beta: float) -> dict[str, Tensor]:
    """Detached metrics shared by every DPO variant, computed on the raw (untransformed, unnormalised) log-ratios.

    Args:
        p ([`PreferenceLogps`]): the batch.
        beta (`float`): β.

    Returns:
        `dict[str, torch.Tensor]`: 0-d means `rewards/chosen` (`β·h_c`), `rewards/rejected` (`β·h_r`),
        `rewards/accuracies` (fraction with `β·h_c > β·h_r`, ties count as wrong), `rewards/margins`,
        `logps/chosen`, `logps/rejected`; and `(B,)` tensors `chosen_rewards`, `rejected_rewards` for exact
        averaging across micro-batches.

    Example:
        ```python
        >>> p = PreferenceLogps(*(torch.tensor([x]) for x in (-1.0, -3.0, -2.0, -2.5, 2, 4)))
        >>> preference_metrics(p, beta=0.1)["rewards/margins"]  # 0.1 * ((-1 + 2) - (-3 + 2.5))
        tensor(0.1500)
        ```
    """
    with torch.no_grad():
        chosen, rejected = _logratios(p)
        chosen_rewards, rejected_rewards = beta * chosen, beta * rejected
        return {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "logps/chosen": _up(p.chosen_logps).detach().mean(),
            "logps/rejected": _up(p.rejected_logps).detach().mean(),
            "chosen_rewards": chosen_rewards,
            "rejected_rewards": rejected_rewards,
        }


def bco_batch_reward_mean(p: PreferenceLogps, beta: float) -> Tensor:
    """Mean implicit reward of the batch over both sides, `mean([β·h_c; β·h_r])`, detached and 0-d.

    The trainer folds it (count-weighted, `2B` values) into its running mean δ for `bco_pair`, before calling the loss.

    Example:
        ```python
        >>> p = PreferenceLogps(*(torch.tensor([x]) for x in (-1.0, -3.0, -2.0, -2.5, 2, 4)))
        >>> bco_batch_reward_mean(p, beta=0.1)  # (0.1 * 1 + 0.1 * -0.5) / 2
        tensor(0.0250)
        ```
    """
    with torch.no_grad():
        chosen, rejected = _logratios(p)
        return beta * torch.cat([chosen, rejected]).mean()


# ----------------------------------------------------------------------------------------------------------------------
# The variants. Each: (p, params) -> (losses (B,), metrics). Docstring equations use the notation of the module.


def sigmoid_loss(p: PreferenceLogps, params: DPOLossParams) -> tuple[Tensor, dict[str, Tensor]]:
    """DPO (https://huggingface.co/papers/2305.18290, eq. 7) with conservative label smoothing (cDPO,
    https://ericmitchell.ai/cdpo.pdf): `−(1−ε)·log σ(Δ) − ε·log σ(−Δ)`.

    With ε > 0 this is the cross-entropy between σ(Δ) and the smoothed label 1 − ε; both terms carry a positive weight
    (contrast `robust`, which subtracts the flipped term). Honours `f_divergence_type`.

    Example:
        ```python
        >>> p = PreferenceLogps(*(torch.tensor([x]) for x in (-1.0, -3.0, -2.0, -2.5, 2, 4)))
        >>> sigmoid_loss(p, DPOLossParams(beta=0.1))[0]  # -log σ(0.15)
        tensor([0.6210])
        ```
    """
    return _smoothed_logistic(_margin(p, params), params.label_smoothing), preference_metrics(p, params.beta)


def sigmoid_norm_loss(p: PreferenceLogps, params: DPOLossParams) -> tuple[Tensor, dict[str, Tensor]]:
    """`sigmoid` on length-normalised log-ratios: `Δ = β·(f(h̄_c) − f(h̄_r))`, `−(1−ε)·log σ(Δ) − ε·log σ(−Δ)`.

    Normalising by the completion length removes DPO's bias towards long completions (as SimPO,
    https://huggingface.co/papers/2405.14734, does for the reference-free case). The f-divergence transform is applied
    after the normalisation.

    Example:
        ```python
        >>> p = PreferenceLogps(*(torch.tensor([x]) for x in (-1.0, -3.0, -2.0, -2.5, 2, 4)))
        >>> sigmoid_norm_loss(p, DPOLossParams(beta=0.1))[0]  # -log σ(0.1 * (1/2 - (-0.5)/4))
        tensor([0.6624])
        ```
    """
    margin = _margin(p, params, normalise=True)
    return _smoothed_logistic(margin, params.label_smoothing), preference_metrics(p, params.beta)


def hinge_loss(p: PreferenceLogps, params: DPOLossParams) -> tuple[Tensor, dict[str, Tensor]]:
    """SLiC hinge loss (https://huggingface.co/papers/2305.10425, with the reference log-ratio of RSO,
    https://huggingface.co/papers/2309.06657): `max(0, 1 − Δ)`; β is the reciprocal of the margin.

    Example:
        ```python
        >>> p = PreferenceLogps(*(torch.tensor([x]) for x in (-1.0, -3.0, -2.0, -2.5, 2, 4)))
        >>> hinge_loss(p, DPOLossParams(beta=0.1))[0]  # 1 - 0.15
        tensor([0.8500])
        ```
    """
    return torch.relu(1 - _margin(p, params)), preference_metrics(p, params.beta)


def ipo_loss(p: PreferenceLogps, params: DPOLossParams) -> tuple[Tensor, dict[str, Tensor]]:
    """IPO (https://huggingface.co/papers/2310.12036, the empirical IPO loss): `((f(h̄_c) − f(h̄_r)) − 1/(2β))²`.

    β plays the role of the paper's τ. Log-ratios are length-normalised, as in TRL, so that the target margin
    `1/(2β)` does not depend on the completion lengths.

    Example:
        ```python
        >>> p = PreferenceLogps(*(torch.tensor([x]) for x in (-1.0, -3.0, -2.0, -2.5, 2, 4)))
        >>> ipo_loss(p, DPOLossParams(beta=0.1))[0]  # (0.625 - 5) ** 2
        tensor([19.1406])
        ```
    """
    chosen, rejected = _logratios(p, normalise=True)
    alpha = params.f_alpha_divergence_coef
    margin = f_divergence_logratios(chosen, params.f_divergence_type, alpha)
    margin = margin - f_divergence_logratios(rejected, params.f_divergence_type, alpha)
    return (margin - 1 / (2 * params.beta)) ** 2, preference_metrics(p, params.beta)


def exo_pair_loss(p: PreferenceLogps, params: DPOLossParams) -> tuple[Tensor, dict[str, Tensor]]:
    """EXO (https://huggingface.co/papers/2402.00856, eq. 16 with K = 2): the reverse KL from the policy's pairwise
    distribution `[σ(Δ), σ(−Δ)]` to the target `[1−ε, ε]`:

        σ(Δ)·(log σ(Δ) − log(1−ε)) + σ(−Δ)·(log σ(−Δ) − log ε)

    ε must be positive; with `label_smoothing == 0` the paper's pairwise value `EXO_DEFAULT_EPSILON = 1e-3` is used
    (as TRL does), so `loss_type="exo_pair"` works with the default config. Honours `f_divergence_type`.

    Example:
        ```python
        >>> p = PreferenceLogps(*(torch.tensor([x]) for x in (-1.0, -3.0, -2.0, -2.5, 2, 4)))
        >>> exo_pair_loss(p, DPOLossParams(beta=0.1))[0]
        tensor([2.5055])
        ```
    """
    eps = params.label_smoothing if params.label_smoothing > 0 else EXO_DEFAULT_EPSILON
    margin = _margin(p, params)
    chosen_term = torch.sigmoid(margin) * (F.logsigmoid(margin) - math.log(1 - eps))
    rejected_term = torch.sigmoid(-margin) * (F.logsigmoid(-margin) - math.log(eps))
    return chosen_term + rejected_term, preference_metrics(p, params.beta)


def nca_pair_loss(p: PreferenceLogps, params: DPOLossParams) -> tuple[Tensor, dict[str, Tensor]]:
    """NCA (https://huggingface.co/papers/2402.05369, pairwise form: K = 2 and the preferred response as the only
    positive): `−log σ(β h_c) − ½ log σ(−β h_c) − ½ log σ(−β h_r)`.

    Unlike DPO it optimises absolute rewards, so the chosen likelihood is pushed up rather than only the margin.

    Example:
        ```python
        >>> p = PreferenceLogps(*(torch.tensor([x]) for x in (-1.0, -3.0, -2.0, -2.5, 2, 4)))
        >>> nca_pair_loss(p, DPOLossParams(beta=0.1))[0]
        tensor([1.3508])
        ```
    """
    chosen, rejected = _logratios(p)
    chosen_rewards, rejected_rewards = params.beta * chosen, params.beta * rejected
    losses = (
        -F.logsigmoid(chosen_rewards) - 0.5 * F.logsigmoid(-chosen_rewards) - 0.5 * F.logsigmoid(-rejected_rewards)
    )
    return losses, preference_metrics(p, params.beta)


def robust_loss(p: PreferenceLogps, params: DPOLossParams) -> tuple[Tensor, dict[str, Tensor]]:
    """Robust DPO (https://huggingface.co/papers/2403.00409): the unbiased estimate of the clean-label loss
    under labels flipped with probability ε,

        ((1−ε)·(−log σ(Δ)) − ε·(−log σ(−Δ))) / (1 − 2ε),  ε ∈ [0, 0.5).

    Example:
        ```python
        >>> p = PreferenceLogps(*(torch.tensor([x]) for x in (-1.0, -3.0, -2.0, -2.5, 2, 4)))
        >>> robust_loss(p, DPOLossParams(beta=0.1, label_smoothing=0.1))[0]
        tensor([0.6022])
        ```
    """
    eps = params.label_smoothing
    margin = _margin(p, params)
    losses = ((1 - eps) * -F.logsigmoid(margin) - eps * -F.logsigmoid(-margin)) / (1 - 2 * eps)
    return losses, preference_metrics(p, params.beta)


def bco_pair_loss(p: PreferenceLogps, params: DPOLossParams) -> tuple[Tensor, dict[str, Tensor]]:
    """BCO on pairs (https://huggingface.co/papers/2404.04656): each side is classified against the reward
    shift δ, `−log σ(β h_c − δ) − log σ(−(β h_r − δ))`.

    δ is `p.bco_delta`: the running mean of the implicit rewards kept by the trainer (see [`PreferenceLogps`]); when
    it is `None`, this batch's [`bco_batch_reward_mean`] is used. δ is never differentiated.

    Example:
        ```python
        >>> p = PreferenceLogps(*(torch.tensor([x]) for x in (-1.0, -3.0, -2.0, -2.5, 2, 4)), bco_delta=0.0)
        >>> bco_pair_loss(p, DPOLossParams(beta=0.1))[0]  # -log σ(0.1) - log σ(0.05)
        tensor([1.3129])
        ```
    """
    delta = p.bco_delta if p.bco_delta is not None else bco_batch_reward_mean(p, params.beta)
    if isinstance(delta, Tensor):
        delta = _up(delta).detach()
    chosen, rejected = _logratios(p)
    losses = -F.logsigmoid(params.beta * chosen - delta) - F.logsigmoid(-(params.beta * rejected - delta))
    return losses, preference_metrics(p, params.beta)


def sppo_hard_loss(p: PreferenceLogps, params: DPOLossParams) -> tuple[Tensor, dict[str, Tensor]]:
    """SPPO with hard labels (https://huggingface.co/papers/2405.00675, the SPPO objective with P(y_c ≻ π) = 1 and
    P(y_r ≻ π) = 0, η = 1/β): `(h_c − 1/(2β))² + (h_r + 1/(2β))²`.

    Example:
        ```python
        >>> p = PreferenceLogps(*(torch.tensor([x]) for x in (-1.0, -3.0, -2.0, -2.5, 2, 4)))
        >>> sppo_hard_loss(p, DPOLossParams(beta=0.1))[0]  # (1 - 5) ** 2 + (-0.5 + 5) ** 2
        tensor([36.2500])
        ```
    """
    chosen, rejected = _logratios(p)
    target = 1 / (2 * params.beta)
    return (chosen - target) ** 2 + (rejected + target) ** 2, preference_metrics(p, params.beta)


def aot_loss(p: PreferenceLogps, params: DPOLossParams) -> tuple[Tensor, dict[str, Tensor]]:
    """AOT, paired (https://huggingface.co/papers/2406.05882): the distribution of the policy's margins
    `m = log π(y_c) − log π(y_r)` should dominate that of the reference's margins `m_ref` in the first order. The
    1-D optimal transport between the two empirical distributions is the sorted matching, so with `m_(i)` the i-th
    smallest:

        Δ_i = β·(m_(i) − m_ref,(i)),  loss_i = −(1−ε)·log σ(Δ_i) − ε·log σ(−Δ_i).

    Entry i belongs to rank i, not to row i (see the module docstring).

    Example:
        ```python
        >>> p = PreferenceLogps(*(torch.tensor([x]) for x in (-1.0, -3.0, -2.0, -2.5, 2, 4)))
        >>> aot_loss(p, DPOLossParams(beta=0.1))[0]  # one pair: same as sigmoid
        tensor([0.6210])
        ```
    """
    margins = _up(p.chosen_logps) - _up(p.rejected_logps)
    ref_margins = (_up(p.ref_chosen_logps) - _up(p.ref_rejected_logps)).detach()
    margin = params.beta * (torch.sort(margins).values - torch.sort(ref_margins).values)
    return _smoothed_logistic(margin, params.label_smoothing), preference_metrics(p, params.beta)


def aot_unpaired_loss(p: PreferenceLogps, params: DPOLossParams) -> tuple[Tensor, dict[str, Tensor]]:
    """AOT, unpaired (https://huggingface.co/papers/2406.05882): the distribution of chosen log-ratios should
    dominate that of rejected log-ratios, matched by sorting each side across the batch:

        Δ_i = β·(h_c,(i) − h_r,(i)),  loss_i = −(1−ε)·log σ(Δ_i) − ε·log σ(−Δ_i).

    Entry i belongs to rank i, not to row i.

    Example:
        ```python
        >>> p = PreferenceLogps(*(torch.tensor([x]) for x in (-1.0, -3.0, -2.0, -2.5, 2, 4)))
        >>> aot_unpaired_loss(p, DPOLossParams(beta=0.1))[0]
        tensor([0.6210])
        ```
    """
    chosen, rejected = _logratios(p)
    margin = params.beta * (torch.sort(chosen).values - torch.sort(rejected).values)
    return _smoothed_logistic(margin, params.label_smoothing), preference_metrics(p, params.beta)


def apo_zero_loss(p: PreferenceLogps, params: DPOLossParams) -> tuple[Tensor, dict[str, Tensor]]:
    """APO-zero (https://huggingface.co/papers/2408.06266): push chosen likelihood up and rejected down,
    anchored at the reference: `(1 − σ(β h_c)) + σ(β h_r)`. Suited when the chosen outputs are better than the policy.

    Example:
        ```python
        >>> p = PreferenceLogps(*(torch.tensor([x]) for x in (-1.0, -3.0, -2.0, -2.5, 2, 4)))
        >>> apo_zero_loss(p, DPOLossParams(beta=0.1))[0]  # σ(-0.1) + σ(-0.05)
        tensor([0.9625])
        ```
    """
    chosen, rejected = _logratios(p)
    # 1 − σ(x) is written σ(−x), which keeps its precision when σ(x) is close to 1.
    losses = torch.sigmoid(-params.beta * chosen) + torch.sigmoid(params.beta * rejected)
    return losses, preference_metrics(p, params.beta)


def apo_down_loss(p: PreferenceLogps, params: DPOLossParams) -> tuple[Tensor, dict[str, Tensor]]:
    """APO-down (https://huggingface.co/papers/2408.06266): push both likelihoods down, the rejected one more:
    `σ(β h_c) + (1 − σ(β (h_c − h_r)))`. Suited when the policy is already better than the chosen outputs.

    Example:
        ```python
        >>> p = PreferenceLogps(*(torch.tensor([x]) for x in (-1.0, -3.0, -2.0, -2.5, 2, 4)))
        >>> apo_down_loss(p, DPOLossParams(beta=0.1))[0]  # σ(0.1) + σ(-0.15)
        tensor([0.9875])
        ```
    """
    chosen, rejected = _logratios(p)
    losses = torch.sigmoid(params.beta * chosen) + torch.sigmoid(-params.beta * (chosen - rejected))
    return losses, preference_metrics(p, params.beta)


def discopop_loss(p: PreferenceLogps, params: DPOLossParams) -> tuple[Tensor, dict[str, Tensor]]:
    """DiscoPOP / log-ratio modulated loss (https://huggingface.co/papers/2406.08414, LRML): a mixture of the
    logistic and the exponential loss whose weight is a tempered sigmoid of the margin,

        w = σ(Δ/τ),  loss = (1 − w)·(−log σ(Δ)) + w·exp(−Δ).

    Honours `f_divergence_type`.

    Example:
        ```python
        >>> p = PreferenceLogps(*(torch.tensor([x]) for x in (-1.0, -3.0, -2.0, -2.5, 2, 4)))
        >>> discopop_loss(p, DPOLossParams(beta=0.1))[0]
        tensor([0.8493])
        ```
    """
    margin = _margin(p, params)
    logistic = -F.logsigmoid(margin) * torch.sigmoid(-margin / params.discopop_tau)
    # w·exp(−Δ) = exp(log σ(Δ/τ) − Δ): for a very negative Δ, σ(Δ/τ) underflows to 0 while exp(−Δ) overflows to inf,
    # and their product would be NaN; in log space it is a finite (vanishing, for τ < 1) number.
    exponential = torch.exp(F.logsigmoid(margin / params.discopop_tau) - margin)
    return logistic + exponential, preference_metrics(p, params.beta)


def sft_loss(p: PreferenceLogps, params: DPOLossParams) -> tuple[Tensor, dict[str, Tensor]]:
    """Length-normalised NLL of the chosen completion, `−log π(y_c|x) / |y_c|` (the SFT term of MPO,
    https://huggingface.co/papers/2411.10442). It ignores the reference and the f-divergence.

    Example:
        ```python
        >>> p = PreferenceLogps(*(torch.tensor([x]) for x in (-1.0, -3.0, -2.0, -2.5, 2, 4)))
        >>> sft_loss(p, DPOLossParams())[0]  # 1 / 2
        tensor([0.5000])
        ```
    """
    chosen_logps = _up(p.chosen_logps)
    return -chosen_logps / p.chosen_lengths.clamp(min=1).to(chosen_logps.dtype), preference_metrics(p, params.beta)


LossFn = Callable[[PreferenceLogps, DPOLossParams], tuple[Tensor, dict[str, Tensor]]]

DPO_LOSSES: dict[str, LossFn] = {
    "sigmoid": sigmoid_loss,
    "hinge": hinge_loss,
    "ipo": ipo_loss,
    "exo_pair": exo_pair_loss,
    "nca_pair": nca_pair_loss,
    "robust": robust_loss,
    "bco_pair": bco_pair_loss,
    "sppo_hard": sppo_hard_loss,
    "aot": aot_loss,
    "aot_unpaired": aot_unpaired_loss,
    "apo_zero": apo_zero_loss,
    "apo_down": apo_down_loss,
    "discopop": discopop_loss,
    "sft": sft_loss,
    "sigmoid_norm": sigmoid_norm_loss,
}

# Loss types that accept a non-default `f_divergence_type`: the ones built on the margin s_c − s_r.
F_DIVERGENCE_LOSSES = frozenset({"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"})

# Ranks of a sorted batch are not rows, so a per-row WPO weight has nothing to multiply.
_SORTED_LOSSES = frozenset({"aot", "aot_unpaired"})


# ----------------------------------------------------------------------------------------------------------------------
# Validation and combination


def validate_dpo_loss_config(
    loss_types: str | Sequence[str],
    loss_weights: Sequence[float] | None = None,
    f_divergence_type: str = "reverse_kl",
    label_smoothing: float = 0.0,
    use_weighting: bool = False,
    *,
    f_alpha_divergence_coef: float = 0.5,
    discopop_tau: float = 0.05,
    beta: float | None = None,
) -> list[str]:
    """Check a DPO loss configuration and return `loss_types` as a list. Meant for `DPOConfig.__post_init__`.

    Args:
        loss_types (`str` or `list[str]`): one loss type or several (combined by [`dpo_loss`]).
        loss_weights (`list[float]`, *optional*): one weight per loss type; `None` means 1.0 each.
        f_divergence_type (`str`, *optional*, defaults to `"reverse_kl"`): a key of `F_DIVERGENCES`.
        label_smoothing (`float`, *optional*, defaults to `0.0`): ε, in `[0, 0.5)` (a flip probability of 0.5 or
            more would make the labels carry no information, and `robust` divides by `1 − 2ε`). `exo_pair` with
            ε = 0 is accepted and uses `EXO_DEFAULT_EPSILON` (see [`exo_pair_loss`]).
        use_weighting (`bool`, *optional*, defaults to `False`): WPO weighting, not allowed with `aot` /
            `aot_unpaired`.
        f_alpha_divergence_coef (`float`, *optional*, defaults to `0.5`): must be `> 0` for `alpha_divergence`.
        discopop_tau (`float`, *optional*, defaults to `0.05`): must be `> 0` when `discopop` is used.
        beta (`float`, *optional*): when given, must be `> 0`.

    Returns:
        `list[str]`: the loss types.

    Raises:
        `ValueError`: naming the bad value and the allowed ones.

    Example:
        ```python
        >>> validate_dpo_loss_config("sigmoid")
        ['sigmoid']
        >>> validate_dpo_loss_config(["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0])
        ['sigmoid', 'bco_pair', 'sft']
        ```
    """
    loss_types = [loss_types] if isinstance(loss_types, str) else list(loss_types)
    if not loss_types:
        raise ValueError(f"loss_type must name at least one loss; allowed: {sorted(DPO_LOSSES)}.")
    for name in loss_types:
        if name not in DPO_LOSSES:
            raise ValueError(f"Unknown DPO loss_type {name!r}; allowed: {sorted(DPO_LOSSES)}.")
    if loss_weights is not None and len(loss_weights) != len(loss_types):
        raise ValueError(
            f"loss_weights must have one weight per loss type: got {len(loss_weights)} weights {list(loss_weights)} "
            f"for {len(loss_types)} loss types {loss_types}."
        )
    if f_divergence_type not in F_DIVERGENCES:
        raise ValueError(f"Unknown f_divergence_type {f_divergence_type!r}; allowed: {list(F_DIVERGENCES)}.")
    if f_divergence_type != "reverse_kl":
        disallowed = [name for name in loss_types if name not in F_DIVERGENCE_LOSSES]
        if disallowed:
            raise ValueError(
                f"f_divergence_type={f_divergence_type!r} is not supported with loss_type {disallowed}; it is only "
                f"supported with {sorted(F_DIVERGENCE_LOSSES)}. Use f_divergence_type='reverse_kl' or change loss_type."
            )
        if f_divergence_type == "alpha_divergence" and not f_alpha_divergence_coef > 0:
            raise ValueError(
                f"f_alpha_divergence_coef must be > 0 for alpha_divergence; got {f_alpha_divergence_coef}."
            )
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(
            f"label_smoothing is the probability that a preference label is flipped and must be in [0, 0.5); got "
            f"{label_smoothing}."
        )
    if use_weighting:
        sorted_types = [name for name in loss_types if name in _SORTED_LOSSES]
        if sorted_types:
            raise ValueError(
                f"use_weighting=True (WPO) is not supported with loss_type {sorted_types}: these losses match pairs "
                "across the batch by sorting, so there is no per-pair loss to weight. Set use_weighting=False."
            )
    if "discopop" in loss_types and not discopop_tau > 0:
        raise ValueError(f"discopop_tau must be > 0; got {discopop_tau}.")
    if beta is not None and not beta > 0:
        raise ValueError(f"beta must be > 0; got {beta}.")
    return loss_types


def dpo_loss(
    p: PreferenceLogps,
    loss_types: str | Sequence[str] = ("sigmoid",),
    loss_weights: Sequence[float] | None = None,
    params: DPOLossParams | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of DPO loss variants, `Σ_k w_k · loss_k`, e.g. MPO (https://huggingface.co/papers/2411.10442) is
    `loss_types=["sigmoid", "bco_pair", "sft"]`.

    Args:
        p ([`PreferenceLogps`]): the batch, `(B,)` tensors.
        loss_types (`str` or `list[str]`, *optional*, defaults to `["sigmoid"]`): keys of `DPO_LOSSES`.
        loss_weights (`list[float]`, *optional*): one weight per loss type; `None` means 1.0 each.
        params ([`DPOLossParams`], *optional*): hyper-parameters; defaults to `DPOLossParams()`.

    Returns:
        `tuple[torch.Tensor, dict[str, torch.Tensor]]`: the `(B,)` combined losses and the detached metrics of
        [`preference_metrics`].

    Raises:
        `ValueError`: as [`validate_dpo_loss_config`] (unknown loss type, wrong number of weights, ...).

    Example:
        ```python
        >>> p = PreferenceLogps(*(torch.tensor([x]) for x in (-1.0, -3.0, -2.0, -2.5, 2, 4)))
        >>> dpo_loss(p, ["sigmoid", "sft"], [1.0, 0.5])[0]  # 0.6210 + 0.5 * 0.5
        tensor([0.8710])
        ```
    """
    params = params if params is not None else DPOLossParams()
    loss_types = validate_dpo_loss_config(
        loss_types,
        loss_weights,
        params.f_divergence_type,
        params.label_smoothing,
        f_alpha_divergence_coef=params.f_alpha_divergence_coef,
        discopop_tau=params.discopop_tau,
        beta=params.beta,
    )
    weights = list(loss_weights) if loss_weights is not None else [1.0] * len(loss_types)
    total, metrics = None, {}
    for name, weight in zip(loss_types, weights, strict=True):
        losses, metrics = DPO_LOSSES[name](p, params)
        total = weight * losses if total is None else total + weight * losses
    return total, metrics


# ----------------------------------------------------------------------------------------------------------------------
# Sequence log-prob variants read by the trainer before the loss


def ld_logps(per_token_logps: Tensor, mask: Tensor, shared_lengths: Tensor, alpha: float) -> Tensor:
    """LD-DPO sequence log-probs (https://huggingface.co/papers/2409.06411): the first `l_p` completion tokens
    count fully and the rest are weighted by α,

        log π̂(y|x) = Σ_{t ≤ l_p} log π(y_t|x, y_<t) + α · Σ_{t > l_p} log π(y_t|x, y_<t),

    where `l_p = min(|y_c|, |y_r|)` is the length the pair shares. This desensitises DPO to the verbosity of the longer
    completion. Apply it to the policy and the reference alike. Positions are counted along `mask`, so the completion
    may start anywhere in the row (after the prompt, after left padding).

    Args:
        per_token_logps (`torch.Tensor`): `(B, T)` token log-probs; values at masked-out positions are ignored (even
            NaN).
        mask (`torch.Tensor`): `(B, T)` bool or 0/1 completion mask.
        shared_lengths (`torch.Tensor`): `(B,)` `l_p` of each row's pair.
        alpha (`float`): weight of the tokens beyond `l_p`, in `[0, 1]` (1 is plain DPO).

    Returns:
        `torch.Tensor`: `(B,)` weighted sums.

    Raises:
        `ValueError`: `alpha` outside `[0, 1]`.

    Example:
        ```python
        >>> logps = torch.tensor([[-1.0, -2.0, -3.0]])
        >>> ld_logps(logps, torch.ones(1, 3, dtype=torch.bool), torch.tensor([1]), alpha=0.5)  # -1 + 0.5 * (-5)
        tensor([-3.5000])
        ```
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"ld_alpha must be in [0, 1]; got {alpha}.")
    mask = mask.bool()
    position = mask.long().cumsum(-1) - 1  # index of each token within its completion
    logps = _up(per_token_logps)
    weight = torch.where(position < shared_lengths.unsqueeze(-1), 1.0, alpha).to(logps.dtype)
    return torch.where(mask, logps * weight, 0.0).sum(-1)


def wpo_weights(token_logps: Tensor, mask: Tensor, log_sum_sq_probs: Tensor | None = None) -> Tensor:
    """Per-sequence WPO weight (https://huggingface.co/papers/2406.11827, §3, "sampled" weight alignment), detached:

        w(x, y) = exp( (1/|y|) · Σ_t [ log π(y_t|x, y_<t) − log Σ_v π(v|x, y_<t)² ] )

    The length-normalised sequence probability measures how on-policy a pair is. Dividing each token probability by
    `Σ_v π(v)²`, its expectation when the token is sampled from the policy itself, makes the weight of on-policy
    samples about 1 whatever the entropy of the policy (without it a greedy-leaning policy would down-weight even its
    own samples). Without `log_sum_sq_probs` this is the unaligned weight `exp(mean log π(y_t))`. Combine the two sides
    of a pair with [`wpo_pair_weights`].

    Args:
        token_logps (`torch.Tensor`): `(N, T)` policy token log-probs of the completion.
        mask (`torch.Tensor`): `(N, T)` bool or 0/1 completion mask.
        log_sum_sq_probs (`torch.Tensor`, *optional*): `(N, T)` `log Σ_v π(v|x, y_<t)²` (= `logsumexp(2·log_softmax)`)
            at the same positions.

    Returns:
        `torch.Tensor`: `(N,)` weights, detached. A row with an empty mask gets weight 1.

    Example:
        ```python
        >>> logps = torch.log(torch.tensor([[0.5, 0.5]]))
        >>> wpo_weights(logps, torch.ones(1, 2), torch.log(torch.tensor([[0.5, 0.5]])))  # p / Σp² = 1 at each token
        tensor([1.])
        ```
    """
    with torch.no_grad():
        mask = mask.bool()
        aligned = _up(token_logps)
        if log_sum_sq_probs is not None:
            aligned = aligned - _up(log_sum_sq_probs)
        mean = torch.where(mask, aligned, 0.0).sum(-1) / mask.sum(-1).clamp(min=1)
        return mean.exp()


def wpo_pair_weights(chosen_weights: Tensor, rejected_weights: Tensor) -> Tensor:
    """WPO weight of a pair (https://huggingface.co/papers/2406.11827): `min(w(x, y_c) · w(x, y_r), 1)`.

    The paper multiplies the two sides' weights. We clip the product at 1 (as TRL does): aligned weights of
    on-policy pairs sit around 1, and the clip stops a pair the policy finds more likely than its typical sample from
    raising the effective learning rate above that of unweighted DPO. Multiply the `(B,)` DPO losses by it.

    Example:
        ```python
        >>> wpo_pair_weights(torch.tensor([0.5, 2.0]), torch.tensor([0.5, 1.0]))
        tensor([0.2500, 1.0000])
        ```
    """
    return (chosen_weights * rejected_weights).detach().clamp(max=1.0)
