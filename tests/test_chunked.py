"""The chunked head + loss path equals the plain full-logits computation, values and gradients."""

from __future__ import annotations

import pytest
import torch

from lmdistill.chunked import TAIL_FLOOR, Head, LossSpec, SparseTeacher, chunked_loss, full_logits_loss
from lmdistill.losses import LOSSES

N, HS, HT, ROWS, VOCAB = 37, 16, 24, 53, 50  # head rows > vocab: a padded head, sliced to VOCAB


def _setup(seed=0, bias=False, softcap=None):
    g = torch.Generator().manual_seed(seed)
    s_hidden = torch.randn(N, HS, generator=g, requires_grad=True)
    s_w = torch.nn.Parameter(torch.randn(ROWS, HS, generator=g) * 0.5)
    s_b = torch.nn.Parameter(torch.randn(ROWS, generator=g) * 0.1) if bias else None
    t_hidden = torch.randn(N, HT, generator=g)
    t_w = torch.randn(ROWS, HT, generator=g) * 0.5
    labels = torch.randint(0, VOCAB, (N,), generator=g)
    return s_hidden, Head(s_w, s_b, softcap), labels, t_hidden, Head(t_w, None, softcap)


def _grads(sums, *tensors):
    return torch.autograd.grad(sums.total, [t for t in tensors if t is not None])


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("chunk", [1, 8, N, 1000])
def test_chunked_equals_full_logits(loss, chunk):
    s_hidden, s_head, labels, t_hidden, t_head = _setup()
    spec = LossSpec(
        loss=loss, ce_weight=0.3, kd_weight=0.7 * 4.0, temperature=2.0, vocab=VOCAB, chunk_size=chunk
    )
    ref = full_logits_loss(s_hidden, s_head, labels, spec, t_hidden, t_head)
    got = chunked_loss(s_hidden, s_head, labels, spec, t_hidden, t_head)
    torch.testing.assert_close(got.total, ref.total, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.ce, ref.ce, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.kd, ref.kd, rtol=1e-5, atol=1e-5)
    for g, r in zip(_grads(got, s_hidden, s_head.weight), _grads(ref, s_hidden, s_head.weight), strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_bias_softcap_and_padded_rows_get_zero_grad():
    s_hidden, s_head, labels, t_hidden, t_head = _setup(bias=True, softcap=5.0)
    spec = LossSpec(loss="jsd", beta=0.3, vocab=VOCAB, chunk_size=5)
    ref = full_logits_loss(s_hidden, s_head, labels, spec, t_hidden, t_head)
    got = chunked_loss(s_hidden, s_head, labels, spec, t_hidden, t_head)
    torch.testing.assert_close(got.total, ref.total, rtol=1e-5, atol=1e-5)
    g = _grads(got, s_hidden, s_head.weight, s_head.bias)
    r = _grads(ref, s_hidden, s_head.weight, s_head.bias)
    for a, b in zip(g, r, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.all(g[1][VOCAB:] == 0) and torch.all(g[2][VOCAB:] == 0)


def test_ce_only_needs_no_teacher_and_matches_cross_entropy():
    s_hidden, s_head, labels, *_ = _setup()
    spec = LossSpec(ce_weight=1.0, kd_weight=0.0, vocab=VOCAB, chunk_size=7)
    got = chunked_loss(s_hidden, s_head, labels, spec)
    logits = (s_hidden @ s_head.weight[:VOCAB].T).double()
    expected = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    torch.testing.assert_close(got.total.double(), expected, rtol=1e-5, atol=1e-5)
    assert got.kd.item() == 0.0 and got.tokens == N


def test_no_grad_path_gives_same_sums():
    s_hidden, s_head, labels, t_hidden, t_head = _setup()
    spec = LossSpec(loss="reverse_kl", vocab=VOCAB, chunk_size=6)
    with_grad = chunked_loss(s_hidden, s_head, labels, spec, t_hidden, t_head)
    with torch.no_grad():
        without = chunked_loss(s_hidden, s_head, labels, spec, t_hidden, t_head)
    assert not without.total.requires_grad
    torch.testing.assert_close(without.total, with_grad.total.detach(), rtol=1e-6, atol=1e-6)


def test_upstream_gradient_scales_the_saved_gradients():
    s_hidden, s_head, labels, t_hidden, t_head = _setup()
    spec = LossSpec(vocab=VOCAB, chunk_size=10)
    (g1,) = torch.autograd.grad(
        chunked_loss(s_hidden, s_head, labels, spec, t_hidden, t_head).total, [s_hidden]
    )
    (g3,) = torch.autograd.grad(
        3.0 * chunked_loss(s_hidden, s_head, labels, spec, t_hidden, t_head).total / 2.0, [s_hidden]
    )
    torch.testing.assert_close(g3, 1.5 * g1)


# --- sparse (stored top-k) teacher and per-token weights -------------------------------------------------


def _sparse_teacher(t_logits: torch.Tensor, k: int, temperature: float) -> SparseTeacher:
    """What `lmdistill capture` stores: top-k log-probs at T and the tail log-mass, from float64 logits."""
    logp = torch.log_softmax(t_logits.double() / temperature, dim=-1)
    values, ids = logp.topk(k, dim=-1)
    tail = logp.scatter(1, ids, float("-inf")).logsumexp(-1).clamp(min=TAIL_FLOOR)  # the mass outside
    return SparseTeacher(ids, values.float(), tail.float())


def _divergence64(loss: str, logp_t: torch.Tensor, logp_s: torch.Tensor, beta=0.5, alpha=0.1):
    """Per-token divergences written out from their definitions (GUIDE section 2), float64."""
    p, q = logp_t.exp(), logp_s.exp()

    def kl(a, log_a, log_b):
        return (a * (log_a - log_b)).sum(-1)

    if loss == "forward_kl":
        return kl(p, logp_t, logp_s)
    if loss == "reverse_kl":
        return kl(q, logp_s, logp_t)
    if loss == "jsd":
        log_m = (beta * p + (1 - beta) * q).log()
        return beta * kl(p, logp_t, log_m) + (1 - beta) * kl(q, logp_s, log_m)
    if loss == "skew_forward_kl":
        return kl(p, logp_t, (alpha * p + (1 - alpha) * q).log())
    if loss == "skew_reverse_kl":
        return kl(q, logp_s, ((1 - alpha) * p + alpha * q).log())
    assert loss == "tvd"
    return 0.5 * (p - q).abs().sum(-1)


def _sparse_reference(spec, s_hidden, s_weight, labels, sparse, weights=None):
    """float64: full student softmax, gather at the k ids, rest = 1 - sum, divergence on k + 1 buckets."""
    z = s_hidden.double() @ s_weight[:VOCAB].double().T  # [N, V]
    logq = torch.log_softmax(z / spec.temperature, dim=-1)
    top = logq.gather(1, sparse.ids)
    s_b = torch.cat([top, torch.log1p(-top.exp().sum(-1, keepdim=True))], dim=1)
    t_b = torch.log_softmax(torch.cat([sparse.logprobs, sparse.tail[:, None]], 1).double(), dim=-1)
    kd = _divergence64(spec.loss, t_b, s_b, spec.beta, spec.alpha)
    ce = torch.nn.functional.cross_entropy(z, labels, reduction="none")
    w = torch.ones_like(ce) if weights is None else weights.double()
    return spec.ce_weight * (w * ce).sum() + spec.kd_weight * (w * kd).sum(), (w * kd).sum()


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_sparse_teacher_equals_float64_reference(loss):
    s_hidden, s_head, labels, t_hidden, t_head = _setup(seed=3)
    spec = LossSpec(loss=loss, ce_weight=0.3, kd_weight=0.7 * 4.0, temperature=2.0, vocab=VOCAB, chunk_size=8)
    sparse = _sparse_teacher(t_head.logits(t_hidden, VOCAB), k=7, temperature=2.0)
    got = chunked_loss(s_hidden, s_head, labels, spec, t_sparse=sparse)
    ref_total, ref_kd = _sparse_reference(spec, s_hidden, s_head.weight, labels, sparse)
    # float32 chunks against float64: sums of 37 tokens agree to ~1e-6 relative; 1e-5 leaves margin.
    torch.testing.assert_close(got.total.double(), ref_total, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.kd.double(), ref_kd, rtol=1e-5, atol=1e-5)
    assert got.kd > 0
    g = _grads(got, s_hidden, s_head.weight)
    r = torch.autograd.grad(ref_total, [s_hidden, s_head.weight])
    for a, b in zip(g, r, strict=True):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_sparse_with_k_equal_vocab_is_the_full_kd(loss):
    s_hidden, s_head, labels, t_hidden, t_head = _setup(seed=4)
    spec = LossSpec(loss=loss, ce_weight=0.5, kd_weight=0.5, temperature=1.5, vocab=VOCAB, chunk_size=16)
    sparse = _sparse_teacher(t_head.logits(t_hidden, VOCAB), k=VOCAB, temperature=1.5)
    assert (sparse.tail == TAIL_FLOOR).all()
    got = chunked_loss(s_hidden, s_head, labels, spec, t_sparse=sparse)
    full = chunked_loss(s_hidden, s_head, labels, spec, t_hidden, t_head)
    torch.testing.assert_close(got.kd, full.kd, rtol=1e-5, atol=1e-5)
    for a, b in zip(_grads(got, s_hidden, s_head.weight), _grads(full, s_hidden, s_head.weight), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_sparse_gradients_finite_when_the_tail_is_empty(loss):
    s_hidden, s_head, labels, t_hidden, t_head = _setup(seed=5)
    with torch.no_grad():
        s_head.weight.mul_(60.0)  # a student sure of one token: its rest bucket underflows to 0
    spec = LossSpec(loss=loss, temperature=1.0, vocab=VOCAB, chunk_size=9)
    peaked = t_head.logits(t_hidden, VOCAB) * 80.0
    sparse = _sparse_teacher(peaked, k=3, temperature=1.0)
    sparse = SparseTeacher(sparse.ids, sparse.logprobs, torch.full_like(sparse.tail, float("-inf")))
    got = chunked_loss(s_hidden, s_head, labels, spec, t_sparse=sparse)
    assert torch.isfinite(got.total)
    assert all(torch.isfinite(g).all() for g in _grads(got, s_hidden, s_head.weight))


def test_no_grad_sparse_path_gives_same_sums():
    s_hidden, s_head, labels, t_hidden, t_head = _setup(seed=6)
    spec = LossSpec(loss="jsd", vocab=VOCAB, chunk_size=6)
    sparse = _sparse_teacher(t_head.logits(t_hidden, VOCAB), k=5, temperature=1.0)
    weights = torch.rand(N)
    with_grad = chunked_loss(s_hidden, s_head, labels, spec, t_sparse=sparse, weights=weights)
    with torch.no_grad():
        without = chunked_loss(s_hidden, s_head, labels, spec, t_sparse=sparse, weights=weights)
    torch.testing.assert_close(without.total, with_grad.total.detach(), rtol=1e-6, atol=1e-6)


def test_sparse_rows_must_match_the_tokens():
    s_hidden, s_head, labels, t_hidden, t_head = _setup()
    sparse = _sparse_teacher(t_head.logits(t_hidden[:-1], VOCAB), k=4, temperature=1.0)
    with pytest.raises(ValueError, match="out of step"):
        chunked_loss(s_hidden, s_head, labels, LossSpec(vocab=VOCAB), t_sparse=sparse)


@pytest.mark.parametrize("teacher", ["hidden", "sparse"])
def test_weights_of_one_change_nothing(teacher):
    s_hidden, s_head, labels, t_hidden, t_head = _setup(seed=7)
    spec = LossSpec(loss="skew_forward_kl", vocab=VOCAB, chunk_size=10)
    kw = {"t_hidden": t_hidden, "t_head": t_head}
    if teacher == "sparse":
        kw = {"t_sparse": _sparse_teacher(t_head.logits(t_hidden, VOCAB), k=6, temperature=1.0)}
    plain = chunked_loss(s_hidden, s_head, labels, spec, **kw)
    ones = chunked_loss(s_hidden, s_head, labels, spec, **kw, weights=torch.ones(N))
    for name in ("total", "ce", "kd"):
        torch.testing.assert_close(getattr(ones, name), getattr(plain, name), rtol=1e-6, atol=1e-6)
    for a, b in zip(
        _grads(ones, s_hidden, s_head.weight), _grads(plain, s_hidden, s_head.weight), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("teacher", ["hidden", "sparse"])
def test_weight_zero_drops_tokens_from_the_numerator(teacher):
    s_hidden, s_head, labels, t_hidden, t_head = _setup(seed=8)
    spec = LossSpec(loss="forward_kl", ce_weight=0.4, kd_weight=0.6, vocab=VOCAB, chunk_size=7)
    keep = torch.ones(N, dtype=torch.bool)
    keep[5:17] = False  # one example's tokens
    sparse = _sparse_teacher(t_head.logits(t_hidden, VOCAB), k=6, temperature=1.0)

    def kw(rows):
        if teacher == "sparse":
            return {"t_sparse": sparse[rows]}
        return {"t_hidden": t_hidden[rows], "t_head": t_head}

    weighted = chunked_loss(s_hidden, s_head, labels, spec, **kw(slice(None)), weights=keep.float())
    dropped = chunked_loss(s_hidden[keep], s_head, labels[keep], spec, **kw(keep))
    for name in ("total", "ce", "kd"):
        torch.testing.assert_close(getattr(weighted, name), getattr(dropped, name), rtol=1e-5, atol=1e-5)
    assert weighted.tokens == N  # the normalisation still counts every target token
    (gw,) = torch.autograd.grad(weighted.total, [s_head.weight])
    (gd,) = torch.autograd.grad(dropped.total, [s_head.weight])
    torch.testing.assert_close(gw, gd, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("teacher", ["hidden", "sparse"])
def test_weighted_gradients_match_autograd(teacher):
    s_hidden, s_head, labels, t_hidden, t_head = _setup(seed=9, bias=True)
    spec = LossSpec(loss="tvd" if teacher == "sparse" else "jsd", vocab=VOCAB, chunk_size=5)
    weights = torch.rand(N, generator=torch.Generator().manual_seed(1)) * 2
    kw = {"t_hidden": t_hidden, "t_head": t_head}
    if teacher == "sparse":
        kw = {"t_sparse": _sparse_teacher(t_head.logits(t_hidden, VOCAB), k=6, temperature=1.0)}
    got = chunked_loss(s_hidden, s_head, labels, spec, **kw, weights=weights)
    ref = full_logits_loss(s_hidden, s_head, labels, spec, **kw, weights=weights)
    torch.testing.assert_close(got.total, ref.total, rtol=1e-5, atol=1e-5)
    g = _grads(got, s_hidden, s_head.weight, s_head.bias)
    r = _grads(ref, s_hidden, s_head.weight, s_head.bias)
    for a, b in zip(g, r, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("kd_weight", [0.0, 0.7])
def test_closed_form_forward_kl_equals_autograd(temperature, weighted, kd_weight):
    """CE + forward KL through a plain head takes the closed-form gradient (no autograd per chunk):
    values and gradients equal autograd through the generic divergence, bias and padded rows included
    (float64 inputs; both paths compute logits in float32, hence float32 tolerances)."""
    from lmdistill import chunked

    s_hidden, s_head, labels, t_hidden, t_head = _setup(seed=3, bias=True)
    s_hidden = s_hidden.detach().double().requires_grad_(True)
    s_head = Head(
        torch.nn.Parameter(s_head.weight.detach().double()), torch.nn.Parameter(s_head.bias.detach().double())
    )
    t_hidden, t_head = t_hidden.double(), Head(t_head.weight.double())
    weights = torch.rand(N, dtype=torch.float64) if weighted else None
    spec = LossSpec(
        loss="forward_kl", ce_weight=0.3, kd_weight=kd_weight * temperature**2,
        temperature=temperature, vocab=VOCAB, chunk_size=8,
    )  # fmt: skip
    assert chunked._has_closed_form(spec, s_head, None)
    ref = full_logits_loss(s_hidden, s_head, labels, spec, t_hidden, t_head, weights=weights)
    got = chunked_loss(s_hidden, s_head, labels, spec, t_hidden, t_head, weights=weights)
    for a, b in ((got.total, ref.total), (got.ce, ref.ce), (got.kd, ref.kd)):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-5)
    params = (s_hidden, s_head.weight, s_head.bias)
    for a, b in zip(_grads(got, *params), _grads(ref, *params), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_other_losses_and_softcap_keep_the_autograd_path():
    from lmdistill import chunked

    _, s_head, *_ = _setup()
    assert not chunked._has_closed_form(LossSpec(loss="reverse_kl"), s_head, None)
    assert not chunked._has_closed_form(LossSpec(loss="forward_kl"), Head(s_head.weight, None, 5.0), None)
    sparse = SparseTeacher(torch.zeros(N, 2, dtype=torch.long), torch.zeros(N, 2), torch.zeros(N))
    assert not chunked._has_closed_form(LossSpec(loss="forward_kl"), s_head, sparse)
    assert chunked._has_closed_form(LossSpec(loss="tvd", kd_weight=0.0), s_head, None)
