"""Output folders are never clobbered: export --force replaces only an export; a training folder holding
another run is refused (or replaced whole when asked); a lock keeps a second run out; nothing is
written before the inputs are checked; files and folders honour the umask. Real files, real tiny models,
the real CLI entry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmdistill.cli import main
from lmdistill.io import atomic_write_text
from lmdistill.outputs import LOCK_FILE, differences
from tests.conftest import cli_fails, write_run_config

ROWS = [
    {
        "messages": [
            {"role": "user", "content": "Hello world"},
            {"role": "assistant", "content": "how are you?"},
        ]
    },
    {"prompt": "The cat sat", "completion": " on the mat."},
    {"text": "Distillation trains a small student to imitate a large teacher."},
]


@pytest.fixture
def train_config(tmp_path, tiny_model_dirs):
    return write_run_config(tmp_path, *tiny_model_dirs, ROWS * 4), tmp_path / "out"


# ---- export -----------------------------------------------------------------------------------------


def test_export_force_into_the_working_directory_is_refused(tiny_model_dirs, tmp_path, capsys, monkeypatch):
    _, student = tiny_model_dirs
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("precious")
    monkeypatch.chdir(work)
    cli_fails(["export", str(student), ".", "--force"], capsys, "working directory")
    cli_fails(["export", str(student), str(tmp_path), "--force"], capsys, "working directory")
    assert (work / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]  # no temporary folder left either


def test_export_force_replaces_only_a_previous_export(tiny_model_dirs, tmp_path, capsys):
    _, student = tiny_model_dirs
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "old.txt").write_text("keep me")
    cli_fails(["export", str(student), str(folder), "--force"], capsys, "not a previous export")
    assert (folder / "old.txt").read_text() == "keep me"
    out = tmp_path / "exported"
    assert main(["export", str(student), str(out)]) == 0
    assert (out / "lmdistill_export.json").is_file()
    cli_fails(["export", str(student), str(out)], capsys, "--force")
    assert main(["export", str(student), str(out), "--force", "--dtype", "bfloat16"]) == 0
    assert json.loads((out / "lmdistill_export.json").read_text())["dtype"] == "bfloat16"
    # the source, or a folder holding it, is never a destination
    cli_fails(["export", str(student), str(student.parent), "--force"], capsys, "source")


# ---- train --------------------------------------------------------------------------------------


def test_train_refuses_a_folder_holding_another_run(train_config, capsys):
    config, out = train_config
    assert main(["train", str(config), "train.max_steps=6"]) == 0
    assert (out / "checkpoint-6").is_dir()
    student = (out / "student" / "model.safetensors").read_bytes()
    err = cli_fails(["train", str(config), "train.learning_rate=0.001"], capsys, "train.learning_rate")
    assert "resume_from_checkpoint=latest" in err and "overwrite_output_dir" in err
    assert (out / "student" / "model.safetensors").read_bytes() == student
    assert yaml.safe_load((out / "lmdistill_config.yaml").read_text())["train"]["max_steps"] == 6
    # Asked to overwrite: the old run goes whole, so `latest` can never pick up its checkpoint-6.
    assert main(["train", str(config), "train.learning_rate=0.001", "train.overwrite_output_dir=true"]) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert yaml.safe_load((out / "lmdistill_config.yaml").read_text())["train"]["learning_rate"] == 0.001


def test_resume_with_another_model_is_one_clear_message(train_config, capsys):
    config, _ = train_config
    assert main(["train", str(config)]) == 0
    cli_fails(
        [
            "train",
            str(config),
            "train.resume_from_checkpoint=latest",
            "student.name=null",
            "student.num_layers=1",
        ],
        capsys,
        "student.name",
    )
    # resuming the same run further is fine (max_steps may grow)
    assert main(["train", str(config), "train.resume_from_checkpoint=latest", "train.max_steps=6"]) == 0


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder`: its bytes and modification time."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_resuming_a_finished_run_trains_nothing(train_config, capsys):
    """12 examples in batches of 4: 3 steps an epoch, so the last step (4) is mid-epoch, where Trainer
    used to train step 5 and save checkpoint-5 (dropping checkpoint-2 under save_total_limit=2)."""
    config, out = train_config
    assert main(["train", str(config)]) == 0
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["train", str(config), "train.resume_from_checkpoint=latest"]) == 0
    printed = capsys.readouterr().out
    assert "nothing trained, nothing written" in printed and "{'loss'" not in printed, printed
    assert _snapshot(out) == before  # not a byte, not a timestamp
    # Killed after its last checkpoint, before its student was saved: the student comes from the
    # checkpoint, still without a step.
    student = (out / "student" / "model.safetensors").read_bytes()
    shutil.rmtree(out / "student")
    assert main(["train", str(config), "train.resume_from_checkpoint=latest"]) == 0
    printed = capsys.readouterr().out
    assert "nothing trained; saving the student from it" in printed and "{'loss'" not in printed, printed
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert (out / "student" / "model.safetensors").read_bytes() == student
    # A max_steps below the checkpoint's step cannot be reached: refused before anything runs.
    cli_fails(
        ["train", str(config), "train.resume_from_checkpoint=latest", "train.max_steps=3"],
        capsys,
        "below the step",
    )


def test_resuming_a_finished_epoch_run_trains_nothing(train_config, capsys):
    """Steps from epochs (train.max_steps 0): 1.5 epochs of 3 steps = 5 steps, the last mid-epoch; the
    trainer finds the run finished itself (its step count needs the data)."""
    config, out = train_config
    epochs = ["train.max_steps=0", "train.num_train_epochs=1.5"]
    assert main(["train", str(config), *epochs]) == 0
    assert (out / "checkpoint-5").is_dir()
    student = _snapshot(out / "student")
    capsys.readouterr()
    assert main(["train", str(config), *epochs, "train.resume_from_checkpoint=latest"]) == 0
    printed = capsys.readouterr().out
    assert "nothing trained; the student is saved already" in printed and "{'loss'" not in printed, printed
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-5"]
    assert _snapshot(out / "student") == student


def test_latest_without_a_checkpoint_says_so(train_config, capsys):
    config, out = train_config
    cli_fails(["train", str(config), "train.resume_from_checkpoint=latest"], capsys, "no checkpoint")
    assert not out.exists()


def test_failed_run_rewrites_nothing(train_config, tmp_path, capsys):
    config, out = train_config
    assert main(["train", str(config)]) == 0
    before = (out / "lmdistill_config.yaml").read_text()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    # even when asked to replace the run, nothing goes before the new run's inputs are checked
    cli_fails(
        ["train", str(config), f"data.train={bad}", "train.overwrite_output_dir=true"], capsys, "bad.jsonl:2"
    )
    assert (out / "lmdistill_config.yaml").read_text() == before
    assert (out / "student" / "model.safetensors").is_file() and (out / "checkpoint-4").is_dir()
    fresh = tmp_path / "fresh"
    cli_fails(["train", str(config), f"data.train={bad}", f"train.output_dir={fresh}"], capsys, "bad.jsonl:2")
    assert not fresh.exists()


def test_a_second_run_into_a_locked_folder_is_refused(train_config, capsys):
    config, out = train_config
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(out / LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, f'{os.getpid()} train'.encode())\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        err = cli_fails(["train", str(config)], capsys, "in use by another lmdistill process")
        assert str(holder.pid) in err
        assert not (out / "student").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died: its lock went with it, the file left behind does not block
    assert main(["train", str(config), "train.max_steps=1"]) == 0


# ---- umask -------------------------------------------------------------------------------------


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_outputs_honour_the_umask(umask_027, tiny_model_dirs, tmp_path):
    target = atomic_write_text(tmp_path / "a" / "f.txt", "x")
    assert _mode(target) == 0o640 and _mode(target.parent) == 0o750
    _, student = tiny_model_dirs
    out = tmp_path / "exported"
    assert main(["export", str(student), str(out)]) == 0
    assert _mode(out) == 0o750
    assert {_mode(p) for p in out.iterdir()} == {0o640}


def test_trained_student_honours_the_umask(umask_027, train_config):
    config, out = train_config
    assert main(["train", str(config), "train.max_steps=1"]) == 0
    assert _mode(out / "student") == 0o750
    assert {p.name: _mode(p) for p in (out / "student").iterdir()} == {
        p.name: 0o640 for p in (out / "student").iterdir()
    }
    assert _mode(out / "lmdistill_config.yaml") == 0o640


def test_stale_lock_file_of_a_finished_run_does_not_block(train_config):
    config, out = train_config
    assert main(["train", str(config), "train.max_steps=1"]) == 0
    lock = out / LOCK_FILE
    assert lock.is_file()  # left in place on purpose: removing it would race
    # A holder that died: its pid is still in the file, and it blocks nothing.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    lock.write_text(f"{dead.stdout.strip()} train\n")
    assert main(["train", str(config), "train.max_steps=1"]) == 0  # the same job again
    assert lock.read_text() == f"{os.getpid()} train\n"  # this run took the lock


def test_differences_name_each_changed_key_and_skip_settings_one_side_lacks():
    old = {"train": {"learning_rate": 5e-5, "max_steps": 4}, "student": {"num_layers": 10}}
    new = {
        "train": {"learning_rate": 1e-3, "max_steps": 6, "added_later": True},
        "student": {"num_layers": 10},
    }
    assert differences(old, new) == ["train.learning_rate: 5e-05 -> 0.001", "train.max_steps: 4 -> 6"]
    assert differences(old, new, ignore=("train.max_steps",)) == ["train.learning_rate: 5e-05 -> 0.001"]
    assert differences(old, old) == []


# ---- issue 27: lock files never followed, symlinked exports, checkpoint modes ----------------------


@pytest.mark.parametrize("kind", ["symlink", "dangling-symlink", "hardlink"])
def test_train_lock_file_that_is_a_link_is_refused(train_config, tmp_path, capsys, kind):
    """The lock file is opened without following a link: the pid is never written into another file."""
    config, out = train_config
    out.mkdir()
    victim = tmp_path / "victim.txt"
    if kind != "dangling-symlink":
        victim.write_text("precious\n")
    if kind == "hardlink":
        os.link(victim, out / LOCK_FILE)
    else:
        (out / LOCK_FILE).symlink_to(victim)
    match = "hard links" if kind == "hardlink" else "symbolic link"
    cli_fails(["train", str(config)], capsys, str(out / LOCK_FILE), match)
    if kind == "dangling-symlink":
        assert not victim.exists() and not victim.is_symlink()  # not created through the link
    else:
        assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # no marker, no checkpoint


def test_generate_lock_file_that_is_a_symlink_is_refused(tmp_path, capsys):
    from tests.teachers.faultserver import FaultServer

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "hello"}) + "\n")
    (tmp_path / "empty.yaml").write_text("{}\n")
    out = tmp_path / "gen.jsonl"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    lock = tmp_path / ".gen.jsonl.lock"
    lock.symlink_to(victim)
    with FaultServer() as server:
        argv = [
            "generate",
            str(tmp_path / "empty.yaml"),
            f"input={src}",
            f"output={out}",
            "teacher.backend=api",
            "teacher.name=fake",
            f"teacher.base_url={server.url}",
            "teacher.api_key_env=null",
        ]
        cli_fails(argv, capsys, str(lock), "symbolic link")
        assert server.total == 0
    assert victim.read_text() == "precious\n"
    assert not out.exists()


def test_export_force_through_a_symlink_replaces_its_target(tiny_model_dirs, tmp_path, capsys):
    """`current` -> `v1`: --force replaces the export in v1 and keeps the link; nothing left beside either."""
    _, student = tiny_model_dirs
    exports = tmp_path / "exports"
    exports.mkdir()
    assert main(["export", str(student), str(exports / "v1")]) == 0
    link = tmp_path / "current"
    link.symlink_to(exports / "v1")
    assert main(["export", str(student), str(link), "--force", "--dtype", "bfloat16"]) == 0
    assert link.is_symlink() and os.readlink(link) == str(exports / "v1")
    assert json.loads((exports / "v1" / "lmdistill_export.json").read_text())["dtype"] == "bfloat16"
    assert [p.name for p in exports.iterdir() if not p.name.endswith(".lock")] == ["v1"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".") and "current" in p.name) == []
    # a link to nothing is refused, and nothing is created where it points
    nowhere = tmp_path / "nowhere"
    nowhere.symlink_to(tmp_path / "missing")
    cli_fails(["export", str(student), str(nowhere)], capsys, "symbolic link", "does not exist")
    assert not (tmp_path / "missing").exists() and nowhere.is_symlink()


@pytest.mark.parametrize("mask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_checkpoints_honour_the_umask(train_config, mask):
    """Every file of checkpoint-N (model.safetensors too) is 0666 & ~umask, the folder 0777 & ~umask,
    so another user can resume from it or serve it."""
    config, out = train_config
    old = os.umask(mask)
    try:
        assert main(["train", str(config), "train.max_steps=2"]) == 0
    finally:
        os.umask(old)
    checkpoint = out / "checkpoint-2"
    assert _mode(checkpoint) == 0o777 & ~mask
    files = {p.name: _mode(p) for p in checkpoint.rglob("*") if p.is_file()}
    assert "model.safetensors" in files and "optimizer.pt" in files
    assert files == dict.fromkeys(files, 0o666 & ~mask)


def test_hint_projections_honour_the_umask(umask_027, train_config):
    """The projections (saved with safetensors, in each checkpoint and beside the student) too."""
    config, out = train_config
    shrunk = ["student.name=null", "student.num_layers=1", "student.hidden_size=16"]
    shrunk += [
        "student.num_attention_heads=2",
        "student.num_key_value_heads=1",
        "student.intermediate_size=32",
    ]
    assert main(["train", str(config), "train.max_steps=2", *shrunk, "hints.hidden_weight=1.0"]) == 0
    saved = [out / "hint_projections.safetensors", out / "checkpoint-2" / "hint_projections.safetensors"]
    assert {str(p): _mode(p) for p in saved} == {str(p): 0o640 for p in saved}
