"""`lmdistill` end to end on tiny real models and files: a run, a resume, and each user mistake as one
clear message with exit 2 and no finished-looking student left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lmdistill.cli import main
from lmdistill.errors import UserError

ROWS = [
    {
        "messages": [
            {"role": "user", "content": "Hello world"},
            {"role": "assistant", "content": "how are you?"},
        ]
    },
    {"prompt": "The cat sat", "completion": " on the mat."},
    {"text": "Distillation trains a small student to imitate a large teacher."},
    {
        "messages": [
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
        ]
    },
]


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def run_files(tmp_path, tiny_model_dirs):
    teacher, student = tiny_model_dirs
    data = _write_jsonl(tmp_path / "train.jsonl", ROWS * 4)
    cfg = {
        "teacher": {"name": str(teacher)},
        "student": {"name": str(student)},
        "data": {"train": str(data), "max_length": 64},
        "distill": {"loss": "forward_kl", "kd_ratio": 0.5},
        "train": {
            "output_dir": str(tmp_path / "out"),
            "max_steps": 4,
            "per_device_train_batch_size": 4,
            "learning_rate": 1e-3,
            "logging_steps": 1,
            "save_steps": 2,
            "extra": {"use_cpu": True, "disable_tqdm": True},
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, tmp_path / "out"


def test_train_writes_a_loadable_student_and_resumes(run_files, capsys):
    from transformers import AutoModelForCausalLM

    config, out = run_files
    assert main(["train", str(config)]) == 0
    student = AutoModelForCausalLM.from_pretrained(out / "student")
    assert student.config.num_hidden_layers == 2
    assert (out / "student" / "model.safetensors").is_file()
    assert (out / "student" / "tokenizer.json").is_file()
    resolved = yaml.safe_load((out / "lmdistill_config.yaml").read_text())
    assert resolved["distill"]["kd_ratio"] == 0.5 and resolved["train"]["max_steps"] == 4
    printed = capsys.readouterr().out
    assert "parameters" in printed.lower()
    # Resume from the newest checkpoint and go on to step 6.
    assert main(["train", str(config), "train.resume_from_checkpoint=latest", "train.max_steps=6"]) == 0
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6


def test_shrunk_student_from_teacher(run_files):
    config, out = run_files
    assert (
        main(["train", str(config), "student.name=null", "student.layers=[0, 3]", "train.max_steps=1"]) == 0
    )
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "student").config.num_hidden_layers == 2


def _fails(argv, capsys, match: str, out: Path | None = None):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert match in err, err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line.lower()]) == 1, err
    if out is not None:
        assert not (out / "student").exists()


def test_user_mistakes_are_one_line_each(run_files, tmp_path, capsys):
    config, out = run_files
    c = str(config)
    _fails(["train", c, f"data.train={tmp_path / 'nope.jsonl'}"], capsys, "nope.jsonl", out)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    _fails(["train", c, f"data.train={bad}"], capsys, "bad.jsonl:2", out)
    short = _write_jsonl(
        tmp_path / "short.jsonl", [{"prompt": "The cat sat on the mat " * 10, "completion": "x"}]
    )
    _fails(["train", c, f"data.train={short}", "data.max_length=8"], capsys, "no examples left", out)
    _fails(["train", c, "distill.loss=kl"], capsys, "unknown loss", out)
    _fails(["train", c, "distill.kd_ratio=2"], capsys, "kd_ratio must be in [0, 1]", out)
    _fails(["train", c, "distill.temperature=0"], capsys, "temperature must be a finite number > 0", out)
    _fails(["train", c, "train.extra={bogus_key: 1}"], capsys, "TrainingArguments refused", out)
    _fails(["train", c, f"student.name={tmp_path / 'missing-model'}"], capsys, "model not found", out)
    _fails(["train", str(tmp_path / "missing.yaml")], capsys, "config file not found")


def test_tokenizer_mismatch_points_to_black_box(run_files, tmp_path, capsys, tiny_llama):
    from tests.conftest import build_tiny_tokenizer

    config, out = run_files
    other = tmp_path / "other"
    tok = build_tiny_tokenizer(other, vocab_size=300)
    tiny_llama(len(tok)).save_pretrained(other)
    code = main(["train", str(config), f"student.name={other}"])
    err = capsys.readouterr().err
    assert code == 2 and "black-box" in err and "Traceback" not in err
    assert not (out / "student").exists()


def test_console_script_exit_code_and_help(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    exe = Path(sys.executable).parent / "lmdistill"
    ok = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and "train" in ok.stdout and "demo" in ok.stdout
    bad = subprocess.run(
        [str(exe), "train", str(tmp_path / "none.yaml")], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"lmdistill train: error: config file not found: {tmp_path / 'none.yaml'}"


def test_config_command_prints_fields(capsys):
    assert main(["config"]) == 0
    text = capsys.readouterr().out
    assert "kd_ratio: 0.5" in text and "chunk_size" in text


def test_lora_student_trains_adapters_and_ships_a_merged_folder(run_files):
    from transformers import AutoModelForCausalLM

    config, out = run_files
    before = AutoModelForCausalLM.from_pretrained(yaml.safe_load(config.read_text())["student"]["name"])
    assert main(["train", str(config), "student.lora_r=4", "train.max_steps=2"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(out / "student")
    assert not any("lora" in k for k in merged.state_dict())
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, before.state_dict()[k])]
    assert changed and all("proj" in k for k in changed), changed  # only adapted linears moved


def test_eval_data_gives_agreement_report(run_files, capsys):
    config, out = run_files
    data = yaml.safe_load(config.read_text())["data"]["train"]
    assert main(["train", str(config), f"data.eval={data}", "train.max_steps=2"]) == 0
    report = json.loads((out / "eval.json").read_text())
    # the same figures recomputed the hard way from the saved student, the teacher and the data
    from lmdistill.data import load_records, tokenize_records
    from lmdistill.models import load_model, load_tokenizer
    from tests.conftest import float64_token_scores

    cfg = yaml.safe_load(config.read_text())
    tok = load_tokenizer(cfg["teacher"]["name"])
    features, _ = tokenize_records(load_records(data), tok, cfg["data"]["max_length"], source=data)
    student, teacher = load_model(out / "student").eval(), load_model(cfg["teacher"]["name"]).eval()
    ppl, top1, kl, tokens = float64_token_scores(student, teacher, features, len(tok))
    assert report["tokens"] == tokens > 0
    assert report["top1"] == pytest.approx(top1) and report["kl"] == pytest.approx(kl, rel=1e-3)
    assert report["perplexity"] == pytest.approx(ppl, rel=1e-4)
    assert "top-1 agreement with teacher" in capsys.readouterr().out


def test_latest_skips_incomplete_checkpoints(tmp_path):
    from lmdistill.training.run import resolve_checkpoint

    for step, files in ((5, ["trainer_state.json"]), (10, ["trainer_state.json", "p.bin"]), (20, [])):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name in files:
            (folder / name).write_text("{}")
    (tmp_path / "checkpoint-foo").mkdir()
    assert resolve_checkpoint("latest", str(tmp_path)).endswith("checkpoint-10")  # 20 was cut mid-save
    with pytest.raises(UserError, match="no checkpoint to resume from"):  # never a silent fresh start
        resolve_checkpoint("latest", str(tmp_path), needs=("x.bin",))
    assert resolve_checkpoint(None, str(tmp_path)) is None


def test_export_and_eval_commands(tiny_model_dirs, tmp_path, capsys):
    teacher, student = tiny_model_dirs
    out = tmp_path / "exported"
    assert main(["export", str(student), str(out), "--dtype", "bfloat16"]) == 0
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    _fails(["export", str(tmp_path / "nothing"), str(tmp_path / "o2")], capsys, "error")
    task = tmp_path / "qa.jsonl"
    task.write_text(json.dumps({"question": "What is 2 + 2?", "answer": "4"}) + "\n")
    report = tmp_path / "report"
    args = ["eval", str(student), "--teacher", str(teacher), "--task", str(task), "--no-memory"]
    assert main([*args, "--output-dir", str(report), "--max-new-tokens", "4"]) == 0
    results = json.loads((report / "results.json").read_text())
    assert str(student) in json.dumps(results) and (report / "report.md").is_file()
    _fails(["eval", str(tmp_path / "missing-model"), "--output-dir", str(tmp_path / "r2")], capsys, "error")
