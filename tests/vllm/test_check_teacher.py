"""`lmdistill check-teacher`: against a real vLLM serving the embedded teacher (PASS against the same model
in process; FAIL against another model with the same vocabulary, and against vLLM returning logits), and
against a real `lmdistill serve` of a tiny teacher (PASS, FAIL for another model, exit status 2 for a
config it cannot run on)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lmdistill.cli import main
from tests.conftest import cli_fails
from tests.teachers.test_whitebox import write_data

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "smollm2_chatterbot" / "train.jsonl"


def _yaml(tmp_path, teacher: dict, data=DATA, **sections) -> Path:
    cfg = {"teacher": teacher, "data": {"train": str(data), "max_length": 96}, "student": {"num_layers": 2}}
    cfg.update(sections)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _check(argv, capsys) -> tuple[int, str, dict | None]:
    """`lmdistill check-teacher ARGV --json FILE` in process: (exit status, stdout, the JSON report)."""
    out = Path(argv[0]).parent / "report.json"
    try:
        code = main(["check-teacher", *map(str, argv), "--json", str(out)])
    except SystemExit as e:  # FAIL: exit status 1
        code = e.code
    report = json.loads(out.read_text()) if out.exists() else None
    return code, capsys.readouterr().out, report


@pytest.mark.slow
def test_vllm_passes_against_the_same_model_in_process(vllm_teacher, tmp_path, capsys):
    path = _yaml(tmp_path, {"name": "smollm2-135m", "server": vllm_teacher.url, "server_k": 20})
    code, out, report = _check([path, "--rows", "6"], capsys)
    assert code == 0, out
    assert report["verdict"] == "PASS" and out.rstrip().endswith("verdict: PASS")
    s = report["scores"]
    # measured 2.7e-9 mean and 2.3e-8 max nats/token on 8 rows: float32 rounding, vLLM against transformers
    assert s["kl_mean"] < 1e-6 and s["kl_max"] < 1e-5
    assert s["overlap_mean"] > 0.99 and s["top1_agreement"] > 0.99 and s["best_temperature"] == 1.0
    assert s["logprob_diff_max"] < 5e-4 and s["own_logprob_diff_max"] < 5e-4
    assert report["checks"]["vocabulary"]["pass"] and report["checks"]["log-prob mode"]["pass"]
    assert "log-probs" in report["checks"]["log-prob mode"]["detail"]


@pytest.mark.slow
def test_vllm_fails_against_another_model_with_the_same_vocabulary(vllm_teacher, tmp_path, capsys):
    """teacher.name is SmolLM2 shrunk to 6 layers (same tokenizer, other weights): the vocabulary passes,
    the agreement fails, exit status 1."""
    from lmdistill.models import load_model, load_tokenizer, shrink_model

    other = tmp_path / "other"
    shrink_model(load_model("smollm2-135m"), num_layers=6).save_pretrained(other)
    load_tokenizer("smollm2-135m").save_pretrained(other)
    path = _yaml(tmp_path, {"name": str(other), "server": vllm_teacher.url, "server_k": 20})
    code, out, report = _check([path, "--rows", "4"], capsys)
    assert code == 1 and report["verdict"] == "FAIL", out
    assert report["checks"]["vocabulary"]["pass"] and not report["checks"]["agreement"]["pass"]
    assert "mean KL" in report["checks"]["agreement"]["detail"] and "verdict: FAIL" in out


@pytest.mark.slow
def test_vllm_returning_logits_fails_the_log_prob_mode(vllm_logits, tmp_path, capsys):
    path = _yaml(tmp_path, {"name": "smollm2-135m", "server": vllm_logits.url, "server_k": 20})
    code, out, report = _check([path, "--server-only"], capsys)
    assert code == 1 and report["verdict"] == "FAIL"
    assert not report["checks"]["log-prob mode"]["pass"]
    assert "--logprobs-mode raw_logprobs" in report["checks"]["log-prob mode"]["detail"]
    assert "log-prob mode          FAIL" in out


# -- against a real `lmdistill serve` (tiny models: fast) ---------------------------------------------------


def test_lmdistill_serve_passes_against_the_same_model(served, tiny_model_dirs, tmp_path, capsys):
    url, _ = served
    data = write_data(tmp_path / "train.jsonl", 6)
    path = _yaml(tmp_path, {"name": str(tiny_model_dirs[0]), "server": url, "server_k": 8}, data=data)
    code, out, report = _check([path, "--rows", "6", "--max-mean-kl", "1e-6"], capsys)
    assert code == 0, out
    assert report["scores"]["kl_mean"] < 1e-6 and report["scores"]["overlap_mean"] == 1.0
    assert report["checks"]["vocabulary"]["pass"]


def test_lmdistill_serve_fails_against_another_model(served, tiny_model_dirs, tmp_path, capsys):
    """The local model is the tiny student (same tokenizer, other weights) while the server serves the
    tiny teacher."""
    url, _ = served
    data = write_data(tmp_path / "train.jsonl", 6)
    path = _yaml(tmp_path, {"name": str(tiny_model_dirs[1]), "server": url, "server_k": 8}, data=data)
    code, out, report = _check([path], capsys)
    assert code == 1 and report["verdict"] == "FAIL"
    assert not report["checks"]["agreement"]["pass"] and "verdict: FAIL" in out
    assert report["scores"]["kl_mean"] > 1e-4  # random tiny models: near-uniform, so small but not rounding


def test_server_only_loads_no_model(served, tiny_model_dirs, tmp_path, capsys, monkeypatch):
    import lmdistill.models as models

    monkeypatch.setattr(models, "load_teacher", lambda *a, **k: pytest.fail("loaded the teacher"))
    url, _ = served
    path = _yaml(
        tmp_path,
        {"name": str(tiny_model_dirs[0]), "server": url, "server_k": 8},
        data=write_data(tmp_path / "d.jsonl"),
    )
    code, _, report = _check([path, "--server-only"], capsys)
    assert code == 0 and "scores" not in report and "--server-only" in report["against"]


@pytest.mark.parametrize(
    ("teacher", "extra", "message"),
    [
        ({"name": "x"}, [], "check-teacher compares teacher.server with teacher.name: set teacher.server"),
        ({"name": "x", "server": "http://127.0.0.1:9/v1"}, ["--rows", "0"], "--rows must be at least 1"),
        (
            {"name": "x", "server": "http://127.0.0.1:9/v1"},
            ["--min-overlap", "2"],
            "--min-overlap must be in [0, 1]",
        ),
        ({"name": "x", "server": "ftp://h/v1"}, [], "teacher.server"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, teacher, extra, message):
    cli_fails(["check-teacher", _yaml(tmp_path, teacher), *extra], capsys, message)


def test_an_unreachable_server_is_a_fail_with_the_reason(tiny_model_dirs, tmp_path, capsys):
    teacher = {"name": str(tiny_model_dirs[0]), "server": "http://127.0.0.1:9/v1", "server_max_retries": 0}
    path = _yaml(tmp_path, teacher, data=write_data(tmp_path / "train.jsonl"))
    code, out, report = _check([path], capsys)
    assert code == 1 and report["verdict"] == "FAIL"
    assert "could not list its models" in report["checks"]["server"]["detail"] and "verdict: FAIL" in out


def test_a_teacher_name_that_cannot_load_names_server_only(served, tiny_model_dirs, tmp_path, capsys):
    """The tokenizer is the student's (student.name); teacher.name names no folder and no reachable hub id."""
    url, _ = served
    teacher = {"name": str(tmp_path / "no_such_teacher"), "server": url, "server_k": 8}
    student = {"name": str(tiny_model_dirs[1])}
    path = _yaml(tmp_path, teacher, data=write_data(tmp_path / "train.jsonl"), student=student)
    cli_fails(["check-teacher", path], capsys, "could not be loaded here", "--server-only")
