"""Training with a teacher of another tokenizer (distill.cross_tokenizer): the step against a plain
per-example computation, a real run through the CLI, and each mistake as one line before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from lmdistill.cli import main
from lmdistill.config import DistillConfig
from lmdistill.models.forward import final_hidden
from lmdistill.teachers.whitebox import InProcessTeacher
from lmdistill.training.xtok_step import build_step
from lmdistill.xtok.data import pair_features
from lmdistill.xtok.losses import Side, xtok_loss_reference
from tests.conftest import build_sentencepiece_tokenizer, build_tiny_tokenizer, cli_fails, make_tiny_llama

ROWS = [
    {"text": "Hello world, how are you today? I am fine."},
    {"prompt": "What is the capital of France? ", "completion": "The capital of France is Paris."},
    {"text": "The cat sat on the mat and the dog slept by the door."},
    {"text": "Distillation trains a small student to imitate a large teacher.", "weight": 0.5},
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(student folder, teacher folder): a byte-level BPE student and a SentencePiece-style teacher (adds <bos>)."""
    base = tmp_path_factory.mktemp("xtok_pair")
    s_tok = build_tiny_tokenizer(base / "student", vocab_size=320)
    t_tok = build_sentencepiece_tokenizer(base / "teacher", lowercase=False)
    make_tiny_llama(len(s_tok), num_layers=2, seed=1).save_pretrained(base / "student")
    make_tiny_llama(len(t_tok), num_layers=3, hidden=48, heads=4, kv_heads=2, seed=2).save_pretrained(
        base / "teacher"
    )
    return base / "student", base / "teacher"


@pytest.mark.parametrize("method", ["byte_aligned", "uld"])
def test_step_matches_a_plain_per_example_computation(pair, method, one_torch_thread):
    """The batched, flattened, chunked step equals CE + the all-at-once xtok loss summed example by example."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    s_dir, t_dir = pair
    s_tok, t_tok = AutoTokenizer.from_pretrained(s_dir), AutoTokenizer.from_pretrained(t_dir)
    student = AutoModelForCausalLM.from_pretrained(s_dir).train()
    teacher = AutoModelForCausalLM.from_pretrained(t_dir).eval()
    distill = DistillConfig(
        loss="jsd", kd_ratio=0.7, temperature=1.5, cross_tokenizer=method, xtok_chunk_size=5
    )
    step = build_step(distill, s_tok, t_tok, student, teacher, log=lambda _: None)
    features, stats = pair_features(ROWS, s_tok, t_tok, 64)
    assert stats["kept"] == 4 and stats["groups"] > 20
    batch = step.collator(0)(features)
    total, parts, tokens = step.sums(student, InProcessTeacher(teacher), batch)
    total.backward()
    got_grad = student.lm_head.weight.grad.clone()
    student.zero_grad()

    expected = torch.zeros(())
    want_tokens = 0
    for f in features:
        ids = torch.tensor([f["input_ids"]])
        t_ids = torch.tensor([f["teacher_input_ids"]])
        s_h = final_hidden(student, ids, torch.ones_like(ids))[0]
        with torch.no_grad():
            t_h = final_hidden(teacher, t_ids, torch.ones_like(t_ids))[0]
        labels = torch.tensor(f["labels"][1:])
        keep = labels != -100
        weight = f.get("weight", 1.0)
        ce = torch.nn.functional.cross_entropy(student.lm_head(s_h[:-1][keep]), labels[keep], reduction="sum")
        groups = torch.tensor(f["xtok_groups"])
        from lmdistill.chunked import Head

        x = xtok_loss_reference(
            Side(s_h, Head.of(student), ids[0], groups[:, :2], step.student_vocab),
            Side(t_h, Head.of(teacher, trainable=False), t_ids[0], groups[:, 2:], step.teacher_vocab),
            step.spec,
            shared=step.shared,
        )
        expected = expected + weight * ((1 - 0.7) * ce + 0.7 * 1.5**2 * x.total)
        want_tokens += int(keep.sum())
    expected.backward()
    assert tokens == want_tokens
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts["kd"].item() > 0
    torch.testing.assert_close(got_grad, student.lm_head.weight.grad, rtol=1e-4, atol=1e-6)


def test_prompt_groups_are_left_out(pair):
    from transformers import AutoTokenizer

    s_dir, t_dir = pair
    s_tok, t_tok = AutoTokenizer.from_pretrained(s_dir), AutoTokenizer.from_pretrained(t_dir)
    prompt, completion = ROWS[1]["prompt"], ROWS[1]["completion"]
    f = pair_features([ROWS[1]], s_tok, t_tok, 64)[0][0]
    whole = pair_features([{"text": prompt + completion}], s_tok, t_tok, 64)[0][0]
    offsets = s_tok(prompt + completion, return_offsets_mapping=True)["offset_mapping"]
    assert f["xtok_groups"] == [g for g in whole["xtok_groups"] if offsets[g[1] - 1][1] > len(prompt)]
    assert 0 < len(f["xtok_groups"]) < len(whole["xtok_groups"])
    assert f["teacher_input_ids"][0] == t_tok.bos_token_id  # the teacher's own BOS is kept, unaligned
    assert all(sa >= 1 and ta >= 1 for sa, _, ta, _ in f["xtok_groups"])


def _config(tmp_path: Path, pair, method: str | None, rows=ROWS * 2) -> Path:
    s_dir, t_dir = pair
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "teacher": {"name": str(t_dir)},
        "student": {"name": str(s_dir)},
        "data": {"train": str(data), "eval": str(data), "max_length": 48},
        "distill": {"loss": "jsd", "kd_ratio": 0.5, "cross_tokenizer": method},
        "train": {
            "output_dir": str(tmp_path / "out"),
            "max_steps": 3,
            "per_device_train_batch_size": 4,
            "learning_rate": 1e-3,
            "logging_steps": 1,
            "save_steps": 100,
            "extra": {"use_cpu": True, "disable_tqdm": True},
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("method", ["byte_aligned", "uld"])
def test_train_end_to_end(tmp_path, pair, method, capsys, one_torch_thread):
    config = _config(tmp_path, pair, method)
    assert main(["train", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"cross-tokenizer: {method}" in out
    student = tmp_path / "out" / "student"
    assert (student / "model.safetensors").is_file()
    state = json.loads(next((tmp_path / "out").glob("checkpoint-*/trainer_state.json")).read_text())
    logged = [e for e in state["log_history"] if "kd" in e]
    assert len(logged) == 3 and all(e["kd"] > 0 and e["ce"] > 0 for e in logged)
    if method == "uld":
        assert all(e["kd_matched"] == 0 for e in logged)
    else:
        assert any(e["kd_matched"] > 0 for e in logged)
    # the student keeps its own tokenizer
    saved = json.loads((student / "tokenizer.json").read_text())
    assert saved["pre_tokenizer"]["type"] == "ByteLevel"


def test_mismatch_without_the_setting_points_to_it(tmp_path, pair, capsys):
    config = _config(tmp_path, pair, None)
    err = cli_fails(
        ["train", str(config)], capsys, "different tokenizers", "distill.cross_tokenizer=byte_aligned"
    )
    assert "black-box" in err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "distill.cross_tokenizer=gold",
            "distill.cross_tokenizer: unknown method 'gold'; choose byte_aligned or uld",
        ),
        ("distill.teacher_store=/tmp/store", "needs the teacher model in this process"),
        ("teacher.server=http://127.0.0.1:9/v1", "needs the teacher model in this process"),
        ("hints.hidden_weight=1", "cannot be combined with hint terms"),
        ("distill.kd_ratio=0", "distill.kd_ratio is 0"),
        ("distill.xtok_unmatched_weight=-1", "distill.xtok_unmatched_weight must be a finite number >= 0"),
        ("distill.xtok_chunk_size=0", "distill.xtok_chunk_size must be positive"),
    ],
)
def test_bad_settings_stop_before_any_model_loads(tmp_path, pair, override, message, capsys, monkeypatch):
    import lmdistill.training.parts.models as run_module

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the settings were checked")

    monkeypatch.setattr(run_module, "load_model", no_loading)
    monkeypatch.setattr(run_module, "load_teacher", no_loading)
    config = _config(tmp_path, pair, "byte_aligned")
    cli_fails(["train", str(config), override], capsys, message)
    assert not (tmp_path / "out").exists()


def test_chat_records_stop_before_any_model_loads(tmp_path, pair, capsys, monkeypatch):
    import lmdistill.training.parts.models as run_module

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the data was checked")

    monkeypatch.setattr(run_module, "load_model", no_loading)
    monkeypatch.setattr(run_module, "load_teacher", no_loading)
    rows = [*ROWS, {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    config = _config(tmp_path, pair, "uld", rows=rows)
    cli_fails(
        ["train", str(config)],
        capsys,
        "train.jsonl:5: a teacher of another tokenizer (distill.cross_tokenizer, teachers[i].cross_tokenizer) needs text or prompt/completion",
    )


def test_config_command_documents_the_settings(capsys):
    assert main(["config"]) == 0
    text = capsys.readouterr().out
    assert "cross_tokenizer: None" in text and "xtok_unmatched_weight: 1.0" in text


def test_step_refuses_a_sparse_teacher(pair):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmdistill.chunked import SparseTeacher
    from lmdistill.teachers.whitebox import TeacherScores

    s_dir, t_dir = pair
    s_tok, t_tok = AutoTokenizer.from_pretrained(s_dir), AutoTokenizer.from_pretrained(t_dir)
    student = AutoModelForCausalLM.from_pretrained(s_dir)
    teacher = AutoModelForCausalLM.from_pretrained(t_dir)
    step = build_step(
        DistillConfig(cross_tokenizer="uld"), s_tok, t_tok, student, teacher, log=lambda _: None
    )

    class Sparse:
        name = "a sparse source"

        def score(self, query):
            z = torch.zeros((1, 1))
            return TeacherScores(sparse=SparseTeacher(z.long(), z, z[:, 0]))

    batch = step.collator(0)(pair_features(ROWS[:1], s_tok, t_tok, 32)[0])
    with pytest.raises(ValueError, match="needs the teacher's hidden states; a sparse source"):
        step.sums(student, Sparse(), batch)
