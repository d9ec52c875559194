"""Cross-tokenizer loss terms against plain float64 references, gradient checks, chunked = unchunked."""

from __future__ import annotations

import math

import pytest
import torch

from lmdistill.chunked import Head
from lmdistill.losses import LOSSES
from lmdistill.xtok.align import Alignment
from lmdistill.xtok.losses import (
    Side,
    XtokSpec,
    group_tensors,
    group_terms,
    merged_log_probs,
    sorted_l1,
    uld,
    xtok_loss,
    xtok_loss_reference,
)

# --- plain references ---------------------------------------------------------------------------------


def softmax_list(logits: list[float], t: float = 1.0) -> list[float]:
    m = max(logits)
    e = [math.exp((x - m) / t) for x in logits]
    return [x / sum(e) for x in e]


def sorted_l1_ref(p: list[float], q: list[float]) -> float:
    a, b = sorted(p, reverse=True), sorted(q, reverse=True)
    n = max(len(a), len(b))
    a, b = a + [0.0] * (n - len(a)), b + [0.0] * (n - len(b))
    return sum(abs(x - y) for x, y in zip(a, b, strict=True))


def test_sorted_l1_and_uld_match_reference():
    torch.manual_seed(0)
    s = torch.randn(4, 7, dtype=torch.float64) * 2
    t = torch.randn(4, 12, dtype=torch.float64) * 2
    got = uld(s, t, temperature=1.5)
    assert got.dtype == torch.float64 and got.shape == (4,)
    for r in range(4):
        want = sorted_l1_ref(softmax_list(t[r].tolist(), 1.5), softmax_list(s[r].tolist(), 1.5))
        assert got[r].item() == pytest.approx(want, rel=1e-12, abs=1e-14)
    # symmetric in its arguments, zero for a permutation of the same distribution, at most 2
    p = torch.softmax(t, -1)
    assert torch.allclose(sorted_l1(p, p[:, torch.randperm(12)]), torch.zeros(4, dtype=torch.float64))
    assert torch.allclose(sorted_l1(p, torch.softmax(s, -1)), sorted_l1(torch.softmax(s, -1), p))
    assert (got <= 2).all()


def test_uld_half_precision_is_computed_in_float32():
    s, t = torch.randn(3, 5).half(), torch.randn(3, 9).bfloat16()
    assert uld(s, t).dtype == torch.float32


def test_merged_log_probs_match_reference():
    torch.manual_seed(1)
    first = torch.randn(3, 6, dtype=torch.float64)
    # group 0: one token; group 1: two later tokens with probabilities 0.5 and 0.2; group 2: one, 0.9
    later = torch.tensor([0.0, math.log(0.5) + math.log(0.2), math.log(0.9)], dtype=torch.float64)
    got = merged_log_probs(first, later, temperature=2.0).exp()
    factors = [1.0, 0.5 * 0.2, 0.9]
    for g in range(3):
        p = softmax_list(first[g].tolist(), 2.0)
        for v in range(6):
            assert got[g, v].item() == pytest.approx(p[v] * factors[g], rel=1e-12)
    assert got.sum(-1).tolist() == pytest.approx(factors, rel=1e-12)


def test_gold_terms_match_reference():
    torch.manual_seed(2)
    s_m = torch.randn(2, 5, dtype=torch.float64).log_softmax(-1) + math.log(0.7)  # merged: mass 0.7
    t_m = torch.randn(2, 8, dtype=torch.float64).log_softmax(-1)
    shared_s, shared_t = torch.tensor([0, 3, 4]), torch.tensor([5, 1, 2])
    spec = XtokSpec(method="gold", loss="forward_kl", matched_weight=0.3, unmatched_weight=2.0)
    matched, unmatched = group_terms(s_m, t_m, spec, shared_s, shared_t)
    for g in range(2):
        p, q = t_m[g].exp().tolist(), s_m[g].exp().tolist()
        ps, qs = [p[i] for i in shared_t.tolist()], [q[i] for i in shared_s.tolist()]
        pn, qn = [x / sum(ps) for x in ps], [x / sum(qs) for x in qs]
        kl = sum(a * (math.log(a) - math.log(b)) for a, b in zip(pn, qn, strict=True))
        share = sum(ps) / sum(p)
        assert matched[g].item() == pytest.approx(0.3 * share * kl, rel=1e-10)
        p_rest = [0.0 if i in shared_t.tolist() else x for i, x in enumerate(p)]
        q_rest = [0.0 if i in shared_s.tolist() else x for i, x in enumerate(q)]
        assert unmatched[g].item() == pytest.approx(2.0 * sorted_l1_ref(p_rest, q_rest), rel=1e-10)
    uld_spec = XtokSpec(method="uld", unmatched_weight=0.5)
    m0, u0 = group_terms(s_m, t_m, uld_spec)
    assert m0.abs().sum() == 0
    assert u0[0].item() == pytest.approx(0.5 * sorted_l1_ref(t_m[0].exp().tolist(), s_m[0].exp().tolist()))


def test_gradcheck_terms():
    torch.manual_seed(3)
    s = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 7, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: uld(x, t, temperature=1.3), (s,))
    later = torch.tensor([0.0, -0.4], dtype=torch.float64)
    shared_s, shared_t = torch.tensor([0, 2, 4]), torch.tensor([6, 1, 3])
    for loss in LOSSES:
        spec = XtokSpec(method="gold", loss=loss)

        def f(x, spec=spec):
            s_m = merged_log_probs(x, later)
            m, u = group_terms(s_m, merged_log_probs(t, later), spec, shared_s, shared_t)
            return m + u

        assert torch.autograd.gradcheck(f, (s,)), loss


# --- the chunked loss through heads ---------------------------------------------------------------------

VS, VT, HS, HT = 11, 17, 6, 5
S_GROUPS = [(1, 2), (2, 4), (4, 5), (5, 7), (7, 8)]
T_GROUPS = [(1, 3), (3, 4), (4, 5), (5, 6), (6, 9)]
SHARED = (torch.tensor([0, 2, 3, 5, 7, 10]), torch.tensor([1, 2, 4, 8, 16, 9]))


def make_sides(dtype=torch.float64, softcap=3.0, bias=True):
    g = torch.Generator().manual_seed(4)
    s_hidden = torch.randn(8, HS, dtype=dtype, generator=g).requires_grad_()
    s_weight = torch.randn(VS, HS, dtype=dtype, generator=g).requires_grad_()
    s_bias = torch.randn(VS, dtype=dtype, generator=g).requires_grad_() if bias else None
    t_hidden = torch.randn(9, HT, dtype=dtype, generator=g)
    t_head = Head(torch.randn(VT + 3, HT, dtype=dtype, generator=g), softcap=softcap)  # padded head rows
    student = Side(
        s_hidden, Head(s_weight, s_bias), torch.randint(0, VS, (8,), generator=g), torch.tensor(S_GROUPS), VS
    )
    teacher = Side(t_hidden, t_head, torch.randint(0, VT, (9,), generator=g), torch.tensor(T_GROUPS), VT)
    return student, teacher


def grads_of(sums, student):
    params = [student.hidden, student.head.weight] + (
        [student.head.bias] if student.head.bias is not None else []
    )
    return torch.autograd.grad(sums.total, params)


@pytest.mark.parametrize("method,loss", [("uld", "jsd"), *[("gold", name) for name in LOSSES]])
@pytest.mark.parametrize("chunk_size", [1, 3, 100])
def test_chunked_equals_reference(method, loss, chunk_size):
    spec = XtokSpec(method=method, loss=loss, temperature=1.7, chunk_size=chunk_size, matched_weight=0.8)
    student, teacher = make_sides()
    weights = torch.tensor([1.0, 0.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    ref = xtok_loss_reference(student, teacher, spec, shared=SHARED, weights=weights)
    got = xtok_loss(student, teacher, spec, shared=SHARED, weights=weights)
    assert got.groups == ref.groups == 5
    torch.testing.assert_close(got.total, ref.total, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.matched, ref.matched, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.unmatched, ref.unmatched, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads_of(got, student), grads_of(ref, student), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)  # true zeros come out as ~1e-9 noise
    with torch.no_grad():  # the no-grad path gives the same value
        torch.testing.assert_close(
            xtok_loss(student, teacher, spec, shared=SHARED, weights=weights).total, ref.total
        )


def test_gradcheck_chunked():
    student, teacher = make_sides(bias=False)
    spec = XtokSpec(method="gold", loss="jsd", chunk_size=2)

    def f(h, w):
        s = Side(h, Head(w), student.ids, student.groups, VS)
        return xtok_loss(s, teacher, spec, shared=SHARED).total

    assert torch.autograd.gradcheck(f, (student.hidden, student.head.weight))


def test_group_tensors_drops_groups_without_a_prediction():
    al = Alignment([(0, 1), (1, 3), (3, 4)], [(0, 2), (2, 3), (3, 5)], [2, 5, 9], [], [])
    ga, gb = group_tensors(al)
    assert ga.tolist() == [[1, 3], [3, 4]] and gb.tolist() == [[2, 3], [3, 5]]


def test_input_checks():
    student, teacher = make_sides()
    with pytest.raises(ValueError, match="shared token ids"):
        xtok_loss(student, teacher, XtokSpec(method="gold"))
    bad = Side(student.hidden, student.head, student.ids, torch.tensor([[0, 1]] * 5), VS)
    with pytest.raises(ValueError, match="token 0 has no prediction"):
        xtok_loss(bad, teacher, XtokSpec(method="uld"))
    with pytest.raises(ValueError, match="unknown cross-tokenizer method"):
        XtokSpec(method="dskd")
    with pytest.raises(ValueError, match="unknown loss"):
        XtokSpec(loss="kl")


def test_flattened_batch_is_the_sum_of_its_sequences():
    """Batching as the docs describe: flatten [B, L] and shift each example's groups by its row offset."""
    s1, t1 = make_sides()
    g = torch.Generator().manual_seed(9)
    s2 = Side(
        torch.randn(8, HS, dtype=torch.float64, generator=g), s1.head, s1.ids.flip(0), s1.groups[:3], VS
    )
    t2 = Side(
        torch.randn(9, HT, dtype=torch.float64, generator=g), t1.head, t1.ids.flip(0), t1.groups[:3], VT
    )
    spec = XtokSpec(method="gold", loss="forward_kl", chunk_size=4)
    separate = sum(xtok_loss(s, t, spec, shared=SHARED).total for s, t in ((s1, t1), (s2, t2)))

    def flat(a: Side, b: Side) -> Side:
        return Side(
            torch.cat([a.hidden, b.hidden]),
            a.head,
            torch.cat([a.ids, b.ids]),
            torch.cat([a.groups, b.groups + len(a.ids)]),
            a.vocab,
        )

    batched = xtok_loss(flat(s1, s2), flat(t1, t2), spec, shared=SHARED)
    assert batched.groups == 8
    torch.testing.assert_close(batched.total, separate, rtol=1e-12, atol=1e-12)
