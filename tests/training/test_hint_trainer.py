"""Hint terms inside DistillTrainer: logged apart, projections trained and checkpointed, hooks removed."""

from __future__ import annotations

import copy

import pytest
import torch

from lmdistill.chunked import LossSpec
from lmdistill.config import HintConfig
from lmdistill.data import DistillCollator
from lmdistill.errors import UserError
from lmdistill.training.hint_terms import PROJECTIONS_FILE, HintTerms
from lmdistill.training.trainer import DistillTrainer
from tests.conftest import tiny_training_args
from tests.training.test_trainer import VOCAB, _features


def _models(tiny_llama):
    student = tiny_llama(VOCAB, num_layers=2, hidden=32, heads=4, kv_heads=2, seed=0)
    teacher = tiny_llama(VOCAB, num_layers=4, hidden=48, heads=4, kv_heads=2, seed=1)
    return student, teacher


def _trainer(tiny_llama, tmp_path, hint_cfg: HintConfig, **kw):
    student, teacher = _models(tiny_llama)
    return DistillTrainer(
        model=student,
        teacher=teacher,
        hints=HintTerms(hint_cfg, student, teacher, log=lambda *_: None),
        spec=LossSpec(loss="forward_kl", ce_weight=0.5, kd_weight=0.5, vocab=VOCAB, chunk_size=8),
        args=tiny_training_args(tmp_path, **kw),
        train_dataset=_features(16),
        data_collator=DistillCollator(pad_token_id=0),
    )


ALL = HintConfig(hidden_weight=1.0, relation_weight=0.5, attention_weight=0.5, layers="uniform")


def test_every_term_is_logged_and_projections_learn(tiny_llama, tmp_path):
    trainer = _trainer(tiny_llama, tmp_path, ALL, max_steps=12, optim="adamw_torch", learning_rate=1e-2)
    before = [p.detach().clone() for p in trainer.hints.parameters()]
    assert before, "widths 32 -> 48 need learned projections"
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 12 and all(
        {"ce", "kd", "hidden", "relation", "attention"} <= h.keys() for h in logged
    )
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.hints.parameters(), strict=True))
    assert logged[-1]["hidden"] < logged[0]["hidden"]


def test_first_step_terms_match_a_float64_recomputation(tiny_llama, tmp_path):
    """One step over all 16 examples at once: every logged term, and the loss, recomputed here in
    float64 from copies of the models taken before the step, one unpadded example at a time, from
    transformers' own outputs (logits, hidden states, attention maps) and the projections' weights."""
    trainer = _trainer(tiny_llama, tmp_path, ALL, max_steps=1, per_device_train_batch_size=16)
    assert trainer.hints.pairs == [(0, 1), (1, 3)]  # uniform, 2 -> 4 layers: round((i + 1) * 4 / 2) - 1
    assert trainer.hints.relation_pairs == trainer.hints.attention_pairs == [(1, 3)]  # "last"
    assert trainer.hints.relation_heads == 8  # the largest R <= 12 dividing q 32, k/v 16, q 48, k/v 24
    with torch.no_grad():  # sharper attention than at random init: relation and map terms well above 0
        for m in (trainer.model, trainer.teacher.model):
            for layer in m.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.weight.mul_(4.0)
    student, teacher = (copy.deepcopy(m).double() for m in (trainer.model, trainer.teacher.model))
    for m in (student, teacher):
        m.set_attn_implementation("eager")
    phi = {k: m.weight.detach().double().clone() for k, m in trainer.hints.projections.maps.items()}
    trainer.train()
    [h] = [h for h in trainer.state.log_history if "loss" in h]

    sums = dict.fromkeys(("ce", "kd", "hidden", "relation", "attention"), 0.0)
    tokens = 0
    with torch.no_grad():
        for f in _features(16):
            ids = torch.tensor([f["input_ids"]])
            rows = torch.tensor([y != -100 for y in f["labels"][1:]] + [False])  # position t predicts t + 1
            targets = torch.tensor(f["labels"][1:])[rows[:-1]]
            tokens += int(rows.sum())
            kw = dict(output_hidden_states=True, output_attentions=True)
            s_out, t_out = student(ids, **kw), teacher(ids, **kw)
            log_q = torch.log_softmax(s_out.logits[0, rows], -1)
            log_p = torch.log_softmax(t_out.logits[0, rows], -1)
            sums["ce"] -= float(log_q.gather(1, targets[:, None]).sum())
            sums["kd"] += float((log_p.exp() * (log_p - log_q)).sum())
            # hidden: mean over pairs of sum over positions of mean_D (phi h_s - h_t)^2
            for si, ti in trainer.hints.pairs:
                h_s, h_t = s_out.hidden_states[si + 1][0, rows], t_out.hidden_states[ti + 1][0, rows]
                sums["hidden"] += float(((h_s @ phi[f"s{si}_t{ti}"].T - h_t) ** 2).mean(-1).sum()) / 2
            # relations (MiniLMv2): q, k, v of the layer's normed input, 8 heads, softmax(x x^T / sqrt(w))
            # over earlier tokens, KL(teacher || student) per row, mean over heads, mean over q/k/v
            for proj in ("q_proj", "k_proj", "v_proj"):
                s_rel, t_rel = (
                    _relations(m, out, layer, proj)
                    for m, out, layer in ((student, s_out, 1), (teacher, t_out, 3))
                )
                sums["relation"] += float(_kl_rows(t_rel, s_rel)[:, rows].mean(0).sum()) / 3
            # attention maps: 4 heads each, one to one, KL(teacher || student) per row, mean over heads
            s_att, t_att = s_out.attentions[1][0], t_out.attentions[3][0]
            sums["attention"] += float(_kl_rows(t_att, s_att)[:, rows].mean(0).sum())
    assert h["target_tokens"] == tokens
    for key, value in sums.items():
        assert h[key] == pytest.approx(value / tokens, rel=1e-5, abs=1e-6), key  # logged to 6 decimals
    weights = {"ce": 0.5, "kd": 0.5, "hidden": 1.0, "relation": 0.5, "attention": 0.5}
    assert h["loss"] == pytest.approx(sum(weights[k] * v for k, v in sums.items()) / tokens, rel=1e-5)


def _relations(model, out, layer: int, proj: str, heads: int = 8) -> torch.Tensor:
    """[R, S, S] relation distributions of decoder layer `layer`'s q, k or v projection."""
    block = model.model.layers[layer]
    x = getattr(block.self_attn, proj)(block.input_layernorm(out.hidden_states[layer]))[0]  # [S, W]
    seq, width = x.shape
    x = x.reshape(seq, heads, width // heads).transpose(0, 1)  # [R, S, w]
    scores = x @ x.transpose(1, 2) / (width // heads) ** 0.5
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    return torch.softmax(scores.masked_fill(~causal, float("-inf")), -1)


def _kl_rows(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis, 0 log 0 = 0: [..., S, S] -> [..., S]."""
    return torch.where(p > 0, p * (p.log() - q.log()), torch.zeros_like(p)).sum(-1)


def test_hooks_are_removed_after_training(tiny_llama, tmp_path):
    trainer = _trainer(tiny_llama, tmp_path, HintConfig(relation_weight=1.0, relation_layers="first_last"))

    def hooks(model):  # transformers keeps output-recording hooks of its own: compare, don't expect none
        return {name: (len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in model.named_modules()}

    trainer.train()
    after_first = [hooks(trainer.model), hooks(trainer.teacher.model)]
    trainer.args.max_steps = 4
    trainer.train()  # a second run on the same models adds nothing
    assert [hooks(trainer.model), hooks(trainer.teacher.model)] == after_first
    q_proj = trainer.model.model.layers[0].self_attn.q_proj
    assert not q_proj._forward_hooks


def test_resume_restores_projections(tiny_llama, tmp_path):
    cfg = HintConfig(hidden_weight=1.0, layers="last")
    kw = dict(max_steps=6, per_device_train_batch_size=2, optim="adamw_torch", learning_rate=1e-2)
    straight = _trainer(tiny_llama, tmp_path / "straight", cfg, **kw)
    straight.train()
    first = _trainer(tiny_llama, tmp_path / "resumed", cfg, save_strategy="steps", save_steps=3, **kw)
    first.train()
    assert (tmp_path / "resumed" / "checkpoint-3" / PROJECTIONS_FILE).is_file()
    second = _trainer(tiny_llama, tmp_path / "resumed", cfg, **kw)
    second.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-3"))
    for a, b in zip(straight.hints.parameters(), second.hints.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(straight.model.parameters(), second.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_width_mismatch_without_projection_names_the_pair(tiny_llama):
    student, teacher = _models(tiny_llama)
    with pytest.raises(UserError, match=r"s1.*t3|\(1, 3\)|\[1, 3\]"):
        HintTerms(HintConfig(hidden_weight=1.0, layers="last", projection="none"), student, teacher)


def test_resume_from_a_checkpoint_without_projections_is_refused(tiny_llama, tmp_path):
    (tmp_path / "ckpt").mkdir()
    trainer = _trainer(tiny_llama, tmp_path, HintConfig(hidden_weight=1.0))
    with pytest.raises(UserError, match=PROJECTIONS_FILE):
        trainer.hints.load(tmp_path / "ckpt")


def test_attention_maps_restore_the_attention_implementation(tiny_llama, tmp_path):
    trainer = _trainer(tiny_llama, tmp_path, HintConfig(attention_weight=1.0), max_steps=1)
    for _ in range(2):  # eager while training, back to sdpa after; a second run works the same
        trainer.train()
        assert trainer.model.config._attn_implementation == "sdpa"
        assert trainer.teacher.model.config._attn_implementation == "sdpa"
    assert all(h["attention"] > 0 for h in trainer.state.log_history if "loss" in h)
