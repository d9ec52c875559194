"""The chunked head + loss path equals the plain full-logits computation, values and gradients."""

from __future__ import annotations

import pytest
import torch

from lmdistill.chunked import Head, LossSpec, chunked_loss, full_logits_loss
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
