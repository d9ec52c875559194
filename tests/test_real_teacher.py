"""End to end on the real embedded teacher, SmolLM2-135M-Instruct (slow: a few minutes)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from lmdistill.cli import main
from tests.conftest import float64_token_scores

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.slow


def test_shipped_recipe_trains_a_few_steps(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from lmdistill.training.trainer import DistillTrainer

    seen = {}
    train = DistillTrainer.train

    def recorded_train(self, *args, **kwargs):  # the student, teacher and data the first step starts from
        seen.update(student=copy.deepcopy(self.model), teacher=self.teacher.model)
        seen["features"] = [self.train_dataset[i] for i in range(len(self.train_dataset))]
        return train(self, *args, **kwargs)

    monkeypatch.setattr(DistillTrainer, "train", recorded_train)
    monkeypatch.chdir(ROOT)  # the recipe names its data relative to the repository root
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "configs/logits_kd.yaml",
            f"train.output_dir={out}",
            "train.max_steps=3",
            "train.logging_steps=1",
            "train.per_device_train_batch_size=4",
            "data.max_examples=4",  # one batch: every step sees all four examples
            "data.eval=null",
            "student.num_layers=4",
            "train.extra={use_cpu: true}",
        ]
    )
    assert code == 0
    student = AutoModelForCausalLM.from_pretrained(out / "student")
    assert student.config.num_hidden_layers == 4 and student.config.vocab_size == 49152
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "loss" in h]
    assert len(logged) == 3
    # The first step's terms recomputed in float64 from the student before it and the teacher:
    # per target token, CE of the student and KL(teacher || student) at T = 1, and the recipe's loss
    # 0.1 CE + 0.9 KD (kd_ratio 0.9).
    first = logged[0]
    assert len(seen["features"]) == 4
    before, teacher = (copy.deepcopy(seen[k]).double().eval() for k in ("student", "teacher"))
    ppl, _, kl, tokens = float64_token_scores(before, teacher, seen["features"], 49152)
    ce = math.log(ppl)  # mean CE per target token
    assert first["target_tokens"] == tokens
    assert first["ce"] == pytest.approx(ce, rel=1e-5, abs=1e-6) and first["kd"] == pytest.approx(
        kl, rel=1e-4, abs=1e-6
    )
    assert first["loss"] == pytest.approx(0.1 * ce + 0.9 * kl, rel=1e-4)


def test_demo_fast_runs_the_whole_pipeline(tmp_path, monkeypatch):
    import lmdistill.demo as demo
    from lmdistill.demo import DemoConfig, run_demo

    seen = {"features": [], "students": {}}
    scorer, shrink, train = demo.HeldoutScorer, demo.shrink_model, demo.train_student

    def heldout_scorer(teacher, features, *args, **kwargs):
        seen["teacher"] = teacher
        seen["features"].append(features)
        return scorer(teacher, features, *args, **kwargs)

    def shrink_model(*args, **kwargs):
        seen["before"] = shrink(*args, **kwargs)
        return seen["before"]

    def train_student(method, *args, **kwargs):
        student, seconds = train(method, *args, **kwargs)
        seen["students"][method.name] = student
        return student, seconds

    monkeypatch.setattr(demo, "HeldoutScorer", heldout_scorer)
    monkeypatch.setattr(demo, "shrink_model", shrink_model)
    monkeypatch.setattr(demo, "train_student", train_student)
    results = run_demo(DemoConfig(output_dir=str(tmp_path / "demo"), fast=True))
    models = results["models"]
    # Each row's held-out figures recomputed in float64 from the model it reports on, against the
    # teacher, on the teacher's held-out answers (perplexity, top-1, KL) and the human ones (perplexity).
    teacher = copy.deepcopy(seen["teacher"]).double().eval()
    held, human = seen["features"]
    rows = {"teacher": seen["teacher"], "student before training": seen["before"]}
    rows |= {f"student, {name}": model for name, model in seen["students"].items()}
    assert set(rows) == set(models)
    for name, model in rows.items():
        model = teacher if model is seen["teacher"] else copy.deepcopy(model).double().eval()
        ppl, top1, kl, tokens = float64_token_scores(model, teacher, held, 49152)
        figures = models[name]
        assert figures["tokens"] == tokens, name
        assert figures["top1"] == pytest.approx(top1, abs=1e-9), name
        assert figures["kl"] == pytest.approx(kl, rel=1e-4, abs=1e-6), name
        assert figures["perplexity"] == pytest.approx(ppl, rel=1e-4), name
        assert figures["human_perplexity"] == pytest.approx(
            float64_token_scores(model, teacher, human, 49152)[0], rel=1e-4
        ), name
    kd, before = models["student, KD (CE + forward KL)"], models["student before training"]
    assert kd["kl"] < before["kl"], "a few KD steps move the student towards the teacher"
    saved = tmp_path / "demo" / "student" / "model.safetensors"
    from safetensors.torch import load_file

    kd_student = seen["students"]["KD (CE + forward KL)"].state_dict()
    assert all(torch.equal(w, kd_student[k].to(w.dtype)) for k, w in load_file(saved).items())
    assert "top-1 agreement" in (tmp_path / "demo" / "report.md").read_text()
