"""End to end on the real embedded teacher, SmolLM2-135M-Instruct (slow: about two minutes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmdistill.cli import main

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.slow


def test_shipped_recipe_trains_a_few_steps(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

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
            "data.max_examples=12",
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
    assert len(logged) == 3 and all(h["kd"] > 0 and h["ce"] > 0 for h in logged)


def test_demo_fast_runs_the_whole_pipeline(tmp_path):
    from lmdistill.demo import DemoConfig, run_demo

    results = run_demo(DemoConfig(output_dir=str(tmp_path / "demo"), fast=True))
    models = results["models"]
    assert models["teacher"]["top1"] == 1.0 and models["teacher"]["kl"] == pytest.approx(0.0, abs=1e-5)
    kd = models["student, KD (CE + forward KL)"]
    before = models["student before training"]
    assert kd["kl"] < before["kl"], "a few KD steps move the student towards the teacher"
    assert (tmp_path / "demo" / "student" / "model.safetensors").is_file()
    assert "top-1 agreement" in (tmp_path / "demo" / "report.md").read_text()
