"""`lmdistill capture` from the command line: a store and its summary; each mistake one line, exit 2;
the shipped configs load; two processes under torchrun write the same store as one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmdistill.capture import load_capture_config
from lmdistill.cli import main
from lmdistill.config import load_config
from lmdistill.outputs import LOCK_FILE  # holds the writer's pid: the one file that may differ

ROOT = Path(__file__).parent.parent.parent


@pytest.fixture
def config_file(tmp_path, tiny_model_dirs, data_file):
    cfg = {
        "teacher": {"name": str(tiny_model_dirs[0])},
        "data": {"train": str(data_file), "max_length": 48},
        "capture": {"output_dir": str(tmp_path / "store"), "k": 8, "shard_size": 4, "device": "cpu"},
    }
    path = tmp_path / "capture.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_capture_writes_a_store_and_prints_a_summary(config_file, tmp_path, capsys):
    assert main(["capture", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert "11 examples" in out and "bytes/token" in out and "shards computed 3, reused 0" in out
    assert "target tokens/s" in out
    assert (tmp_path / "store" / "manifest.json").is_file()
    assert main(["capture", str(config_file)]) == 0
    assert "shards computed 0, reused 3" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["data.train=/no/such.jsonl"], "data file not found"),
        (["capture.kk=3"], "unknown key capture.kk"),
        (["capture.codec=zip"], "capture.codec: choose compact or raw"),
        (["capture.k=0"], "capture.k must be at least 1"),
        (["capture.k=100000"], "larger than the vocabulary"),
        (["teacher.name=/no/such/model"], "/no/such/model"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(config_file, overrides, match, capsys):
    assert main(["capture", str(config_file), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lmdistill capture: error:") and match in err and "\n" not in err


def test_shipped_capture_and_store_configs_load():
    configs = sorted((ROOT / "configs" / "capture").glob("*.yaml"))
    assert configs
    for path in configs:
        cfg = load_capture_config(path)
        assert (ROOT / cfg.data.train).is_file()
    run = load_config(ROOT / "configs" / "logits_kd_from_store.yaml")
    capture_cfg = load_capture_config(ROOT / "configs" / "capture" / "smollm2_chatterbot.yaml")
    assert run.distill.teacher_store == capture_cfg.capture.output_dir
    assert run.data.train == capture_cfg.data.train and run.data.max_length == capture_cfg.data.max_length
    assert run.distill.temperature == capture_cfg.capture.temperature


def test_two_processes_write_the_same_store_as_one(config_file, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "-m", "lmdistill.cli"]
    two = subprocess.run(
        [*launch, "capture", str(config_file), f"capture.output_dir={tmp_path / 'two'}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "shards computed 3, reused 0" in two.stdout
    assert main(["capture", str(config_file), f"capture.output_dir={tmp_path / 'one'}"]) == 0
    one = {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir() if p.name != LOCK_FILE}
    assert one == {p.name: p.read_bytes() for p in (tmp_path / "two").iterdir() if p.name != LOCK_FILE}
