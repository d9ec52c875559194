"""A teacher of another tokenizer among several (`teachers[i].cross_tokenizer`): what is refused, each as
one line through the real CLI, before any model loads and before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import cli_fails

ROWS = [
    {"text": "Hello world, how are you today?", "task": "chat"},
    {"prompt": "What is 3 plus 2? ", "completion": "5.", "task": "maths"},
]


@pytest.fixture
def no_model_loads(monkeypatch):
    import transformers

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def _write(tmp_path, body: dict, name: str) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body))
    return str(path)


def _train(tmp_path, models, gemma: dict | None = None, **sections) -> list[str]:
    student, plain, cross = models
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    body = {
        "teachers": [
            {"id": "smol", "name": str(plain)},
            {"id": "gemma", "name": str(cross), "cross_tokenizer": "byte_aligned", **(gemma or {})},
        ],
        "routing": {"by": "task", "rules": {"chat": "gemma", "maths": "smol"}},
        "student": {"name": str(student)},
        "data": {"train": str(data), "eval": str(data), "max_length": 40},
        "train": {"output_dir": str(tmp_path / "out"), "max_steps": 1, "extra": {"use_cpu": True}},
    }
    for key, value in sections.items():
        body[key] = {**body.get(key, {}), **value}
    return ["train", _write(tmp_path, body, "run.yaml")]


MEMBER = "teachers[1] (gemma) is a cross-tokenizer teacher (cross_tokenizer: byte_aligned"


@pytest.mark.parametrize(
    ("gemma", "sections", "message"),
    [
        ({}, {"routing": {"mode": "mix"}}, f"routing.mode=mix with a cross-tokenizer teacher: {MEMBER})"),
        ({}, {"routing": {"mode": "select"}}, "its distributions live over another vocabulary"),
        (
            {"cross_tokenizer": None},
            {"routing": {"mode": "mix"}, "distill": {"cross_tokenizer": "uld"}},
            "teachers[0] (smol) is a cross-tokenizer teacher (cross_tokenizer: uld, from distill.cross_tokenizer)",
        ),
        ({"server": "http://127.0.0.1:9/v1"}, {}, "teachers[1] (gemma) is a cross-tokenizer teacher with a server"),
        ({"store": "/tmp/nowhere"}, {}, "teachers[1] (gemma) is a cross-tokenizer teacher with a store"),
        ({}, {"on_policy": {"lmbda": 0.5, "max_new_tokens": 8}}, "on_policy with a cross-tokenizer teacher is not supported yet"),
        ({}, {"hints": {"hidden_weight": 1.0}}, "several teachers with hint terms"),
        ({}, {"distill": {"kd_ratio": 0.0}}, f"{MEMBER}) but distill.kd_ratio is 0"),
        ({"cross_tokenizer": "gold"}, {}, "teachers[1].cross_tokenizer: unknown method 'gold'; choose byte_aligned or uld"),
        ({}, {"distill": {"xtok_chunk_size": 0}}, "distill.xtok_chunk_size must be positive"),
    ],
)  # fmt: skip
def test_bad_settings_are_one_line_before_any_model_loads(
    cross_tokenizer_teachers, tmp_path, capsys, no_model_loads, gemma, sections, message
):
    cli_fails(_train(tmp_path, cross_tokenizer_teachers, gemma, **sections), capsys, message)
    assert not (tmp_path / "out").exists()


def test_an_undeclared_tokenizer_mismatch_names_the_teacher_and_the_setting(
    cross_tokenizer_teachers, tmp_path, capsys, no_model_loads
):
    cli_fails(
        _train(tmp_path, cross_tokenizer_teachers, {"cross_tokenizer": None}),
        capsys,
        "teachers[1] (gemma, ",
        "tokenizes differently from the student: ",
        "set teachers[1].cross_tokenizer (byte_aligned or uld)",
    )
    assert not (tmp_path / "out").exists()


def test_capture_and_eval_refuse_a_cross_tokenizer_teacher(
    cross_tokenizer_teachers, tmp_path, capsys, no_model_loads
):
    student = cross_tokenizer_teachers[0]
    argv = _train(tmp_path, cross_tokenizer_teachers)
    body = yaml.safe_load(Path(argv[1]).read_text())
    capture = {
        "teachers": body["teachers"],
        "routing": body["routing"],
        "data": {"train": body["data"]["train"], "max_length": 40},
        "capture": {"output_dir": str(tmp_path / "cap"), "k": 8, "device": "cpu"},
    }
    cli_fails(
        ["capture", _write(tmp_path, capture, "capture.yaml")],
        capsys,
        "teachers[1] (gemma) is a cross-tokenizer teacher (cross_tokenizer: byte_aligned): a store holds top-k",
    )
    cli_fails(
        ["eval", str(student), "--teachers", argv[1], "--output-dir", str(tmp_path / "ev"), "--no-memory"],
        capsys,
        "teachers[1] (gemma) is a cross-tokenizer teacher: eval --teachers compares per-token distributions",
    )
    assert not (tmp_path / "cap").exists() and not (tmp_path / "ev").exists()
