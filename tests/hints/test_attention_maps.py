"""Attention-map KL on eager attention probabilities."""

from __future__ import annotations

import pytest
import torch

from lmdistill.errors import UserError
from lmdistill.hints import attention_map_kl, layer_attentions

VOCAB = 64


def eager(model):
    model.set_attn_implementation("eager")
    return model


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (2, 6), generator=gen)
    attention_mask = torch.ones(2, 6, dtype=torch.long)
    attention_mask[1, :2] = 0
    return ids, attention_mask


def maps(model, ids, attention_mask, layer):
    out = model(input_ids=ids, attention_mask=attention_mask, output_attentions=True, use_cache=False)
    return layer_attentions(out, layer)


def reference(student, teacher, mask):
    student, teacher = student.double(), teacher.double()
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    total = 0.0
    for b, i in mask.nonzero().tolist():
        for h in range(student.shape[1]):
            p, q = teacher[b, h, i], student[b, h, i]
            keep = p > 0
            total += (p[keep] * (p[keep].log() - q[keep].log())).sum().item() / student.shape[1]
    return total


def test_identical_zero_different_positive(tiny_llama, batch):
    ids, attention_mask = batch
    student = eager(tiny_llama(VOCAB, num_layers=2, seed=1))
    teacher = eager(tiny_llama(VOCAB, num_layers=2, seed=2))
    mask = attention_mask.bool()
    s_map = maps(student, ids, attention_mask, 1)
    assert s_map.shape == (2, 4, 6, 6)
    assert (s_map[0, :, 0, 1:] == 0).all()  # causal zeros
    with torch.no_grad():
        t_map = maps(teacher, ids, attention_mask, 1)
    assert attention_map_kl(s_map, s_map.detach().clone(), mask).item() == pytest.approx(0.0, abs=1e-6)
    value = attention_map_kl(s_map, t_map, mask)
    assert value.item() > 0 and torch.isfinite(value)
    assert value.item() == pytest.approx(reference(s_map, t_map, mask), rel=1e-4, abs=1e-6)
    value.backward()
    grad = student.model.layers[1].self_attn.q_proj.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_head_mismatch_averages_heads(tiny_llama, batch):
    ids, attention_mask = batch
    student = eager(tiny_llama(VOCAB, num_layers=2, hidden=32, heads=2, kv_heads=1, seed=1))
    teacher = eager(tiny_llama(VOCAB, num_layers=3, hidden=48, heads=4, kv_heads=2, seed=2))
    mask = attention_mask.bool()
    s_map = maps(student, ids, attention_mask, 0)
    with torch.no_grad():
        t_map = maps(teacher, ids, attention_mask, 2)
    assert s_map.shape[1] == 2 and t_map.shape[1] == 4
    value = attention_map_kl(s_map, t_map, mask)
    assert torch.isfinite(value) and value.item() > 0
    assert value.item() == pytest.approx(reference(s_map, t_map, mask), rel=1e-4, abs=1e-6)
    value.backward()
    assert torch.isfinite(student.model.layers[0].self_attn.q_proj.weight.grad).all()


def test_zero_student_probability_is_finite():
    # A student probability of exactly 0 where the teacher has mass: large but finite, finite gradient.
    teacher = torch.tensor([[[[0.5, 0.5], [0.5, 0.5]]]])
    student = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]], requires_grad=True)
    value = attention_map_kl(student, teacher, torch.ones(1, 2, dtype=torch.bool))
    assert torch.isfinite(value) and value.item() > 10
    value.backward()
    assert torch.isfinite(student.grad).all()


def test_uncounted_rows_ignored():
    gen = torch.Generator().manual_seed(0)
    student = torch.softmax(torch.randn(1, 2, 3, 3, generator=gen), -1)
    teacher = torch.softmax(torch.randn(1, 2, 3, 3, generator=gen), -1)
    mask = torch.tensor([[True, False, True]])
    changed = student.clone()
    changed[:, :, 1] = torch.tensor([1.0, 0.0, 0.0])
    assert attention_map_kl(changed, teacher, mask).item() == pytest.approx(
        attention_map_kl(student, teacher, mask).item()
    )


def test_sdpa_model_without_attentions(tiny_llama, batch):
    ids, attention_mask = batch
    out = tiny_llama(VOCAB)(input_ids=ids, attention_mask=attention_mask)  # no output_attentions
    with pytest.raises(UserError, match="eager"):
        layer_attentions(out, 0)
