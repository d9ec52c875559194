"""Run every benchmark in benchmarks/ that this environment can run; print one table; write all.json.

Each benchmark is its own script, run in its own process from the repository root with `--json`
pointing into the output folder; this script reads those JSON files back and turns each into
rows of one table: figure, ours, peer (or baseline), ratio, aim, met?. Every ratio in the table
comes from one run of one script (both sides measured together), never from two runs.

The peer benchmarks (Liger-Kernel, TRL) need the packages of benchmarks/requirements-peers.txt,
which live only in `.venv-bench` (make it with `bash benchmarks/setup_peers.sh`): they run with
the interpreter that imports them, this one or `.venv-bench/bin/python`; without either they are
skipped, and the table says why. A script that does not exist yet (bench_capture.py) is skipped.

    .venv-bench/bin/python benchmarks/bench_all.py            # full sizes, results in benchmarks/results/
    .venv-bench/bin/python benchmarks/bench_all.py --quick    # small shapes, a smoke test; results in a temp dir
    .venv-bench/bin/python benchmarks/bench_all.py --only peers_loss,peers_train --threads 1
    .venv-bench/bin/python benchmarks/bench_all.py --collect  # table and all.json from the JSON already there

On a CPU shared with other jobs, `--threads 1` (OMP_NUM_THREADS=1 for every script, both sides of
every comparison) gives steadier figures. Results and the commands that made them: RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from lmdistill.eval.measure import machine_info, table, versions

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent


@dataclass
class Bench:
    name: str  # the JSON is <out>/<name>.json
    script: str
    quick: list[str] | None  # arguments for --quick; None: not run with --quick
    full: list[str] = field(default_factory=list)
    peers: bool = False  # needs trl / liger-kernel
    default: bool = True  # run without --only
    note: str = ""


BENCHES = [
    Bench(
        "chunked_loss",
        "bench_chunked_loss.py",
        ["--tokens", "256", "--hidden", "64", "--vocab", "4096", "--repeats", "1"],
    ),
    Bench(
        "local_generation",
        "bench_local_generation.py",
        ["--prompts", "4", "--max-new-tokens", "8", "--batch", "4"],
    ),
    Bench(
        "api_concurrency",
        "bench_api_concurrency.py",
        ["--requests", "8", "--latency", "0.05", "--concurrency", "4"],
    ),
    Bench("hints_step", "bench_hints.py", ["--batch", "1", "--seq", "32", "--steps", "1"]),
    Bench("capture", "bench_capture.py", ["--examples", "16", "--steps", "1", "--batch", "4"]),
    Bench("peers_loss", "bench_peers_loss.py", ["--quick"], peers=True),
    Bench("peers_train", "bench_peers_train.py", ["--quick"], peers=True),
    Bench(
        "peers_train_batch32",
        "bench_peers_train.py",
        None,
        ["--batch", "32", "--steps", "2", "--warmup", "1", "--cases", "lmdistill,trl"],
        peers=True,
        note="4x the tokens per step, where full logits weigh more than the optimizer state",
    ),
    Bench(
        "hints_comparison",
        "compare_hints.py",
        ["--steps", "2"],
        default=False,
        note="a quality comparison (two 40-step trainings), not a speed figure: run it with --only hints_comparison",
    ),
]


def peer_python() -> tuple[str | None, str]:
    """An interpreter that imports trl and liger_kernel, and why there is none."""
    candidates = [sys.executable, str(ROOT / ".venv-bench" / "bin" / "python")]
    for py in dict.fromkeys(candidates):
        if Path(py).exists():
            ok = subprocess.run([py, "-c", "import trl, liger_kernel"], capture_output=True, cwd=ROOT)
            if ok.returncode == 0:
                return py, ""
    return (
        None,
        "trl and liger-kernel are not installed here nor in .venv-bench: run bash benchmarks/setup_peers.sh",
    )


def _f(x) -> str:
    """A number for the table: thousands separators, small values in 3 significant digits."""
    if x is None:
        return "-"
    if isinstance(x, int) or x == 0:
        return f"{x:,}"
    if abs(x) < 0.01:
        return f"{x:.1e}"
    if abs(x) < 10:
        return f"{x:.3g}"
    return f"{x:,.1f}"


def _row(figure, ours, peer, ratio, aim=None, met=None, unit="", source=""):
    return {
        "figure": figure,
        "ours": ours,
        "peer": peer,
        "ratio": ratio,
        "unit": unit,
        "aim": aim,
        "met": met,
        "source": source,
    }


def figures(name: str, r: dict) -> list[dict]:
    """Table rows from one benchmark's JSON (the schema each script writes)."""
    rows = []
    if name == "chunked_loss":
        naive, chunked = r["rows"]
        ratio = r["ratios"]
        rows.append(
            _row(
                f"KD loss peak MB: naive / lmdistill (chunk {r['args']['chunk']})",
                chunked["peak_mb"],
                naive["peak_mb"],
                ratio["memory_naive_over_chunked"],
                ">= 5",
                ratio["memory_naive_over_chunked"] >= 5,
                "MB",
            )
        )
        rows.append(
            _row(
                "KD loss ms: naive / lmdistill",
                chunked["ms"],
                naive["ms"],
                ratio["time_naive_over_chunked"],
                ">= 1",
                ratio["time_naive_over_chunked"] >= 1,
                "ms",
            )
        )
    elif name == "peers_loss":
        rs = r["rows"]
        ours = rs.get("lmdistill-256")
        if ours and "naive" in rs:
            n = rs["naive"]
            m, t = n["peak_mb"] / ours["peak_mb"], n["ms"] / ours["ms"]
            rows.append(
                _row(
                    "KD loss peak MB: naive / lmdistill-256",
                    ours["peak_mb"],
                    n["peak_mb"],
                    m,
                    ">= 5",
                    m >= 5,
                    "MB",
                )
            )
            rows.append(
                _row("KD loss ms: naive / lmdistill-256", ours["ms"], n["ms"], t, ">= 1", t >= 1, "ms")
            )
        for peer in ("liger-1024", "liger-1024-compiled"):
            if ours and peer in rs:
                p = rs[peer]
                m, t = p["peak_mb"] / ours["peak_mb"], p["ms"] / ours["ms"]
                rows.append(
                    _row(
                        f"KD loss peak MB: {peer} / lmdistill-256",
                        ours["peak_mb"],
                        p["peak_mb"],
                        m,
                        unit="MB",
                    )
                )
                rows.append(_row(f"KD loss ms: {peer} / lmdistill-256", ours["ms"], p["ms"], t, unit="ms"))
        diffs = [x.get("loss_rel_diff_vs_naive", 0.0) for x in rs.values()]
        diffs += [x.get("grad_rel_diff_vs_naive", 0.0) for x in rs.values()]
        if diffs:
            rows.append(
                _row(
                    "KD loss: max rel. diff of loss and gradients vs naive, all variants",
                    None,
                    None,
                    max(diffs),
                    "<= 1e-4",
                    max(diffs) <= 1e-4,
                )
            )
        for variant, why in r.get("skipped", {}).items():
            rows.append(_row(f"KD loss: {variant} skipped: {why}", None, None, None))
    elif name.startswith("peers_train"):
        rs = r["rows"]
        ours = rs.get("lmdistill")
        for peer in ("trl", "trl-gc"):
            if ours and peer in rs:
                p = rs[peer]
                label = "TRL GKD" + (", grad. checkpointing" if peer == "trl-gc" else "")
                label += f" (batch {r['args']['batch']})"
                t = ours["tokens_per_s"] / p["tokens_per_s"]
                m = ours["peak_rss_mb"] / p["peak_rss_mb"]
                g = ours["peak_growth_mb"] / p["peak_growth_mb"]
                rows.append(
                    _row(
                        f"KD training tokens/s: lmdistill / {label}",
                        ours["tokens_per_s"],
                        p["tokens_per_s"],
                        t,
                        ">= 1.3",
                        t >= 1.3,
                        "tok/s",
                    )
                )
                rows.append(
                    _row(
                        f"KD training peak RSS: lmdistill / {label}",
                        ours["peak_rss_mb"],
                        p["peak_rss_mb"],
                        m,
                        "<= 0.6",
                        m <= 0.6,
                        "MB",
                    )
                )
                rows.append(
                    _row(
                        f"KD training RSS growth in training: lmdistill / {label}",
                        ours["peak_growth_mb"],
                        p["peak_growth_mb"],
                        g,
                        "<= 0.6",
                        g <= 0.6,
                        "MB",
                    )
                )
                d = abs(ours["first_loss"] - p["first_loss"]) / abs(p["first_loss"])
                rows.append(
                    _row(
                        f"KD training first-step loss rel. diff vs {label}",
                        ours["first_loss"],
                        p["first_loss"],
                        d,
                        "<= 1e-4",
                        d <= 1e-4,
                    )
                )
        for case, why in r.get("skipped", {}).items():
            rows.append(_row(f"KD training: {case} skipped: {why}", None, None, None))
    elif name == "local_generation":
        single, batched = r["rows"].values()
        ratio = batched["tokens_per_s"] / single["tokens_per_s"]
        batch = r["args"]["batch"]
        rows.append(
            _row(
                f"generation tokens/s: batched ({batch}) / one at a time",
                batched["tokens_per_s"],
                single["tokens_per_s"],
                ratio,
                "> 1",
                ratio > 1,
                "tok/s",
            )
        )
        n = r["args"]["prompts"]
        rows.append(
            _row(
                "generation: identical greedy answers, batched vs one at a time",
                r["identical"],
                n,
                r["identical"] / n,
                "= 1",
                r["identical"] == n,
            )
        )
    elif name == "api_concurrency":
        one, many = r["rows"][0], r["rows"][1]
        rows.append(
            _row(
                f"API teacher req/s: concurrency {r['args']['concurrency']} / 1",
                many["requests_per_s"],
                one["requests_per_s"],
                r["speedup"],
                unit="req/s",
            )
        )
    elif name == "hints_step":
        base = r["rows"][0]
        for x in r["rows"][1:]:
            rows.append(
                _row(
                    f"training step s: {x['case']} / {base['case']}",
                    x["step_s"],
                    base["step_s"],
                    x["time_ratio"],
                    "<= 1.15",
                    x["time_ratio"] <= 1.15,
                    "s",
                )
            )
    elif name == "capture":
        speed = r["training"]["target_tokens_per_s"]
        live = speed["live teacher"]
        for variant, v in speed.items():
            if variant != "live teacher":
                label = f"KD training target tokens/s: {variant} / live teacher"
                rows.append(_row(label, v, live, v / live, unit="tok/s"))
        dense = r["dense_fp16_bytes_per_token"]
        for x in r["sizes"]:
            if x["codec"] == "compact":
                label = f"teacher bytes/token: dense fp16 / compact top-{x['k']}"
                rows.append(_row(label, x["bytes_per_token"], dense, dense / x["bytes_per_token"], unit="B"))
    else:
        rows.append(_row(f"{name}: ran (see {name}.json)", None, None, None))
    return rows


def _rel(path) -> str:
    """A path relative to the repository root when it lies inside it."""
    p = Path(path).absolute()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def run_bench(b: Bench, python: str, out: Path, quick: bool, threads: int | None) -> dict:
    path = out / f"{b.name}.json"
    if path.exists():
        path.unlink()
    cmd = [python, str(HERE / b.script), *(b.quick if quick else b.full), "--json", str(path)]
    shown = " ".join([_rel(python), f"benchmarks/{b.script}", *cmd[2:-1], _rel(path)])
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TRL_EXPERIMENTAL_SILENCE="1")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        shown = f"OMP_NUM_THREADS={threads} {shown}"
    print(f"\n=== {b.name}: {shown}", flush=True)
    t0 = time.perf_counter()
    load = os.getloadavg()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - t0
    print(proc.stdout[-6000:], end="", flush=True)
    entry = {"command": shown, "seconds": seconds, "loadavg_before": load, "loadavg_after": os.getloadavg()}
    if proc.returncode or not path.exists():
        entry.update(status="failed", error=proc.stdout[-3000:], exit_code=proc.returncode)
        return entry
    entry.update(status="ok", result=json.loads(path.read_text()))
    return entry


def print_table(rows: list[dict]) -> None:
    def ratio(r: dict) -> str:
        return (
            "-" if r["ratio"] is None else _f(r["ratio"]) if abs(r["ratio"]) < 0.01 else f"{r['ratio']:.2f}"
        )

    def met(r: dict) -> str:
        return "-" if r["met"] is None else ("yes" if r["met"] else "NO")

    columns = [
        ("figure", "<"),
        ("ours", ">"),
        ("peer/base", ">"),
        ("ratio", ">"),
        ("aim", ">"),
        ("met?", "<"),
    ]
    cells = [(r["figure"], _f(r["ours"]), _f(r["peer"]), ratio(r), r["aim"] or "-", met(r)) for r in rows]
    print("\n" + table(columns, cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="small shapes and few steps: a smoke test of every script"
    )
    ap.add_argument("--only", help=f"comma-separated, of: {', '.join(b.name for b in BENCHES)}")
    ap.add_argument(
        "--out", help="folder for the JSON files (default benchmarks/results; --quick: a temp dir)"
    )
    ap.add_argument(
        "--threads",
        type=int,
        help="torch threads in every benchmark (sets OMP_NUM_THREADS); default: torch's (all cores). "
        "On a CPU shared with other jobs, 1 gives steadier figures than an oversubscribed OpenMP pool",
    )
    ap.add_argument(
        "--collect",
        action="store_true",
        help="run nothing: build the table and all.json from the JSON files already in the output folder",
    )
    a = ap.parse_args()
    known = {b.name: b for b in BENCHES}
    if a.only:
        unknown = [n for n in a.only.split(",") if n not in known]
        if unknown:
            ap.error(f"unknown benchmarks {unknown}; known: {', '.join(known)}")
        chosen = [known[n] for n in a.only.split(",")]
    else:
        chosen = [b for b in BENCHES if b.default]
    out = (
        Path(a.out)
        if a.out
        else Path(tempfile.mkdtemp(prefix="bench-quick-"))
        if a.quick
        else HERE / "results"
    )
    out.mkdir(parents=True, exist_ok=True)
    peers_py, why_no_peers = peer_python()
    load_before = os.getloadavg()
    report = {
        "mode": "collect" if a.collect else "quick" if a.quick else "full",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "benchmarks": {},
    }
    rows: list[dict] = []
    for b in chosen:
        if not (HERE / b.script).exists():
            report["benchmarks"][b.name] = {
                "status": "skipped",
                "why": f"benchmarks/{b.script} does not exist yet",
            }
            continue
        if a.collect:
            path = out / f"{b.name}.json"
            if not path.exists():
                report["benchmarks"][b.name] = {"status": "skipped", "why": f"--collect: no {_rel(path)}"}
                continue
            result = json.loads(path.read_text())
            entry = {
                "status": "ok",
                "collected": _rel(path),
                "command": result.get("command"),
                "result": result,
            }
        elif a.quick and b.quick is None:
            report["benchmarks"][b.name] = {"status": "skipped", "why": "not run with --quick", "quiet": True}
            continue
        elif b.peers and peers_py is None:
            report["benchmarks"][b.name] = {"status": "skipped", "why": why_no_peers}
            continue
        else:
            entry = run_bench(b, peers_py if b.peers else sys.executable, out, a.quick, a.threads)
        report["benchmarks"][b.name] = entry
        if entry["status"] == "ok":
            try:
                new = figures(b.name, entry["result"])
            except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError) as e:
                new = [_row(f"{b.name}: results not understood ({e!r}); see {b.name}.json", None, None, None)]
            for row in new:
                row["source"] = b.name
                if a.quick:
                    row["met"] = None  # toy shapes: the aims are for the full sizes
            rows += new
    for name, e in report["benchmarks"].items():
        if e["status"] != "ok" and not e.get("quiet"):
            rows.append(
                _row(
                    f"{name}: {e['status']}: {e.get('why') or 'see all.json'}", None, None, None, source=name
                )
            )
    report.update(
        table=rows,
        loadavg_before=load_before,
        loadavg_after=os.getloadavg(),
        machine=machine_info(),
        versions=versions(),
        peer_python=peers_py and _rel(peers_py),
    )
    print_table(rows)
    la = report["loadavg_after"]
    note = " (quick mode: toy shapes, aims not judged)" if a.quick else ""
    if a.collect:
        note = " (--collect: nothing ran now; each benchmark's JSON has the load during its run)"
    print(
        f"load average at start {load_before[0]:.2f}, at end {la[0]:.2f} (1 min){note}; {_rel(out / 'all.json')}"
    )
    (out / "all.json").write_text(json.dumps(report, indent=2))
    failed = [n for n, e in report["benchmarks"].items() if e["status"] == "failed"]
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
