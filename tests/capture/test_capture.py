"""`capture` on a tiny real teacher: the rows are the teacher's top-k at the trainer's target positions,
the manifest describes the store, a killed capture resumes computing only what is missing, and a rerun
with other settings stops with one message naming the difference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from lmdistill import __version__
from lmdistill.capture import TeacherStore, capture, data_hashes, tokenizer_hash
from lmdistill.capture.codec import LOGPROB_STEP
from lmdistill.capture.store import file_sha256
from lmdistill.data import DistillCollator, load_records, tokenize_records
from lmdistill.errors import UserError
from lmdistill.models import load_teacher, load_tokenizer
from lmdistill.models.forward import final_hidden
from tests.capture.conftest import capture_config


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def teacher_dir(tiny_model_dirs):
    return tiny_model_dirs[0]


@pytest.mark.parametrize("codec", ["compact", "raw"])
def test_rows_are_the_teachers_topk_at_the_trainers_positions(codec, teacher_dir, data_file, tmp_path):
    cfg = capture_config(teacher_dir, data_file, tmp_path / "store", codec=codec, temperature=2.0)
    capture(cfg, log=lambda _: None)
    tok = load_tokenizer(teacher_dir)
    features, _ = tokenize_records(load_records(data_file), tok, 48)
    batch = DistillCollator(pad_token_id=tok.pad_token_id)(features)
    with torch.no_grad():
        teacher = load_teacher(teacher_dir)
        hidden = final_hidden(teacher, batch["input_ids"], batch["attention_mask"])
        mask = batch["labels"][:, 1:] != -100
        logits = teacher.get_output_embeddings()(hidden[:, :-1][mask])[:, : len(tok)]
        logp = torch.log_softmax(logits.double() / 2.0, dim=-1)
    store = TeacherStore.open(tmp_path / "store")
    order = [7, 0, 10, 3]  # any order: rows come back concatenated in the order asked
    ids, logprobs, tail, counts = store.rows(order)
    starts = np.concatenate([[0], np.cumsum(mask.sum(1).numpy())])
    expected_rows = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in order])
    assert counts == mask.sum(1)[order].tolist() and ids.shape == (len(expected_rows), 8)
    ref = logp[expected_rows]
    gathered = ref.gather(1, ids).float()
    tol = LOGPROB_STEP / 2 + 1e-5 if codec == "compact" else 2e-3
    assert (logprobs - gathered).abs().max() <= tol  # stored values are the teacher's log-probs at those ids
    top_values = ref.topk(8, dim=-1).values.float()
    assert torch.allclose(
        gathered.sort(dim=1).values, top_values.sort(dim=1).values, atol=1e-5
    )  # and the top 8
    outside = ref.scatter(1, ids, float("-inf")).logsumexp(-1).float()
    torch.testing.assert_close(tail, outside, rtol=2e-3, atol=1e-4)


def test_manifest_describes_the_store(teacher_dir, data_file, tmp_path):
    out = tmp_path / "store"
    summary = capture(capture_config(teacher_dir, data_file, out), log=lambda _: None)
    m = json.loads((out / "manifest.json").read_text())
    tok = load_tokenizer(teacher_dir)
    features, _ = tokenize_records(load_records(data_file), tok, 48)
    assert m["complete"] is True and m["lmdistill_version"] == __version__
    assert m["teacher"] == str(teacher_dir) and len(m["teacher_hash"]) == 16
    assert m["tokenizer_hash"] == tokenizer_hash(tok)
    assert m["data_hash"] == data_hashes(features, 4)[0]
    assert (m["data_source"], m["max_length"], m["k"], m["temperature"]) == (str(data_file), 48, 8, 1.0)
    assert (m["vocab"], m["codec"], m["examples"], m["shard_size"]) == (len(tok), "compact", 11, 4)
    assert m["dtypes"]["logprob_codes"].startswith("uint8") and m["dtypes"]["tail"].startswith("float16")
    assert [s["examples"] for s in m["shards"]] == [[0, 4], [4, 8], [8, 11]]
    for s in m["shards"]:
        path = out / s["file"]
        assert s["sha256"] == file_sha256(path) and s["bytes"] == path.stat().st_size
    assert m["target_tokens"] == sum(s["target_tokens"] for s in m["shards"]) == summary.target_tokens
    assert m["bytes"] == summary.bytes and summary.shards_computed == 3 and summary.shards_reused == 0
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import lmdistill.capture.run as run
    from lmdistill.capture.config import load_capture_config

    real = run.write_shard
    def write_then_die(folder, index, *args):
        if index == 1:  # shard 1 dies half-written: a temporary file is all that is left of it
            (Path(folder) / ".shard-00001.safetensors.abc123.tmp").write_bytes(b"half a shard")
            (Path(folder) / "shard-00002.safetensors").write_bytes(b"a stray file without its record")
            os.kill(os.getpid(), signal.SIGKILL)
        return real(folder, index, *args)
    run.write_shard = write_then_die
    run.capture(load_capture_config(None, sys.argv[1:]))
    """
)


def test_killed_capture_resumes_and_equals_an_uninterrupted_one(teacher_dir, data_file, tmp_path):
    straight = tmp_path / "straight"
    capture(capture_config(teacher_dir, data_file, straight), log=lambda _: None)

    out = tmp_path / "killed"
    cfg = capture_config(teacher_dir, data_file, out)
    overrides = [
        f"teacher.name={teacher_dir}",
        f"data.train={data_file}",
        "data.max_length=48",
        f"capture.output_dir={out}",
        *[
            f"capture.{k}={getattr(cfg.capture, k)}"
            for k in ("k", "shard_size", "batch_size", "chunk_size", "device")
        ],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, *overrides], env=env, capture_output=True, text=True
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    with pytest.raises(UserError, match="incomplete"):
        TeacherStore.open(out)

    lines = []
    summary = capture(cfg, log=lines.append)
    assert (summary.shards_computed, summary.shards_reused) == (2, 1)
    assert "already complete, reused" in lines[0] and "reused" not in lines[1] + lines[2]
    assert _files(out) == _files(straight)  # byte for byte, the stray and temporary files gone
    assert TeacherStore.open(out).rows([10])[3] == TeacherStore.open(straight).rows([10])[3]


def test_a_changed_shard_file_is_recomputed(teacher_dir, data_file, tmp_path):
    out = tmp_path / "store"
    capture(capture_config(teacher_dir, data_file, out), log=lambda _: None)
    before = _files(out)
    (out / "shard-00001.safetensors").write_bytes(b"corrupted")
    summary = capture(capture_config(teacher_dir, data_file, out), log=lambda _: None)
    assert (summary.shards_computed, summary.shards_reused) == (1, 2)
    assert _files(out) == before


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"k": 4}, "capture.k: the store has 8, this run 4"),
        ({"temperature": 2.0}, "capture.temperature: the store has 1.0, this run 2.0"),
        ({"codec": "raw"}, "capture.codec: the store has compact, this run raw"),
        ({"shard_size": 5}, "capture.shard_size: the store has 4, this run 5"),
    ],
)
def test_other_settings_into_the_same_folder_stop_or_overwrite(
    override, match, teacher_dir, data_file, tmp_path
):
    out = tmp_path / "store"
    capture(capture_config(teacher_dir, data_file, out), log=lambda _: None)
    with pytest.raises(UserError, match=match):
        capture(capture_config(teacher_dir, data_file, out, **override), log=lambda _: None)
    summary = capture(
        capture_config(teacher_dir, data_file, out, overwrite=True, **override), log=lambda _: None
    )
    assert summary.shards_computed == len(json.loads((out / "manifest.json").read_text())["shards"])


def test_other_data_or_teacher_into_the_same_folder_stops(teacher_dir, data_file, tmp_path, tiny_llama):
    out = tmp_path / "store"
    capture(capture_config(teacher_dir, data_file, out), log=lambda _: None)
    cfg = capture_config(teacher_dir, data_file, out)
    cfg.data.max_length = 20
    with pytest.raises(UserError, match=r"data\.max_length: the store has 48, this run 20"):
        capture(cfg, log=lambda _: None)
    other = tmp_path / "other_teacher"
    tok = load_tokenizer(teacher_dir)
    tiny_llama(len(tok), num_layers=3, seed=9).save_pretrained(other)
    tok.save_pretrained(other)
    with pytest.raises(UserError, match=r"teacher\.name: the store has"):
        capture(capture_config(other, data_file, out), log=lambda _: None)


def test_a_folder_of_other_files_is_refused(teacher_dir, data_file, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds other files"):
        capture(capture_config(teacher_dir, data_file, out), log=lambda _: None)
