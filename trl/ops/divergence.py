"""The generalized Jensen-Shannon divergence between a student's and a teacher's next-token distributions, computed
from their last hidden states chunk by chunk, never materialising `(N, V)` logits of either model.

Both models' LM heads are applied to `chunk_size` rows at a time; only `(N,)` results are kept. The backward pass
recomputes each chunk's logits of both models (the forward saves only the hidden states and head weights) and
accumulates the gradients of the student's hidden states, head weight and bias. The teacher gets no gradient.

With `p` the student's and `q` the teacher's distribution (logits divided by `temperature`), per token:

- `beta = 0`: forward KL, `KL(q || p) = Σ_v q_v (log q_v − log p_v)`;
- `beta = 1`: reverse KL, `KL(p || q) = Σ_v p_v (log p_v − log q_v)`;
- `0 < beta < 1`: the generalized JSD of GKD (https://huggingface.co/papers/2306.13649, eq. 1) with the mixture
  `m = beta·q + (1 − beta)·p`: `beta·KL(q || m) + (1 − beta)·KL(p || m)` (`beta = 0.5` is the JSD). Note that it tends
  to 0, not to a KL, as `beta` approaches 0 or 1; the endpoints are the two KLs above, as in the reference library.

Gradient with respect to the student's (scaled) logits `s`, for `a = ∂D/∂log p`: `∂D/∂s = a − p·Σ_v a_v`, which gives
`p − q` (forward KL), `p·(log p − log q − D)` (reverse KL) and `a = (1 − beta)·p·(log p − log m)` (mixture).

The logits follow each model's own transform (`scale`, `softcap`, see `trl.ops.logprobs`), then `/ temperature`.
Matmuls run in the inputs' dtype; the softmax and divergence in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .logprobs import (
    _chunks,
    _compute_dtype,
    _GradAccumulator,
    _no_autocast,
    _Transform,
    _Workspace,
    default_chunk_size,
)

__all__ = ["ChunkedDivergenceFunction", "DivergenceOutput", "chunked_divergence", "naive_divergence"]


@dataclass
class DivergenceOutput:
    """Per-token results of [`chunked_divergence`] / [`naive_divergence`].

    Args:
        divergence (`torch.Tensor`): per-token divergence, shaped like the hidden states without their last
            dimension, 0 where `mask` is False; differentiable with respect to the student's inputs.
        entropy (`torch.Tensor`): per-token entropy of the student's distribution (after temperature), 0 where `mask`
            is False; detached.
    """

    divergence: torch.Tensor
    entropy: torch.Tensor


def _check_beta(beta: float) -> float:
    beta = float(beta)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"`beta` must be in [0, 1] (0: forward KL, 0.5: JSD, 1: reverse KL); got {beta}.")
    return beta


def _divergence_rows(student_logps: torch.Tensor, teacher_logps: torch.Tensor, beta: float):
    """`(n,)` divergence of each row, and `log m` (the mixture's log-probs) for `0 < beta < 1` (else None)."""
    if beta == 0.0:
        return (teacher_logps.exp() * (teacher_logps - student_logps)).sum(-1), None
    if beta == 1.0:
        return (student_logps.exp() * (student_logps - teacher_logps)).sum(-1), None
    log_mix = torch.logaddexp(student_logps + math.log1p(-beta), teacher_logps + math.log(beta))
    to_teacher = (teacher_logps.exp() * (teacher_logps - log_mix)).sum(-1)
    to_student = (student_logps.exp() * (student_logps - log_mix)).sum(-1)
    return beta * to_teacher + (1.0 - beta) * to_student, log_mix


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`(a * b).sum(-1)` of two `(n, V)` blocks without a third `(n, V)` block."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _chunk_logps(student_ws, teacher_ws, hs, ws, bs, ht, wt, bt, ts: _Transform, tt: _Transform):
    """One chunk's transformed student logits (student buffer 0), student log-probs (student buffer 1) and teacher
    log-probs (teacher buffer 1); teacher buffer 0 is free afterwards."""
    n = hs.shape[0]
    logits = student_ws.logits(hs, ws, bs, ts)
    student_logps = torch.log_softmax(logits, dim=-1, out=student_ws[1][:n])
    teacher_logps = torch.log_softmax(teacher_ws.logits(ht, wt, bt, tt), dim=-1, out=teacher_ws[1][:n])
    return logits, student_logps, teacher_logps


def _chunk_forward(student_ws, teacher_ws, student_logps, teacher_logps, beta: float):
    """`(n,)` divergence and student entropy of one chunk. Overwrites every buffer but the student log-probs."""
    n = student_logps.shape[0]
    probs = torch.exp(student_logps, out=student_ws[0][:n])
    entropy = _rowdot(probs, student_logps).neg_()
    spare, teacher_probs = student_ws[2][:n], teacher_ws[0][:n]
    if beta == 1.0:
        return _rowdot(probs, torch.sub(student_logps, teacher_logps, out=spare)), entropy
    if beta == 0.0:
        torch.exp(teacher_logps, out=teacher_probs)
        return _rowdot(teacher_probs, torch.sub(teacher_logps, student_logps, out=spare)), entropy
    # log m = logaddexp(log p + log(1 - beta), log q + log beta), the second term in the teacher's free buffer
    log_mix = torch.logaddexp(torch.add(student_logps, math.log1p(-beta), out=spare),
                              torch.add(teacher_logps, math.log(beta), out=teacher_probs), out=spare)
    torch.exp(teacher_logps, out=teacher_probs)
    to_teacher = _rowdot(teacher_probs, teacher_logps.sub_(log_mix))
    to_student = _rowdot(probs, torch.sub(student_logps, log_mix, out=spare))
    return beta * to_teacher + (1.0 - beta) * to_student, entropy


def _chunk_grad(student_ws, teacher_ws, student_logps, teacher_logps, beta: float) -> torch.Tensor:
    """`(n, V)` gradient of each row's divergence with respect to the student's transformed logits (in a teacher
    buffer). Overwrites every buffer but student buffer 0 (the logits, kept for the soft-capping chain rule)."""
    n = student_logps.shape[0]
    probs = torch.exp(student_logps, out=student_ws[2][:n])
    grad = teacher_ws[0][:n]
    if beta == 0.0:  # p - q
        return torch.exp(teacher_logps, out=grad).neg_().add_(probs)
    if beta == 1.0:  # p (log p - log q - D)
        torch.sub(student_logps, teacher_logps, out=grad)
        return grad.sub_(_rowdot(probs, grad).unsqueeze(1)).mul_(probs)
    # a = (1 - beta) p (log p - log m), grad = a - p sum(a)
    torch.add(student_logps, math.log1p(-beta), out=grad)
    torch.logaddexp(grad, teacher_logps.add_(math.log(beta)), out=grad)
    torch.sub(student_logps, grad, out=grad).mul_(probs).mul_(1.0 - beta)
    return grad.addcmul_(probs, grad.sum(-1, keepdim=True), value=-1.0)


class ChunkedDivergenceFunction(torch.autograd.Function):
    """Autograd function behind [`chunked_divergence`] on selected rows: `(N, Hs)` and `(N, Ht)` hidden states in,
    `(N,)` divergence and (non-differentiable) student entropy out. Forward saves only its inputs; backward
    recomputes both models' logits chunk by chunk. Every `(chunk, V)` block lives in five buffers allocated once per
    call (three for the student, two for the teacher)."""

    @staticmethod
    def forward(ctx, student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight, teacher_bias,
                student_transform, teacher_transform, beta, chunk_size):
        n = student_hidden.shape[0]
        with _no_autocast(student_hidden.device), torch.no_grad():
            student_ws = _Workspace(student_hidden, student_weight, chunk_size, num_buffers=3)
            teacher_ws = _Workspace(teacher_hidden, teacher_weight, chunk_size, num_buffers=2)
            divergence = torch.empty(n, dtype=student_ws.compute_dtype, device=student_hidden.device)
            entropy = torch.empty_like(divergence)
            for start, end in _chunks(n, chunk_size):
                _, student_logps, teacher_logps = _chunk_logps(
                    student_ws, teacher_ws, student_hidden[start:end], student_weight, student_bias,
                    teacher_hidden[start:end], teacher_weight, teacher_bias, student_transform, teacher_transform,
                )
                divergence[start:end], entropy[start:end] = _chunk_forward(
                    student_ws, teacher_ws, student_logps, teacher_logps, beta
                )
        ctx.save_for_backward(student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight,
                              teacher_bias)
        ctx.transforms, ctx.beta, ctx.chunk_size = (student_transform, teacher_transform), beta, chunk_size
        ctx.mark_non_differentiable(entropy)
        return divergence, entropy

    @staticmethod
    def backward(ctx, grad_divergence, grad_entropy):
        hs_all, ws, bs, ht_all, wt, bt = ctx.saved_tensors
        student_transform, teacher_transform = ctx.transforms
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bs is not None and ctx.needs_input_grad[2])
        none = (None,) * 7
        if grad_divergence is None or not any(needs):
            return None, None, None, *none
        with _no_autocast(hs_all.device), torch.no_grad():
            grads = _GradAccumulator(hs_all, ws, bs, needs)
            student_ws = _Workspace(hs_all, ws, ctx.chunk_size, num_buffers=3)
            teacher_ws = _Workspace(ht_all, wt, ctx.chunk_size, num_buffers=2)
            # the chain rule's constant factor of the student's transform (`scale / temperature`), folded per row
            factor = student_transform.scale / student_transform.temperature
            coefs = grad_divergence.to(student_ws.compute_dtype) * factor
            for start, end in _chunks(hs_all.shape[0], ctx.chunk_size):
                h = hs_all[start:end]
                logits, student_logps, teacher_logps = _chunk_logps(
                    student_ws, teacher_ws, h, ws, bs, ht_all[start:end], wt, bt, student_transform,
                    teacher_transform,
                )
                grad = _chunk_grad(student_ws, teacher_ws, student_logps, teacher_logps, ctx.beta)
                grad.mul_(coefs[start:end].unsqueeze(1))
                grads.add(start, h, student_transform.chain_(grad, logits), student_ws)
            grad_hidden, grad_weight, grad_bias = grads.result()
        return grad_hidden, grad_weight, grad_bias, *none


def _prepare(student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight, teacher_bias, mask,
             beta, temperature, student_transform, teacher_transform, chunk_size, name):
    if student_weight.dim() != 2 or student_hidden.shape[-1] != student_weight.shape[1]:
        raise ValueError(f"{name}: the student's hidden states (..., H) and head weight (V, H) must share H; got "
                         f"{tuple(student_hidden.shape)} and {tuple(student_weight.shape)}.")
    if teacher_weight.dim() != 2 or teacher_hidden.shape[-1] != teacher_weight.shape[1]:
        raise ValueError(f"{name}: the teacher's hidden states (..., H) and head weight (V, H) must share H; got "
                         f"{tuple(teacher_hidden.shape)} and {tuple(teacher_weight.shape)}.")
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError(f"{name}: the student's vocabulary ({student_weight.shape[0]} rows of its head) and the "
                         f"teacher's ({teacher_weight.shape[0]}) differ; the divergence compares distributions over "
                         "one vocabulary.")
    if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise ValueError(f"{name}: student and teacher hidden states must cover the same tokens; got leading shapes "
                         f"{tuple(student_hidden.shape[:-1])} and {tuple(teacher_hidden.shape[:-1])}.")
    if mask is not None and mask.shape != student_hidden.shape[:-1]:
        raise ValueError(f"{name}: `mask` must have the leading shape {tuple(student_hidden.shape[:-1])} of the hidden "
                         f"states; got {tuple(mask.shape)}.")
    if not temperature > 0:
        raise ValueError(f"{name}: `temperature` must be > 0; got {temperature}.")
    beta = _check_beta(beta)
    vocab_size = student_weight.shape[0]
    if chunk_size is None:
        chunk_size = default_chunk_size(vocab_size, student_hidden.device)
    elif chunk_size < 1:
        raise ValueError(f"{name}: `chunk_size` must be a positive integer or None; got {chunk_size}.")
    transforms = []
    for options in (student_transform, teacher_transform):
        options = options or {}
        scale, softcap = float(options.get("scale", 1.0)), options.get("softcap")
        transforms.append(_Transform(scale, float(softcap) if softcap is not None else None, float(temperature)))
    return beta, int(chunk_size), transforms


def _matmul_dtype(hidden, weight):
    dtype = torch.promote_types(hidden.dtype, weight.dtype)
    device_type = hidden.device.type
    autocast = torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
    if autocast and dtype != torch.float64:  # the head's matmul in the autocast dtype, as `F.linear` would run it
        dtype = torch.get_autocast_dtype(device_type)
    return dtype


def chunked_divergence(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    beta: float = 1.0,
    temperature: float = 1.0,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    student_transform: dict | None = None,
    teacher_transform: dict | None = None,
    chunk_size: int | None = None,
) -> DivergenceOutput:
    """Per-token generalized JSD between a student's and a teacher's full next-token distributions, from their last
    hidden states and LM-head weights, `chunk_size` rows at a time (see the module docstring for the formulas).

    Args:
        student_hidden (`torch.Tensor`): `(..., Hs)` student last hidden states.
        student_weight (`torch.Tensor`): `(V, Hs)` student LM-head weight (possibly tied to its embeddings).
        teacher_hidden (`torch.Tensor`): `(..., Ht)` teacher last hidden states at the same tokens (no gradient).
        teacher_weight (`torch.Tensor`): `(V, Ht)` teacher LM-head weight (no gradient).
        mask (`torch.Tensor`, *optional*): bool `(...)`, the tokens that count; only these rows are projected, the
            others get 0. All tokens when None.
        beta (`float`, *optional*, defaults to `1.0`): 0 forward KL(teacher‖student), 0.5 JSD, 1 reverse
            KL(student‖teacher); in between the generalized JSD with mixture `beta·q + (1 − beta)·p`.
        temperature (`float`, *optional*, defaults to `1.0`): divides both models' logits.
        student_bias, teacher_bias (`torch.Tensor`, *optional*): `(V,)` LM-head biases.
        student_transform, teacher_transform (`dict`, *optional*): each model's `{"scale": ..., "softcap": ...}`
            (`trl.ops.logit_transform_from_config(model.config)`).
        chunk_size (`int`, *optional*): rows per chunk (default: [`default_chunk_size`] of `V`).

    Returns:
        [`DivergenceOutput`]: `divergence` (differentiable with respect to the student's hidden states, weight and
        bias) and the student's `entropy` (detached), both shaped `(...)`, float32 (float64 for float64 inputs).

    Raises:
        `ValueError`: shapes that do not match (the vocabulary sizes included), `beta` outside [0, 1], a
            non-positive temperature or chunk size.

    Example:
        ```python
        >>> import torch
        >>> from trl.ops.divergence import chunked_divergence
        >>> hidden, weight = torch.zeros(2, 4), torch.randn(8, 4)
        >>> chunked_divergence(hidden, weight, hidden, weight, beta=0.5).divergence  # equal (uniform) distributions
        tensor([0., 0.])
        ```
    """
    beta, chunk_size, (ts, tt) = _prepare(
        student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight, teacher_bias, mask, beta,
        temperature, student_transform, teacher_transform, chunk_size, "chunked_divergence",
    )
    leading = student_hidden.shape[:-1]
    hs = student_hidden.reshape(-1, student_hidden.shape[-1])
    ht = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])
    selected = None
    if mask is not None:
        selected = mask.reshape(-1).to(device=hs.device, dtype=torch.bool)
        hs, ht = hs[selected], ht[selected.to(ht.device)].to(hs.device)
    s_dtype, t_dtype = _matmul_dtype(hs, student_weight), _matmul_dtype(ht, teacher_weight)
    if torch.float64 in (s_dtype, t_dtype):  # one softmax dtype for both models' blocks (the buffers are shared)
        s_dtype = t_dtype = torch.float64
    hs, ws = hs.to(s_dtype).contiguous(), student_weight.to(s_dtype)
    bs = student_bias.to(s_dtype) if student_bias is not None else None
    ht, wt = ht.to(t_dtype).contiguous(), teacher_weight.detach().to(t_dtype)
    bt = teacher_bias.detach().to(t_dtype) if teacher_bias is not None else None
    divergence, entropy = ChunkedDivergenceFunction.apply(hs, ws, bs, ht, wt, bt, ts, tt, beta, chunk_size)
    if selected is not None:
        divergence = divergence.new_zeros(selected.shape).masked_scatter(selected, divergence)
        entropy = entropy.new_zeros(selected.shape).masked_scatter(selected, entropy)
    return DivergenceOutput(divergence.reshape(leading), entropy.reshape(leading))


def naive_divergence(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    beta: float = 1.0,
    temperature: float = 1.0,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    student_transform: dict | None = None,
    teacher_transform: dict | None = None,
) -> DivergenceOutput:
    """Reference implementation of [`chunked_divergence`]: materialises both models' full `(..., V)` logits and lets
    autograd differentiate them. For tests and benchmarks; use [`chunked_divergence`] in training.

    Example:
        ```python
        >>> import torch
        >>> from trl.ops.divergence import naive_divergence
        >>> weight = torch.tensor([[1.0], [0.0]])
        >>> naive_divergence(torch.tensor([[0.0]]), weight, torch.tensor([[1.0]]), weight, beta=1.0).divergence
        tensor([0.1201])
        ```
    """
    beta, _, (ts, tt) = _prepare(
        student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight, teacher_bias, mask, beta,
        temperature, student_transform, teacher_transform, 1, "naive_divergence",
    )

    def logps(hidden, weight, bias, transform):
        logits = torch.nn.functional.linear(hidden, weight, bias).to(_compute_dtype(weight.dtype)) * transform.scale
        if transform.softcap is not None:
            logits = transform.softcap * torch.tanh(logits / transform.softcap)
        return torch.log_softmax(logits / transform.temperature, dim=-1)

    student_logps = logps(student_hidden, student_weight, student_bias, ts)
    teacher_logps = logps(teacher_hidden.detach(), teacher_weight.detach(),
                          teacher_bias.detach() if teacher_bias is not None else None, tt).to(student_logps.dtype)
    divergence, _ = _divergence_rows(student_logps, teacher_logps, beta)
    entropy = -(student_logps.exp() * student_logps).sum(-1).detach()
    if mask is not None:
        divergence, entropy = divergence * mask, entropy * mask
    return DivergenceOutput(divergence, entropy)
