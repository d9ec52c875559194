"""Capture fixtures: a tiny teacher/student pair (tests/conftest.py), a small real data file, configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmdistill.capture import CaptureConfig, load_capture_config

ROWS = [
    {
        "messages": [
            {"role": "user", "content": "Hello world"},
            {"role": "assistant", "content": "how are you?"},
        ]
    },
    {"prompt": "The cat sat", "completion": " on the mat and the dog slept by the door."},
    {"text": "Distillation trains a small student to imitate a large teacher."},
    {
        "messages": [
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
        ]
    },
    {"prompt": "Alice has 3 apples", "completion": " and buys 2 more, then eats 1."},
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def data_file(tmp_path) -> Path:
    """11 examples of three layouts and varied lengths: 3 shards of 4, 4 and 3 at shard_size 4."""
    rows = [dict(r) for r in (ROWS * 3)[:11]]
    for i, r in enumerate(rows):  # make every example distinct
        if "text" in r:
            r["text"] = f"{r['text']} Number {i}."
    return write_jsonl(tmp_path / "train.jsonl", rows)


def capture_config(teacher: Path, data: Path, out: Path, **capture) -> CaptureConfig:
    """A capture config for the tiny teacher: k 8, 4 examples per shard, compact unless told."""
    overrides = [
        f"teacher.name={teacher}",
        f"data.train={data}",
        "data.max_length=48",
        f"capture.output_dir={out}",
        "capture.k=8",
        "capture.shard_size=4",
        "capture.batch_size=3",
        "capture.chunk_size=16",
        "capture.device=cpu",
    ] + [f"capture.{k}={v}" for k, v in capture.items()]
    return load_capture_config(None, overrides)
