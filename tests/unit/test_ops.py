"""`trl.ops`: chunked and fused LM-head results against the naive full-logits reference."""

from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trl.ops import (
    chunked_token_stats,
    default_chunk_size,
    fused_token_loss,
    logit_transform_from_config,
    naive_token_stats,
)
from trl.ops import logprobs as ops_logprobs


N, H, V = 50, 16, 40
# fp32 results are compared with the naive head run in float64 on the same values, so the tolerance bounds our own
# rounding only; the float64 runs check the formulas to many more digits than the tolerance.
TOL = {"rtol": 1e-5, "atol": 1e-6}
DTYPES = [torch.float32, torch.float64]
TRANSFORMS = {
    "plain": {},
    "scale": {"scale": 0.0625},
    "softcap": {"softcap": 3.0},
    "temperature": {"temperature": 0.7},
    "all": {"scale": 2.0, "softcap": 5.0, "temperature": 1.3},
}


def nll(logps):
    return -logps


def dft(logps):
    return -logps.exp().detach() * logps


def make_inputs(n=N, dtype=torch.float32, seed=0, bias=True):
    # logits of order 1, as a trained LM head gives, so fp32 gradients keep ~6 significant digits
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, H, generator=gen).to(dtype).requires_grad_()
    weight = (torch.randn(V, H, generator=gen) / 4).to(dtype).requires_grad_()
    b = torch.randn(V, generator=gen).to(dtype).requires_grad_() if bias else None
    labels = torch.randint(0, V, (n,), generator=gen)
    return hidden, weight, b, labels


def float64_copies(*tensors):
    return [t.detach().double().requires_grad_(t.requires_grad) if t is not None else None for t in tensors]


def grads(output, inputs):
    return torch.autograd.grad(output, [t for t in inputs if t is not None])


def assert_close_all(actual, expected, **tol):
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e.to(a.dtype), **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("chunk_size", [10, 16, None])  # divides N, does not divide N, default (> N)
def test_chunked_matches_naive(transform, chunk_size, dtype):
    hidden, weight, bias, labels = make_inputs(dtype=dtype)
    ref_inputs = float64_copies(hidden, weight, bias)
    kwargs = TRANSFORMS[transform]
    # a random upstream gradient, so every token's gradient has its own weight
    upstream = torch.rand(N, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    ref = naive_token_stats(ref_inputs[0], ref_inputs[1], labels, bias=ref_inputs[2], **kwargs)
    stats = chunked_token_stats(hidden, weight, labels, bias=bias, chunk_size=chunk_size, **kwargs)

    assert_close_all([stats.logps, stats.entropy], [ref.logps, ref.entropy], **TOL)
    assert torch.equal(stats.correct, ref.correct)
    assert stats.logps.dtype == stats.entropy.dtype == dtype and stats.correct.dtype == torch.bool
    assert stats.entropy.requires_grad and not stats.correct.requires_grad
    actual = grads((stats.logps * upstream.to(dtype)).sum(), (hidden, weight, bias))
    assert_close_all(actual, grads((ref.logps * upstream).sum(), ref_inputs), **TOL)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("chunk_size", [16, None])
@pytest.mark.parametrize("use_logps", [True, False], ids=["logps+entropy", "entropy-only"])
def test_chunked_entropy_gradient_matches_naive(transform, chunk_size, dtype, use_logps):
    """An entropy bonus differentiates the entropy: the recomputed backward gives the naive head's gradient."""
    hidden, weight, bias, labels = make_inputs(dtype=dtype)
    ref_inputs = float64_copies(hidden, weight, bias)
    kwargs = TRANSFORMS[transform]
    gen = torch.Generator().manual_seed(2)
    up_logps = torch.rand(N, generator=gen, dtype=torch.float64) * use_logps
    up_entropy = torch.randn(N, generator=gen, dtype=torch.float64)

    ref = naive_token_stats(ref_inputs[0], ref_inputs[1], labels, bias=ref_inputs[2], **kwargs)
    stats = chunked_token_stats(hidden, weight, labels, bias=bias, chunk_size=chunk_size, **kwargs)
    objective = (stats.entropy * up_entropy.to(dtype)).sum()
    if use_logps:
        objective = objective + (stats.logps * up_logps.to(dtype)).sum()
    actual = grads(objective, (hidden, weight, bias))
    expected = grads((ref.entropy * up_entropy).sum() + (ref.logps * up_logps).sum(), ref_inputs)
    assert_close_all(actual, expected, **TOL)


def test_one_row_chunks():
    hidden, weight, bias, labels = make_inputs()
    ref_inputs = float64_copies(hidden, weight, bias)
    ref = naive_token_stats(ref_inputs[0], ref_inputs[1], labels, bias=ref_inputs[2], softcap=3.0)
    stats = chunked_token_stats(hidden, weight, labels, bias=bias, softcap=3.0, chunk_size=1)
    loss, _ = fused_token_loss(hidden, weight, labels, nll, 1.0, bias=bias, softcap=3.0, chunk_size=1)

    assert_close_all([stats.logps, loss], [ref.logps, -ref.logps.sum()], **TOL)
    inputs = (hidden, weight, bias)
    expected = grads(-ref.logps.sum(), ref_inputs)
    assert_close_all(grads(-stats.logps.sum(), inputs), expected, **TOL)
    assert_close_all(grads(loss, inputs), expected, **TOL)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("loss_fn", [nll, dft])
@pytest.mark.parametrize("chunk_size", [7, 64])
def test_fused_matches_naive(transform, loss_fn, chunk_size, dtype):
    hidden, weight, bias, labels = make_inputs(dtype=dtype)
    ref_inputs = float64_copies(hidden, weight, bias)
    kwargs = TRANSFORMS[transform]
    token_scale = 1 / 37  # e.g. 1 / num_items_in_batch

    ref = naive_token_stats(ref_inputs[0], ref_inputs[1], labels, bias=ref_inputs[2], **kwargs)
    ref_loss = (loss_fn(ref.logps) * token_scale).sum()
    loss, stats = fused_token_loss(
        hidden, weight, labels, loss_fn, token_scale, bias=bias, chunk_size=chunk_size, **kwargs
    )

    assert_close_all([loss, stats.logps, stats.entropy], [ref_loss, ref.logps.detach(), ref.entropy], **TOL)
    assert torch.equal(stats.correct, ref.correct)
    assert not (stats.logps.requires_grad or stats.entropy.requires_grad or stats.correct.requires_grad)
    # a non-unit upstream gradient checks that backward rescales the gradients stored by the forward pass
    actual = grads(3.0 * loss, (hidden, weight, bias))
    assert_close_all(actual, grads(3.0 * ref_loss, ref_inputs), **TOL)


def test_fused_token_scale_tensor():
    hidden, weight, bias, labels = make_inputs()
    ref_inputs = float64_copies(hidden, weight, bias)
    token_scale = torch.rand(N, generator=torch.Generator().manual_seed(2))

    ref = naive_token_stats(ref_inputs[0], ref_inputs[1], labels, bias=ref_inputs[2], softcap=4.0)
    ref_loss = (dft(ref.logps) * token_scale.double()).sum()
    loss, _ = fused_token_loss(hidden, weight, labels, dft, token_scale, bias=bias, softcap=4.0, chunk_size=9)

    assert_close_all([loss], [ref_loss], **TOL)
    assert_close_all(grads(loss, (hidden, weight, bias)), grads(ref_loss, ref_inputs), **TOL)


def test_leading_dimensions_are_kept():
    hidden, weight, bias, labels = make_inputs(dtype=torch.float64)
    hidden3d, labels2d = hidden.reshape(5, 10, H), labels.reshape(5, 10)
    stats = chunked_token_stats(hidden3d, weight, labels2d, bias=bias, chunk_size=8)
    loss, fused_stats = fused_token_loss(hidden3d, weight, labels2d, nll, torch.ones(5, 10), bias=bias)
    ref = naive_token_stats(hidden, weight, labels, bias=bias)

    assert stats.logps.shape == stats.entropy.shape == fused_stats.correct.shape == (5, 10)
    assert_close_all([stats.logps.reshape(-1), loss], [ref.logps, -ref.logps.sum()], **TOL)


@pytest.mark.parametrize("bias", [True, False])
def test_empty_input(bias):
    hidden, weight, b, labels = make_inputs(n=0, bias=bias)

    stats = chunked_token_stats(hidden, weight, labels, bias=b)
    loss, fused_stats = fused_token_loss(hidden, weight, labels, nll, 1.0, bias=b)

    for s in (stats, fused_stats):
        assert s.logps.shape == s.entropy.shape == s.correct.shape == (0,)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    (stats.logps.sum() + loss).backward()
    assert hidden.grad.shape == (0, H)
    assert torch.equal(weight.grad, torch.zeros_like(weight))
    if bias:
        assert torch.equal(b.grad, torch.zeros_like(b))


def test_tied_weight_used_twice():
    # weight is the input embedding and the LM head, as in tied-embedding models: both gradient paths must add up
    gen = torch.Generator().manual_seed(3)
    weight = (torch.randn(V, H, generator=gen) / 2).requires_grad_()
    proj = torch.randn(H, H, generator=gen).requires_grad_()
    input_ids = torch.randint(0, V, (N,), generator=gen)
    labels = torch.randint(0, V, (N,), generator=gen)
    weight64, proj64 = float64_copies(weight, proj)

    def run(head, weight, proj):
        hidden = torch.tanh(torch.nn.functional.embedding(input_ids, weight) @ proj)
        return grads(head(hidden, weight), (weight, proj))

    ref = run(lambda h, w: -naive_token_stats(h, w, labels, softcap=6.0).logps.mean(), weight64, proj64)
    chunked = run(
        lambda h, w: -chunked_token_stats(h, w, labels, softcap=6.0, chunk_size=8).logps.mean(), weight, proj
    )
    fused = run(lambda h, w: fused_token_loss(h, w, labels, nll, 1 / N, softcap=6.0, chunk_size=8)[0], weight, proj)

    assert_close_all(chunked, ref, **TOL)
    assert_close_all(fused, ref, **TOL)


def test_frozen_head_gives_only_hidden_grad():
    hidden, weight, bias, labels = make_inputs(dtype=torch.float64)
    weight.requires_grad_(False)
    bias.requires_grad_(False)
    ref = naive_token_stats(hidden, weight, labels, bias=bias)
    loss, _ = fused_token_loss(hidden, weight, labels, nll, 1.0, bias=bias, chunk_size=8)
    stats = chunked_token_stats(hidden, weight, labels, bias=bias, chunk_size=8)

    expected = grads(-ref.logps.sum(), (hidden,))
    assert_close_all(grads(loss, (hidden,)), expected, **TOL)
    assert_close_all(grads(-stats.logps.sum(), (hidden,)), expected, **TOL)


def test_no_grad_skips_gradient_work(monkeypatch):
    hidden, weight, bias, labels = make_inputs(dtype=torch.float64)
    ref = naive_token_stats(hidden, weight, labels, bias=bias)

    def fail(*args, **kwargs):
        raise AssertionError("gradient work done without grad")

    monkeypatch.setattr(ops_logprobs, "_GradAccumulator", fail)
    with torch.no_grad():
        loss, stats = fused_token_loss(hidden, weight, labels, nll, 0.5, bias=bias, chunk_size=8)
        chunked = chunked_token_stats(hidden, weight, labels, bias=bias, chunk_size=8)
    assert loss.grad_fn is None and chunked.logps.grad_fn is None
    expected = [-0.5 * ref.logps.sum(), ref.logps, ref.logps]
    assert_close_all([loss, stats.logps, chunked.logps], [t.detach() for t in expected], **TOL)
    # grad mode on but nothing requires grad: also no gradient work
    loss, _ = fused_token_loss(hidden.detach(), weight.detach(), labels, nll, 0.5, bias=bias.detach())
    assert loss.grad_fn is None


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op produces."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


def test_never_materialises_full_logits():
    n, v, chunk = 64, 512, 16  # n > H so that the (V, H) weight and its gradient are smaller than (N, V)
    gen = torch.Generator().manual_seed(4)
    hidden = torch.randn(n, H, generator=gen, requires_grad=True)
    weight = torch.randn(v, H, generator=gen, requires_grad=True)
    labels = torch.randint(0, v, (n,), generator=gen)

    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        stats = chunked_token_stats(hidden, weight, labels, chunk_size=chunk)
    assert saved and max(saved) < n * v  # only hidden, weight, labels and the (N,) log-sum-exp are kept

    with _LargestTensor() as mode:
        stats = chunked_token_stats(hidden, weight, labels, chunk_size=chunk)
        stats.logps.sum().backward()
        loss, _ = fused_token_loss(hidden, weight, labels, nll, 1.0, chunk_size=chunk)
        loss.backward()
    assert 0 < mode.max_numel <= max(chunk * v, v * H)

    with _LargestTensor() as mode:  # the reference does materialise them
        naive_token_stats(hidden, weight, labels)
    assert mode.max_numel >= n * v


def test_bf16_inputs():
    # bf16 matmuls carry an 8-bit mantissa: logits (|z| ~ 2-8 here) are off by ~1e-2, so compare to the fp32
    # reference with a loose tolerance; the softmax itself runs in float32.
    hidden, weight, bias, labels = make_inputs(dtype=torch.bfloat16)
    ref_inputs = [t.detach().float().requires_grad_() for t in (hidden, weight, bias)]
    ref = naive_token_stats(*ref_inputs[:2], labels, bias=ref_inputs[2], softcap=10.0)
    ref_grads = grads(-ref.logps.sum(), ref_inputs)
    stats = chunked_token_stats(hidden, weight, labels, bias=bias, softcap=10.0, chunk_size=16)
    loss, fused_stats = fused_token_loss(hidden, weight, labels, nll, 1.0, bias=bias, softcap=10.0, chunk_size=16)

    loose = {"rtol": 5e-2, "atol": 5e-2}
    assert stats.logps.dtype == fused_stats.entropy.dtype == torch.float32
    torch.testing.assert_close(stats.logps, ref.logps, **loose)
    torch.testing.assert_close(fused_stats.entropy, ref.entropy, **loose)
    for output in (-stats.logps.sum(), loss):
        out_grads = grads(output, (hidden, weight, bias))
        assert [g.dtype for g in out_grads] == [torch.bfloat16] * 3
        assert_close_all([g.float() for g in out_grads], ref_grads, **loose)


def test_invalid_inputs():
    hidden, weight, _, labels = make_inputs()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 40\)"):
        chunked_token_stats(hidden, weight, torch.full((N,), -100))
    with pytest.raises(ValueError, match="share H"):
        chunked_token_stats(hidden, weight[:, :8], labels)
    with pytest.raises(ValueError, match="loss_fn"):
        fused_token_loss(hidden, weight, labels, lambda logps: -logps.sum(), 1.0)
    with pytest.raises(ValueError, match="token_scale"):
        fused_token_loss(hidden, weight, labels, nll, torch.ones(3))
    with pytest.raises(ValueError, match="temperature"):
        fused_token_loss(hidden, weight, labels, nll, 1.0, temperature=0.0)


def test_logit_transform_from_config():
    from transformers import CohereConfig, Gemma2Config, GraniteConfig, LlamaConfig

    assert logit_transform_from_config(LlamaConfig()) == {"scale": 1.0, "softcap": None}
    assert logit_transform_from_config(Gemma2Config(final_logit_softcapping=30.0)) == {"scale": 1.0, "softcap": 30.0}
    assert logit_transform_from_config(Gemma2Config(final_logit_softcapping=None))["softcap"] is None
    assert logit_transform_from_config(CohereConfig(logit_scale=0.0625)) == {"scale": 0.0625, "softcap": None}
    assert logit_transform_from_config(GraniteConfig(logits_scaling=8.0)) == {"scale": 0.125, "softcap": None}
    multimodal = SimpleNamespace(text_config=SimpleNamespace(final_logit_softcapping=20.0, lm_head_multiplier=2.0))
    assert logit_transform_from_config(multimodal) == {"scale": 2.0, "softcap": 20.0}


def test_default_chunk_size():
    # at least 256 rows (fewer make every chunk re-read the (V, H) weight for little work), more for small vocabularies
    assert default_chunk_size(448, "cpu") == 4 * 2**20 // (4 * 448)
    assert default_chunk_size(32000, "cpu") == default_chunk_size(10**9, "cpu") == 256
    assert default_chunk_size(151936, "cuda") > default_chunk_size(151936, "cpu")


def test_autocast_runs_the_matmul_in_the_autocast_dtype():
    # fp32 master weights under bf16 autocast (Trainer's `bf16=True`): the head's matmuls run in bf16, as `F.linear`
    # would, the softmax in float32, and the gradients come back in the parameters' fp32
    hidden, weight, bias, labels = make_inputs()
    ref_inputs = float64_copies(hidden, weight, bias)
    ref = naive_token_stats(ref_inputs[0], ref_inputs[1], labels, bias=ref_inputs[2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = fused_token_loss(hidden, weight, labels, nll, 1.0, bias=bias, chunk_size=16)
        chunked = chunked_token_stats(hidden, weight, labels, bias=bias, chunk_size=16)
    out_grads = grads(loss - chunked.logps.sum(), (hidden, weight, bias))

    loose = {"rtol": 5e-2, "atol": 5e-2}
    assert_close_all([stats.logps, chunked.logps], [ref.logps, ref.logps], **loose)
    assert [g.dtype for g in out_grads] == [torch.float32] * 3
    assert_close_all(out_grads, [2 * g for g in grads(-ref.logps.sum(), ref_inputs)], **loose)
    assert not torch.equal(stats.logps, naive_token_stats(hidden, weight, labels, bias=bias).logps)  # bf16 was used


def full_logits_stats(hidden, weight, bias, labels, scale=1.0, softcap=None, temperature=1.0):
    """`mean_logits` and `log_sum_sq_probs` written out from the full logits, independently of `trl.ops`."""
    logits = torch.nn.functional.linear(hidden, weight, bias) * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    logits = (logits / temperature).detach()
    return logits.mean(-1), torch.log(torch.softmax(logits, -1).square().sum(-1))


def run_path(path, hidden, weight, bias, labels, **kwargs):
    if path == "chunked":
        return chunked_token_stats(hidden, weight, labels, bias=bias, **kwargs)
    return fused_token_loss(hidden, weight, labels, nll, 1.0, bias=bias, **kwargs)[1]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_naive_extra_stats_match_full_logits(transform, dtype):
    hidden, weight, bias, labels = make_inputs(dtype=dtype)
    kwargs = TRANSFORMS[transform]
    expected = full_logits_stats(*float64_copies(hidden, weight, bias), labels, **kwargs)

    stats = naive_token_stats(hidden, weight, labels, bias=bias, with_sum_sq=True, **kwargs)

    assert_close_all([stats.mean_logits, stats.log_sum_sq_probs], expected, **TOL)
    assert stats.mean_logits.dtype == stats.log_sum_sq_probs.dtype == dtype
    assert not (stats.mean_logits.requires_grad or stats.log_sum_sq_probs.requires_grad)
    assert naive_token_stats(hidden, weight, labels, bias=bias, **kwargs).log_sum_sq_probs is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("chunk_size", [10, 16, None])  # divides N, does not divide N, default (> N)
@pytest.mark.parametrize("path", ["chunked", "fused"])
def test_extra_stats_match_naive(path, chunk_size, transform, dtype):
    hidden, weight, bias, labels = make_inputs(dtype=dtype)
    ref_inputs = float64_copies(hidden, weight, bias)
    kwargs = TRANSFORMS[transform]
    ref = naive_token_stats(ref_inputs[0], ref_inputs[1], labels, bias=ref_inputs[2], with_sum_sq=True, **kwargs)

    stats = run_path(path, hidden, weight, bias, labels, chunk_size=chunk_size, with_sum_sq=True, **kwargs)

    assert_close_all([stats.mean_logits, stats.log_sum_sq_probs], [ref.mean_logits, ref.log_sum_sq_probs], **TOL)
    assert stats.mean_logits.dtype == stats.log_sum_sq_probs.dtype == dtype
    assert stats.mean_logits.shape == stats.log_sum_sq_probs.shape == (N,)
    assert not (stats.mean_logits.requires_grad or stats.log_sum_sq_probs.requires_grad)
    # log sum p^2 lies in [log(1 / V), 0]
    assert (stats.log_sum_sq_probs <= 1e-6).all() and (
        stats.log_sum_sq_probs >= -torch.log(torch.tensor(V)) - 1e-6
    ).all()


@pytest.mark.parametrize("path", ["chunked", "fused"])
def test_sum_sq_is_off_by_default(path):
    hidden, weight, bias, labels = make_inputs()
    stats = run_path(path, hidden, weight, bias, labels, chunk_size=16)
    explicit = run_path(path, hidden, weight, bias, labels, chunk_size=16, with_sum_sq=False)

    assert stats.log_sum_sq_probs is None and explicit.log_sum_sq_probs is None
    assert stats.mean_logits.shape == (N,)  # always computed
    torch.testing.assert_close(stats.mean_logits, explicit.mean_logits, rtol=0, atol=0)


def test_peaked_distribution_sum_sq():
    # one logit far above the others: p ~ 1 for it, the other squares underflow; log sum p^2 -> 2 log p_max ~ 0
    hidden, weight, bias, labels = make_inputs(dtype=torch.float64)
    bias = torch.zeros(V, dtype=torch.float64)
    bias[3] = 200.0
    ref = naive_token_stats(hidden, weight, labels, bias=bias, with_sum_sq=True)
    for path in ("chunked", "fused"):
        stats = run_path(path, hidden.float(), weight.float(), bias.float(), labels, chunk_size=16, with_sum_sq=True)
        assert torch.isfinite(stats.log_sum_sq_probs).all()
        assert_close_all([stats.log_sum_sq_probs, stats.mean_logits], [ref.log_sum_sq_probs, ref.mean_logits], **TOL)


@pytest.mark.parametrize("path", ["chunked", "fused"])
@pytest.mark.parametrize("transform", ["plain", "all"])
def test_with_sum_sq_leaves_everything_else_unchanged(transform, path):
    # the extra statistics are detached side results: the log-probs, the other stats and the gradients must be the
    # same bits with and without them
    kwargs = TRANSFORMS[transform]
    hidden, weight, bias, labels = make_inputs()
    results = []
    for with_sum_sq in (False, True):
        if path == "chunked":
            stats = chunked_token_stats(
                hidden, weight, labels, bias=bias, chunk_size=16, with_sum_sq=with_sum_sq, **kwargs
            )
            output = -(stats.logps * torch.linspace(0.5, 1.5, N)).sum()
        else:
            output, stats = fused_token_loss(
                hidden, weight, labels, dft, 1 / N, bias=bias, chunk_size=16, with_sum_sq=with_sum_sq, **kwargs
            )
        results.append(
            (
                [output, stats.logps, stats.entropy, stats.correct, stats.mean_logits],
                grads(output, (hidden, weight, bias)),
            )
        )
    (values_off, grads_off), (values_on, grads_on) = results
    for a, b in zip(values_off + list(grads_off), values_on + list(grads_on), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("path", ["chunked", "fused"])
def test_extra_stats_in_a_loss_do_not_change_gradients(path):
    hidden, weight, bias, labels = make_inputs(dtype=torch.float64)
    stats = run_path(path, hidden, weight, bias, labels, chunk_size=16, with_sum_sq=True)
    ref = naive_token_stats(hidden, weight, labels, bias=bias)
    # WPO-style weights built from the detached stats: they scale the loss without being differentiated
    weights = torch.exp(stats.logps.detach() - stats.log_sum_sq_probs) + stats.mean_logits
    if path == "chunked":
        output = -(weights * stats.logps).sum()
        assert_close_all(
            grads(output, (hidden, weight, bias)), grads(-(weights * ref.logps).sum(), (hidden, weight, bias)), **TOL
        )
    else:
        loss, _ = fused_token_loss(hidden, weight, labels, nll, weights, bias=bias, chunk_size=16, with_sum_sq=True)
        assert_close_all(
            grads(loss, (hidden, weight, bias)), grads(-(weights * ref.logps).sum(), (hidden, weight, bias)), **TOL
        )


@pytest.mark.parametrize("bias", [True, False])
def test_extra_stats_empty_input(bias):
    hidden, weight, b, labels = make_inputs(n=0, bias=bias)
    naive = naive_token_stats(hidden, weight, labels, bias=b, with_sum_sq=True)
    stats = chunked_token_stats(hidden, weight, labels, bias=b, with_sum_sq=True)
    loss, fused_stats = fused_token_loss(hidden, weight, labels, nll, 1.0, bias=b, with_sum_sq=True)

    for s in (naive, stats, fused_stats):
        assert s.mean_logits.shape == s.log_sum_sq_probs.shape == (0,)
        assert s.mean_logits.dtype == s.log_sum_sq_probs.dtype == torch.float32
    (stats.logps.sum() + loss).backward()
    assert hidden.grad.shape == (0, H) and torch.equal(weight.grad, torch.zeros_like(weight))


def test_extra_stats_keep_leading_dimensions():
    hidden, weight, bias, labels = make_inputs(dtype=torch.float64)
    hidden3d, labels2d = hidden.reshape(5, 10, H), labels.reshape(5, 10)
    ref = naive_token_stats(hidden, weight, labels, bias=bias, with_sum_sq=True)
    for stats in (
        chunked_token_stats(hidden3d, weight, labels2d, bias=bias, chunk_size=8, with_sum_sq=True),
        fused_token_loss(hidden3d, weight, labels2d, nll, 1.0, bias=bias, chunk_size=8, with_sum_sq=True)[1],
    ):
        assert stats.mean_logits.shape == stats.log_sum_sq_probs.shape == (5, 10)
        assert_close_all(
            [stats.mean_logits.reshape(-1), stats.log_sum_sq_probs.reshape(-1)],
            [ref.mean_logits, ref.log_sum_sq_probs],
            **TOL,
        )


def test_bf16_extra_stats():
    hidden, weight, bias, labels = make_inputs(dtype=torch.bfloat16)
    ref_inputs = [t.detach().float() for t in (hidden, weight, bias)]
    ref = naive_token_stats(*ref_inputs[:2], labels, bias=ref_inputs[2], softcap=10.0, with_sum_sq=True)
    loose = {"rtol": 5e-2, "atol": 5e-2}
    for path in ("chunked", "fused"):
        stats = run_path(path, hidden, weight, bias, labels, softcap=10.0, chunk_size=16, with_sum_sq=True)
        assert stats.mean_logits.dtype == stats.log_sum_sq_probs.dtype == torch.float32
        assert_close_all([stats.mean_logits, stats.log_sum_sq_probs], [ref.mean_logits, ref.log_sum_sq_probs], **loose)


class _NewLargeBuffers(TorchDispatchMode):
    """Counts op outputs of at least `min_numel` elements that do not share storage with an input (fresh buffers)."""

    def __init__(self, min_numel):
        super().__init__()
        self.min_numel, self.count = min_numel, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = torch.utils._pytree.tree_leaves((args, kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in flat if isinstance(t, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() >= self.min_numel:
                self.count += t.untyped_storage().data_ptr() not in inputs
        return out


@pytest.mark.parametrize("softcap", [None, 4.0])
def test_sum_sq_adds_no_logits_sized_buffer(softcap):
    n, v, chunk = 64, 512, 16
    gen = torch.Generator().manual_seed(4)
    hidden = torch.randn(n, H, generator=gen, requires_grad=True)
    weight = torch.randn(v, H, generator=gen, requires_grad=True)
    labels = torch.randint(0, v, (n,), generator=gen)

    counts = []
    for with_sum_sq in (False, True):
        with _NewLargeBuffers(chunk * v) as mode:
            stats = chunked_token_stats(
                hidden, weight, labels, softcap=softcap, chunk_size=chunk, with_sum_sq=with_sum_sq
            )
            stats.logps.sum().backward()
            loss, _ = fused_token_loss(
                hidden, weight, labels, nll, 1.0, softcap=softcap, chunk_size=chunk, with_sum_sq=with_sum_sq
            )
            loss.backward()
        counts.append(mode.count)
    assert counts[0] == counts[1] > 0
