"""`torchrun` with 2 CPU processes (gloo) follows the same loss trajectory as 1 process with the same
global batch: target tokens are counted across processes and the hint projections' gradients are
averaged like the student's."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file


def _losses(stdout: str) -> list[tuple[float, float]]:
    """(loss, grad_norm) of every logged step, from the Trainer's printed log dicts."""
    out = []
    for line in stdout.splitlines():
        start = line.find("{'loss'")
        if start >= 0:
            logs = ast.literal_eval(line[start : line.index("}", start) + 1])
            out.append((float(logs["loss"]), float(logs["grad_norm"])))
    return out


def test_two_processes_match_one(tmp_path, tiny_model_dirs, tiny_llama, tiny_tokenizer):
    _, student = tiny_model_dirs
    teacher = tmp_path / "wide_teacher"  # wider than the student: the hints need a learned projection
    tiny_llama(len(tiny_tokenizer), num_layers=3, hidden=48, seed=5).save_pretrained(teacher)
    tiny_tokenizer.save_pretrained(teacher)
    rows = [{"text": f"Hello world number {i} the cat sat on the mat " * (1 + i % 3)} for i in range(32)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = {}
    for procs in (1, 2):
        cfg = {
            "teacher": {"name": str(teacher)},
            "student": {"name": str(student)},
            "data": {"train": str(data), "max_length": 32},
            "hints": {"hidden_weight": 1.0, "layers": "last"},
            "train": {
                "output_dir": str(tmp_path / f"out{procs}"),
                "max_steps": 3,
                "per_device_train_batch_size": 8 // procs,  # the same global batch
                "learning_rate": 1e-2,
                "logging_steps": 1,
                "save_steps": 1000,
                "extra": {
                    "use_cpu": True,
                    "disable_tqdm": True,
                    "optim": "sgd",
                    "lr_scheduler_type": "constant",
                    "dataloader_drop_last": True,
                },
            },
        }
        done = _train(tmp_path, f"cfg{procs}", procs, cfg)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[procs] = _losses(done.stdout)
        assert (Path(tmp_path / f"out{procs}") / "student" / "model.safetensors").is_file()
    one = load_file(str(tmp_path / "out1" / "hint_projections.safetensors"))
    two = load_file(str(tmp_path / "out2" / "hint_projections.safetensors"))
    assert one.keys() == two.keys() and one
    for key in one:  # the projections learned the same: their gradients were averaged across processes
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6)
    assert len(runs[1]) == len(runs[2]) == 3
    for (loss1, norm1), (loss2, norm2) in zip(runs[1], runs[2], strict=True):
        assert abs(loss1 - loss2) <= 2e-3 * abs(loss1)  # printed to 4 significant digits
        assert abs(norm1 - norm2) <= 2e-3 * abs(norm1)


def _train(tmp_path, name: str, procs: int, cfg: dict, timeout: int = 240) -> subprocess.CompletedProcess:
    """`torchrun ... lmdistill train` in its own process group, killed whole if it hangs (a process
    left waiting in an all-reduce would otherwise outlive the test)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={procs}", "-m", "lmdistill.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [*cmd, "train", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(
            f"training with {procs} processes hung (killed after {timeout} s): {err[-2000:]}"
        ) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_a_nonfinite_batch_on_one_process_is_skipped_by_all(tmp_path, tiny_model_dirs, tiny_tokenizer):
    """A teacher whose embedding of "q" is NaN makes one example's loss non-finite. That example lands
    on one process only; every process must skip the step together (a process skipping alone leaves
    the others waiting in DDP's all-reduce), as one process skips the same global batch."""
    from transformers import AutoModelForCausalLM

    teacher_dir, student = tiny_model_dirs
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    q = tiny_tokenizer.convert_tokens_to_ids("q")
    with torch.no_grad():
        teacher.get_input_embeddings().weight[q] = float("nan")
    poisoned = tmp_path / "poisoned_teacher"
    teacher.save_pretrained(poisoned)
    tiny_tokenizer.save_pretrained(poisoned)
    rows = [{"text": f"Hello world number {i} the cat sat on the mat"} for i in range(16)]
    rows[5] = {"text": "a quiet question"}
    assert all("q" not in r["text"] for i, r in enumerate(rows) if i != 5)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    logs = {}
    for procs in (1, 2):
        cfg = {
            "teacher": {"name": str(poisoned)},
            "student": {"name": str(student)},
            "data": {"train": str(data), "max_length": 24},
            "train": {
                "output_dir": str(tmp_path / f"nan{procs}"),
                "max_steps": 2,  # one epoch: the poisoned example is in exactly one step
                "per_device_train_batch_size": 8 // procs,
                "learning_rate": 1e-2,
                "logging_steps": 1,
                "save_steps": 1000,
                "extra": {
                    "use_cpu": True,
                    "disable_tqdm": True,
                    "optim": "sgd",
                    "dataloader_drop_last": True,
                },
            },
        }
        done = _train(tmp_path, f"nan{procs}", procs, cfg)
        assert done.returncode == 0, done.stderr[-3000:]
        logs[procs] = [line for line in done.stdout.splitlines() if "{'loss'" in line]
        assert len(logs[procs]) == 2, done.stdout[-2000:]
        assert "'nonfinite_skipped': 1" in logs[procs][-1]  # skipped once, counted on rank 0
    one = load_file(str(tmp_path / "nan1" / "student" / "model.safetensors"))
    two = load_file(str(tmp_path / "nan2" / "student" / "model.safetensors"))
    for key in one:  # the same update: the skipped step changed nothing in either
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6)
