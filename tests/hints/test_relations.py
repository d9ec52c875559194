"""Attention-relation transfer: module discovery, hook capture, relation KL against a hand reference."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lmdistill.errors import UserError
from lmdistill.hints import QKVCapture, default_relation_heads, find_qkv, relation_kl, relation_loss

VOCAB = 64


@pytest.fixture
def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2)
    )


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (2, 6), generator=gen)
    attention_mask = torch.ones(2, 6, dtype=torch.long)
    attention_mask[1, :2] = 0  # left padding
    return ids, attention_mask


def all_hooks(model):
    return [h for m in model.modules() for h in m._forward_hooks.values()]


# --- discovery and capture -------------------------------------------------------------------------------


def test_find_qkv_llama(tiny_llama):
    model = tiny_llama(VOCAB, num_layers=3)
    spec = find_qkv(model, 2)
    attn = model.model.layers[2].self_attn
    assert spec == {"q": (attn.q_proj, None), "k": (attn.k_proj, None), "v": (attn.v_proj, None)}


def test_find_qkv_gpt2_fused(gpt2):
    spec = find_qkv(gpt2, 1)
    c_attn = gpt2.transformer.h[1].attn.c_attn
    assert spec == {"q": (c_attn, slice(0, 32)), "k": (c_attn, slice(32, 64)), "v": (c_attn, slice(64, 96))}


def test_find_qkv_errors(tiny_llama):
    with pytest.raises(UserError, match=r"layer 5 does not exist .* 0\.\.1"):
        find_qkv(tiny_llama(VOCAB), 5)

    class NoAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("Config", (), {"num_hidden_layers": 2})()
            self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])

    with pytest.raises(UserError, match="NoAttention: no query/key/value projections"):
        find_qkv(NoAttention(), 0)


def test_capture_llama_widths(tiny_llama, batch):
    ids, attention_mask = batch
    model = tiny_llama(VOCAB, num_layers=2, hidden=32, heads=4, kv_heads=2)
    with QKVCapture(model, [0, 1]) as cap:
        model(input_ids=ids, attention_mask=attention_mask)
    assert set(cap.outputs) == {0, 1}
    assert cap.outputs[1]["q"].shape == (2, 6, 32)
    assert cap.outputs[1]["k"].shape == (2, 6, 16)  # 2 kv heads of 8
    assert cap.outputs[1]["v"].shape == (2, 6, 16)
    assert cap.outputs[0]["q"].requires_grad  # the student's graph is kept
    assert all_hooks(model) == []
    cap.clear()
    assert cap.outputs == {}


def test_capture_gpt2_splits_fused_output(gpt2, batch):
    ids, attention_mask = batch
    seen = {}
    c_attn = gpt2.transformer.h[0].attn.c_attn
    handle = c_attn.register_forward_hook(lambda m, a, out: seen.setdefault("out", out))
    with QKVCapture(gpt2, [0]) as cap:
        gpt2(input_ids=ids, attention_mask=attention_mask)
    handle.remove()
    out = cap.outputs[0]
    assert out["q"].shape == out["k"].shape == out["v"].shape == (2, 6, 32)
    assert torch.equal(torch.cat([out["q"], out["k"], out["v"]], dim=-1), seen["out"])
    assert out["q"].data_ptr() == seen["out"].data_ptr()  # a view, not a copy
    assert all_hooks(gpt2) == []


def test_hooks_removed_on_exception_and_reusable(tiny_llama, batch):
    ids, attention_mask = batch
    model = tiny_llama(VOCAB)
    cap = QKVCapture(model, [0, 1])
    with pytest.raises(RuntimeError, match="boom"), cap:
        model(input_ids=ids, attention_mask=attention_mask)
        assert len(all_hooks(model)) == 6
        raise RuntimeError("boom")
    assert all_hooks(model) == []
    # Entering again for the next step registers fresh hooks, and leaves none behind.
    cap.clear()
    with cap:
        model(input_ids=ids[:1], attention_mask=attention_mask[:1])
    assert cap.outputs[0]["q"].shape[0] == 1
    assert all_hooks(model) == []


def test_default_relation_heads():
    assert default_relation_heads([576, 192, 384, 128]) == 8
    assert default_relation_heads([32, 48, 16, 24]) == 8
    assert default_relation_heads([768]) == 12
    assert default_relation_heads([7, 13]) == 1
    assert default_relation_heads([64], max_heads=4) == 4


# --- relation KL -----------------------------------------------------------------------------------------


def reference_relation_kl(sx, tx, heads, attention_mask, mask):
    """Explicit float64 loops: per counted query, softmax over earlier real keys, KL(teacher ‖ student); mean over heads."""
    sx, tx = sx.double(), tx.double()
    total = 0.0
    batch, seq = mask.shape
    for b in range(batch):
        for i in range(seq):
            if not mask[b, i]:
                continue
            keys = [j for j in range(i + 1) if attention_mask[b, j]]
            for r in range(heads):
                dists = []
                for x in (sx, tx):
                    d = x.shape[-1] // heads
                    part = x[b, :, r * d : (r + 1) * d]
                    logits = torch.stack([part[i] @ part[j] / math.sqrt(d) for j in keys])
                    dists.append(torch.exp(logits - torch.logsumexp(logits, 0)))
                q, p = dists
                total += (p * (p.log() - q.log())).sum().item()
    return total / heads  # mean over relation heads


def random_inputs(seed, widths=(32, 48)):
    gen = torch.Generator().manual_seed(seed)
    sx = torch.randn(2, 6, widths[0], generator=gen)
    tx = torch.randn(2, 6, widths[1], generator=gen)
    attention_mask = torch.ones(2, 6, dtype=torch.long)
    attention_mask[1, :2] = 0
    mask = attention_mask.bool().clone()
    mask[0, 0] = False
    return sx, tx, attention_mask, mask


@pytest.mark.parametrize(("widths", "heads"), [((32, 32), 4), ((32, 48), 4), ((16, 48), 8)])
def test_relation_kl_matches_reference(widths, heads):
    sx, tx, attention_mask, mask = random_inputs(1, widths)
    out = relation_kl(sx, tx, heads, attention_mask, mask)
    assert out.shape == () and out.dtype == torch.float32
    assert out.item() == pytest.approx(reference_relation_kl(sx, tx, heads, attention_mask, mask), rel=1e-4)


def test_relation_kl_zero_for_identical_inputs():
    sx, _, attention_mask, mask = random_inputs(2)
    assert relation_kl(sx, sx.clone(), 4, attention_mask, mask).item() == pytest.approx(0.0, abs=1e-5)


def test_relation_kl_gradient_finite_with_padding():
    sx, tx, attention_mask, mask = random_inputs(3)
    sx.requires_grad_()
    tx.requires_grad_()
    relation_kl(sx, tx, 4, attention_mask, mask).backward()
    assert torch.isfinite(sx.grad).all() and sx.grad.abs().sum() > 0
    assert tx.grad is None  # the teacher is detached
    # Rows that do not count get no gradient of their own except as keys of counted rows: padding rows none.
    assert sx.grad[1, :2].abs().sum() == 0


def test_relation_kl_indivisible_width():
    sx, tx, attention_mask, mask = random_inputs(4, (30, 48))
    with pytest.raises(ValueError, match="divisible"):
        relation_kl(sx, tx, 4, attention_mask, mask)


def test_relation_loss_between_models_of_different_widths(tiny_llama, batch):
    ids, attention_mask = batch
    student = tiny_llama(VOCAB, num_layers=2, hidden=32, seed=1)
    teacher = tiny_llama(VOCAB, num_layers=4, hidden=48, seed=2)
    pairs = [(0, 1), (1, 3)]
    with torch.no_grad(), QKVCapture(teacher, [t for _, t in pairs]) as t_cap:
        teacher(input_ids=ids, attention_mask=attention_mask)
    with QKVCapture(student, [s for s, _ in pairs]) as s_cap:
        student(input_ids=ids, attention_mask=attention_mask)
    widths = [x.shape[-1] for cap in (s_cap, t_cap) for layer in cap.outputs.values() for x in layer.values()]
    heads = default_relation_heads(widths)
    assert heads == 8
    mask = attention_mask.bool()
    total, parts = relation_loss(s_cap, t_cap, pairs, heads, attention_mask, mask)
    assert len(parts) == 6 and "s1_t3_v" in parts
    expected = sum(
        reference_relation_kl(s_cap.outputs[s][k], t_cap.outputs[t][k], heads, attention_mask, mask)
        for s, t in pairs
        for k in "qkv"
    )
    assert total.item() == pytest.approx(expected / 6, rel=1e-4)
    total.backward()
    assert student.model.layers[1].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert torch.isfinite(student.model.layers[0].self_attn.k_proj.weight.grad).all()
    # Identical models give zero.
    same, _ = relation_loss(t_cap, t_cap, [(1, 1), (3, 3)], heads, attention_mask, mask, kinds=("q", "v"))
    assert same.item() == pytest.approx(0.0, abs=1e-5)


def test_relation_loss_missing_capture():
    with pytest.raises(ValueError, match="no captured 'q' for pair"):
        relation_loss({}, {}, [(0, 0)], 4, None, torch.ones(1, 3, dtype=torch.bool))
