"""`lmdistill eval --teachers RUN.yaml`: each model against each teacher on that teacher's held-out rows
(routed like training), the same figures as an eval with that teacher alone on its rows."""

from __future__ import annotations

import json

import pytest
import yaml

from lmdistill.eval import run_eval

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROUTES = "abbabab"
ROWS = [
    {"prompt": f"Question {i}?", "completion": f" The answer is {i * 7}.", "task": t}
    for i, t in enumerate(ROUTES)
]


@pytest.fixture
def models(two_tiny_teachers):
    """(teacher a, teacher b far from a, student)."""
    return two_tiny_teachers


def _config(tmp_path, name, teachers, rows, **routing):
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    body = {
        "teachers": teachers,
        "routing": {"by": "task", "rules": {"a": "a", "b": "b"}, **routing},
        "data": {"train": str(data), "eval": str(data), "max_length": 40},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def _eval(tmp_path, name, student, config):
    return run_eval(
        [str(student)],
        teachers=str(config),
        output_dir=str(tmp_path / name),
        batch_size=3,
        measure_memory=False,
        log=lambda _: None,
    )


def test_each_teacher_on_its_own_rows_equals_that_teacher_alone(models, tmp_path):
    a, b, student = models
    both = [{"id": "a", "name": str(a)}, {"id": "b", "name": str(b)}]
    got = _eval(tmp_path, "both", student, _config(tmp_path, "both", both, ROWS))["models"][0]["teachers"]
    assert {t: got[t]["rows"] for t in "ab"} == {"a": ROUTES.count("a"), "b": ROUTES.count("b")}
    for t, entry in zip("ab", both, strict=True):
        mine = [r for r in ROWS if r["task"] == t]
        alone = _config(tmp_path, f"alone_{t}", [entry], mine, rules={}, by=None, default=t)
        want = _eval(tmp_path, f"alone_{t}", student, alone)["models"][0]["teachers"][t]
        assert got[t] == want  # the same rows, batches and teacher: the same figures
    assert abs(got["a"]["kl"] - got["b"]["kl"]) > 0.05 * got["a"]["kl"]  # the teachers differ: routing shows
    report = (tmp_path / "both" / "report.md").read_text()
    assert "## Against each teacher on its own domain" in report
    assert f"### a ({a})" in report and f"### b ({b})" in report


def test_bad_teachers_configs_are_refused_before_any_model_loads(models, tmp_path, capsys, monkeypatch):
    import transformers

    from tests.conftest import cli_fails

    def refuse(*_, **__):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    a, b, student = models
    both = [{"id": "a", "name": str(a)}, {"id": "b", "name": str(b)}]
    out = ["--output-dir", str(tmp_path / "out"), "--no-memory"]
    mix = _config(tmp_path, "mix", both, ROWS, mode="mix")
    cli_fails(["eval", student, "--teachers", mix, *out], capsys, "routing.mode=mix mixes teachers per token")
    ok = _config(tmp_path, "ok", both, ROWS)
    cli_fails(
        ["eval", student, "--teachers", ok, "--teacher", a, *out], capsys, "give --teacher or --teachers"
    )
    unknown = _config(tmp_path, "unknown", both, [*ROWS, {**ROWS[0], "teacher": "maths"}])
    cli_fails(
        ["eval", student, "--teachers", unknown, *out],
        capsys,
        "unknown.jsonl:8: teacher 'maths' is not a listed teacher",
    )
    assert not (tmp_path / "out").exists()
