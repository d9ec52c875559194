"""`lmdistill.distillation_trainer`: the TRL-shaped Python entry tokenizes and collates as `lmdistill train`
does, so the same rows and settings give the same first-step loss; the teacher may be a model, a store
folder or a server URL. Real tiny models, the real CLI, a real `lmdistill serve` on loopback."""

from __future__ import annotations

import json

import pytest
import yaml

from lmdistill.cli import main

ROWS = [
    {
        "messages": [
            {"role": "user", "content": "Hello world"},
            {"role": "assistant", "content": "how are you?"},
        ]
    },
    {"prompt": "The cat sat", "completion": " on the mat."},
    {"text": "Distillation trains a small student to imitate a large teacher."},
    {"prompt": "What is the capital of France?", "completion": " Paris."},
]
SETTINGS = {
    "data": {"max_length": 48},
    "distill": {"loss": "jsd", "kd_ratio": 0.7},
    "train": {
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "learning_rate": 0.01,
        "logging_steps": 1,
        "save_steps": 1,
        "extra": {"use_cpu": True, "disable_tqdm": True},
    },
}


def _cli_losses(tmp_path, teacher, student, data, **teacher_settings) -> list[float]:
    cfg = yaml.safe_load(yaml.safe_dump(SETTINGS))
    cfg["teacher"] = {"name": str(teacher), **teacher_settings}
    cfg["student"] = {"name": str(student)}
    cfg["data"]["train"] = str(data)
    cfg["train"]["output_dir"] = str(tmp_path / "cli")
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    state = json.loads((tmp_path / "cli" / "checkpoint-2" / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


def _api_trainer(tmp_path, teacher, student_dir, rows, **teacher_settings):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmdistill import RunConfig, distillation_trainer
    from lmdistill.yamlconfig import build

    raw = yaml.safe_load(yaml.safe_dump(SETTINGS))
    raw["train"]["output_dir"] = str(tmp_path / "api")
    raw["train"]["save_steps"] = 100
    raw["teacher"] = dict(teacher_settings)
    args = build(RunConfig, raw, "test")
    return distillation_trainer(
        model=AutoModelForCausalLM.from_pretrained(student_dir),
        teacher_model=teacher,
        args=args,
        train_dataset=rows,
        processing_class=AutoTokenizer.from_pretrained(student_dir),
        log=lambda _: None,
    )


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS * 2))
    return path


def test_first_step_loss_equals_the_cli_with_a_model_teacher(tiny_model_dirs, tmp_path, data):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    teacher_dir, student_dir = tiny_model_dirs
    cli = _cli_losses(tmp_path, teacher_dir, student_dir, data)
    # a datasets.Dataset of mixed layouts does not hold; the same rows as a list do, and a Dataset of one layout
    trainer = _api_trainer(tmp_path, AutoModelForCausalLM.from_pretrained(teacher_dir), student_dir, ROWS * 2)
    trainer.train()
    api = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert api == pytest.approx(cli, rel=1e-5)
    assert trainer.teacher.model is not None and not any(
        p.requires_grad for p in trainer.teacher.model.parameters()
    )
    texts = Dataset.from_list([r for r in ROWS if "prompt" in r] * 2)
    again = _api_trainer(tmp_path, AutoModelForCausalLM.from_pretrained(teacher_dir), student_dir, texts)
    assert len(again.train_dataset) == 4 and all("labels" in f for f in again.train_dataset)


def test_first_step_loss_equals_the_cli_with_a_server_teacher(tiny_model_dirs, tmp_path, data, served):
    url, _ = served
    teacher_dir, student_dir = tiny_model_dirs
    server = {"server": url, "server_model": "tiny", "server_k": 8}
    cli = _cli_losses(tmp_path, teacher_dir, student_dir, data, **server)
    trainer = _api_trainer(
        tmp_path, url, student_dir, ROWS * 2, name=str(teacher_dir), server_model="tiny", server_k=8
    )
    trainer.train()
    assert [h["loss"] for h in trainer.state.log_history if "loss" in h] == pytest.approx(cli, rel=1e-5)
    assert trainer.teacher.name == f"tiny at {url}"


def test_bad_rows_and_a_missing_tokenizer_are_one_clear_error(tiny_model_dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    from lmdistill import RunConfig, distillation_trainer
    from lmdistill.errors import UserError

    teacher = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[0])
    student = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[1])
    with pytest.raises(UserError, match="processing_class"):
        distillation_trainer(student, teacher, RunConfig(), ROWS)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dirs[1])
    with pytest.raises(UserError, match="train_dataset:2"):
        distillation_trainer(student, teacher, RunConfig(), [ROWS[0], {"nope": 1}], processing_class=tok)
    with pytest.raises(UserError, match="teacher_model is None"):
        distillation_trainer(student, None, RunConfig(), ROWS, processing_class=tok)
