"""Issue 27's config and command-line cases: a careless user gets one line and exit 2, before anything is
written; a resume on changed data is refused; a BOM is text; a mid-training error starts on its own line.
Real files, the real CLI (in process and as the console script), real tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmdistill.cli import main
from tests.conftest import cli_fails, write_run_config

ROWS = [
    {"prompt": "The cat sat", "completion": " on the mat."},
    {"text": "Distillation trains a small student to imitate a large teacher."},
    {"prompt": "What is the capital of France?", "completion": " Paris."},
]
EXE = Path(sys.executable).parent / "lmdistill"


@pytest.fixture
def run_config(tmp_path, tiny_model_dirs):
    path = write_run_config(tmp_path, *tiny_model_dirs, ROWS * 4, max_steps=2, save_steps=1)
    return path, tmp_path / "out", tmp_path / "train.jsonl"


# ---- YAML: a section or key given twice ------------------------------------------------------------


def test_a_section_given_twice_is_refused_naming_file_and_lines(tmp_path, capsys):
    path = tmp_path / "twice.yaml"
    path.write_text(
        "train:\n  max_steps: 5\n  learning_rate: 0.001\ndata:\n  train: x.jsonl\ntrain:\n  max_steps: 7\n"
    )
    err = cli_fails(["config", path], capsys, f"{path}:6:", "'train' is given twice (first on line 1)")
    assert err.count("\n") == 1
    inner = tmp_path / "key_twice.yaml"
    inner.write_text("distill:\n  kd_ratio: 0.5\n  loss: jsd\n  kd_ratio: 0.9\n")
    cli_fails(["train", inner], capsys, f"{inner}:4:", "'kd_ratio' is given twice (first on line 2)")


def test_the_same_key_in_two_sections_is_not_a_duplicate(tmp_path, capsys):
    path = tmp_path / "ok.yaml"
    path.write_text("teacher:\n  dtype: float32\nstudent:\n  dtype: float32\n  num_layers: 1\n")
    assert main(["config", str(path)]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["teacher"]["dtype"] == resolved["student"]["dtype"] == "float32"


# ---- numbers transformers and torch refuse only once training runs ----------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.learning_rate=-1", "train.learning_rate must be a finite number >= 0, got -1.0"),
        ("train.learning_rate=.nan", "train.learning_rate must be a finite number >= 0, got nan"),
        ("train.seed=-1", "train.seed must be an integer in [0, 2**32), got -1"),
        ("train.seed=4294967296", "train.seed must be an integer in [0, 2**32), got 4294967296"),
        ("train.report_to=wandb", "train.report_to: wandb is not installed in this environment"),
        ("train.report_to=nope", "train.report_to: unknown integration 'nope'"),
        ("train.logging_steps=0", "train.logging_steps must be at least 1, got 0"),
        ("train.save_total_limit=0", "train.save_total_limit must be at least 1"),
        ("train.max_grad_norm=-1", "train.max_grad_norm must be a finite number >= 0"),
    ],
)
def test_train_numbers_are_checked_before_anything_is_written(run_config, capsys, override, message):
    path, out, _ = run_config
    cli_fails(["train", path, override], capsys, message)
    assert not out.exists()


def test_a_resumed_run_with_a_bad_learning_rate_changes_nothing(run_config, capsys):
    """The issue's case: the config file was written by a first run; a rerun with lr -1 must not touch it."""
    path, out, _ = run_config
    assert main(["train", str(path)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()  # the first run's output (transformers' logging may hold a stale stream: not ours)
    code = main(["train", str(path), "train.resume_from_checkpoint=latest", "train.learning_rate=-1"])
    assert code == 2
    assert capsys.readouterr().err.endswith(
        "lmdistill train: error: train.learning_rate must be a finite number >= 0, got -1.0\n"
    )
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


# ---- resuming on other data -------------------------------------------------------------------------


def test_resume_after_the_data_changed_is_refused_or_warned(run_config, capsys):
    path, out, data = run_config
    assert main(["train", str(path), "train.max_steps=1"]) == 0
    recorded = json.loads((out / "data_fingerprint.json").read_text())
    assert recorded["examples"] == len(ROWS) * 4
    # Same rows: resumes.
    assert main(["train", str(path), "train.max_steps=2", "train.resume_from_checkpoint=latest"]) == 0
    assert (out / "checkpoint-2").is_dir()
    # Other rows (one word changed): refused, nothing written.
    data.write_text(data.read_text().replace("Paris", "Lyon"))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    cli_fails(
        ["train", path, "train.max_steps=3", "train.resume_from_checkpoint=latest"],
        capsys,
        "the training data differs from the data",
        "train.resume_with_changed_data=true",
    )
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # Explicitly allowed: a warning, the run goes on, and the new data is what the run now records.
    assert (
        main(
            [
                "train",
                str(path),
                "train.max_steps=3",
                "train.resume_from_checkpoint=latest",
                "train.resume_with_changed_data=true",
            ]
        )
        == 0
    )
    assert "warning: the training data differs" in capsys.readouterr().out
    assert (out / "checkpoint-3").is_dir()
    assert json.loads((out / "data_fingerprint.json").read_text())["train"] != recorded["train"]


def test_fingerprint_tells_order_and_boundaries_apart():
    from lmdistill.data.fingerprint import features_fingerprint

    a = [{"input_ids": [1, 2], "labels": [1, 2]}, {"input_ids": [3], "labels": [3]}]
    assert features_fingerprint(a) == features_fingerprint([dict(f) for f in a])
    assert features_fingerprint(a) != features_fingerprint(a[::-1])
    merged = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}]
    assert features_fingerprint(a) != features_fingerprint(merged)
    import torch

    assert features_fingerprint([{"input_ids": torch.tensor([1, 2])}]) == features_fingerprint(
        [{"input_ids": [1, 2]}]
    )


# ---- a byte-order mark is text ----------------------------------------------------------------------


def test_a_byte_order_mark_at_the_start_of_a_data_file_is_accepted(run_config, tmp_path):
    from lmdistill.data import load_records

    path, out, data = run_config
    plain = load_records(data)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + data.read_bytes())
    assert load_records(bom) == plain
    assert main(["train", str(path), f"data.train={bom}", "train.max_steps=1"]) == 0
    assert (out / "student").is_dir()


def test_a_byte_order_mark_in_a_yaml_config_is_accepted(run_config, tmp_path, capsys):
    path, _, _ = run_config
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert main(["config", str(bom)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["max_steps"] == 2


# ---- argparse's usage errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, line",
    [
        (["nope"], "lmdistill: error: argument COMMAND: invalid choice: 'nope'"),
        (["train"], "lmdistill train: error: the following arguments are required: config;"),
        (["serve", "--port", "abc"], "lmdistill serve: error: argument --port: invalid int value: 'abc';"),
        ([], "lmdistill: error: the following arguments are required: COMMAND;"),
    ],
)
def test_usage_errors_are_one_line_and_a_pointer_to_help(argv, line):
    done = subprocess.run(
        [str(EXE), *argv], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(line), done.stderr
    assert "usage:" not in done.stderr
    help_cmd = done.stderr.rstrip().rsplit("see `", 1)[1].rstrip("`")
    program, *rest = help_cmd.split()
    assert program == "lmdistill"
    shown = subprocess.run([str(EXE), *rest], capture_output=True, text=True)
    assert shown.returncode == 0 and "usage:" in shown.stdout


# ---- an error in the middle of training -------------------------------------------------------------


def test_an_error_during_training_starts_on_its_own_line(run_config, tmp_path):
    """A teacher whose weights are NaN: every step's loss is non-finite and the run stops
    (TrainingDiverged) while transformers' progress bar is on screen."""
    path = run_config[0]
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = yaml.safe_load(path.read_text())["teacher"]["name"]
    teacher = tmp_path / "nan_teacher"
    model = AutoModelForCausalLM.from_pretrained(source)
    with torch.no_grad():
        model.get_input_embeddings().weight.fill_(float("nan"))
    model.save_pretrained(teacher)
    AutoTokenizer.from_pretrained(source).save_pretrained(teacher)
    done = subprocess.run(
        [
            str(EXE),
            "train",
            str(path),
            f"teacher.name={teacher}",
            "distill.max_nonfinite=2",
            "train.max_steps=4",
            "train.save_steps=100",  # no checkpoint bar: the training bar is the last thing drawn
            "train.extra={use_cpu: true}",  # the progress bar on, as a user sees it
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 2, done.stderr
    assert "it/s" in done.stderr or "%|" in done.stderr  # the bar was drawn
    lines = done.stderr.split("\n")
    error = [line for line in lines if "lmdistill train: error:" in line]
    assert len(error) == 1 and error[0].startswith("lmdistill train: error:"), repr(done.stderr[-400:])
    assert "micro-batches in a row" in error[0]


# ---- a load failure's reason is not cut after its first line -----------------------------------------


def test_eval_names_the_whole_reason_a_model_cannot_be_loaded(tmp_path, capsys):
    """transformers ends the first line of this message with "from one of:" and lists the causes below;
    the one-line error keeps them."""
    folder = tmp_path / "not_a_model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    err = cli_fails(
        ["eval", folder, "--task", "arithmetic:1", "--output-dir", tmp_path / "report"],
        capsys,
        "cannot be loaded",
        "from one of: (1) a `tokenizers` library serialization file",
    )
    assert not err.rstrip().endswith("from one of:")
    assert not (tmp_path / "report").exists()
