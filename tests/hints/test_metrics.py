"""Hint metrics against float64 references, and their invariances."""

from __future__ import annotations

import pytest
import torch

from lmdistill.errors import UserError
from lmdistill.hints import HINT_METRICS, cosine, get_metric, ln_mse, mse


def rows(seed: int, n: int = 7, d: int = 16, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 3 + 0.5


def ref_mse(a, b):
    a, b = a.double(), b.double()
    return torch.stack(
        [
            sum((x - y) ** 2 for x, y in zip(ra, rb, strict=True)) / len(ra)
            for ra, rb in zip(a, b, strict=True)
        ]
    )


def ref_cosine(a, b):
    a, b = a.double(), b.double()
    return torch.stack([1 - (ra @ rb) / (ra.norm() * rb.norm()) for ra, rb in zip(a, b, strict=True)])


def ref_ln_mse(a, b):
    def norm(x):
        x = x.double()
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased, as layer_norm
        return (x - mean) / torch.sqrt(var + 1e-5)

    return ((norm(a) - norm(b)) ** 2).mean(-1)


@pytest.mark.parametrize(("fn", "ref"), [(mse, ref_mse), (cosine, ref_cosine), (ln_mse, ref_ln_mse)])
def test_against_float64_reference(fn, ref):
    a, b = rows(0), rows(1)
    out = fn(a, b)
    assert out.shape == (7,) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref(a, b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(HINT_METRICS))
def test_dtypes(name):
    fn = get_metric(name)
    assert fn(rows(0).bfloat16(), rows(1).bfloat16()).dtype == torch.float32
    assert fn(rows(0, dtype=torch.float64), rows(1, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("name", list(HINT_METRICS))
def test_zero_on_equal_inputs(name):
    a = rows(2)
    torch.testing.assert_close(get_metric(name)(a, a.clone()), torch.zeros(7), atol=1e-6, rtol=0)


def test_cosine_scale_invariant():
    a, b = rows(3), rows(4)
    scale = torch.rand(7, 1) * 10 + 0.1
    torch.testing.assert_close(cosine(a * scale, b), cosine(a, b), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cosine(a, b * 7.0), cosine(a, b), atol=1e-5, rtol=1e-5)


def test_ln_mse_invariant_to_row_affine():
    a, b = rows(5, dtype=torch.float64), rows(6, dtype=torch.float64)
    scale = torch.rand(7, 1, dtype=torch.float64) * 4 + 0.5
    shift = torch.randn(7, 1, dtype=torch.float64) * 10
    # layer_norm's eps makes the invariance approximate; with feature variance ~9 it is tight.
    torch.testing.assert_close(ln_mse(a * scale + shift, b), ln_mse(a, b), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(mse(a * scale + shift, b), mse(a, b))


def test_cosine_zero_vector_is_finite():
    a = rows(7).requires_grad_()
    b = rows(8)
    z = a.clone()
    z = torch.cat([z[:1] * 0, z[1:]])
    out = cosine(z, b)
    assert torch.isfinite(out).all() and out[0].item() == pytest.approx(1.0)
    out.sum().backward()
    assert torch.isfinite(a.grad).all()


def test_shape_mismatch():
    with pytest.raises(ValueError, match="project the student"):
        mse(torch.zeros(3, 4), torch.zeros(3, 5))


def test_get_metric_unknown():
    with pytest.raises(UserError) as info:
        get_metric("l1")
    assert all(name in str(info.value) for name in HINT_METRICS)
