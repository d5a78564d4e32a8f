"""`trl.ops.divergence`: the chunked generalized JSD against a textbook float64 reference written here (explicit
softmaxes and sums over the vocabulary, autograd for the gradients), and against hand-worked values."""

import math

import pytest
import torch

from trl.ops.divergence import chunked_divergence, naive_divergence


def _textbook(hs, ws, ht, wt, beta, temperature, bs=None, scale=1.0, softcap=None):
    """Per-row divergence from the definitions: p (student), q (teacher), m = beta q + (1 - beta) p."""
    def dist(h, w, b, scale=1.0, softcap=None):
        z = h @ w.T + (b if b is not None else 0.0)
        z = z * scale
        if softcap is not None:
            z = softcap * torch.tanh(z / softcap)
        z = z / temperature
        return torch.exp(z) / torch.exp(z).sum(-1, keepdim=True)

    p, q = dist(hs, ws, bs, scale, softcap), dist(ht, wt, None)

    def kl(a, b):
        return (a * (a.log() - b.log())).sum(-1)

    if beta == 0:
        return kl(q, p), p
    if beta == 1:
        return kl(p, q), p
    m = beta * q + (1 - beta) * p
    return beta * kl(q, m) + (1 - beta) * kl(p, m), p


def _inputs(n=11, hs=8, ht=6, v=40, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    student_hidden = torch.randn(n, hs, generator=g, dtype=dtype).requires_grad_()
    student_weight = torch.randn(v, hs, generator=g, dtype=dtype).requires_grad_()
    teacher_hidden = torch.randn(n, ht, generator=g, dtype=dtype)
    teacher_weight = torch.randn(v, ht, generator=g, dtype=dtype)
    return student_hidden, student_weight, teacher_hidden, teacher_weight


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 0.3])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_gradients_match_the_textbook_float64_reference(beta, temperature):
    hs, ws, ht, wt = _inputs()
    bias = torch.randn(ws.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(3)).requires_grad_()
    mask = torch.tensor([1, 1, 0, 1, 0, 1, 1, 1, 0, 1, 1], dtype=torch.bool)
    upstream = torch.randn(hs.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    out = chunked_divergence(hs, ws, ht, wt, mask=mask, beta=beta, temperature=temperature, student_bias=bias,
                             chunk_size=3)
    (out.divergence * upstream).sum().backward()
    chunked_grads = [t.grad.clone() for t in (hs, ws, bias)]
    for t in (hs, ws, bias):
        t.grad = None

    expected, p = _textbook(hs, ws, ht, wt, beta, temperature, bias)
    expected = expected * mask
    (expected * upstream).sum().backward()
    torch.testing.assert_close(out.divergence, expected.detach(), rtol=1e-10, atol=1e-12)
    entropy = -(p * p.log()).sum(-1).detach() * mask
    torch.testing.assert_close(out.entropy, entropy, rtol=1e-10, atol=1e-12)
    for got, want in zip(chunked_grads, (hs.grad, ws.grad, bias.grad)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert chunked_grads[0][~mask].abs().max() == 0  # masked tokens contribute nothing


def test_logit_scale_and_softcap_of_the_student_are_honoured():
    hs, ws, ht, wt = _inputs(seed=1)
    transform = {"scale": 0.5, "softcap": 2.0}
    out = chunked_divergence(hs, ws, ht, wt, beta=0.3, temperature=0.8, student_transform=transform, chunk_size=4)
    out.divergence.sum().backward()
    grads = (hs.grad.clone(), ws.grad.clone())
    hs.grad = ws.grad = None
    expected, _ = _textbook(hs, ws, ht, wt, 0.3, 0.8, scale=0.5, softcap=2.0)
    expected.sum().backward()
    torch.testing.assert_close(out.divergence, expected.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[0], hs.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grads[1], ws.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("tied", [True, False])
def test_tied_and_untied_heads_get_the_full_gradient(tied):
    """A head tied to the input embeddings gets the gradient of both uses, as autograd on full logits gives it."""
    g = torch.Generator().manual_seed(2)
    vocab, hidden = 30, 8
    embedding = torch.randn(vocab, hidden, generator=g, dtype=torch.float64).requires_grad_()
    head = embedding if tied else torch.randn(vocab, hidden, generator=g, dtype=torch.float64).requires_grad_()
    ids = torch.randint(vocab, (2, 5), generator=g)
    mix = torch.randn(hidden, hidden, generator=g, dtype=torch.float64)
    teacher_hidden = torch.randn(2, 5, 6, generator=g, dtype=torch.float64)
    teacher_weight = torch.randn(vocab, 6, generator=g, dtype=torch.float64)

    def run(fn):
        student_hidden = torch.tanh(embedding[ids] @ mix)  # (2, 5, H): a stand-in backbone
        out = fn(student_hidden, head, teacher_hidden, teacher_weight, beta=0.5, temperature=1.3)
        out.divergence.sum().backward()
        grads = [embedding.grad.clone()] + ([] if tied else [head.grad.clone()])
        embedding.grad = None
        if not tied:
            head.grad = None
        return out.divergence.detach(), grads

    got, got_grads = run(lambda *a, **k: chunked_divergence(*a, chunk_size=4, **k))
    want, want_grads = run(naive_divergence)
    assert got.shape == (2, 5)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_hand_worked_values():
    # two tokens; student logits (0, 0) -> p = (1/2, 1/2); teacher logits (log 3, 0) -> q = (3/4, 1/4)
    weight = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    student, teacher = torch.tensor([[0.0]], dtype=torch.float64), torch.tensor([[math.log(3)]], dtype=torch.float64)

    def div(beta):
        return chunked_divergence(student, weight, teacher, weight, beta=beta).divergence.item()

    forward_kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(q || p) = 0.1308
    reverse_kl = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # KL(p || q) = 0.1438
    m = (0.625, 0.375)  # beta = 0.5: the mixture of p and q
    jsd = 0.5 * (0.75 * math.log(0.75 / m[0]) + 0.25 * math.log(0.25 / m[1])) + 0.5 * (
        0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1]))
    assert div(0.0) == pytest.approx(forward_kl, rel=1e-12)
    assert div(1.0) == pytest.approx(reverse_kl, rel=1e-12)
    assert div(0.5) == pytest.approx(jsd, rel=1e-12)
    assert chunked_divergence(student, weight, student, weight, beta=0.3).divergence.item() == 0.0


def test_float32_inputs_and_empty_mask():
    hs, ws, ht, wt = (t.detach().float() for t in _inputs(seed=4))
    hs.requires_grad_()
    out = chunked_divergence(hs, ws, ht, wt, beta=1.0, chunk_size=5)
    assert out.divergence.dtype == torch.float32
    ref = naive_divergence(hs.double(), ws.double(), ht.double(), wt.double(), beta=1.0).divergence
    torch.testing.assert_close(out.divergence.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    empty = chunked_divergence(hs, ws, ht, wt, mask=torch.zeros(hs.shape[0], dtype=torch.bool))
    empty.divergence.sum().backward()
    assert empty.divergence.abs().sum() == 0 and hs.grad.abs().sum() == 0


def test_teacher_gets_no_gradient():
    hs, ws, ht, wt = _inputs(seed=6)
    ht.requires_grad_()
    wt.requires_grad_()
    chunked_divergence(hs, ws, ht, wt, beta=0.5, chunk_size=4).divergence.sum().backward()
    assert ht.grad is None and wt.grad is None
    assert hs.grad is not None and ws.grad is not None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"beta": 1.5}, r"`beta` must be in \[0, 1\].*1.5"),
        ({"beta": -0.1}, r"`beta` must be in \[0, 1\]"),
        ({"temperature": 0.0}, "temperature"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    hs, ws, ht, wt = _inputs()
    with pytest.raises(ValueError, match=match):
        chunked_divergence(hs, ws, ht, wt, **kwargs)


def test_vocabulary_mismatch_names_both_sizes():
    hs, ws, ht, _ = _inputs()
    with pytest.raises(ValueError, match=r"student's vocabulary \(40.*teacher's \(41\)"):
        chunked_divergence(hs, ws, ht, torch.randn(41, ht.shape[1], dtype=torch.float64))


def test_teacher_transform_and_bias_are_honoured():
    """The teacher's own scale, softcap and bias enter its distribution (the other tests leave them at identity)."""
    hs, ws, ht, wt = _inputs(seed=7)
    bias = torch.randn(wt.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    out = chunked_divergence(hs, ws, ht, wt, beta=0.4, temperature=0.9, teacher_bias=bias,
                             teacher_transform={"scale": 1.7, "softcap": 3.0}, chunk_size=4)
    out.divergence.sum().backward()
    got_grad = hs.grad.clone()
    hs.grad = ws.grad = None
    # the textbook teacher: logits (h W^T + b) * 1.7, soft-capped at 3, over the temperature
    z = 3.0 * torch.tanh((ht @ wt.T + bias) * 1.7 / 3.0) / 0.9
    q = torch.softmax(z, -1)
    p = torch.softmax((hs @ ws.T) / 0.9, -1)
    m = 0.4 * q + 0.6 * p
    expected = 0.4 * (q * (q.log() - m.log())).sum(-1) + 0.6 * (p * (p.log() - m.log())).sum(-1)
    expected.sum().backward()
    torch.testing.assert_close(out.divergence, expected.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_grad, hs.grad, rtol=1e-9, atol=1e-12)
    plain = chunked_divergence(hs.detach(), ws.detach(), ht, wt, beta=0.4, temperature=0.9).divergence
    assert (plain - out.divergence.detach()).abs().max() > 1e-3  # the transform and bias changed the result


def test_bfloat16_teacher_with_a_float32_student():
    """A teacher kept in bfloat16 next to a float32 student: each head's matmul runs in its own dtype, the divergence
    in float32, equal to the float64 divergence of the same (bfloat16-rounded) teacher."""
    hs, ws, ht, wt = (t.detach().float() for t in _inputs(seed=9))
    hs.requires_grad_()
    ht, wt = ht.bfloat16(), wt.bfloat16()
    out = chunked_divergence(hs, ws, ht, wt, beta=0.5, chunk_size=4)
    assert out.divergence.dtype == torch.float32
    teacher_logits = (ht @ wt.T).double()  # bfloat16 matmul, as the teacher's head runs it
    q = torch.softmax(teacher_logits, -1)
    p = torch.softmax(hs.detach().double() @ ws.double().T, -1)
    m = 0.5 * (p + q)
    expected = 0.5 * (q * (q.log() - m.log())).sum(-1) + 0.5 * (p * (p.log() - m.log())).sum(-1)
    torch.testing.assert_close(out.divergence.double(), expected, rtol=1e-5, atol=1e-6)
    out.divergence.sum().backward()
    assert torch.isfinite(hs.grad).all() and hs.grad.abs().sum() > 0
