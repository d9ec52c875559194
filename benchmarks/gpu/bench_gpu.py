"""One GPU benchmark at real sizes: lmdistill's KD loss and KD training step against naive, Liger and TRL.

Random weights built from config: teacher shaped like Qwen2.5-1.5B, student like Qwen2.5-0.5B
(vocab 151936, tied heads), bf16, SDPA attention. Nothing is downloaded. Cases, by group:

- loss (8192 tokens, hidden 896 student / 1536 teacher, bf16 inputs, fwd + bwd): lmdistill's
  `chunked_loss` (CE 0.5 + JSD beta 0.5 or forward KL 0.5, chunks 256/1024/2048), the same loss through
  full fp32 logits (`full_logits_loss`, "naive"), Liger's chunked `LigerFusedLinearJSDLoss` (CE 0.5 + JSD
  0.5, torch.compile'd as Liger ships it) and Liger's Triton `LigerFusedLinearJSD` (JSD only, compared
  with our JSD-only loss). Median of CUDA-event times after warm-up; peak = torch.cuda.max_memory_allocated
  after a reset, inputs included (`delta` = peak minus what was allocated before the call).
- loss_compiled: torch.compile on the chunk computation, two ways: (a) the library's per-chunk
  `_chunk_terms` compiled in place (what a one-line change in `lmdistill.chunked` would give), (b) a
  Liger-style fused chunk step (both head matmuls + CE + divergence, `torch.func.grad_and_value`,
  compiled) written here with the library's loss terms.
- train_*: KD training steps, batch 4 x 1024 random tokens, labels on every token, TrainingArguments
  bf16, gradient checkpointing off unless named `_gc`. lmdistill's DistillTrainer vs TRL's GKDTrainer
  (lmbda 0: off-policy, no generation). The divergence is matched to TRL's: GKD's loss is the generalized
  JSD at beta 0.5, temperature 1, with no CE term, so ours runs `LossSpec(jsd, beta 0.5, ce 0, kd 1)`;
  `train_ours_fkl_ce` is lmdistill's default recipe (CE 0.5 + forward KL 0.5). Tokens/s over the steps
  after the first 2; peak = max_memory_allocated over the whole run (weights and optimizer included);
  MFU = tokens/s * (2 N_teacher + 6 N_student) / peak bf16 FLOP/s (N: parameters, tied head counted once).

Each group runs in its own process (a crash, an OOM or a hang loses that group only; a hung group is
killed at its time limit) and each case inside a group in its own try/except. Groups run in priority
order inside a total time budget; whatever does not fit is recorded as skipped. The peers are optional:
a missing `trl` or `liger_kernel` gives "skipped: <package> not installed".

    python benchmarks/gpu/bench_gpu.py --out $OUT/gpu_results.json --log $OUT/cases.log   # GPU, ~4 min
    python benchmarks/gpu/bench_gpu.py --smoke --out /tmp/smoke.json                      # CPU, tiny

`benchmarks/gpu/run_gpu.sh` is the device-machine entry point (offline wheels, checks, then this).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The pieces beside this file (run as a script, its folder is on sys.path already; imported, it is not):
# gpu_context (sizes, Ctx, running and timing a case), cases_loss, cases_train, cases_sampler (the groups'
# cases) and gpu_report (summary and table).
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from cases_loss import group_loss, group_loss_compiled, group_loss_liger  # noqa: E402
from cases_sampler import ROOT, group_sampler  # noqa: E402
from cases_train import PEAK_FLOPS, group_train  # noqa: E402
from gpu_context import GIB, SIZES, Ctx  # noqa: E402
from gpu_report import AIMS, ANCHORS, _read_lines, print_table, summarise  # noqa: E402

# Groups in priority order: name -> (time limit s, expected s on an H100 (a guess until measured), peers).
# A group starts only if the budget left covers its expected time; it is killed at its limit.
GROUPS = {
    "loss": (120, 40, ()),
    "train_ours_jsd": (120, 35, ()),
    "train_trl_jsd": (150, 45, ("trl",)),
    "loss_liger": (150, 60, ("liger_kernel",)),
    "loss_compiled": (150, 70, ()),
    "train_ours_fkl_ce": (120, 35, ()),
    "train_ours_jsd_compiled": (150, 60, ()),
    "train_trl_jsd_gc": (150, 45, ("trl",)),
    # Run only when named (--only sampler; run_gpu.sh does it in a second call with its own budget), so the
    # groups above keep the default budget to themselves.
    "sampler": (420, 240, ()),
}
SEPARATE = ("sampler",)  # not in the default list of groups


def run_group(name: str, smoke: bool, lines: str, limit_s: float = 600.0) -> None:
    ctx = Ctx(smoke, lines)
    import torch

    if ctx.cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    if name == "loss":
        group_loss(ctx)
    elif name == "loss_liger":
        group_loss_liger(ctx)
    elif name == "loss_compiled":
        group_loss_compiled(ctx)
    elif name == "sampler":
        sys.path.insert(0, str(ROOT))  # benchmarks.bench_*, tests.vllm.vllmserver: the CPU scripts' code
        group_sampler(ctx, limit_s)
    else:
        group_train(ctx, name)


# ----------------------------------------------------------------------------------------------------
# the parent: runs the groups, collects, compares, prints


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("torch", "transformers", "trl", "liger_kernel", "datasets", "accelerate", "triton"):
        try:
            if importlib.util.find_spec(mod) is None:
                out[mod] = None
                continue
        except (ImportError, ValueError):
            out[mod] = None
            continue
        from importlib.metadata import PackageNotFoundError, version

        dist = {"liger_kernel": "liger-kernel"}.get(mod, mod)
        try:
            out[mod] = version(dist)
        except PackageNotFoundError:
            out[mod] = "?"
    return out


def _device_info(smoke: bool) -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(
            name=torch.cuda.get_device_name(0),
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            memory_gib=round(p.total_memory / GIB, 1),
            sms=p.multi_processor_count,
            cuda=torch.version.cuda,
        )
    if smoke:
        info["name"] = f"CPU smoke ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return info


def _spawn(name: str, smoke: bool, lines: Path, log, limit: float) -> tuple[str, float]:
    cmd = [sys.executable, "-u", str(Path(__file__).resolve()), "--group", name, "--lines", str(lines)]
    cmd += ["--limit-s", f"{limit:.0f}"]
    if smoke:
        cmd.append("--smoke")
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TRL_EXPERIMENTAL_SILENCE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    }
    if smoke:  # small ops on a shared CPU: one thread each avoids threads waiting on each other
        env["OMP_NUM_THREADS"] = "1"
    log.write(f"\n===== {name} (limit {limit:.0f} s) =====\n")
    log.flush()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        rc = proc.wait(timeout=limit)
        status = "ok" if rc == 0 else f"exit {rc}"
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group's own process group: it and its compile workers
        proc.wait()
        status = f"killed at its time limit ({limit:.0f} s)"
    _stop_servers(Path(f"{lines}.servers"))
    return status, time.perf_counter() - t0


def _stop_servers(listed: Path) -> None:
    """Servers a group started (vLLM's, in their own process groups, whose ids it wrote to `listed`) and left
    running, because the group was killed: their process groups ended (TERM, then KILL after 30 s)."""
    if not listed.exists():
        return
    for pid in {int(x) for x in listed.read_text().split()}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
            for _ in range(30):
                time.sleep(1)
                os.killpg(pid, 0)  # ProcessLookupError once the group is gone
            os.killpg(pid, signal.SIGKILL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, float32 (tests the script)")
    ap.add_argument(
        "--out", default=None, help="results JSON (default $OUT/gpu_results.json or ./gpu_results.json)"
    )
    ap.add_argument("--log", default=None, help="the groups' own output (default: beside --out, cases.log)")
    ap.add_argument(
        "--budget-s", type=float, default=240.0, help="total seconds for all groups (default 240)"
    )
    ap.add_argument("--only", default=None, help="comma-separated groups to run: " + ", ".join(GROUPS))
    ap.add_argument("--group", help=argparse.SUPPRESS)
    ap.add_argument("--lines", help=argparse.SUPPRESS)
    ap.add_argument("--limit-s", type=float, default=600.0, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.group:  # inside a group's process
        run_group(a.group, a.smoke, a.lines, a.limit_s)
        return

    t_start = time.perf_counter()
    out = Path(a.out or Path(os.environ.get("OUT", ".")) / "gpu_results.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = Path(a.log) if a.log else out.with_name("cases.log")
    device = _device_info(a.smoke)
    versions = _versions()
    print(f"device: {device}\nversions: {versions}", flush=True)
    if not a.smoke and not device["cuda_available"]:
        sys.exit("bench_gpu: no CUDA device visible to torch; run with --smoke on a CPU machine")
    names = (
        [g for g in GROUPS if g not in SEPARATE]
        if not a.only
        else [g.strip() for g in a.only.split(",") if g.strip()]
    )
    unknown = [g for g in names if g not in GROUPS]
    if unknown:
        sys.exit(f"bench_gpu: unknown group(s) {unknown}; choose from {list(GROUPS)}")

    cases: dict = {}
    groups: dict = {}
    deadline = t_start + a.budget_s
    with tempfile.TemporaryDirectory() as tmp, open(log_path, "a") as log:
        for name in names:
            limit, expected, needs = GROUPS[name]
            missing = [p for p in needs if versions.get(p) is None]
            if missing:
                groups[name] = f"skipped: {missing[0].replace('_', '-')} not installed"
                cases[name] = {"status": "skipped", "reason": groups[name][9:]}
                print(f"[{time.perf_counter() - t_start:6.1f} s] {name}: {groups[name]}", flush=True)
                continue
            left = deadline - time.perf_counter()
            if left < (expected if not a.smoke else 0):
                groups[name] = f"skipped: time budget ({left:.0f} s left of {a.budget_s:.0f})"
                cases[name] = {"status": "skipped", "reason": groups[name][9:]}
                print(f"[{time.perf_counter() - t_start:6.1f} s] {name}: {groups[name]}", flush=True)
                continue
            lines = Path(tmp) / f"{name}.jsonl"
            status, took = _spawn(name, a.smoke, lines, log, min(limit, left) if not a.smoke else 600)
            got = _read_lines(lines)
            if not got:
                cases[name] = {
                    "status": "error",
                    "error": f"group produced no result ({status}); see {log_path}",
                }
            cases.update(got)
            groups[name] = f"{status}, {took:.1f} s"
            print(f"[{time.perf_counter() - t_start:6.1f} s] {name}: {groups[name]}", flush=True)
            for case, r in got.items():
                brief = {
                    k: r[k] for k in ("status", "ms", "peak_gib", "tokens_per_s", "error", "reason") if k in r
                }
                print(f"           {case}: {brief}", flush=True)

    result = {
        "device": device,
        "versions": versions,
        "smoke": a.smoke,
        "sizes": {k: v for k, v in SIZES["smoke" if a.smoke else "full"].items()},
        "anchors": ANCHORS,
        "aims": AIMS,
        "peak_flops": PEAK_FLOPS,
        "cases": cases,
        "groups": groups,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "out": str(out),
        "log": str(log_path),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    result["summary"] = summarise(cases, a.smoke)
    out.write_text(json.dumps(result, indent=2))
    print_table(result)


if __name__ == "__main__":
    main()
