"""Several teachers routed by row, one of another tokenizer (`teachers[i].cross_tokenizer`): each row's
loss is its own teacher's (the one-teacher cross-tokenizer step for the other tokenizer's rows, today's
routed loss for the others), the batch's loss their documented combination, a list of one is today's
cross-tokenizer run bit for bit, and a real `lmdistill train` runs."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from lmdistill import yamlconfig
from lmdistill.chunked import Head, LossSpec, chunked_loss
from lmdistill.config import DistillConfig, RunConfig, resolve_teachers
from lmdistill.data import DistillCollator, pad_id
from lmdistill.models import load_model, load_tokenizer
from lmdistill.models.forward import final_hidden
from lmdistill.teachers.routing import routed
from lmdistill.teachers.whitebox import InProcessTeacher, TeacherQuery
from lmdistill.xtok.data import XtokCollator, pair_features

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = [
    {"text": "Hello world, how are you today? I am fine.", "task": "chat"},
    {"prompt": "What is 3 plus 2? ", "completion": "3 plus 2 is 5.", "task": "maths"},
    {"text": "The cat sat on the mat and the dog slept by the door.", "task": "chat"},
    {"prompt": "Alice has 3 apples. ", "completion": "She eats 1, so 2 are left.", "task": "maths"},
    {
        "text": "Distillation trains a small student to imitate a large teacher.",
        "task": "chat",
        "weight": 0.5,
    },
    {"prompt": "What is the capital of France? ", "completion": "Paris.", "task": "maths"},
]
ROUTING = {"by": "task", "rules": {"chat": "gemma", "maths": "smol"}}


def _teachers(plain, cross, **cross_keys):
    return [
        {"id": "smol", "name": str(plain)},
        {"id": "gemma", "name": str(cross), "cross_tokenizer": "byte_aligned", **cross_keys},
    ]


def _config(tmp_path, teachers, student, rows=ROWS, distill=None, **sections) -> RunConfig:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {
        "student": {"name": str(student)},
        "data": {"train": str(data), "max_length": 48},
        "distill": {"loss": "jsd", "kd_ratio": 0.6, "xtok_chunk_size": 5, "chunk_size": 4, **(distill or {})},
        "train": {
            "output_dir": str(tmp_path / "out"),
            "max_steps": 2,
            "per_device_train_batch_size": 3,
            "learning_rate": 1e-3,
            "logging_steps": 1,
            "save_steps": 2,
            "extra": {"use_cpu": True, "disable_tqdm": True},
        },
        **sections,
    }
    raw["teacher" if isinstance(teachers, dict) else "teachers"] = teachers
    return yamlconfig.build(RunConfig, raw, "test").validate()


def _parts(cfg: RunConfig, rows):
    """The run's parts as `lmdistill.training.run.run` builds them, up to the trainer (nothing trains)."""
    from lmdistill.training.assemble import make_trainer
    from lmdistill.training.parts.data import tokenize_run_data
    from lmdistill.training.parts.models import build_models, student_base
    from lmdistill.training.parts.teacher import TeacherPart

    cfg = resolve_teachers(cfg)
    part = TeacherPart.choose(cfg)
    train, _ = part.route(cfg, rows, None, log=lambda *_: None)
    tok = load_tokenizer(student_base(cfg))
    data = tokenize_run_data(cfg, train, None, tok)
    source = part.source(cfg, tok, data)
    models = build_models(cfg, log=lambda *_: None, source=source, tokenizer=tok)
    trainer = make_trainer(cfg, models, data.train, log=lambda *_: None)
    return models, data, trainer


def test_each_row_gets_its_own_teachers_loss_and_the_batch_their_sum(cross_tokenizer_teachers, tmp_path):
    from lmdistill.training.xtok_step import build_step

    student_dir, plain_dir, cross_dir = cross_tokenizer_teachers
    cfg = _config(tmp_path, _teachers(plain_dir, cross_dir, temperature=2.0), student_dir, routing=ROUTING)
    models, data, trainer = _parts(cfg, ROWS)
    student = models.student
    routes = [f["teacher_index"] for f in data.train]
    assert routes == [1, 0, 1, 0, 1, 0]  # chat -> gemma (index 1), maths -> smol
    batch = models.xtok.collator(pad_id(models.tokenizer))(data.train)
    assert set(batch["routed_parts"]) == {"plain", "1"}
    total, logged, tokens = models.xtok.sums(trainer, student, batch)
    total.backward()
    got_grad = student.lm_head.weight.grad.clone()
    student.zero_grad()

    s_tok, t_tok = load_tokenizer(student_dir), load_tokenizer(cross_dir)
    plain, cross = load_model(plain_dir).eval(), load_model(cross_dir).eval()
    # Gemma's rows: the one-teacher cross-tokenizer step of today (distill.cross_tokenizer), at the
    # entry's own T = 2, each row alone; their features are the one-teacher run's.
    one = DistillConfig(
        loss="jsd", kd_ratio=0.6, temperature=2.0, cross_tokenizer="byte_aligned", xtok_chunk_size=5
    )
    step = build_step(one, s_tok, t_tok, student, cross, log=lambda _: None)
    cross_rows = [r for r, t in zip(routed(ROWS, routes), routes, strict=True) if t == 1]
    alone = pair_features(cross_rows, s_tok, t_tok, 48)[0]
    assert alone == [f for f in data.train if f["teacher_index"] == 1]
    want, want_tokens, per_row = torch.zeros(()), 0, []
    for f in alone:
        row_total, _, row_tokens = step.sums(
            student, InProcessTeacher(cross), XtokCollator(0, None, pad_id(t_tok))([f])
        )
        per_row.append(row_total)
        want, want_tokens = want + row_total, want_tokens + row_tokens
    # smol's rows: today's routed loss, each row alone against its own teacher (the run's T = 1).
    spec = LossSpec("jsd", ce_weight=0.4, kd_weight=0.6, vocab=models.vocab, chunk_size=4)
    for f in (f for f in data.train if f["teacher_index"] == 0):
        b = DistillCollator(0)([f])
        mask = b["labels"][:, 1:] != -100
        h = final_hidden(student, b["input_ids"], b["attention_mask"])[:, :-1][mask]
        t_hidden = InProcessTeacher(plain).score(TeacherQuery.from_batch(b)).hidden
        w = torch.full((int(mask.sum()),), float(f.get("weight", 1.0)))
        sums = chunked_loss(h, Head.of(student), b["labels"][:, 1:][mask], spec, t_hidden, Head.of(plain, trainable=False), weights=w)  # fmt: skip
        per_row.append(sums.total)
        want, want_tokens = want + sums.total, want_tokens + sums.tokens
    want.backward()
    assert (
        tokens == want_tokens == sum(int((torch.tensor(f["labels"][1:]) != -100).sum()) for f in data.train)
    )
    assert total.item() == pytest.approx(want.item(), rel=1e-5)
    torch.testing.assert_close(got_grad, student.lm_head.weight.grad, rtol=1e-4, atol=1e-6)
    assert logged["kd_matched"] > 0 and all(r.item() > 0 for r in per_row)
    # The micro-batch loss: that sum over the batch's target tokens, as a one-teacher run divides.
    student.zero_grad()
    loss = trainer.compute_loss(student, batch)
    assert loss.item() == pytest.approx(want.item() / want_tokens, rel=1e-5)


def test_rows_of_one_teacher_alone_are_that_teachers_own_step(cross_tokenizer_teachers, tmp_path):
    """A batch wholly routed to the cross-tokenizer teacher is the one-teacher step bit for bit; one wholly
    routed to the student's tokenizer is today's routed loss (the trainer's own path), bit for bit."""
    student_dir, plain_dir, cross_dir = cross_tokenizer_teachers
    cfg = _config(tmp_path, _teachers(plain_dir, cross_dir), student_dir, routing=ROUTING)
    models, data, trainer = _parts(cfg, ROWS)
    collate = models.xtok.collator(pad_id(models.tokenizer))
    for index in (0, 1):
        rows = [f for f in data.train if f["teacher_index"] == index]
        batch = collate(rows)
        got = models.xtok.sums(trainer, models.student, batch)[0]
        if index == 1:
            step = models.xtok.steps[1]
            source = trainer.teacher.members[1].source
            want = step.sums(
                models.student,
                source,
                XtokCollator(pad_id(models.tokenizer), None, step.teacher_pad_token_id)(rows),
            )[0]
        else:
            want = trainer.loss_sums(models.student, DistillCollator(pad_id(models.tokenizer))(rows))[0]
        assert torch.equal(got, want)


def _losses(out) -> list[float]:
    state = next(out.glob("checkpoint-*/trainer_state.json"))
    return [h["loss"] for h in json.loads(state.read_text())["log_history"] if "loss" in h]


def test_a_list_of_one_cross_tokenizer_teacher_is_todays_run_bit_for_bit(cross_tokenizer_teachers, tmp_path):
    from safetensors.torch import load_file

    from lmdistill.training.run import run

    student_dir, _, cross_dir = cross_tokenizer_teachers
    rows = [{k: v for k, v in r.items() if k != "task"} for r in ROWS]
    spellings = {
        "one": ({"name": str(cross_dir)}, {"cross_tokenizer": "byte_aligned"}),
        "list": ([{"id": "gemma", "name": str(cross_dir), "cross_tokenizer": "byte_aligned"}], {}),
    }
    out = {}
    for label, (teacher, distill) in spellings.items():
        where = tmp_path / label
        where.mkdir()
        run(_config(where, teacher, student_dir, rows, distill), log=lambda *_: None)
        out[label] = (_losses(where / "out"), load_file(where / "out" / "student" / "model.safetensors"))
    assert len(out["one"][0]) == 2 and out["one"][0] == out["list"][0]
    assert all(torch.equal(out["one"][1][k], out["list"][1][k]) for k in out["one"][1])


def test_train_end_to_end_two_tokenizers_routed_by_task(cross_tokenizer_teachers, tmp_path, capsys):
    from lmdistill.cli import main

    student_dir, plain_dir, cross_dir = cross_tokenizer_teachers
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    raw = {
        "teachers": _teachers(plain_dir, cross_dir),
        "routing": ROUTING,
        "student": {"name": str(student_dir)},
        "data": {"train": str(data), "eval": str(data), "max_length": 48},
        "distill": {"kd_ratio": 0.5},
        "train": {
            "output_dir": str(tmp_path / "out"),
            "max_steps": 3,
            "per_device_train_batch_size": 3,
            "logging_steps": 1,
            "save_steps": 3,
            "extra": {"use_cpu": True, "disable_tqdm": True},
        },
    }
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", str(config)]) == 0
    out = capsys.readouterr().out
    assert "teachers (routed by row): smol 3 rows, gemma 3 rows" in out
    assert "teachers[1] gemma: cross-tokenizer: byte_aligned" in out
    assert (tmp_path / "out" / "student" / "model.safetensors").is_file()
    history = json.loads((tmp_path / "out" / "checkpoint-3" / "trainer_state.json").read_text())[
        "log_history"
    ]
    logged = [e for e in history if "kd" in e]
    assert len(logged) == 3 and all(e["ce"] > 0 and e["kd"] > 0 for e in logged)
    assert any(e.get("kd_matched", 0) > 0 for e in logged)
