"""Distillation divergences against float64 references written with plain probability formulas."""

from __future__ import annotations

import math
import re

import pytest
import torch

from lmdistill import losses
from lmdistill.losses import (
    LOSSES,
    divergence,
    forward_kl,
    get_loss,
    jsd,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    tvd,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The tensors here are tiny; on a small shared VM, waking the intra-op thread pool for each
    # log_softmax costs milliseconds and triples the file's run time.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


NAMES = ["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd"]
SHAPE = (3, 5, 11)  # batch, seq, vocab

# (name, extra keyword) pairs: defaults plus a non-default beta / alpha each.
CASES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("jsd", {}),
    ("jsd", {"beta": 0.2}),
    ("skew_forward_kl", {}),
    ("skew_forward_kl", {"alpha": 0.4}),
    ("skew_reverse_kl", {}),
    ("skew_reverse_kl", {"alpha": 0.4}),
    ("tvd", {}),
]
CASE_IDS = [name + "".join(f"-{k}{v}" for k, v in kw.items()) for name, kw in CASES]


# --- float64 reference: probabilities, explicit mixtures, 0 log 0 = 0 ------------------------------------


def _probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    x = logits.double() / temperature
    e = torch.exp(x - x.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def _kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (torch.special.xlogy(a, a) - torch.special.xlogy(a, b)).sum(-1)


def _ref_jsd(p, q, beta=0.5):
    m = beta * p + (1 - beta) * q
    return beta * _kl(p, m) + (1 - beta) * _kl(q, m)


REFERENCES = {
    "forward_kl": lambda p, q: _kl(p, q),
    "reverse_kl": lambda p, q: _kl(q, p),
    "jsd": _ref_jsd,
    "skew_forward_kl": lambda p, q, alpha=0.1: _kl(p, alpha * p + (1 - alpha) * q),
    "skew_reverse_kl": lambda p, q, alpha=0.1: _kl(q, (1 - alpha) * p + alpha * q),
    "tvd": lambda p, q: 0.5 * (p - q).abs().sum(-1),
}


def reference(name, student, teacher, *, temperature=1.0, mask=None, reduction="mean", **kw):
    per_token = REFERENCES[name](_probs(teacher, temperature), _probs(student, temperature), **kw)
    if mask is None:
        mask = torch.ones(per_token.shape, dtype=torch.bool)
    per_token = torch.where(mask, per_token, torch.zeros_like(per_token))
    if reduction == "none":
        return per_token
    if reduction == "sum":
        return per_token.sum()
    return per_token.sum() / max(int(mask.sum()), 1)


def _logits(seed: int, shape=SHAPE, scale=2.0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _mask(shape=SHAPE[:-1]) -> torch.Tensor:
    g = torch.Generator().manual_seed(99)
    mask = torch.rand(shape, generator=g) > 0.4
    mask.view(-1)[0], mask.view(-1)[-1] = True, False  # at least one of each
    return mask


# --- values against the reference ---------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_matches_float64_reference(name, kw, temperature, masked, reduction):
    s, t = _logits(0), _logits(1)
    mask = _mask() if masked else None
    out = get_loss(name)(s, t, temperature=temperature, mask=mask, reduction=reduction, **kw)
    ref = reference(name, s, t, temperature=temperature, mask=mask, reduction=reduction, **kw)
    assert out.dtype == torch.float32
    assert out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)
    # The float64 path keeps float64 and is exact to rounding.
    out64 = get_loss(name)(
        s.double(), t.double(), temperature=temperature, mask=mask, reduction=reduction, **kw
    )
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64, ref, rtol=1e-12, atol=1e-12)


# --- properties ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_zero_on_equal_inputs(name):
    x = _logits(2)
    torch.testing.assert_close(get_loss(name)(x, x.clone(), reduction="none"), torch.zeros(SHAPE[:-1]))


@pytest.mark.parametrize("name", NAMES)
def test_non_negative(name):
    for seed in range(5):
        out = get_loss(name)(
            _logits(seed, dtype=torch.float64), _logits(seed + 10, dtype=torch.float64), reduction="none"
        )
        assert (out > 0).all()


def test_forward_kl_is_reverse_kl_with_swapped_arguments():
    s, t = _logits(3), _logits(4)
    torch.testing.assert_close(forward_kl(s, t, reduction="none"), reverse_kl(t, s, reduction="none"))


def test_tvd_symmetric_and_at_most_one():
    s, t = _logits(3, scale=30.0), _logits(4, scale=30.0)
    torch.testing.assert_close(tvd(s, t, reduction="none"), tvd(t, s, reduction="none"))
    assert (tvd(s, t, reduction="none") <= 1.0).all()


def test_jsd_symmetry():
    s, t = _logits(3), _logits(4)
    torch.testing.assert_close(jsd(s, t, reduction="none"), jsd(t, s, reduction="none"))
    # More generally, swapping the arguments swaps the weights.
    torch.testing.assert_close(jsd(s, t, beta=0.3, reduction="none"), jsd(t, s, beta=0.7, reduction="none"))


def test_jsd_bounded_by_log2():
    s, t = _logits(3, scale=30.0, dtype=torch.float64), _logits(4, scale=30.0, dtype=torch.float64)
    assert (jsd(s, t, reduction="none") <= math.log(2) + 1e-12).all()
    # Disjoint supports reach the bound.
    s, t = torch.tensor([[100.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 100.0]])
    torch.testing.assert_close(jsd(s, t), torch.tensor(math.log(2)))


def test_skew_endpoints():
    s, t = _logits(3), _logits(4)
    torch.testing.assert_close(skew_forward_kl(s, t, alpha=0.0), forward_kl(s, t))
    torch.testing.assert_close(skew_reverse_kl(s, t, alpha=0.0), reverse_kl(s, t))
    assert skew_forward_kl(s, t, alpha=1.0, reduction="none").abs().max() == 0
    assert skew_reverse_kl(s, t, alpha=1.0, reduction="none").abs().max() == 0


# --- gradients ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_gradcheck_float64(name, kw, reduction):
    s = _logits(5, shape=(2, 3, 7), dtype=torch.float64).requires_grad_()
    t = _logits(6, shape=(2, 3, 7), dtype=torch.float64).requires_grad_()
    mask = torch.tensor([[True, False, True], [True, True, False]])

    def fn(s, t):
        return get_loss(name)(s, t, temperature=0.7, mask=mask, reduction=reduction, **kw)

    assert torch.autograd.gradcheck(fn, (s, t))


# --- -inf logits ---------------------------------------------------------------------------------------

DROPPED = [2, 7]  # vocabulary entries set to -inf
KEPT = [i for i in range(SHAPE[-1]) if i not in DROPPED]


def _with_neg_inf(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[..., DROPPED] = -math.inf
    return x


@pytest.mark.parametrize("temperature", [0.5, 2.0])
@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_neg_inf_in_both_matches_reduced_vocabulary(name, kw, temperature):
    s = _with_neg_inf(_logits(7)).requires_grad_()
    t = _with_neg_inf(_logits(8)).requires_grad_()
    out = get_loss(name)(s, t, temperature=temperature, **kw)
    ref = reference(name, s.detach()[..., KEPT], t.detach()[..., KEPT], temperature=temperature, **kw)
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)

    out.backward()
    assert torch.isfinite(s.grad).all() and torch.isfinite(t.grad).all()
    assert (s.grad[..., DROPPED] == 0).all() and (t.grad[..., DROPPED] == 0).all()
    # Gradients on the kept entries equal those of the loss on the reduced vocabulary.
    s_kept = s.detach()[..., KEPT].clone().requires_grad_()
    t_kept = t.detach()[..., KEPT].clone().requires_grad_()
    get_loss(name)(s_kept, t_kept, temperature=temperature, **kw).backward()
    torch.testing.assert_close(s.grad[..., KEPT], s_kept.grad)
    torch.testing.assert_close(t.grad[..., KEPT], t_kept.grad)


# Finite when one side alone has -inf: the outer distribution is 0 there, or the mixture is not.
ONE_SIDED = [
    pytest.param(name, kw, side, id=f"{case_id}-{side}")
    for side, infinite in (("teacher", "reverse_kl"), ("student", "forward_kl"))
    for (name, kw), case_id in zip(CASES, CASE_IDS, strict=True)
    if name != infinite
]


@pytest.mark.parametrize(("name", "kw", "side"), ONE_SIDED)
def test_neg_inf_on_one_side_is_finite(name, kw, side):
    s, t = _logits(7, dtype=torch.float64), _logits(8, dtype=torch.float64)
    # Per-token pattern, different in every row.
    drop = torch.rand(SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64) < 0.3
    drop[..., 0] = False
    if side == "teacher":
        t = t.masked_fill(drop, -math.inf)
    else:
        s = s.masked_fill(drop, -math.inf)
    ref = reference(name, s, t, reduction="none", **kw)
    assert torch.isfinite(ref).all()
    for dtype in (torch.float32, torch.float64):
        sg, tg = s.to(dtype).requires_grad_(), t.to(dtype).requires_grad_()
        out = get_loss(name)(sg, tg, reduction="none", **kw)
        torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)
        out.sum().backward()
        assert torch.isfinite(sg.grad).all() and torch.isfinite(tg.grad).all()
    # float64 gradients agree with finite differences, -inf entries included (two tokens keep it fast).
    s, t = s[0, :2].clone().requires_grad_(), t[0, :2].clone().requires_grad_()
    assert torch.isinf(s).any() or torch.isinf(t).any()
    assert torch.autograd.gradcheck(lambda s, t: get_loss(name)(s, t, temperature=1.5, **kw), (s, t))


# --- dtypes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_inputs_compute_in_float32(name, half):
    s, t = _logits(9).to(half), _logits(10).to(half)
    out = get_loss(name)(s, t, temperature=2.0, reduction="none")
    assert out.dtype == torch.float32
    # Against float64 on the same (exactly representable) values: half-precision arithmetic would be
    # off by ~1e-2 here, float32 by ~1e-7.
    ref = reference(name, s.double(), t.double(), temperature=2.0, reduction="none")
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    # Mixed dtypes promote to the wider one.
    assert get_loss(name)(s, t.float()).dtype == torch.float32
    assert get_loss(name)(s, t.double()).dtype == torch.float64


# --- mask -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_fully_false_mask(name):
    s, t = _logits(0).requires_grad_(), _logits(1)
    mask = torch.zeros(SHAPE[:-1], dtype=torch.bool)
    for reduction in ("mean", "sum"):
        out = get_loss(name)(s, t, mask=mask, reduction=reduction)
        assert out.item() == 0.0
    out.backward()
    assert (s.grad == 0).all()
    assert (get_loss(name)(s, t, mask=mask, reduction="none") == 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_mask_reductions(name):
    s, t, mask = _logits(0), _logits(1), _mask()
    fn = get_loss(name)
    per_token = fn(s, t, mask=mask, reduction="none")
    unmasked = fn(s, t, reduction="none")
    torch.testing.assert_close(per_token, torch.where(mask, unmasked, torch.zeros_like(unmasked)))
    assert (per_token[~mask] == 0).all()
    torch.testing.assert_close(fn(s, t, mask=mask), fn(s, t, mask=mask, reduction="sum") / mask.sum())
    # An integer 0/1 mask (an attention mask) works as a bool mask.
    torch.testing.assert_close(fn(s, t, mask=mask.long()), fn(s, t, mask=mask))


# --- validation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_common_validation(name):
    fn, s, t = get_loss(name), _logits(0), _logits(1)
    for temperature in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="temperature must be"):
            fn(s, t, temperature=temperature)
    with pytest.raises(ValueError, match="reduction must be one of mean, sum, none"):
        fn(s, t, reduction="batchmean")
    with pytest.raises(ValueError, match=re.escape("got student (3, 5, 11) and teacher (3, 5, 12)")):
        fn(s, _logits(1, shape=(3, 5, 12)))
    with pytest.raises(ValueError, match=re.escape("mask must have the logits' shape")):
        fn(s, t, mask=torch.ones(3, 4, dtype=torch.bool))


@pytest.mark.parametrize("beta", [0.0, 1.0, -0.5, 1.5])
def test_jsd_rejects_beta_outside_open_interval(beta):
    with pytest.raises(ValueError, match=r"strictly between 0 and 1.*use forward_kl .* or reverse_kl"):
        jsd(_logits(0), _logits(1), beta=beta)


@pytest.mark.parametrize("alpha", [-0.1, 1.1])
@pytest.mark.parametrize("fn", [skew_forward_kl, skew_reverse_kl])
def test_skew_rejects_alpha_outside_unit_interval(fn, alpha):
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        fn(_logits(0), _logits(1), alpha=alpha)


# --- registry -------------------------------------------------------------------------------------------


def test_registry():
    assert list(LOSSES) == NAMES
    for name in NAMES:
        assert get_loss(name) is getattr(losses, name)
    with pytest.raises(ValueError, match="unknown loss 'kl'; choose one of: " + ", ".join(NAMES)):
        get_loss("kl")
    with pytest.raises(ValueError, match="unknown loss"):
        divergence("kl", _logits(0), _logits(1))


@pytest.mark.parametrize("name", NAMES)
def test_divergence_dispatch(name):
    s, t, mask = _logits(0), _logits(1), _mask()
    common = {"temperature": 1.5, "mask": mask, "reduction": "none"}
    extra = {"jsd": {"beta": 0.3}, "skew_forward_kl": {"alpha": 0.25}, "skew_reverse_kl": {"alpha": 0.25}}
    expected = get_loss(name)(s, t, **common, **extra.get(name, {}))
    # beta and alpha are both passed; each loss receives only its own.
    torch.testing.assert_close(divergence(name, s, t, **common, beta=0.3, alpha=0.25), expected)
    # Defaults match the functions' defaults.
    torch.testing.assert_close(divergence(name, s, t), get_loss(name)(s, t))
