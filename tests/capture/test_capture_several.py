"""`lmdistill capture` with several teachers: one store per teacher holding only its routed rows, read
together by row in training (the same loss as each teacher's capture over the whole data), and every
mismatch between the stores and the run refused in one line before any model loads."""

from __future__ import annotations

import json

import pytest
import yaml

from lmdistill.data import DistillCollator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROUTES = "abbabaabbbab"  # irregular: a row read at its index in the whole data would be misread
ROWS = [
    {"prompt": f"Question {i}?", "completion": f" The answer is {i * 7} and {i}.", "task": t}
    for i, t in enumerate(ROUTES)
]
TEACHERS_CAPTURE = {"k": 8, "shard_size": 4, "batch_size": 3, "codec": "raw", "device": "cpu"}


@pytest.fixture
def two_teachers(two_tiny_teachers):
    """(teacher a, teacher b, student): b far from a (a misrouted row changes the loss a lot)."""
    return two_tiny_teachers


def _data(tmp_path, rows=ROWS):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _capture(tmp_path, data, out, teachers=None, teacher=None, routing=None):
    from lmdistill import yamlconfig
    from lmdistill.capture import CaptureConfig, capture

    raw = {
        "data": {"train": str(data), "max_length": 40},
        "capture": {**TEACHERS_CAPTURE, "output_dir": str(out)},
    }
    if teachers is not None:
        raw["teachers"], raw["routing"] = teachers, routing or {"by": "task", "rules": {"a": "a", "b": "b"}}
    else:
        raw["teacher"] = {"name": str(teacher)}
    return capture(yamlconfig.build(CaptureConfig, raw, "test").validate(), log=lambda _: None)


def _run_config(tmp_path, teachers, student, data, name="run", **routing):
    from lmdistill import yamlconfig
    from lmdistill.config import RunConfig, resolve_teachers

    raw = {
        "teachers": teachers,
        "routing": {"by": "task", "rules": {"a": "a", "b": "b"}, **routing},
        "student": {"name": str(student)},
        "data": {"train": str(data), "max_length": 40},
        "distill": {"kd_ratio": 0.5},
        "train": {
            "output_dir": str(tmp_path / name),
            "max_steps": 2,
            "per_device_train_batch_size": 6,
            "logging_steps": 1,
            "save_steps": 2,
            "extra": {"use_cpu": True, "disable_tqdm": True},
        },
    }
    return resolve_teachers(yamlconfig.build(RunConfig, raw, "test").validate())


def _first_batch_loss(cfg, rows):
    """The routed teacher loss of the run's first 12 examples, with the run's own parts."""
    from lmdistill.chunked import Head, LossSpec
    from lmdistill.models import load_tokenizer
    from lmdistill.models.forward import final_hidden
    from lmdistill.teachers.whitebox import TeacherQuery, teacher_loss
    from lmdistill.training.parts.data import tokenize_run_data
    from lmdistill.training.parts.models import build_models
    from lmdistill.training.parts.teacher import TeacherPart

    tok = load_tokenizer(cfg.teacher.name)
    part = TeacherPart.choose(cfg)
    train, _ = part.route(cfg, rows, None, log=lambda *_: None)
    data = tokenize_run_data(cfg, train, None, tok)
    source = part.source(cfg, tok, data)
    models = build_models(cfg, log=lambda *_: None, source=source, tokenizer=tok)
    batch = DistillCollator(0)(data.train)
    mask = batch["labels"][:, 1:] != -100
    hidden = final_hidden(models.student, batch["input_ids"], batch["attention_mask"])[:, :-1][mask]
    spec = LossSpec(vocab=models.vocab, chunk_size=4)
    scores = source.score(TeacherQuery.from_batch(batch))
    return teacher_loss(hidden, Head.of(models.student), batch["labels"][:, 1:][mask], spec, scores)


def _losses(out):
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


def test_one_store_per_teacher_read_together_by_row(two_teachers, tmp_path):
    from lmdistill.capture import TeacherStore
    from lmdistill.training.run import run

    a, b, student = two_teachers
    data = _data(tmp_path)
    summaries = _capture(
        tmp_path, data, tmp_path / "cap", [{"id": "a", "name": str(a)}, {"id": "b", "name": str(b)}]
    )
    assert [s.examples for s in summaries] == [ROUTES.count("a"), ROUTES.count("b")]
    for t in "ab":  # each store holds its teacher's rows only, and says so
        m = TeacherStore.open(tmp_path / "cap" / t).manifest
        assert m["teacher_id"] == t and m["rows"] == [n for n, r in enumerate(ROUTES) if r == t]
    whole = {t: tmp_path / f"whole_{t}" for t in "ab"}  # each teacher captured over the whole data
    for t, model in (("a", a), ("b", b)):
        _capture(tmp_path, data, whole[t], teacher=model)

    def listed(stores):
        return [{"id": t, "name": str(a), "store": str(stores[t])} for t in "ab"]

    routed = {t: tmp_path / "cap" / t for t in "ab"}
    got = _first_batch_loss(_run_config(tmp_path, listed(routed), student, data), ROWS)
    want = _first_batch_loss(_run_config(tmp_path, listed(whole), student, data), ROWS)
    assert got.tokens == want.tokens
    assert got.total.item() == pytest.approx(want.total.item(), rel=1e-6)
    assert got.kd.item() == pytest.approx(want.kd.item(), rel=1e-6)
    # The test sees a row read from the wrong teacher's store: b's rows read from a's capture differ.
    wrong = _first_batch_loss(
        _run_config(tmp_path, listed({"a": whole["a"], "b": whole["a"]}), student, data), ROWS
    )
    assert abs(wrong.kd.item() - want.kd.item()) > 0.05 * want.kd.item()
    # The capture folder itself names each teacher's store; a run trains from them, as from the whole captures.
    for name, stores in (
        ("from_routed", {"a": tmp_path / "cap", "b": tmp_path / "cap"}),
        ("from_whole", whole),
    ):
        run(_run_config(tmp_path, listed(stores), student, data, name), log=lambda *_: None)
    assert _losses(tmp_path / "from_routed") == pytest.approx(_losses(tmp_path / "from_whole"), rel=1e-6)


@pytest.fixture
def no_model_loads(monkeypatch):
    import transformers

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def _yaml(tmp_path, body, name="run.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body))
    return path


def _train(tmp_path, data, stores, teacher, student, rules=None):
    """`lmdistill train` arguments: teachers a and b read from `stores`, rows routed by task."""
    cfg = {
        "teachers": [{"id": t, "name": str(teacher), "store": str(s)} for t, s in stores.items()],
        "routing": {"by": "task", "rules": rules or {"a": "a", "b": "b"}},
        "student": {"name": str(student)},
        "data": {"train": str(data), "max_length": 40},
        "train": {"output_dir": str(tmp_path / "out"), "max_steps": 1, "extra": {"use_cpu": True}},
    }
    return ["train", _yaml(tmp_path, cfg)]


@pytest.fixture
def captured(two_teachers, tmp_path):
    a, b, _ = two_teachers
    data = _data(tmp_path)
    _capture(tmp_path, data, tmp_path / "cap", [{"id": "a", "name": str(a)}, {"id": "b", "name": str(b)}])
    return data


def test_stores_that_do_not_match_the_runs_routes_are_refused(
    two_teachers, captured, tmp_path, capsys, no_model_loads
):
    from tests.conftest import cli_fails

    a, _, student = two_teachers
    swapped = {"a": tmp_path / "cap" / "b", "b": tmp_path / "cap" / "a"}
    cli_fails(
        _train(tmp_path, captured, swapped, a, student),
        capsys,
        "teachers[0] (a): teacher store",
        "was captured for teacher 'b', not 'a'",
    )
    rows = [dict(r) for r in ROWS]
    rows[1]["teacher"] = "a"  # routed otherwise than at capture time: row 1 (task b) names teacher a
    both = {"a": tmp_path / "cap", "b": tmp_path / "cap"}
    (tmp_path / "rerouted").mkdir()
    cli_fails(
        _train(tmp_path, _data(tmp_path / "rerouted", rows), both, a, student),
        capsys,
        "teachers[0] (a): teacher store",
        "holds the rows routed to 'a' at capture time (5 of 12 examples), but this run routes 6 of 12",
        "first difference: example 1",
    )
    one = {"a": tmp_path / "cap" / "a"}  # a list of one is teacher: with distill.teacher_store
    cli_fails(
        _train(tmp_path, captured, one, a, student, {"a": "a", "b": "a"}),
        capsys,
        "distill.teacher_store",
        "holds only the rows routed to teacher 'a'",
    )
    assert not (tmp_path / "out").exists()


def test_capture_with_teachers_refuses_bad_input_before_loading(
    two_teachers, tmp_path, capsys, no_model_loads
):
    from tests.conftest import cli_fails

    a, b, _ = two_teachers
    data = _data(tmp_path, [*ROWS, {**ROWS[0], "teacher": "maths"}])

    def capture(teachers, **routing):
        body = {
            "teachers": teachers,
            "routing": {"by": "task", "rules": {"a": "a", "b": "b"}, **routing},
            "data": {"train": str(data), "max_length": 40},
            "capture": {**TEACHERS_CAPTURE, "output_dir": str(tmp_path / "cap")},
        }
        return ["capture", _yaml(tmp_path, body, "capture.yaml")]

    two = [{"id": "a", "name": str(a)}, {"id": "b", "name": str(b)}]
    cli_fails(
        capture(two), capsys, "train.jsonl:13: teacher 'maths' is not a listed teacher (teachers: a, b)"
    )
    cli_fails(
        capture(two, mode="mix"), capsys, "routing.mode=mix: capture stores one teacher's top-k per row"
    )
    cli_fails(capture([two[0], {**two[1], "store": "x"}]), capsys, "teachers[1] (b) is a store")
    cli_fails(capture(two, default="code"), capsys, "routing.default: 'code' is not a listed teacher")
    assert not (tmp_path / "cap").exists()
