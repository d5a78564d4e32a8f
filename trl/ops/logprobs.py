"""Per-token log-probs, entropy and accuracy computed from last hidden states, chunk by chunk.

A causal LM's head turns `N` hidden states `(N, H)` into `(N, V)` logits. With `V` in the hundreds of thousands these
logits (and their float32 copy, their softmax and their gradient) dominate the memory of a training step. The
functions here apply the LM head to `chunk_size` rows at a time, keep only `(N,)` results, and never hold more than one
`(chunk_size, V)` block:

- [`chunked_token_stats`] returns differentiable log-probs for any downstream loss (DPO, GRPO, ...); its backward
  recomputes each chunk's logits (4 matmuls instead of 3).
- [`fused_token_loss`] is the fast path for a loss that is a weighted sum of an elementwise function of the log-probs
  (SFT's NLL, DFT, ...): the full gradient is computed during the forward pass, chunk by chunk, so it costs the same 3
  matmuls as the naive path.
- [`naive_token_stats`] materialises the full logits; it is the reference the other two are tested against.

The logits follow the model's own transform, in this order: `logits = hidden @ weight.T + bias`, then
`logits * scale` (Cohere's `logit_scale`, Granite's `1 / logits_scaling`), then soft-capping
`softcap * tanh(logits / softcap)` (Gemma 2's `final_logit_softcapping`), then `logits / temperature`.
[`logit_transform_from_config`] reads `scale` and `softcap` from a transformers config.

Besides the label log-probs, every function returns detached per-token statistics of the whole next-token
distribution (entropy, accuracy, the mean logit and, with `with_sum_sq=True`, `log sum_v p_v^2`), each one more
reduction over a chunk that is already in memory.

The matmuls run in the inputs' dtype (bf16 / fp16 on GPU); the softmax runs in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

# Default chunk (see `default_chunk_size`): `max(_MIN_ROWS, budget // (4 * V))` rows.
#
# CPU, measured with `benchmarks/bench_ops.py` (fp32 forward + backward of a summed NLL, ms, medians of interleaved
# calls on a shared 2-core AMD EPYC, +-15% from run to run; naive = `F.linear` + `F.cross_entropy`):
#
#   threads  N     H    V        naive   fused @ rows: 6-32*   128    256    512   1024    peak MB naive / fused
#   1        2048  256  32000     1749                 2124   1876   1442   1481   1540       750 / 100 (256 rows)
#   2        2048  256  32000      975                    -      -    845    843   1056
#   1        2048  64   151936    8948                 7460   2755   2869   3374   4298      3561 / 334 (256 rows)
#   1        8192  256  448         95                  137      -  86 (2340 rows)   87        64 / 25
#   2        8192  256  448         67                    -      -  62 (2340 rows)   59
#   (* 32 rows, a 4 MB logits block at V = 32000; 6 rows, 4 MB at V = 151936; 32 rows at V = 448)
#
# A block of a few MB is too small for a large vocabulary: every chunk reads the whole (V, H) weight twice and reads
# and writes the (V, H) float32 weight-gradient accumulator, which at 6-32 rows costs as much as the logits themselves.
# Past ~512 rows the block falls out of the caches and the first touch of its pages shows. 256 rows is in the flat
# optimum for both large vocabularies (1.2x faster than naive at V = 32000, 3x at V = 151936, where naive also
# faults in 1.2 GB of fresh logits every step) with an 8-10x smaller peak; for small vocabularies the 4 MB budget
# gives larger chunks (V = 448: 2340 rows), as fast as or faster than naive.
_CPU_LOGITS_BUDGET = 4 * 2**20
# CUDA, measured on an H100 (bf16, forward + backward, ms; benchmarks/results/2026-11-26-h100.md):
#
#   N      H    V        naive   fused @ rows: 110    220    883 (512 MB)  1766 (1 GB)  3533 (2 GB)
#   16384  896  151936    60.3                216.4  143.6   93.8          87.3         83.2
#   peak MB              28488                 1226   1386   2346          3626         6186
#
# Small blocks starve the GEMMs; past 512 MB each doubling saves ~5% of the head's time for ~1.5-1.7x its memory.
# 512 MB of float32 logits is 883 rows at V = 151936 (Qwen2.5); the naive head on a packed 8 x 2048 batch holds
# ~28 GB.
_CUDA_LOGITS_BUDGET = 512 * 2**20
_MIN_ROWS = 256


@dataclass
class TokenStats:
    """Per-token results of the LM head, for tokens that were selected as targets.

    Args:
        logps (`torch.Tensor`):
            `(N,)` log-probability of each label, float32 (float64 for float64 inputs). Differentiable when returned by
            [`chunked_token_stats`] or [`naive_token_stats`]; detached when returned by [`fused_token_loss`].
        entropy (`torch.Tensor`):
            `(N,)` entropy of the full next-token distribution (differentiable from `chunked_token_stats` and
            `naive_token_stats`, detached from `fused_token_loss`).
        correct (`torch.Tensor`):
            `(N,)` bool, whether the label is the argmax of the logits (token accuracy), detached.
        mean_logits (`torch.Tensor`):
            `(N,)` mean over the vocabulary of the logits after `scale`, `softcap` and `temperature`, in the dtype of
            `logps`, detached.
        log_sum_sq_probs (`torch.Tensor` or `None`):
            `(N,)` `log sum_v p_v^2` of the next-token distribution `p` (the log-probability that two independent
            samples agree, used by WPO's weight alignment), in the dtype of `logps`, detached. Only computed with
            `with_sum_sq=True`; `None` otherwise.

    Example:
        ```python
        >>> import torch
        >>> from trl.ops import chunked_token_stats
        >>> stats = chunked_token_stats(torch.zeros(2, 4), torch.zeros(8, 4), torch.tensor([1, 5]))
        >>> stats.logps  # uniform over 8 tokens: log(1/8)
        tensor([-2.0794, -2.0794])
        ```
    """

    logps: torch.Tensor
    entropy: torch.Tensor
    correct: torch.Tensor
    mean_logits: torch.Tensor
    log_sum_sq_probs: torch.Tensor | None = None


def default_chunk_size(vocab_size: int, device: torch.device | str | None = None) -> int:
    """Rows per chunk used when `chunk_size=None`: as many as fit a per-device float32 logits budget, at least 256.

    Args:
        vocab_size (`int`): number of rows of the LM head weight, `V`.
        device (`torch.device` or `str`, *optional*): device the logits are computed on; CPU when omitted.

    Returns:
        `int`: `max(256, budget // (4 * vocab_size))`, with a 4 MB budget on CPU and 512 MB on other devices (see the
        measurements next to the constants in `trl/ops/logprobs.py`).

    Example:
        ```python
        >>> from trl.ops import default_chunk_size
        >>> default_chunk_size(32000, "cpu"), default_chunk_size(151936, "cpu"), default_chunk_size(151936, "cuda")
        (256, 256, 883)
        ```
    """
    device_type = torch.device(device).type if device is not None else "cpu"
    budget = _CPU_LOGITS_BUDGET if device_type == "cpu" else _CUDA_LOGITS_BUDGET
    return max(_MIN_ROWS, budget // (4 * max(1, vocab_size)))


def logit_transform_from_config(config) -> dict[str, float | None]:
    """Read the final-logit transform of an architecture from its transformers config.

    Handles `final_logit_softcapping` (Gemma 2/3: `softcap`), `logit_scale` (Cohere: multiply), `logits_scaling`
    (Granite: divide) and `output_multiplier_scale` / `lm_head_multiplier` (multiply). Missing or `None` fields mean no
    transform; multimodal configs are searched in their `text_config` when the field is not on the top level.

    Args:
        config (`transformers.PretrainedConfig` or any object with these attributes): the model's config.

    Returns:
        `dict`: `{"scale": float, "softcap": float | None}`, to pass as keyword arguments to the functions of
        `trl.ops`.

    Example:
        ```python
        >>> from types import SimpleNamespace
        >>> from trl.ops import logit_transform_from_config
        >>> logit_transform_from_config(SimpleNamespace(final_logit_softcapping=30.0, logits_scaling=4.0))
        {'scale': 0.25, 'softcap': 30.0}
        ```
    """

    def read(name):
        value = getattr(config, name, None)
        if value is None:
            text_config = getattr(config, "text_config", None)
            value = getattr(text_config, name, None) if text_config is not None else None
        return value

    scale = 1.0
    for name in ("logit_scale", "output_multiplier_scale", "lm_head_multiplier"):
        if read(name) is not None:
            scale *= float(read(name))
    if read("logits_scaling") is not None:
        scale /= float(read("logits_scaling"))
    softcap = read("final_logit_softcapping")
    return {"scale": scale, "softcap": float(softcap) if softcap is not None else None}


@dataclass(frozen=True)
class _Transform:
    """`logits -> softcap * tanh(logits * scale / softcap) / temperature`, or `logits * scale / temperature`."""

    scale: float
    softcap: float | None
    temperature: float

    def apply_(self, logits: torch.Tensor) -> torch.Tensor:
        if self.softcap is not None:
            return logits.mul_(self.scale / self.softcap).tanh_().mul_(self.softcap / self.temperature)
        if self.scale != self.temperature:
            logits.mul_(self.scale / self.temperature)
        return logits

    def chain_(self, grad: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Turn `grad` w.r.t. the transformed logits into `grad` w.r.t. the raw logits, except the constant factor
        `scale / temperature` that callers fold into their per-row coefficient. Overwrites `logits`."""
        if self.softcap is not None:
            # l = (c / T) tanh(s z / c)  =>  dl/dz = (s / T) (1 - tanh^2),  with tanh = l T / c.
            logits.square_().mul_(-((self.temperature / self.softcap) ** 2)).add_(1.0)
            grad.mul_(logits)
        return grad


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _no_autocast(device: torch.device):
    """The Functions below pick every dtype themselves (`_prepare` already applied an active autocast's dtype)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _chunks(n: int, chunk_size: int):
    for start in range(0, n, chunk_size):
        yield start, min(start + chunk_size, n)


class _Workspace:
    """`(chunk_size, V)` buffers reused by every chunk of one call.

    On CPU a fresh block per chunk is a fresh `mmap` (glibc maps anything above 32 MB directly), and touching its
    pages costs about as much as the softmax itself; reusing the buffers pays that once per call. Every elementwise
    step therefore writes into one of these buffers through `out=` or an in-place op.
    """

    def __init__(self, hidden, weight, chunk_size: int, num_buffers: int):
        rows = max(1, min(chunk_size, hidden.shape[0]))
        shape, device = (rows, weight.shape[0]), weight.device
        self.compute_dtype = _compute_dtype(weight.dtype)
        self.buffers = [torch.empty(shape, dtype=self.compute_dtype, device=device) for _ in range(num_buffers)]
        # matmul in the input dtype (bf16 / fp16): its result and the gradient fed back into the matmuls live here
        self.raw = (
            torch.empty(shape, dtype=weight.dtype, device=device) if weight.dtype != self.compute_dtype else None
        )

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.buffers[index]

    def logits(self, h, weight, bias, transform: _Transform) -> torch.Tensor:
        """Transformed `(n, V)` logits of one chunk, in buffer 0."""
        n = h.shape[0]
        raw = self.raw[:n] if self.raw is not None else self.buffers[0][:n]
        if bias is None:
            torch.mm(h, weight.T, out=raw)
        else:
            torch.addmm(bias, h, weight.T, out=raw)
        logits = raw if self.raw is None else self.buffers[0][:n].copy_(raw)
        return transform.apply_(logits)

    def as_input_dtype(self, grad: torch.Tensor) -> torch.Tensor:
        return grad if self.raw is None else self.raw[: grad.shape[0]].copy_(grad)


def _forward_stats(logits, labels, logps_out, probs_out, with_sum_sq):
    """Label log-probs, correctness, entropy, mean logit, `log sum p^2` (or `None`) and softmax of one chunk. Writes
    the log-softmax to `logps_out` (then overwrites it) and the softmax to `probs_out`, which may alias `logits`."""
    correct = logits.argmax(dim=-1) == labels  # first maximal index, as torch.argmax on the full logits
    mean_logits = logits.mean(dim=-1)  # before `probs_out`, which may alias the logits, is written
    all_logps = torch.log_softmax(logits, dim=-1, out=logps_out)
    logps = all_logps.gather(1, labels.unsqueeze(1)).squeeze(1)
    probs = torch.exp(all_logps, out=probs_out)
    entropy = all_logps.mul_(probs).sum(dim=-1).neg_()
    log_sum_sq = None
    if with_sum_sq:
        # `logps_out` is free again. sum_v p_v^2 >= 1 / V (Cauchy-Schwarz), so the sum never underflows and its log is
        # as precise as the softmax (squares that underflow are < 1e-38, nothing next to 1 / V); one multiply and one
        # sum, where `torch.logsumexp(2 * all_logps)` would take a fresh block and several passes.
        log_sum_sq = torch.mul(probs, probs, out=logps_out).sum(dim=-1).log_()
    return logps, correct, entropy, mean_logits, log_sum_sq, probs


def _logits_grad_(probs, logits, labels, coef, transform: _Transform) -> torch.Tensor:
    """`coef * (onehot(labels) - probs)` chained through the transform, in place of `probs`."""
    grad = probs.mul_(-coef.unsqueeze(1))
    grad.scatter_add_(1, labels.unsqueeze(1), coef.unsqueeze(1))
    return transform.chain_(grad, logits)


class _GradAccumulator:
    """Holds `grad_hidden`, `grad_weight` (float32 accumulator) and `grad_bias` while chunks are added."""

    def __init__(self, hidden, weight, bias, needs: tuple[bool, bool, bool]):
        acc_dtype = _compute_dtype(weight.dtype)
        self.weight = weight
        self.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        self.hidden = torch.empty_like(hidden) if needs[0] else None
        self.weight_acc = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if needs[1] else None
        # bf16 / fp16: each chunk's product is rounded once, then summed across chunks in float32
        self.weight_tmp = torch.empty_like(weight) if needs[1] and weight.dtype != acc_dtype else None
        self.bias_acc = torch.zeros(weight.shape[0], dtype=acc_dtype, device=weight.device) if needs[2] else None

    def add(self, start: int, h: torch.Tensor, grad_logits: torch.Tensor, workspace: _Workspace) -> None:
        if self.bias_acc is not None:
            self.bias_acc.add_(grad_logits.sum(dim=0))
        grad_raw = workspace.as_input_dtype(grad_logits)
        if self.hidden is not None:
            torch.mm(grad_raw, self.weight, out=self.hidden[start : start + h.shape[0]])
        if self.weight_tmp is not None:
            self.weight_acc.add_(torch.mm(grad_raw.T, h, out=self.weight_tmp))
        elif self.weight_acc is not None:
            self.weight_acc.addmm_(grad_raw.T, h)

    def result(self):
        weight = self.weight_acc.to(self.dtypes[1]) if self.weight_acc is not None else None
        bias = self.bias_acc.to(self.dtypes[2]) if self.bias_acc is not None else None
        return self.hidden, weight, bias


def _stats_outputs(n: int, workspace: _Workspace, device, with_sum_sq: bool):
    """Empty `(N,)` logps, entropy, correct, mean_logits and log_sum_sq (`None` without `with_sum_sq`)."""
    logps = torch.empty(n, dtype=workspace.compute_dtype, device=device)
    correct = torch.empty(n, dtype=torch.bool, device=device)
    log_sum_sq = torch.empty_like(logps) if with_sum_sq else None
    return logps, torch.empty_like(logps), correct, torch.empty_like(logps), log_sum_sq


def _store_stats(outputs, start: int, end: int, stats) -> None:
    """Copy one chunk's `_forward_stats` results into the `_stats_outputs` tensors."""
    logps, entropy, correct, mean_logits, log_sum_sq = outputs
    logps[start:end], correct[start:end], entropy[start:end], mean_logits[start:end] = stats[:4]
    if log_sum_sq is not None:
        log_sum_sq[start:end] = stats[4]


def _stats_pass(hidden, weight, bias, labels, transform, chunk_size, with_sum_sq):
    """Forward of [`chunked_token_stats`]: `(N,)` log-probs, entropy, correctness, mean logit and `log sum p^2` (or
    `None`), chunk by chunk."""
    n = hidden.shape[0]
    workspace = _Workspace(hidden, weight, chunk_size, num_buffers=2)
    outputs = _stats_outputs(n, workspace, hidden.device, with_sum_sq)
    for start, end in _chunks(n, chunk_size):
        logits = workspace.logits(hidden[start:end], weight, bias, transform)
        stats = _forward_stats(logits, labels[start:end], workspace[1][: end - start], logits, with_sum_sq)
        _store_stats(outputs, start, end, stats)
    return outputs


def _recompute_grad_pass(hidden, weight, bias, labels, transform, chunk_size, grad_logps, needs, grad_entropy=None):
    """Backward of [`chunked_token_stats`]: recomputes each chunk's softmax and accumulates the input gradients (of
    the log-probs and, when `grad_entropy` is given, of the entropies too)."""
    grads = _GradAccumulator(hidden, weight, bias, needs)
    workspace = _Workspace(hidden, weight, chunk_size, num_buffers=2 if grad_entropy is None else 3)
    factor = transform.scale / transform.temperature
    coefs = grad_logps.to(workspace.compute_dtype) * factor
    entropy_coefs = grad_entropy.to(workspace.compute_dtype) * factor if grad_entropy is not None else None
    for start, end in _chunks(hidden.shape[0], chunk_size):
        h, y = hidden[start:end], labels[start:end]
        logits = workspace.logits(h, weight, bias, transform)
        if entropy_coefs is None:
            probs = torch.softmax(logits, dim=-1, out=workspace[1][: end - start])
            grads.add(start, h, _logits_grad_(probs, logits, y, coefs[start:end], transform), workspace)
            continue
        # dH/dz = -p (log p + H): with the log-prob term, grad = p * (-c_logp - c_H (log p + H)) + c_logp onehot
        all_logps = torch.log_softmax(logits, dim=-1, out=workspace[1][: end - start])
        probs = torch.exp(all_logps, out=workspace[2][: end - start])
        entropy = (probs * all_logps).sum(dim=-1).neg_()
        grad = all_logps.add_(entropy.unsqueeze(1)).mul_(-entropy_coefs[start:end].unsqueeze(1))
        grad.sub_(coefs[start:end].unsqueeze(1)).mul_(probs)
        grad.scatter_add_(1, y.unsqueeze(1), coefs[start:end].unsqueeze(1))
        grads.add(start, h, transform.chain_(grad, logits), workspace)
    return grads.result()


def _fused_pass(hidden, weight, bias, labels, token_scale, loss_fn, transform, chunk_size, needs, with_sum_sq):
    """Forward of [`fused_token_loss`]: loss, the five stats of `_stats_outputs` and, where `needs` says so, the input
    gradients."""
    n = hidden.shape[0]
    grads = _GradAccumulator(hidden, weight, bias, needs) if any(needs) else None
    # the softcap chain rule needs the logits after the softmax: then the softmax gets a buffer of its own
    keep_logits = grads is not None and transform.softcap is not None
    workspace = _Workspace(hidden, weight, chunk_size, num_buffers=3 if keep_logits else 2)
    outputs = _stats_outputs(n, workspace, hidden.device, with_sum_sq)
    loss = torch.zeros((), dtype=workspace.compute_dtype, device=hidden.device)
    for start, end in _chunks(n, chunk_size):
        h, y = hidden[start:end], labels[start:end]
        scale = token_scale[start:end] if isinstance(token_scale, torch.Tensor) else token_scale
        logits = workspace.logits(h, weight, bias, transform)
        probs_out = workspace[2][: end - start] if keep_logits else logits
        stats = _forward_stats(logits, y, workspace[1][: end - start], probs_out, with_sum_sq)
        _store_stats(outputs, start, end, stats)
        chunk_logps, probs = stats[0], stats[-1]
        if grads is None:
            loss += (_call_loss_fn(loss_fn, chunk_logps) * scale).sum()
            continue
        chunk_loss, dloss_dlogps = _loss_and_grad(loss_fn, chunk_logps, scale)
        loss += chunk_loss
        coef = dloss_dlogps * (transform.scale / transform.temperature)
        grads.add(start, h, _logits_grad_(probs, logits, y, coef, transform), workspace)
    return loss, *outputs, grads.result() if grads is not None else (None, None, None)


class _ChunkedTokenStats(torch.autograd.Function):
    """Forward saves only its inputs; backward recomputes each chunk's logits and softmax."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, transform, chunk_size, with_sum_sq):
        with _no_autocast(hidden.device):
            logps, *stats = _stats_pass(hidden, weight, bias, labels, transform, chunk_size, with_sum_sq)
        ctx.save_for_backward(hidden, weight, bias, labels)
        ctx.transform, ctx.chunk_size = transform, chunk_size
        ctx.set_materialize_grads(False)  # an unused entropy gets no gradient pass (None, not a tensor of zeros)
        ctx.mark_non_differentiable(*(t for t in stats[1:] if t is not None))  # the entropy stays differentiable
        return logps, *stats

    @staticmethod
    def backward(ctx, grad_logps, grad_entropy, grad_correct, grad_mean_logits, grad_log_sum_sq):
        hidden, weight, bias, labels = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        if grad_logps is None and grad_entropy is None:
            return None, None, None, None, None, None, None
        if grad_logps is None:
            grad_logps = torch.zeros(labels.shape[0], dtype=hidden.dtype, device=hidden.device)
        with _no_autocast(hidden.device):
            grad_hidden, grad_weight, grad_bias = _recompute_grad_pass(
                hidden, weight, bias, labels, ctx.transform, ctx.chunk_size, grad_logps, needs, grad_entropy
            )
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


class _FusedTokenLoss(torch.autograd.Function):
    """Forward computes the loss and, when `needs` says so, its full gradient; backward only rescales it."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, token_scale, loss_fn, transform, chunk_size, needs, with_sum_sq):
        with _no_autocast(hidden.device):
            loss, *stats, grads = _fused_pass(
                hidden, weight, bias, labels, token_scale, loss_fn, transform, chunk_size, needs, with_sum_sq
            )
        ctx.save_for_backward(*grads)
        ctx.mark_non_differentiable(*(t for t in stats if t is not None))
        return loss, *stats

    @staticmethod
    def backward(ctx, grad_loss, grad_logps, grad_entropy, grad_correct, grad_mean_logits, grad_log_sum_sq):
        scaled = [g * grad_loss.to(g.dtype) if g is not None else None for g in ctx.saved_tensors]
        return *scaled, None, None, None, None, None, None, None


def _call_loss_fn(loss_fn, logps: torch.Tensor) -> torch.Tensor:
    losses = loss_fn(logps)
    if not isinstance(losses, torch.Tensor) or losses.shape != logps.shape:
        got = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ValueError(
            f"`loss_fn` must map a ({len(logps)},) tensor of log-probs to a ({len(logps)},) tensor of per-token "
            f"losses (elementwise), got {got}."
        )
    return losses


def _loss_and_grad(loss_fn, logps: torch.Tensor, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """`sum(scale * loss_fn(logps))` and its gradient w.r.t. `logps`, through autograd on a `(n,)` leaf."""
    with torch.enable_grad():
        leaf = logps.detach().requires_grad_(True)
        total = (_call_loss_fn(loss_fn, leaf) * scale).sum()
        if not total.requires_grad:  # a loss that does not depend on the log-probs
            return total.detach(), torch.zeros_like(leaf)
        (grad,) = torch.autograd.grad(total, leaf)
    return total.detach(), grad


def _prepare(hidden, weight, labels, bias, scale, softcap, temperature, chunk_size, name):
    if hidden.shape[-1] != weight.shape[-1] or weight.dim() != 2:
        raise ValueError(
            f"{name}: `hidden` (..., H) and `weight` (V, H) must share H; got {tuple(hidden.shape)} and "
            f"{tuple(weight.shape)}."
        )
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(
            f"{name}: `labels` must have the leading shape of `hidden`; got {tuple(labels.shape)} for hidden "
            f"{tuple(hidden.shape)}."
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"{name}: `labels` must be an integer tensor, got {labels.dtype}.")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"{name}: `bias` must have shape ({weight.shape[0]},), got {tuple(bias.shape)}.")
    if temperature <= 0 or scale == 0 or (softcap is not None and softcap <= 0):
        raise ValueError(
            f"{name}: expected temperature > 0, scale != 0 and softcap > 0 or None; got temperature={temperature}, "
            f"scale={scale}, softcap={softcap}."
        )
    vocab_size = weight.shape[0]
    labels = labels.reshape(-1).to(device=hidden.device, dtype=torch.long)
    if labels.numel() > 0 and labels.device.type != "cpu":  # checked on the device: no host sync per call
        low, high = torch.aminmax(labels)
        torch._assert_async((low >= 0) & (high < vocab_size), f"{name}: labels must lie in [0, {vocab_size})")
    elif labels.numel() > 0:
        low, high = torch.aminmax(labels)
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"{name}: labels must lie in [0, {vocab_size}) (every label is a target: select the loss positions, "
                f"e.g. drop -100, before calling); got labels in [{int(low)}, {int(high)}]."
            )
    if chunk_size is None:
        chunk_size = default_chunk_size(vocab_size, hidden.device)
    elif chunk_size < 1:
        raise ValueError(f"{name}: `chunk_size` must be a positive integer or None, got {chunk_size}.")
    dtype = torch.promote_types(hidden.dtype, weight.dtype)
    device_type = hidden.device.type
    autocast = torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
    if autocast and dtype != torch.float64:  # run the head's matmul in the autocast dtype, as `F.linear` would
        dtype = torch.get_autocast_dtype(device_type)
    hidden = hidden.reshape(-1, hidden.shape[-1]).to(dtype).contiguous()
    weight = weight.to(dtype)
    bias = bias.to(dtype) if bias is not None else None
    transform = _Transform(float(scale), float(softcap) if softcap is not None else None, float(temperature))
    return hidden, weight, labels, bias, transform, int(chunk_size)


def naive_token_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    scale: float = 1.0,
    softcap: float | None = None,
    temperature: float = 1.0,
    with_sum_sq: bool = False,
) -> TokenStats:
    """Reference implementation: materialises the full `(N, V)` logits. Use [`chunked_token_stats`] in training.

    Args:
        hidden (`torch.Tensor`): `(N, H)` (or `(..., H)`) last hidden states at the positions that predict `labels`.
        weight (`torch.Tensor`): `(V, H)` LM head weight (possibly tied to the input embeddings).
        labels (`torch.Tensor`): `(N,)` (or `(...)`) target token ids, all in `[0, V)`.
        bias (`torch.Tensor`, *optional*): `(V,)` LM head bias.
        scale (`float`, *optional*, defaults to `1.0`): multiplies the logits (see [`logit_transform_from_config`]).
        softcap (`float`, *optional*): when set, logits become `softcap * tanh(logits / softcap)` after `scale`.
        temperature (`float`, *optional*, defaults to `1.0`): divides the logits last.
        with_sum_sq (`bool`, *optional*, defaults to `False`): also compute `log_sum_sq_probs`.

    Returns:
        [`TokenStats`]: differentiable `logps` and `entropy`, detached `correct`, `mean_logits` and
        `log_sum_sq_probs` (`None` unless `with_sum_sq`), shaped like `labels`.

    Example:
        ```python
        >>> import torch
        >>> from trl.ops import naive_token_stats
        >>> weight = torch.tensor([[1.0], [0.0]])
        >>> naive_token_stats(torch.tensor([[2.0]]), weight, torch.tensor([0])).logps  # log(e^2 / (e^2 + 1))
        tensor([-0.1269])
        ```
    """
    hidden, weight, labels, bias, transform, _ = _prepare(
        hidden, weight, labels, bias, scale, softcap, temperature, 1, "naive_token_stats"
    )
    out_shape = labels.shape
    logits = torch.nn.functional.linear(hidden, weight, bias).to(_compute_dtype(weight.dtype)) * transform.scale
    if transform.softcap is not None:
        logits = transform.softcap * torch.tanh(logits / transform.softcap)
    logits = logits / transform.temperature
    all_logps = torch.log_softmax(logits, dim=-1)
    logps = all_logps.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    entropy = -(all_logps.exp() * all_logps).sum(-1)
    correct = logits.argmax(-1) == labels
    mean_logits = logits.detach().mean(-1)
    log_sum_sq = torch.logsumexp(2 * all_logps.detach(), dim=-1) if with_sum_sq else None
    return _reshape_stats(TokenStats(logps, entropy, correct, mean_logits, log_sum_sq), out_shape)


def chunked_token_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    scale: float = 1.0,
    softcap: float | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    with_sum_sq: bool = False,
) -> TokenStats:
    """Label log-probs, entropy and accuracy from hidden states, `chunk_size` rows of logits at a time.

    Gives the values of [`naive_token_stats`] without ever holding `(N, V)` logits: the forward pass saves only its
    inputs, and the backward pass recomputes each chunk's logits to accumulate the gradients
    of `hidden`, `weight` and `bias`. Use it when the loss is an arbitrary function of the log-probs (sequence sums
    for DPO, ratios for GRPO); for an elementwise per-token loss, [`fused_token_loss`] is faster.

    Args:
        hidden (`torch.Tensor`): `(N, H)` (or `(..., H)`) last hidden states at the positions that predict `labels`.
        weight (`torch.Tensor`): `(V, H)` LM head weight (possibly tied to the input embeddings).
        labels (`torch.Tensor`): `(N,)` (or `(...)`) target token ids. Every label is a target and must be in
            `[0, V)`: select the loss positions (drop `-100`) before calling.
        bias (`torch.Tensor`, *optional*): `(V,)` LM head bias.
        scale (`float`, *optional*, defaults to `1.0`): multiplies the logits (see [`logit_transform_from_config`]).
        softcap (`float`, *optional*): when set, logits become `softcap * tanh(logits / softcap)` after `scale`.
        temperature (`float`, *optional*, defaults to `1.0`): divides the logits last.
        chunk_size (`int`, *optional*): rows of logits computed at once; defaults to [`default_chunk_size`].
        with_sum_sq (`bool`, *optional*, defaults to `False`): also compute `log_sum_sq_probs` (one more multiply and
            sum per chunk, in a buffer that is already allocated).

    Returns:
        [`TokenStats`]: `logps` and `entropy` (differentiable w.r.t. `hidden`, `weight` and `bias`; the entropy's
        gradient costs nothing unless a loss uses it), detached `correct`,
        `mean_logits` and `log_sum_sq_probs` (`None` unless `with_sum_sq`), shaped like `labels`.

    Raises:
        `ValueError`: if the shapes disagree, a label is outside `[0, V)` or a transform parameter is invalid.

    Example:
        ```python
        >>> import torch
        >>> from trl.ops import chunked_token_stats
        >>> hidden = torch.randn(6, 16, requires_grad=True)
        >>> weight = torch.randn(100, 16, requires_grad=True)
        >>> stats = chunked_token_stats(hidden, weight, torch.randint(0, 100, (6,)), chunk_size=4)
        >>> stats.logps.sum().backward()
        >>> hidden.grad.shape, weight.grad.shape
        (torch.Size([6, 16]), torch.Size([100, 16]))
        ```
    """
    out_shape = labels.shape
    hidden, weight, labels, bias, transform, chunk_size = _prepare(
        hidden, weight, labels, bias, scale, softcap, temperature, chunk_size, "chunked_token_stats"
    )
    stats = _ChunkedTokenStats.apply(hidden, weight, bias, labels, transform, chunk_size, with_sum_sq)
    return _reshape_stats(TokenStats(*stats), out_shape)


def _reshape_stats(stats: TokenStats, shape: torch.Size) -> TokenStats:
    log_sum_sq = stats.log_sum_sq_probs.reshape(shape) if stats.log_sum_sq_probs is not None else None
    return TokenStats(
        stats.logps.reshape(shape),
        stats.entropy.reshape(shape),
        stats.correct.reshape(shape),
        stats.mean_logits.reshape(shape),
        log_sum_sq,
    )


def fused_token_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    token_scale: float | torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    scale: float = 1.0,
    softcap: float | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    with_sum_sq: bool = False,
) -> tuple[torch.Tensor, TokenStats]:
    """`sum_i token_scale_i * loss_fn(logp_i)` with its gradient computed chunk by chunk during the forward pass.

    For each chunk of `chunk_size` rows: logits, log-probs, `dloss/dlogp` (autograd on the `(n,)` log-probs only),
    then `grad_logits = dloss/dlogp * (onehot - softmax)` chained through temperature, softcap and scale, and the
    gradients of `hidden`, `weight` and `bias` follow from two matmuls. The backward pass only multiplies the stored
    gradients by the incoming gradient. This is the same 3 matmuls as the naive LM head with `O(chunk_size * V)`
    memory. Without grad mode, or when no input requires grad, the gradient work is skipped.

    Args:
        hidden (`torch.Tensor`): `(N, H)` (or `(..., H)`) last hidden states at the positions that predict `labels`.
        weight (`torch.Tensor`): `(V, H)` LM head weight (possibly tied to the input embeddings).
        labels (`torch.Tensor`): `(N,)` (or `(...)`) target token ids, all in `[0, V)`.
        loss_fn (`Callable[[torch.Tensor], torch.Tensor]`): elementwise per-token loss: maps `(n,)` float32
            log-probs to `(n,)` losses, token `i`'s loss depending only on `logp_i`, e.g. `lambda logps: -logps`
            (NLL) or `lambda logps: -logps.exp().detach() * logps` (DFT). It must not close over tensors that
            require grad: only the gradient through the log-probs is computed.
        token_scale (`float` or `torch.Tensor`): weight of each token's loss, a scalar or shaped like `labels` (e.g.
            `1 / num_items_in_batch`); not differentiated.
        bias (`torch.Tensor`, *optional*): `(V,)` LM head bias.
        scale (`float`, *optional*, defaults to `1.0`): multiplies the logits (see [`logit_transform_from_config`]).
        softcap (`float`, *optional*): when set, logits become `softcap * tanh(logits / softcap)` after `scale`.
        temperature (`float`, *optional*, defaults to `1.0`): divides the logits last.
        chunk_size (`int`, *optional*): rows of logits computed at once; defaults to [`default_chunk_size`].
        with_sum_sq (`bool`, *optional*, defaults to `False`): also compute `log_sum_sq_probs`.

    Returns:
        `tuple[torch.Tensor, TokenStats]`: the scalar loss (differentiable w.r.t. `hidden`, `weight` and `bias`) and
        detached [`TokenStats`] shaped like `labels` (`log_sum_sq_probs` is `None` unless `with_sum_sq`).

    Raises:
        `ValueError`: if the shapes disagree, a label is outside `[0, V)`, `loss_fn` is not elementwise-shaped or a
        transform parameter is invalid.

    Example:
        ```python
        >>> import torch
        >>> from trl.ops import fused_token_loss
        >>> hidden = torch.randn(6, 16, requires_grad=True)
        >>> weight = torch.randn(100, 16, requires_grad=True)
        >>> labels = torch.randint(0, 100, (6,))
        >>> loss, stats = fused_token_loss(hidden, weight, labels, lambda logps: -logps, 1 / 6, chunk_size=4)
        >>> loss.backward()  # mean NLL; gradients were computed during the forward pass
        >>> torch.allclose(loss, -stats.logps.mean())
        True
        ```
    """
    out_shape = labels.shape
    hidden_in, weight_in, bias_in = hidden, weight, bias
    hidden, weight, labels, bias, transform, chunk_size = _prepare(
        hidden, weight, labels, bias, scale, softcap, temperature, chunk_size, "fused_token_loss"
    )
    if isinstance(token_scale, torch.Tensor):
        if token_scale.numel() != 1 and token_scale.shape != out_shape:
            raise ValueError(
                f"fused_token_loss: `token_scale` must be a float, a one-element tensor or shaped like `labels` "
                f"{tuple(out_shape)}; got {tuple(token_scale.shape)}."
            )
        token_scale = token_scale.detach().to(hidden.device, _compute_dtype(weight.dtype))
        token_scale = token_scale.expand(out_shape).reshape(-1)
    grad_enabled = torch.is_grad_enabled()
    needs = tuple(grad_enabled and t is not None and t.requires_grad for t in (hidden_in, weight_in, bias_in))
    loss, *stats = _FusedTokenLoss.apply(
        hidden, weight, bias, labels, token_scale, loss_fn, transform, chunk_size, needs, with_sum_sq
    )
    return loss, _reshape_stats(TokenStats(*stats), out_shape)
