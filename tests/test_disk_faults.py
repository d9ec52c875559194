"""A read-only output folder and a full disk: one line naming the path and the cause (exit 2, no
traceback), and nothing half-written left looking finished.

Tests run as root, for whom `chmod` makes nothing read-only, so the faults are real file systems: the
real CLI runs in a private mount namespace (`unshare --mount`; `--map-root-user` too when not root)
where a tmpfs is mounted read-only (EROFS) or with a small `size=` (ENOSPC). The mounts vanish with the
namespace, so the driver lists what the commands left on them before it ends. Where namespaces are not
allowed (an unprivileged container), the tests are skipped and say why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_run_config
from tests.teachers.faultserver import FaultServer

ROOT = Path(__file__).parent.parent
ROW = {"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there."}]}

#: Run inside the namespace: mount, run each command, list the mount point; one JSON line on stdout.
DRIVER = r"""
import json, os, subprocess, sys
spec = json.loads(sys.argv[1])
subprocess.run(["mount", "-t", "tmpfs", "-o", spec["options"], "tmpfs", spec["mount"]], check=True)
runs = []
for argv in spec["commands"]:
    p = subprocess.run([sys.executable, "-m", "lmdistill.cli", *argv], capture_output=True, text=True)
    runs.append({"rc": p.returncode, "err": p.stderr, "out": p.stdout})
left = sorted(os.path.relpath(os.path.join(d, n), spec["mount"])
              for d, dirs, files in os.walk(spec["mount"]) for n in dirs + files)
read = {}
for name in spec.get("read", []):
    path = os.path.join(spec["mount"], name)
    read[name] = open(path).read() if os.path.isfile(path) else None
print(json.dumps({"runs": runs, "left": left, "read": read}))
"""


def _unshare() -> list[str]:
    return ["unshare", "--mount", "--propagation", "private"] + (
        [] if os.geteuid() == 0 else ["--map-root-user"]
    )


def _namespaces_work(tmp: Path) -> str | None:
    """None when a tmpfs can be mounted in a private mount namespace here, else why not."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "unshare or mount is not installed"
    point = tmp / "probe"
    point.mkdir(exist_ok=True)
    probe = subprocess.run(
        [*_unshare(), "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(point)],
        capture_output=True,
        text=True,
    )
    return None if probe.returncode == 0 else f"no private mount namespace here: {probe.stderr.strip()}"


@pytest.fixture
def on_tmpfs(tmp_path):
    """`run(options, *commands)`: the CLI commands run one after another in one namespace with a tmpfs
    (mount options `options`) at tmp_path/mnt; returns (runs, entries left on the tmpfs), and sets
    `run.read` to the text of the files (relative to the mount) named in `read`."""
    reason = _namespaces_work(tmp_path)
    if reason:
        pytest.skip(reason)
    mount = tmp_path / "mnt"
    mount.mkdir()

    def run(options: str, *commands: list, read: tuple[str, ...] = ()) -> tuple[list[dict], list[str]]:
        spec = {"options": options, "mount": str(mount), "commands": [[str(a) for a in c] for c in commands]}
        spec["read"] = list(read)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        p = subprocess.run(
            [*_unshare(), sys.executable, "-c", DRIVER, json.dumps(spec)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=600,
        )
        assert p.returncode == 0, p.stderr
        result = json.loads(p.stdout.strip().splitlines()[-1])
        run.read = result["read"]  # the text of the files named in `read`, as they were left
        return result["runs"], result["left"]

    return mount, run


def _one_error_line(run: dict, *match: str) -> str:
    """The run exited 2 with one error line holding every `match`, and no traceback."""
    err = run["err"]
    assert run["rc"] == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, err
    for m in match:
        assert m in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def train_yaml(tmp_path, tiny_model_dirs):
    out = tmp_path / "mnt" / "run"
    return write_run_config(tmp_path, *tiny_model_dirs, [ROW], output_dir=str(out), max_steps=2, save_steps=2)


def test_read_only_output_is_one_line_before_any_work(on_tmpfs, train_yaml, tiny_model_dirs, tmp_path):
    """train, capture, export, eval and generate into a read-only file system: refused before any model
    loads or request is sent, naming the path and the cause."""
    mount, run = on_tmpfs
    teacher, student = tiny_model_dirs
    capture = tmp_path / "capture.yaml"
    capture.write_text(
        yaml.safe_dump({"teacher": {"name": str(teacher)}, "data": {"train": str(tmp_path / "train.jsonl")}})
    )
    text = tmp_path / "held.txt"
    text.write_text("Hello world. " * 20)
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "hello"}) + "\n")
    gen = tmp_path / "gen.yaml"
    gen.write_text("{}\n")
    with FaultServer() as server:
        generate = ["generate", gen, f"input={src}", f"output={mount / 'gen.jsonl'}", "teacher.backend=api"]
        generate += ["teacher.name=fake", f"teacher.base_url={server.url}", "teacher.api_key_env=null"]
        runs, left = run(
            "ro,size=1m",
            ["train", train_yaml],  # train.output_dir: mnt/run, not there yet
            ["train", train_yaml, f"train.output_dir={mount}"],  # the read-only folder itself
            ["capture", capture, f"capture.output_dir={mount / 'store'}"],
            ["export", student, mount / "exported"],
            ["eval", student, "--text", text, "--output-dir", mount / "report"],
            generate,
        )
        assert server.total == 0
    where = [mount / "run", mount, mount / "store", mount / "exported", mount / "report", mount / "gen.jsonl"]
    for result, path in zip(runs, where, strict=True):
        line = _one_error_line(result, str(path), "read-only file system")
        assert "Loading weights" not in result["err"], line  # refused before any model loads
    assert left == []


@pytest.mark.parametrize(
    ("size", "failing"),
    [
        ("100k", "run/checkpoint-2"),  # the checkpoint's weights do not fit (safetensors)
        ("300k", "run/checkpoint-2"),  # its weights fit, its optimizer state does not (torch.save)
        ("600k", "run"),  # the checkpoint fits, the student does not
    ],
    ids=["checkpoint-weights", "checkpoint-optimizer", "student"],
)
def test_full_disk_while_training_is_one_line(on_tmpfs, train_yaml, size, failing):
    """No space left while a checkpoint or the student is written: one line naming the path and the
    cause; an unfinished checkpoint is not left looking finished (`latest` finds nothing to resume), and
    no student folder or temporary file is left."""
    mount, run = on_tmpfs
    runs, left = run(
        f"size={size}",
        ["train", train_yaml],
        ["train", train_yaml, "train.resume_from_checkpoint=latest"],
    )
    line = _one_error_line(runs[0], str(mount / failing), "No space left")
    assert ("checkpoint" in line) == (failing != "run"), line
    assert not [p for p in left if p.startswith(("run/student", "run/.student"))], left
    assert not [p for p in left if ".tmp" in p], left  # no temporary file or folder
    if (
        failing == "run"
    ):  # the finished checkpoint stays; resuming from it saves the student, which fails again
        assert "run/checkpoint-2/trainer_state.json" in left
        _one_error_line(runs[1], str(mount / failing), "No space left")
    else:
        assert not [p for p in left if p.startswith("run/checkpoint-")], left  # removed, space freed
        _one_error_line(runs[1], "no checkpoint to resume from")


def test_full_disk_while_exporting_is_one_line(on_tmpfs, tiny_model_dirs):
    mount, run = on_tmpfs
    _, student = tiny_model_dirs
    runs, left = run("size=100k", ["export", student, mount / "exported"])
    _one_error_line(runs[0], str(mount / "exported"), "No space left")
    assert [p for p in left if not p.endswith(".lock")] == []  # no export, no temporary folder


def test_full_disk_while_capturing_is_one_line(on_tmpfs, tiny_model_dirs, tmp_path):
    """The store's manifest stays `complete: false`: training refuses an unfinished store."""
    mount, run = on_tmpfs
    teacher, _ = tiny_model_dirs
    data = tmp_path / "many.jsonl"
    data.write_text(
        "".join(json.dumps({"text": f"row {i}: the cat sat on the mat. " * 4}) + "\n" for i in range(24))
    )
    cfg = tmp_path / "capture.yaml"
    capture = {"output_dir": str(mount / "store"), "k": 64, "shard_size": 4, "device": "cpu"}
    cfg.write_text(
        yaml.safe_dump({"teacher": {"name": str(teacher)}, "data": {"train": str(data)}, "capture": capture})
    )
    runs, left = run("size=32k", ["capture", cfg], read=("store/manifest.json",))
    _one_error_line(runs[0], str(mount / "store"), "No space left")
    assert "store/shard-00000.json" in left and not [p for p in left if ".tmp" in p], left  # some shards done
    assert json.loads(run.read["store/manifest.json"])["complete"] is False
