"""The white-box teacher interface on tiny real models: each source gives the trainer the same loss as
the computation it replaced (chunked_loss fed directly), and no teacher is loaded when no term reads it."""

from __future__ import annotations

import gc
import json
import weakref

import pytest
import torch
import yaml

from lmdistill.chunked import Head, LossSpec, SparseTeacher, chunked_loss
from lmdistill.config import load_config
from lmdistill.data import DistillCollator, tokenize_records
from lmdistill.errors import UserError
from lmdistill.models.forward import final_hidden
from lmdistill.teachers.whitebox import InProcessTeacher, StoreTeacher, TeacherQuery
from lmdistill.training.trainer import DistillTrainer

ROWS = [
    {"prompt": "Hello world, how", "completion": " are you today? I am fine."},
    {
        "messages": [
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
        ]
    },
    {"text": "The cat sat on the mat and the dog slept by the door."},
    {"prompt": "Alice has 3 apples", "completion": " and buys 2 more, then eats 1."},
    {"text": "Distillation trains a small student to imitate a large teacher."},
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_data(path, n=10):
    rows = [dict(r) for r in (ROWS * 4)[:n]]
    for i, r in enumerate(rows):
        if "text" in r:
            r["text"] = f"{r['text']} Number {i}."
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _trainer(tmp_path, student, teacher, spec):
    from transformers import TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    return DistillTrainer(
        model=student, teacher=teacher, spec=spec, args=args, data_collator=DistillCollator(0)
    )


def _reference(student, batch, spec, **teacher):
    """The pre-interface computation: student hidden states at the target tokens, chunked_loss directly."""
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    s_hidden = final_hidden(student, batch["input_ids"], batch["attention_mask"])[:, :-1][mask]
    weights = batch.get("loss_weights")
    weights = None if weights is None else weights[:, None].expand_as(mask)[mask]
    sums = chunked_loss(s_hidden, Head.of(student), targets[mask], spec, weights=weights, **teacher)
    return sums.total / sums.tokens


def _features(tokenizer, n=6):
    feats, _ = tokenize_records([dict(r) for r in (ROWS * 2)[:n]], tokenizer, 40)
    for i, f in enumerate(feats):
        f["example_index"] = i
        f["weight"] = 0.5 + 0.25 * (i % 3)
    return feats


def test_in_process_source_gives_the_loss_of_the_direct_computation(
    tiny_model_dirs, tiny_tokenizer, tmp_path
):
    from lmdistill.models import load_model

    teacher, student = (load_model(d) for d in tiny_model_dirs)
    vocab = len(tiny_tokenizer)
    batch = DistillCollator(pad_token_id=0)(_features(tiny_tokenizer))
    for loss in ("forward_kl", "jsd", "reverse_kl"):
        spec = LossSpec(loss=loss, ce_weight=0.3, kd_weight=0.7, temperature=1.5, vocab=vocab, chunk_size=7)
        trainer = _trainer(tmp_path, student, teacher, spec)
        assert isinstance(trainer.teacher, InProcessTeacher)
        got = trainer.compute_loss(student, batch)
        with torch.no_grad():
            t_hidden = final_hidden(teacher, batch["input_ids"], batch["attention_mask"])[:, :-1][
                batch["labels"][:, 1:] != -100
            ]
        want = _reference(student, batch, spec, t_hidden=t_hidden, t_head=Head.of(teacher))
        assert got.item() == pytest.approx(want.item(), rel=1e-6, abs=1e-7)
        assert got.item() - _reference(student, batch, spec).item() > 1e-5  # the KD term is in it


def test_store_source_gives_the_loss_of_the_stored_rows(tiny_model_dirs, tiny_tokenizer, tmp_path):
    from lmdistill.capture import TeacherStore, capture, load_capture_config
    from lmdistill.models import load_model

    data = write_data(tmp_path / "train.jsonl", 6)
    overrides = [f"teacher.name={tiny_model_dirs[0]}", f"data.train={data}", "data.max_length=40"]
    overrides += [f"capture.output_dir={tmp_path / 'store'}", "capture.k=8", "capture.shard_size=4"]
    overrides += ["capture.device=cpu", "capture.temperature=2.0"]
    capture(load_capture_config(None, overrides), log=lambda _: None)
    store = TeacherStore.open(tmp_path / "store")
    student = load_model(tiny_model_dirs[1])
    feats, _ = tokenize_records(
        [json.loads(line) for line in data.read_text().splitlines()], tiny_tokenizer, 40
    )
    picked = [dict(feats[i], example_index=i, weight=0.5 + i / 4) for i in (4, 1, 5)]
    batch = DistillCollator(pad_token_id=0)(picked)
    spec = LossSpec(
        loss="skew_forward_kl", ce_weight=0.5, kd_weight=2.0, temperature=2.0, vocab=store.vocab, chunk_size=5
    )
    got = _trainer(tmp_path, student, StoreTeacher(store), spec).compute_loss(student, batch)
    ids, logprobs, tail, _ = store.rows([4, 1, 5])
    want = _reference(student, batch, spec, t_sparse=SparseTeacher(ids, logprobs, tail))
    assert got.item() == pytest.approx(want.item(), rel=1e-6, abs=1e-7)
    # held-out rows (no example_index) are not in the store: CE only
    plain = DistillCollator(pad_token_id=0)(
        [{k: v for k, v in f.items() if k != "example_index"} for f in picked]
    )
    assert StoreTeacher(store).score(TeacherQuery.from_batch(plain)) is None


def _run_yaml(tmp_path, **sections):
    cfg = {
        "data": {"train": str(write_data(tmp_path / "train.jsonl")), "max_length": 40},
        "train": {
            "output_dir": str(tmp_path / "out"),
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "save_steps": 1000,
            "logging_steps": 1,
            "extra": {"use_cpu": True, "disable_tqdm": True},
        },
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path)


def test_ce_only_run_loads_no_teacher(tiny_model_dirs, tmp_path, monkeypatch):
    import lmdistill.training.parts.models as train_models
    import lmdistill.training.run as train_run

    def refuse(*args, **kwargs):
        raise AssertionError("load_teacher was called, but no term reads the teacher")

    monkeypatch.setattr(train_models, "load_teacher", refuse)
    lines = []
    cfg = _run_yaml(
        tmp_path,
        teacher={"name": str(tmp_path / "no_such_teacher")},
        student={"name": str(tiny_model_dirs[1])},
        distill={"kd_ratio": 0.0},
    )
    out = train_run.run(cfg, log=lines.append)
    assert (out / "model.safetensors").is_file()
    assert any("no teacher (kd_ratio 0 and no hint terms: CE only)" in line for line in lines)


def test_shrinking_loads_the_teacher_then_drops_it(tiny_model_dirs, tmp_path, monkeypatch):
    import lmdistill.training.parts.models as train_models
    import lmdistill.training.run as train_run

    loaded = []
    real = train_models.load_teacher

    def spy(*args, **kwargs):
        model = real(*args, **kwargs)
        loaded.append(weakref.ref(model))
        return model

    monkeypatch.setattr(train_models, "load_teacher", spy)
    cfg = _run_yaml(
        tmp_path,
        teacher={"name": str(tiny_model_dirs[0])},
        student={"name": None, "num_layers": 2},
        distill={"kd_ratio": 0.0},
    )
    models = train_run.build_models(cfg, log=lambda _: None)
    gc.collect()
    assert len(loaded) == 1 and loaded[0]() is None  # copied into the student, then freed
    assert models.teacher is None and models.source is None
    assert models.student.config.num_hidden_layers == 2
    trainer = train_run.make_trainer(cfg, models, [])
    assert trainer.teacher is None
    # the same run with KD keeps the teacher, as a source the trainer asks
    kd = _run_yaml(
        tmp_path, teacher={"name": str(tiny_model_dirs[0])}, student={"name": None, "num_layers": 2}
    )
    models = train_run.build_models(kd, log=lambda _: None)
    assert isinstance(models.source, InProcessTeacher) and models.source.model is models.teacher


@pytest.mark.parametrize(
    "sections, message",
    [
        (
            {"hints": {"hidden_weight": 1.0}, "teacher": {"server": "http://127.0.0.1:9/v1"}},
            r"hint terms .* teacher\.server",
        ),
        (
            {"distill": {"temperature": 2.0}, "teacher": {"server": "http://127.0.0.1:9/v1"}},
            r"temperature 1, but distill\.temperature=2\.0",
        ),
        ({"teacher": {"name": ""}}, r"teacher\.name is empty"),
    ],
)
def test_teacher_settings_are_checked_before_anything_loads(tmp_path, sections, message):
    from lmdistill.training.run import run

    cfg = _run_yaml(tmp_path, student={"name": str(tmp_path / "no_such_student")}, **sections)
    with pytest.raises(UserError, match=message):
        run(cfg, log=lambda _: None)
    assert not (tmp_path / "out").exists()  # nothing written either


def test_server_and_store_together_are_refused(tmp_path):
    with pytest.raises(UserError, match=r"teacher\.server or distill\.teacher_store, not both"):
        _run_yaml(
            tmp_path, teacher={"server": "http://127.0.0.1:9/v1"}, distill={"teacher_store": str(tmp_path)}
        )
