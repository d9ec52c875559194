"""Hidden-state hint loss on two tiny Llamas of different widths."""

from __future__ import annotations

import pytest
import torch

from lmdistill.hints import HINT_METRICS, HintProjections, hidden_state_loss, resolve_layer_map

VOCAB = 64


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (2, 7), generator=gen)
    attention_mask = torch.ones(2, 7, dtype=torch.long)
    attention_mask[1, :3] = 0  # left padding in the second row
    return ids, attention_mask


@pytest.fixture
def models(tiny_llama):
    student = tiny_llama(VOCAB, num_layers=2, hidden=32, seed=1)
    teacher = tiny_llama(VOCAB, num_layers=4, hidden=48, seed=2)
    return student, teacher


def run(model, ids, attention_mask):
    return model(
        input_ids=ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False
    ).hidden_states


def reference(s_states, t_states, pairs, proj, metric, mask):
    """Token-by-token float64 loop."""
    total = 0.0
    for s, t in pairs:
        key = f"s{s}_t{t}"
        module = proj.maps[key]
        weight = module.weight.double() if isinstance(module, torch.nn.Linear) else None
        pair_sum = 0.0
        for b in range(mask.shape[0]):
            for i in range(mask.shape[1]):
                if not mask[b, i]:
                    continue
                x = s_states[s + 1][b, i].double()
                y = t_states[t + 1][b, i].double()
                if weight is not None:
                    x = weight @ x
                if metric == "mse":
                    pair_sum += ((x - y) ** 2).mean().item()
                elif metric == "cosine":
                    pair_sum += 1 - (x @ y / (x.norm() * y.norm())).item()
                else:
                    xn = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-5)
                    yn = (y - y.mean()) / torch.sqrt(y.var(unbiased=False) + 1e-5)
                    pair_sum += ((xn - yn) ** 2).mean().item()
        total += pair_sum
    return total / len(pairs)


@pytest.mark.parametrize("metric", list(HINT_METRICS))
def test_matches_hand_loop(models, batch, metric):
    student, teacher = models
    ids, attention_mask = batch
    pairs = resolve_layer_map("uniform", 2, 4)
    assert pairs == [(0, 1), (1, 3)]
    proj = HintProjections(pairs, 32, 48)
    with torch.no_grad():
        proj.maps["s0_t1"].weight.normal_(std=0.2)  # not only the identity part
        s_states, t_states = run(student, ids, attention_mask), run(teacher, ids, attention_mask)
        mask = attention_mask.bool()
        total, parts = hidden_state_loss(s_states, t_states, pairs, proj, metric, mask)
    assert total.dtype == torch.float32 and total.shape == ()
    assert set(parts) == {"s0_t1", "s1_t3"}
    expected = reference(s_states, t_states, pairs, proj, metric, mask)
    assert total.item() == pytest.approx(expected, rel=1e-4)
    assert total.item() == pytest.approx(sum(p.item() for p in parts.values()) / 2, rel=1e-6)


def test_masked_positions_do_not_matter(models, batch):
    student, teacher = models
    ids, attention_mask = batch
    pairs = [(0, 1), (1, 3)]
    proj = HintProjections(pairs, 32, 48)
    mask = attention_mask.bool()
    mask[0, 0] = False  # a counted-out real token too (a prompt token, say)
    with torch.no_grad():
        s_states, t_states = run(student, ids, attention_mask), run(teacher, ids, attention_mask)
        total, _ = hidden_state_loss(s_states, t_states, pairs, proj, "mse", mask)
        noisy = [
            tuple(h.masked_fill(~mask[..., None], 1e4) for h in states) for states in (s_states, t_states)
        ]
        changed, _ = hidden_state_loss(*noisy, pairs, proj, "mse", mask)
    assert changed.item() == total.item()


def test_gradients_reach_student_and_projection_not_teacher(models, batch):
    student, teacher = models
    ids, attention_mask = batch
    pairs = [(0, 1), (1, 3)]
    proj = HintProjections(pairs, 32, 48)
    # The teacher runs with grad enabled on purpose: the loss itself must detach it.
    s_states, t_states = run(student, ids, attention_mask), run(teacher, ids, attention_mask)
    total, parts = hidden_state_loss(s_states, t_states, pairs, proj, "ln_mse", attention_mask.bool())
    total.backward()
    assert all(not p.requires_grad for p in parts.values())
    assert proj.maps["s0_t1"].weight.grad is not None and proj.maps["s0_t1"].weight.grad.abs().sum() > 0
    layer0 = student.model.layers[0].mlp.down_proj.weight.grad
    assert layer0 is not None and layer0.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_layer_out_of_range(models, batch):
    student, teacher = models
    ids, attention_mask = batch
    with torch.no_grad():
        s_states, t_states = run(student, ids, attention_mask), run(teacher, ids, attention_mask)
    proj = HintProjections([(0, 4)], 32, 48)
    with pytest.raises(ValueError, match="teacher layer 4"):
        hidden_state_loss(s_states, t_states, [(0, 4)], proj, "mse", attention_mask.bool())
