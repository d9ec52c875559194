"""Training from a teacher store through `lmdistill.training.run.run`: no teacher in memory, the
stored rows line up with the trainer's tokens, and every mismatch between store and run is one
UserError naming it, raised before training."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from lmdistill.capture import capture
from lmdistill.config import load_config
from lmdistill.errors import UserError
from lmdistill.training.run import run
from tests.capture.conftest import capture_config, write_jsonl
from tests.conftest import build_tiny_tokenizer


@pytest.fixture
def store(tiny_model_dirs, data_file, tmp_path):
    out = tmp_path / "store"
    capture(capture_config(tiny_model_dirs[0], data_file, out, temperature=2.0), log=lambda _: None)
    return out


def _run_config(tmp_path, teacher_dir, student_dir, data_path, store, **sections):
    cfg = {
        "teacher": {"name": str(teacher_dir)},
        "student": {"name": str(student_dir) if student_dir else None},
        "data": {"train": str(data_path), "max_length": 48},
        "distill": {"teacher_store": str(store), "temperature": 2.0, "kd_ratio": 0.5},
        "train": {
            "output_dir": str(tmp_path / "out"),
            "max_steps": 6,
            "per_device_train_batch_size": 11,
            "learning_rate": 3e-2,
            "lr_scheduler_type": "constant",
            "logging_steps": 1,
            "save_steps": 1000,
            "extra": {"use_cpu": True, "disable_tqdm": True},
        },
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path)


def _logged(out):
    state = json.loads(next(out.glob("checkpoint-*/trainer_state.json")).read_text())
    return [h for h in state["log_history"] if "kd" in h]


def test_trains_from_the_store_without_the_teacher(tiny_model_dirs, data_file, store, tmp_path):
    _, student = tiny_model_dirs
    # The teacher name points nowhere: with student.name given, nothing of the teacher is loaded.
    cfg = _run_config(tmp_path, tmp_path / "no_such_teacher", student, data_file, store)
    cfg.train.save_steps = 6
    lines = []
    saved = run(cfg, log=lines.append)
    assert (saved / "model.safetensors").is_file()
    assert any("no teacher in memory" in line for line in lines)
    logged = _logged(tmp_path / "out")
    assert len(logged) == 6 and all(torch.isfinite(torch.tensor(h["loss"])) and h["kd"] > 0 for h in logged)
    assert logged[-1]["loss"] < logged[0]["loss"]  # the same full batch every step: the loss goes down


def test_a_shrunk_student_drops_the_teacher_after_copying(tiny_model_dirs, data_file, store, tmp_path):
    teacher, _ = tiny_model_dirs
    cfg = _run_config(tmp_path, teacher, None, data_file, store, student={"layers": [0, 3]})
    cfg.train.max_steps = 1
    saved = run(cfg, log=lambda _: None)
    assert json.loads((saved / "config.json").read_text())["num_hidden_layers"] == 2


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            {"distill": {"temperature": 1.0}},
            "captured at temperature 2.0, this run uses distill.temperature=1.0",
        ),
        ({"data": {"max_length": 30}}, r"tokenized data differs: from example \d+ on .* data.max_length=48"),
        ({"data": {"max_examples": 5}}, "the store holds 11 examples, this run has 5"),
        ({"hints": {"hidden_weight": 1.0}}, r"hint terms .* need the teacher model.s internal states"),
    ],
)
def test_mismatches_are_one_clear_error(change, match, tiny_model_dirs, data_file, store, tmp_path):
    _, student = tiny_model_dirs
    cfg = _run_config(tmp_path, tiny_model_dirs[0], student, data_file, store, **change)
    with pytest.raises(UserError, match=match) as err:
        run(cfg, log=lambda _: None)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out" / "student").exists()


def test_other_tokenizer_and_changed_data_are_named(tiny_model_dirs, data_file, store, tmp_path, tiny_llama):
    other = tmp_path / "other_student"
    tok = build_tiny_tokenizer(other, vocab_size=300)
    tiny_llama(len(tok), seed=3).save_pretrained(other)
    rows = [json.loads(line) for line in data_file.read_text().splitlines()]
    rows[6]["prompt"] = "The dog sat"  # example 6: shard 1 (examples 4-7)
    changed = write_jsonl(tmp_path / "changed.jsonl", rows)
    with pytest.raises(UserError, match="the tokenizer differs"):
        run(_run_config(tmp_path, tiny_model_dirs[0], other, data_file, store), log=lambda _: None)
    with pytest.raises(UserError, match=r"from example 4 on \(shard 1, examples 4-7\)"):
        run(_run_config(tmp_path, tiny_model_dirs[0], tiny_model_dirs[1], changed, store), log=lambda _: None)


def test_small_student_head_and_unfinished_or_missing_store(
    tiny_model_dirs, data_file, store, tmp_path, tiny_llama
):
    small = tmp_path / "small_head"
    tiny_llama(64, seed=3).save_pretrained(small)  # a head of 64 rows for a 320-token vocabulary
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_model_dirs[1]).save_pretrained(small)
    with pytest.raises(
        UserError, match=r"output head has 64 rows but the teacher \(teacher store .*\) has a vocabulary of"
    ):
        run(_run_config(tmp_path, tiny_model_dirs[0], small, data_file, store), log=lambda _: None)
    manifest = json.loads((store / "manifest.json").read_text())
    (store / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(UserError, match="is incomplete"):
        run(
            _run_config(tmp_path, tiny_model_dirs[0], tiny_model_dirs[1], data_file, store),
            log=lambda _: None,
        )
    with pytest.raises(UserError, match=r"no manifest\.json"):
        run(
            _run_config(tmp_path, tiny_model_dirs[0], tiny_model_dirs[1], data_file, tmp_path),
            log=lambda _: None,
        )
