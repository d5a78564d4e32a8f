"""Policy-gradient losses of the online trainers on per-token log-probs: the GRPO family, picked through
`POLICY_LOSSES`, and RLOO's sequence-level PPO-clip ([`rloo_loss`]).

Notation used in the docstrings (`m` is the completion mask, `sg` the stop-gradient):

- `r_i,t` is the importance ratio of token `t` of completion `i` between the current policy and the policy that
  generated it ([`importance_ratio`]): `exp(logps − old_logps)` at token level; at sequence level (GSPO) every token of
  a completion carries the completion's ratio `s_i = exp(mean_t (logps − old_logps))`;
- `A_i` is the advantage of completion `i`, broadcast over its tokens;
- `ε_low`, `ε_high` are `epsilon_low`, `epsilon_high`.

[`policy_loss`] composes, per token, the variant's policy term (only on the tokens of `entropy_mask` when given), the
KL penalty `β · k3`, and returns per-token losses; [`~trl.losses.reduce.reduce_policy_loss`]
turns them into the micro-batch's scalar with the normalisation `POLICY_REDUCTIONS[loss_type]`.

Conventions:

- `old_logps`, `ref_logps` and `advantages` are detached here, whatever the caller passes: gradients flow only into
  `logps`.
- Inputs at padded positions are replaced by 0 before any arithmetic, so padding holding `-inf` or garbage neither
  shows in the losses nor produces NaN gradients; every returned token loss is 0 where `completion_mask` is 0.
- bf16 / fp16 inputs are upcast to float32: losses and metrics are float32; the gradient still reaches the
  low-precision `logps`.
- Metrics are detached 0-d tensors; a mean over an empty set (a micro-batch with no completion token) is 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from ._common import _up

Tensor = torch.Tensor
PolicyLossType = Literal["grpo", "dr_grpo", "dapo", "bnpo", "luspo", "cispo", "sapo", "vespo"]
ImportanceSamplingLevel = Literal["token", "sequence"]
PolicyTermFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, "PolicyLossParams"], tuple[Tensor, dict[str, Tensor]]]

IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")

# VESPO's sequence log-ratio is a sum over tokens and can be far outside float32's exp range. Clamping it to ±20
# (as the authors' implementation does) changes no weight that matters: φ is below e^-37 beyond either bound with the
# default (k, λ), and φ is detached, so the clamp cannot cut a gradient.
VESPO_MAX_ABS_LOG_RATIO = 20.0

# RLOO's sequence ratio is also a product over tokens. Above e^50 the loss of a positive advantage is clipped anyway;
# the cap keeps exp finite so that the clipped branch's zero gradient stays 0 instead of 0 · inf = NaN.
RLOO_MAX_LOG_RATIO = 50.0


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Detached mean of `values` over the True entries of `mask`; 0 when there is none."""
    values = values.detach().float()
    mask = mask.float()
    return (values * mask).sum() / mask.sum().clamp(min=1)


@dataclass(frozen=True)
class PolicyLossParams:
    """Scalar hyper-parameters of the GRPO-family losses (the subset of `GRPOConfig` that the losses read).

    Args:
        loss_type (`str`, *optional*, defaults to `"dapo"`): a key of `POLICY_LOSSES`.
        epsilon_low (`float`, *optional*, defaults to `0.2`): lower clipping range, the ratio is clipped at `1 − ε_low`.
        epsilon_high (`float`, *optional*, defaults to `0.2`): upper clipping range `1 + ε_high` of the PPO-clip
            family; for `cispo` it is the **absolute** cap of the ratio (the reference's value for CISPO is `5.0`).
        delta (`float`, *optional*): two-sided clipping ([INTELLECT-2](https://huggingface.co/papers/2505.07291)):
            the unclipped term uses `min(r, δ)`, which bounds the loss of a negative advantage; `None` disables it.
        beta (`float`, *optional*, defaults to `0.0`): coefficient of the per-token KL penalty to the reference.
        importance_sampling_level (`str`, *optional*, defaults to `"token"`): `"token"`, or `"sequence"` for GSPO's
            sequence ratio (see [`importance_ratio`]).
        use_bias_correction_kl (`bool`, *optional*, defaults to `False`): multiply the per-token KL by the ratio `r`
            (with its gradient), which makes it an importance-sampled estimate of `KL(π_θ ‖ π_ref)` when the samples
            come from `π_old` (see [`policy_loss`]).
        sapo_temperature_pos (`float`, *optional*, defaults to `1.0`): SAPO's τ for positive advantages, `> 0`.
        sapo_temperature_neg (`float`, *optional*, defaults to `1.05`): SAPO's τ for other advantages, `> 0`.
        vespo_k_pos (`float`, *optional*, defaults to `2.0`): VESPO's `k` (the paper's `c1`) for `A ≥ 0`.
        vespo_lambda_pos (`float`, *optional*, defaults to `3.0`): VESPO's `λ` (the paper's `c2`) for `A ≥ 0`.
        vespo_k_neg (`float`, *optional*, defaults to `3.0`): VESPO's `k` for `A < 0`.
        vespo_lambda_neg (`float`, *optional*, defaults to `2.0`): VESPO's `λ` for `A < 0`.

    Raises:
        `ValueError`: see [`validate_policy_loss_config`]; also for a non-positive SAPO temperature.

    Example:
        ```python
        >>> PolicyLossParams(loss_type="cispo", epsilon_high=5.0).epsilon_high
        5.0
        ```
    """

    loss_type: PolicyLossType = "dapo"
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    delta: float | None = None
    beta: float = 0.0
    importance_sampling_level: ImportanceSamplingLevel = "token"
    use_bias_correction_kl: bool = False
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0

    def __post_init__(self):
        # the returned luspo warning is for GRPOConfig to show; here only the errors matter
        validate_policy_loss_config(self.loss_type, self.importance_sampling_level)
        if self.sapo_temperature_pos <= 0 or self.sapo_temperature_neg <= 0:
            raise ValueError(
                "SAPO temperatures must be > 0 (the gate is scaled by 4/τ); got "
                f"sapo_temperature_pos={self.sapo_temperature_pos}, sapo_temperature_neg={self.sapo_temperature_neg}."
            )


# ----------------------------------------------------------------------------------------------------------------------
# Shared pieces


def importance_ratio(
    logps: Tensor, old_logps: Tensor, completion_mask: Tensor, level: ImportanceSamplingLevel = "token"
) -> Tensor:
    """Per-token importance ratio `r` between the current and the old policy.

    - `"token"`: `r_i,t = exp(logps_i,t − old_logps_i,t)`.
    - `"sequence"` ([GSPO](https://huggingface.co/papers/2507.18071), eq. for GSPO-token): every token carries the
      value of the sequence ratio `s_i = exp(mean_t (logps_i,t − old_logps_i,t))` (mean over the completion's tokens,
      i.e. the length-normalised ratio), written `r_i,t = exp(logps_i,t − sg(logps_i,t) + sg(log s_i))`. Its gradient is
      `s_i · ∇logps_i,t`, so the mean over a completion's tokens of any term `f(r_i,t)` has gradient
      `f'(s_i) · s_i · mean_t ∇logps_i,t = ∇f(s_i)`: GSPO's gradient, exactly. (Letting the gradient of `s_i` flow
      into every token instead gives the same gradient for any per-sequence-uniform weighting of tokens; the two
      differ only when some tokens are dropped, e.g. by the entropy mask, where this form keeps the dropped tokens'
      log-probs out of the gradient.)

    Padded positions get `r = 1`. `old_logps` is detached.

    Args:
        logps (`torch.Tensor`): `(B, T)` log-probs of the completion tokens under the current policy.
        old_logps (`torch.Tensor`): `(B, T)` log-probs under the policy that generated them.
        completion_mask (`torch.Tensor`): `(B, T)` 0/1 or bool.
        level (`str`, *optional*, defaults to `"token"`): `"token"` or `"sequence"`.

    Returns:
        `torch.Tensor`: `(B, T)` ratios.

    Example:
        ```python
        >>> logps = torch.tensor([[-1.0, -2.0]])
        >>> old = torch.tensor([[-1.5, -1.5]])
        >>> importance_ratio(logps, old, torch.ones(1, 2), "sequence")  # exp(mean(0.5, -0.5)) = 1
        tensor([[1., 1.]])
        ```
    """
    if level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(f"Unknown importance_sampling_level {level!r}; allowed: {list(IMPORTANCE_SAMPLING_LEVELS)}.")
    mask = completion_mask.bool()
    log_ratio = torch.where(mask, logps - old_logps.detach(), 0.0)
    if level == "token":
        return torch.exp(log_ratio)
    seq_log_ratio = log_ratio.sum(-1) / mask.sum(-1).clamp(min=1)  # (B,)
    return torch.exp(logps - logps.detach() + seq_log_ratio.detach().unsqueeze(-1))


def clip_metrics(
    ratio: Tensor, advantages: Tensor, completion_mask: Tensor, epsilon_low: float, epsilon_high: float
) -> dict[str, Tensor]:
    """Fractions of completion tokens on which PPO's clipping binds (the gradient is cut).

    `low = (r < 1 − ε_low) & (A < 0)`, `high = (r > 1 + ε_high) & (A > 0)`, `region = low | high`, each a mean over
    the completion tokens. [`policy_loss`] reports them for every `loss_type` so that the metric keys do not depend on
    it: for `cispo`, `sapo` and `vespo`, which do not clip this way, they measure how far the ratios have moved from 1,
    not where a gradient was cut.

    Args:
        ratio (`torch.Tensor`): `(B, T)` importance ratios.
        advantages (`torch.Tensor`): `(B,)` or `(B, 1)`.
        completion_mask (`torch.Tensor`): `(B, T)`.
        epsilon_low (`float`): `ε_low`.
        epsilon_high (`float`): `ε_high`.

    Returns:
        `dict[str, torch.Tensor]`: detached 0-d `clip_ratio/low`, `clip_ratio/high`, `clip_ratio/region`.

    Example:
        ```python
        >>> m = clip_metrics(torch.tensor([[0.5, 1.5]]), torch.tensor([-1.0]), torch.ones(1, 2), 0.2, 0.2)
        >>> m["clip_ratio/low"], m["clip_ratio/high"]
        (tensor(0.5000), tensor(0.))
        ```
    """
    with torch.no_grad():
        advantages = advantages.reshape(-1, 1)
        mask = completion_mask.bool()
        low = (ratio < 1 - epsilon_low) & (advantages < 0)
        high = (ratio > 1 + epsilon_high) & (advantages > 0)
        return {
            "clip_ratio/low": _masked_mean(low, mask),
            "clip_ratio/high": _masked_mean(high, mask),
            "clip_ratio/region": _masked_mean(low | high, mask),
        }


def vespo_weight(seq_log_ratio: Tensor, advantages: Tensor, params: PolicyLossParams) -> Tensor:
    """VESPO's kernel `φ(w) = w^k · exp(λ · (1 − w))` of the sequence importance weight `w`, detached.

    From [VESPO](https://huggingface.co/papers/2602.10693) (https://arxiv.org/abs/2602.10693), §3 and Algorithm I:
    the kernel is a Gamma-shaped density in `w`, normalised so that `φ(1) = 1` (an on-policy sequence gets the plain
    REINFORCE weight), with `(k, λ) = (vespo_k_pos, vespo_lambda_pos)` for `A ≥ 0` and `(vespo_k_neg,
    vespo_lambda_neg)` for `A < 0`. `w = Π_t r_i,t = exp(Σ_t m · (logps − old_logps))` is the true sequence ratio (a
    product, not GSPO's length-normalised mean). It is computed in log space, `log φ = k · log w + λ · (1 − w)`, with
    `log w` clamped to `±VESPO_MAX_ABS_LOG_RATIO`.

    Args:
        seq_log_ratio (`torch.Tensor`): `(B,)` `log w = Σ_t m · (logps − old_logps)`.
        advantages (`torch.Tensor`): `(B,)`.
        params ([`PolicyLossParams`]): reads the four `vespo_*` fields.

    Returns:
        `torch.Tensor`: `(B,)` detached weights `φ(w)`.

    Example:
        ```python
        >>> import math
        >>> w = vespo_weight(torch.tensor([0.0, math.log(2.0)]), torch.tensor([1.0, 1.0]), PolicyLossParams())
        >>> w  # φ(1) = 1;  φ(2) = 2² · e^(3 · (1 − 2)) = 4 e^-3
        tensor([1.0000, 0.1991])
        ```
    """
    with torch.no_grad():
        log_w = _up(seq_log_ratio).clamp(-VESPO_MAX_ABS_LOG_RATIO, VESPO_MAX_ABS_LOG_RATIO)
        positive = advantages.reshape(-1) >= 0
        k = torch.where(positive, params.vespo_k_pos, params.vespo_k_neg).to(log_w.dtype)
        lam = torch.where(positive, params.vespo_lambda_pos, params.vespo_lambda_neg).to(log_w.dtype)
        return torch.exp(k * log_w + lam * (1 - torch.exp(log_w)))


# ----------------------------------------------------------------------------------------------------------------------
# Policy terms: (ratio, logps, old_logps, advantages (B, 1), mask (B, T) bool, params) -> ((B, T) term, metrics)


def ppo_clip_term(
    ratio: Tensor, logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, params: PolicyLossParams
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate, shared by `grpo`, `dr_grpo`, `dapo`, `bnpo` and `luspo` (they differ only in the
    reduction, see `POLICY_REDUCTIONS`): `−min(r · A, clip(r, 1 − ε_low, 1 + ε_high) · A)`.

    With `delta` set, the unclipped term is `min(r, δ) · A` (INTELLECT-2's two-sided clipping,
    https://huggingface.co/papers/2505.07291): PPO never clips a negative advantage from above, so a large `r` would
    otherwise give an unbounded loss.

    Papers: GRPO https://huggingface.co/papers/2402.03300, DAPO https://huggingface.co/papers/2503.14476 (eq. 8),
    Dr. GRPO https://huggingface.co/papers/2503.20783, BNPO https://huggingface.co/papers/2506.02864,
    LUSPO https://huggingface.co/papers/2602.05261.

    Example:
        ```python
        >>> r = torch.tensor([[1.5, 0.5]])
        >>> term, _ = ppo_clip_term(r, None, None, torch.tensor([[1.0]]), None, PolicyLossParams())
        >>> term  # -min(1.5, 1.2), -min(0.5, 0.8)
        tensor([[-1.2000, -0.5000]])
        ```
    """
    unclipped = ratio if params.delta is None else torch.clamp(ratio, max=params.delta)
    clipped = torch.clamp(ratio, 1 - params.epsilon_low, 1 + params.epsilon_high)
    return -torch.min(unclipped * advantages, clipped * advantages), {}


def cispo_term(
    ratio: Tensor, logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, params: PolicyLossParams
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO ([MiniMax-M1](https://huggingface.co/papers/2506.13585), eq. 4): REINFORCE weighted by the clipped,
    detached importance ratio, `−sg(min(r, ε_high)) · A · logps`. Every token keeps a gradient; only its weight is
    capped. `ε_high` is an absolute cap here, not `1 + ε_high`.

    Metric `cispo_clip_ratio`: the fraction of completion tokens whose weight is capped (`r > ε_high`) and whose
    advantage is positive, as the reference counts it.

    Example:
        ```python
        >>> p = PolicyLossParams(loss_type="cispo", epsilon_high=2.0)
        >>> r, logps = torch.tensor([[1.0, 3.0]]), torch.tensor([[-1.0, -2.0]])
        >>> term, m = cispo_term(r, logps, None, torch.tensor([[1.0]]), torch.ones(1, 2, dtype=torch.bool), p)
        >>> term, m["cispo_clip_ratio"]  # -1 * (-1), -2 * (-2); token 1 is capped (3 > 2) with A > 0
        (tensor([[1., 4.]]), tensor(0.5000))
        ```
    """
    weight = torch.clamp(ratio, max=params.epsilon_high).detach()
    # as the reference: the share of tokens whose weight is capped among those with a positive advantage's sign
    metrics = {"cispo_clip_ratio": _masked_mean((ratio > params.epsilon_high) & (advantages > 0), mask)}
    return -weight * advantages * logps, metrics


def sapo_term(
    ratio: Tensor, logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, params: PolicyLossParams
) -> tuple[Tensor, dict[str, Tensor]]:
    """SAPO ([Soft Adaptive Policy Optimization](https://huggingface.co/papers/2511.20347)): a sigmoid gate in place of
    the hard clip, `−σ(τ · (r − 1)) · (4 / τ) · A`, with `τ = sapo_temperature_pos` when `A > 0`, else
    `sapo_temperature_neg`.

    The `4/τ` factor makes the gradient at `r = 1` equal PPO's: `d/dr = −σ'(0) · τ · (4/τ) · A = −A` since
    `σ'(0) = 1/4`; away from 1 the gradient decays smoothly instead of dropping to 0.

    Example:
        ```python
        >>> term, _ = sapo_term(torch.tensor([[1.0]]), None, None, torch.tensor([[1.0]]), None, PolicyLossParams())
        >>> term  # -σ(0) * 4 / 1
        tensor([[-2.]])
        ```
    """
    tau = torch.where(advantages > 0, params.sapo_temperature_pos, params.sapo_temperature_neg).to(ratio.dtype)
    return -torch.sigmoid(tau * (ratio - 1)) * (4 / tau) * advantages, {}


def vespo_term(
    ratio: Tensor, logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, params: PolicyLossParams
) -> tuple[Tensor, dict[str, Tensor]]:
    """VESPO ([paper](https://huggingface.co/papers/2602.10693)): REINFORCE weighted by the detached kernel of the
    sequence importance weight, `−φ(w_i) · A · logps` (see [`vespo_weight`]). `w_i` is always the product of the
    token ratios (VESPO rejects `importance_sampling_level="sequence"`), so `ratio` is not read.

    Metric `vespo/phi_seq_mean`: the mean of `φ` over the completions with at least one token.

    Example:
        ```python
        >>> logps = torch.tensor([[-1.0, -2.0]])
        >>> mask = torch.ones(1, 2, dtype=torch.bool)
        >>> term, m = vespo_term(None, logps, logps, torch.tensor([[1.0]]), mask, PolicyLossParams(loss_type="vespo"))
        >>> term  # φ(1) = 1
        tensor([[1., 2.]])
        ```
    """
    seq_log_ratio = torch.where(mask, logps - old_logps, 0.0).sum(-1)  # (B,)
    phi = vespo_weight(seq_log_ratio, advantages, params)  # (B,)
    metrics = {"vespo/phi_seq_mean": _masked_mean(phi, mask.any(-1))}
    return -phi.unsqueeze(-1) * advantages * logps, metrics


POLICY_LOSSES: dict[str, PolicyTermFn] = {
    "grpo": ppo_clip_term,
    "dr_grpo": ppo_clip_term,
    "dapo": ppo_clip_term,
    "bnpo": ppo_clip_term,
    "luspo": ppo_clip_term,
    "cispo": cispo_term,
    "sapo": sapo_term,
    "vespo": vespo_term,
}

# How `trl.losses.reduce.reduce_policy_loss` normalises each loss_type (see its docstring for the formulas).
POLICY_REDUCTIONS: dict[str, str] = {
    "grpo": "sequence_mean",
    "sapo": "sequence_mean",
    "bnpo": "local_token",
    "dr_grpo": "constant_length",
    "dapo": "token",
    "cispo": "token",
    "vespo": "token",
    "luspo": "sequence_sum",
}


def validate_policy_loss_config(loss_type: str, importance_sampling_level: str) -> str | None:
    """Check a `(loss_type, importance_sampling_level)` pair once, at construction.

    Args:
        loss_type (`str`): a key of `POLICY_LOSSES`.
        importance_sampling_level (`str`): `"token"` or `"sequence"`.

    Returns:
        `str` or `None`: a warning to show the user, or `None`. `luspo` is defined on GSPO's sequence ratio; with
        token-level ratios it runs, but is not the method of the paper.

    Raises:
        `ValueError`: unknown `loss_type` or level, or `vespo` with sequence-level importance sampling (VESPO builds
            its own sequence weight from the token ratios, and a length-normalised ratio would change its meaning).

    Example:
        ```python
        >>> validate_policy_loss_config("dapo", "token") is None
        True
        ```
    """
    if loss_type not in POLICY_LOSSES:
        raise ValueError(f"Unknown policy loss_type {loss_type!r}; allowed: {sorted(POLICY_LOSSES)}.")
    if importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(
            f"Unknown importance_sampling_level {importance_sampling_level!r}; "
            f"allowed: {list(IMPORTANCE_SAMPLING_LEVELS)}."
        )
    if loss_type == "vespo" and importance_sampling_level != "token":
        raise ValueError(
            "loss_type='vespo' computes its own sequence-level weight from token-level ratios; it requires "
            f"importance_sampling_level='token', got {importance_sampling_level!r}."
        )
    if loss_type == "luspo" and importance_sampling_level == "token":
        return (
            "loss_type='luspo' is designed for sequence-level importance sampling (GSPO's ratio); with "
            "importance_sampling_level='token' it is a token-level PPO-clip loss summed per sequence. Set "
            "importance_sampling_level='sequence' to follow the paper."
        )
    return None


def policy_loss(
    logps: Tensor,
    old_logps: Tensor | None,
    advantages: Tensor,
    completion_mask: Tensor,
    params: PolicyLossParams,
    ref_logps: Tensor | None = None,
    entropy_mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token loss of the GRPO family: the `loss_type`'s policy term and a KL penalty.

    For each completion token:

        loss_i,t = e_i,t · term_i,t  +  β · k3_i,t [· r_i,t]

    - `term` is `POLICY_LOSSES[loss_type]` on the ratio of [`importance_ratio`];
    - `e` is `entropy_mask` (1 everywhere when `None`): the top-entropy-quantile mask of
      [Beyond the 80/20 rule](https://huggingface.co/papers/2506.01939) gates the policy term only, not the KL;
    - `k3 = exp(ref − logps) − (ref − logps) − 1` (http://joschu.net/blog/kl-approx.html), an unbiased, non-negative
      estimate of `KL(π_θ ‖ π_ref)` on samples of `π_θ`. With `use_bias_correction_kl` it is multiplied by the ratio
      `r` **with its gradient**: the samples come from `π_old`, and `E_old[r · k3]` is the KL of the current policy,
      whose gradient needs the `∇r · k3` part too (a detached `r` would only reweight).

    The entropy bonus is not a per-token term: `GRPOTrainer` subtracts `entropy_coef` times the step-wide token mean
    of the entropy from the reduced loss, whatever the loss type's normalisation.

    Reduce the result with [`~trl.losses.reduce.reduce_policy_loss`] and `POLICY_REDUCTIONS[params.loss_type]`.

    Args:
        logps (`torch.Tensor`): `(B, T)` log-probs of the completion tokens under the current policy.
        old_logps (`torch.Tensor` or `None`): `(B, T)` log-probs under the policy that generated the completions;
            `None` when on-policy, which uses `logps.detach()` (so `r = 1` with the right gradient).
        advantages (`torch.Tensor`): `(B,)` one advantage per completion.
        completion_mask (`torch.Tensor`): `(B, T)` 0/1 or bool; 1 on the tokens that enter the loss.
        params ([`PolicyLossParams`]): the hyper-parameters.
        ref_logps (`torch.Tensor`, *optional*): `(B, T)` log-probs under the reference model; required when
            `beta != 0`.
        entropy_mask (`torch.Tensor`, *optional*): `(B, T)` bool, True on the tokens whose policy term is kept.

    Returns:
        `tuple[torch.Tensor, dict[str, torch.Tensor]]`: the `(B, T)` float32 (or float64) token losses, 0 where
        `completion_mask` is 0, and detached 0-d metrics, means over this micro-batch's completion tokens:
        `clip_ratio/low`, `clip_ratio/high`, `clip_ratio/region` (always, see [`clip_metrics`]); `kl` (when
        `beta != 0`: the mean of `k3`, times `r` with bias correction, without `β`); `cispo_clip_ratio` (`cispo`); `vespo/phi_seq_mean` (`vespo`, a mean over completions).

    Raises:
        `ValueError`: `beta != 0` without `ref_logps`, or `advantages` that do not have one entry per row.

    Example:
        ```python
        >>> logps = torch.tensor([[-1.0, -2.0, 0.0]], requires_grad=True)
        >>> mask = torch.tensor([[1, 1, 0]])
        >>> losses, metrics = policy_loss(logps, None, torch.tensor([0.5]), mask, PolicyLossParams())
        >>> losses  # on-policy: r = 1, -min(1 * 0.5, 1 * 0.5); the padded token is 0
        tensor([[-0.5000, -0.5000,  0.0000]], grad_fn=<WhereBackward0>)
        ```
    """
    if params.beta != 0 and ref_logps is None:
        raise ValueError(f"policy_loss needs ref_logps when beta != 0 (got beta={params.beta}).")
    if advantages.numel() != logps.shape[0]:
        raise ValueError(
            f"advantages must hold one value per completion, shape ({logps.shape[0]},); got {tuple(advantages.shape)}."
        )
    mask = completion_mask.bool()
    logps = torch.where(mask, _up(logps), 0.0)
    old_logps = logps.detach() if old_logps is None else torch.where(mask, _up(old_logps).detach(), 0.0)
    advantages = _up(advantages).detach().reshape(-1, 1).to(logps.dtype)

    ratio = importance_ratio(logps, old_logps, mask, params.importance_sampling_level)
    term, metrics = POLICY_LOSSES[params.loss_type](ratio, logps, old_logps, advantages, mask, params)
    if entropy_mask is not None:
        term = term * entropy_mask.to(term.dtype)
    metrics.update(clip_metrics(ratio, advantages, mask, params.epsilon_low, params.epsilon_high))
    losses = term

    if params.beta != 0:
        ref_minus_policy = torch.where(mask, _up(ref_logps).detach() - logps, 0.0)
        kl = torch.exp(ref_minus_policy) - ref_minus_policy - 1
        if params.use_bias_correction_kl:
            kl = kl * _kl_ratio(ratio, logps, old_logps, mask, params.importance_sampling_level)
        losses = losses + params.beta * kl
        metrics["kl"] = _masked_mean(kl, mask)

    return torch.where(mask, losses, 0.0), metrics


def _kl_ratio(ratio: Tensor, logps: Tensor, old_logps: Tensor, mask: Tensor, level: str) -> Tensor:
    """The ratio that bias-corrects the KL term. At token level it is `ratio` itself. At sequence level `ratio` is
    GSPO-token's `exp(logp_t − sg(logp_t) + sg(log s_i))`, whose gradient is local to token t: right for a term that
    is the same on every token of a sequence (the policy term), wrong for the KL, which varies per token. There the
    KL is multiplied by `s_i = exp(mean_t(logps − old_logps))` itself, differentiable through the whole sequence."""
    if level == "token":
        return ratio
    seq_log_ratio = torch.where(mask, logps - old_logps, 0.0).sum(-1) / mask.sum(-1).clamp(min=1)
    return torch.exp(seq_log_ratio).unsqueeze(-1).expand_as(ratio)


def rloo_loss(
    logps: Tensor,
    old_logps: Tensor | None,
    advantages: Tensor,
    completion_mask: Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
) -> tuple[Tensor, dict[str, Tensor]]:
    """RLOO's sequence-level PPO-clip loss ([Ahmadian et al.](https://huggingface.co/papers/2402.14740), with PPO's
    clip for the reuse of a batch): `−min(ρ_i · A_i, clip(ρ_i, 1 − ε_low, 1 + ε_high) · A_i)` with the ratio of whole
    completions `ρ_i = exp(Σ_t m · logps − Σ_t m · old_logps)` (a product of token ratios, not GSPO's mean).

    The log-ratio is capped at `RLOO_MAX_LOG_RATIO` before `exp` (see its comment); no realistic value is changed.
    Reduce the result with [`~trl.losses.reduce.sequence_mean_loss`].

    Args:
        logps (`torch.Tensor`): `(B, T)` log-probs under the current policy.
        old_logps (`torch.Tensor` or `None`): `(B, T)` log-probs under the generating policy; `None` when on-policy.
        advantages (`torch.Tensor`): `(B,)`.
        completion_mask (`torch.Tensor`): `(B, T)` 0/1 or bool.
        epsilon_low (`float`, *optional*, defaults to `0.2`): lower clipping range.
        epsilon_high (`float`, *optional*, defaults to `0.2`): upper clipping range.

    Returns:
        `tuple[torch.Tensor, dict[str, torch.Tensor]]`: `(B,)` per-completion losses (float32 or float64; 0 for a
        completion without any token) and
        detached 0-d metrics `clip_ratio/low` (`ρ < 1 − ε_low` and `A < 0`), `clip_ratio/high` (`ρ > 1 + ε_high` and
        `A > 0`), `clip_ratio/region` (either), as fractions of the completions that have at least one token.

    Example:
        ```python
        >>> logps = torch.tensor([[-1.0, -1.0]])
        >>> old = torch.tensor([[-1.5, -1.5]])
        >>> losses, m = rloo_loss(logps, old, torch.tensor([2.0]), torch.ones(1, 2))
        >>> losses, m["clip_ratio/high"]  # ρ = e^1 > 1.2: -1.2 * 2
        (tensor([-2.4000]), tensor(1.))
        ```
    """
    mask = completion_mask.bool()
    logps = torch.where(mask, _up(logps), 0.0)
    old_logps = logps.detach() if old_logps is None else torch.where(mask, _up(old_logps).detach(), 0.0)
    advantages = _up(advantages).detach().reshape(-1).to(logps.dtype)
    log_ratio = (logps.sum(-1) - old_logps.sum(-1)).clamp(max=RLOO_MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)  # (B,)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    scored = mask.any(-1)  # a completion without a loss token contributes 0, like a padded token in policy_loss
    losses = torch.where(scored, -torch.min(ratio * advantages, clipped * advantages), 0.0)
    with torch.no_grad():
        low = (ratio < 1 - epsilon_low) & (advantages < 0)
        high = (ratio > 1 + epsilon_high) & (advantages > 0)
        metrics = {
            "clip_ratio/low": _masked_mean(low, scored),
            "clip_ratio/high": _masked_mean(high, scored),
            "clip_ratio/region": _masked_mean(low | high, scored),
        }
    return losses, metrics
