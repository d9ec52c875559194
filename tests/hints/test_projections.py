"""Projections: identity where widths match, a learnable linear map where they differ."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmdistill.errors import UserError
from lmdistill.hints import HintProjections


def test_identity_where_widths_equal():
    proj = HintProjections([(0, 1), (1, 3)], 32, 32)
    assert sum(p.numel() for p in proj.parameters()) == 0
    assert proj.state_dict() == {}
    x = torch.randn(5, 32)
    assert torch.equal(proj(0, x), x) and torch.equal(proj("s1_t3", x), x)


def test_linear_where_widths_differ_per_layer():
    # Student layer 1 has width 48 like teacher layer 3: identity there; linear 32 -> 48 for (0, 1).
    proj = HintProjections([(0, 1), (1, 3)], [32, 48], 48)
    assert set(proj.maps) == {"s0_t1", "s1_t3"}
    assert isinstance(proj.maps["s0_t1"], torch.nn.Linear) and proj.maps["s0_t1"].bias is None
    assert isinstance(proj.maps["s1_t3"], torch.nn.Identity)
    assert proj(0, torch.randn(5, 32)).shape == (5, 48)
    assert proj("s0_t1", torch.randn(2, 3, 32)).shape == (2, 3, 48)


def test_truncated_identity_init_for_widening():
    proj = HintProjections([(0, 0)], 3, 5)
    weight = proj.maps["s0_t0"].weight
    expected = torch.zeros(5, 3)
    expected[:3, :3] = torch.eye(3)
    assert torch.equal(weight, expected)
    x = torch.randn(4, 3)
    torch.testing.assert_close(proj(0, x), torch.cat([x, torch.zeros(4, 2)], dim=1))


def test_narrowing_uses_default_init():
    weight = HintProjections([(0, 0)], 8, 4).maps["s0_t0"].weight
    assert weight.shape == (4, 8)
    assert not torch.equal(weight[:, :4], torch.eye(4))


def test_bf16_rows_through_float32_projection():
    proj = HintProjections([(0, 0)], 4, 6)
    assert proj(0, torch.randn(3, 4, dtype=torch.bfloat16)).dtype == torch.float32


def test_none_with_different_widths_names_the_pair():
    with pytest.raises(UserError, match=r"pair \[1, 3\].*48.*64"):
        HintProjections([(0, 1), (1, 3)], [32, 48], [32, 32, 32, 64], projection="none")
    # Equal widths are fine without projections.
    assert len(list(HintProjections([(0, 1)], 32, 32, projection="none").parameters())) == 0


def test_unknown_projection():
    with pytest.raises(UserError, match="linear"):
        HintProjections([(0, 0)], 4, 6, projection="mlp")


def test_projection_learns_a_linear_map():
    gen = torch.Generator().manual_seed(0)
    d_s, d_t, n = 16, 24, 256
    x = torch.randn(n, d_s, generator=gen)
    truth = torch.randn(d_t, d_s, generator=gen) / d_s**0.5
    target = x @ truth.T + 0.01 * torch.randn(n, d_t, generator=gen)
    proj = HintProjections([(0, 0)], d_s, d_t)
    opt = torch.optim.Adam(proj.parameters(), lr=0.03)

    def loss():
        return (proj(0, x) - target).pow(2).mean()

    start = loss().item()
    for _ in range(200):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    assert loss().item() < 0.1 * start


def test_state_dict_round_trips_through_safetensors(tmp_path):
    pairs = [(0, 1), (1, 3)]
    proj = HintProjections(pairs, [32, 48], 48)
    with torch.no_grad():
        proj.maps["s0_t1"].weight.normal_()
    path = tmp_path / "hint_projections.safetensors"
    save_file(proj.state_dict(), str(path))
    loaded = load_file(str(path))
    assert set(loaded) == {"maps.s0_t1.weight"}
    fresh = HintProjections(pairs, [32, 48], 48)
    fresh.load_state_dict(loaded)
    x = torch.randn(3, 32)
    assert torch.equal(fresh(0, x), proj(0, x))
