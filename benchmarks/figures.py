"""Every results file in benchmarks/results/, the command that makes it, and whether it is stale.

A results file is stale when the code it measured has changed since it was written. Each file records
its provenance (`"provenance"` in the JSON, written by `stamp`): the commit it was measured at and the
git blob hash of every source file its script imports (the script itself and, transitively, every
`lmdistill` module it imports, at any depth, found by reading the code, not by running it). One command
lists the stale files and reruns them:

    python benchmarks/figures.py                 # list every results file: fresh, stale (and why), or unrecorded
    python benchmarks/figures.py --rerun         # rerun the stale ones, cheapest first, and stamp them
    python benchmarks/figures.py --rerun --only chunked_loss,int8
    python benchmarks/figures.py --stamp NAME    # record provenance for a file just written by hand

Speed and memory figures must run with nothing else on the cores (RESULTS.md); `--rerun` records the
load average before and after each run in the provenance. Peer benchmarks (TRL, Liger-Kernel) run
with `.venv-bench/bin/python` (`bash benchmarks/setup_peers.sh`).
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import functools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PACKAGE = ROOT / "src"


@dataclass
class Figure:
    """One results file: `name` (benchmarks/results/<name>.json), the argv that writes it (`{json}` is
    replaced by the file's path; the first item is the script under benchmarks/, or `lmdistill` for a
    command of the package), and what a rerun costs."""

    name: str
    argv: list[str]
    minutes: float  # a rerun on the 2-core development machine, idle, roughly
    kind: str = "speed"  # speed (idle machine, one thread where the script says so) or quality (seeds)
    peers: bool = False  # needs trl / liger-kernel (.venv-bench)
    threads: int | None = 1  # OMP_NUM_THREADS for the rerun; None: the script's own choice
    note: str = ""
    extra_sources: list[str] = field(default_factory=list)  # configs or data the figure depends on
    entry: str | None = None  # for an `lmdistill` command: the module its sources are read from
    follows: list[str] = field(
        default_factory=list
    )  # modules the script runs in a subprocess (their imports too)
    pending: str = ""  # why no results file exists yet (a speed figure waiting for an idle machine)

    @property
    def path(self) -> Path:
        return RESULTS / f"{self.name}.json"

    @property
    def script(self) -> Path | None:
        first = self.argv[0]
        return ROOT / "benchmarks" / first if first.endswith(".py") else None


DEMO_SHAPE = "--steps 32 --batch-size 8 --heldout-prompts 40 --max-new-tokens 40"
SMOLLM2_STUDENT = "--layers 30 --lr 1e-4 --steps 16 --schedule cosine"
SERVER = ["src/lmdistill/serve/__init__.py"]  # `lmdistill serve`, which the soak starts in its own process


def _f(name: str, command: str, minutes: float, **kw) -> Figure:
    """A Figure from its command line as one would type it (`{json}`: the results file)."""
    return Figure(name, shlex.split(command), minutes, **kw)


FIGURES: list[Figure] = [
    _f("chunked_loss", "bench_chunked_loss.py --json {json}", 2),
    _f("local_generation", "bench_local_generation.py --json {json}", 6),
    _f("api_concurrency", "bench_api_concurrency.py --json {json}", 1, threads=None),
    _f("hints_step", "bench_hints.py --json {json}", 3),
    _f("capture", "bench_capture.py --json {json}", 8),
    _f("capture_idle", "bench_capture.py --json {json}", 8, note="capture's benchmark on an idle machine"),
    _f("peers_loss", "bench_peers_loss.py --json {json}", 4, peers=True, threads=None),
    _f("peers_loss_1thread", "bench_peers_loss.py --threads 1 --repeats 3 --json {json}", 4, peers=True),
    _f("peers_loss_2threads", "bench_peers_loss.py --json {json}", 4, peers=True, threads=2),
    _f("peers_train", "bench_peers_train.py --json {json}", 8, peers=True),
    _f(
        "peers_train_batch32",
        "bench_peers_train.py --batch 32 --steps 2 --warmup 1 --cases lmdistill,trl --json {json}",
        8,
        peers=True,
    ),
    _f("peers_train_idle_1", "bench_peers_train.py --threads 1 --json {json}", 8, peers=True),
    _f("peers_train_idle_2", "bench_peers_train.py --threads 1 --json {json}", 8, peers=True),
    _f("hints_comparison", "compare_hints.py --json {json}", 15, kind="quality"),
    _f("xtok_memory", "bench_xtok_memory.py --json {json}", 2),
    _f("xtok_memory_uld", "bench_xtok_memory.py --method uld --json {json}", 2),
    _f("drafts", "bench_drafts.py --threads 1 --json {json}", 20, kind="quality"),
    _f("fsdp_load_memory", "bench_fsdp_load.py --json {json}", 6, threads=None),
    _f("int8", "bench_int8.py --threads 1 --json {json}", 4),
    _f("on_policy", "bench_on_policy.py --out {json}", 25, kind="quality"),
    _f("on_policy_20layers", "bench_on_policy.py --student-layers 20 --out {json}", 40, kind="quality"),
    _f("on_policy_sampling", "bench_on_policy_sampling.py --out {json}", 10),
    _f("step_breakdown", "bench_step_breakdown.py --out {json}", 6),
    _f("teacher_server", "bench_teacher_server.py --json {json}", 8),
    _f(
        "vllm_sampler",
        "bench_vllm_sampler.py --json {json}",
        15,
        threads=None,
    ),
    _f(
        "on_policy_samplers",
        "bench_on_policy_samplers.py --json {json}",
        15,
        threads=None,
    ),
    _f("teacher_on_tasks", "teacher_on_tasks.py --json {json}", 20, kind="quality"),
    _f("student_layers", "student_layers.py", 2, kind="quality", note="writes its own results file"),
    _f("soak_serve", "soak_serve.py --json {json}", 3, threads=None, follows=SERVER),
    _f(
        "soak_serve_smollm2",
        "soak_serve.py --model smollm2-135m --max-tokens 8,12,16 --words 1,3,8,20,40 --json {json}",
        10,
        threads=None,
        follows=SERVER,
    ),
    _f("quality", "bench_quality.py --workers 2 --json {json}", 20, kind="quality"),
    _f("quality_16x8_partial", "bench_quality.py --steps 16 --batch-size 8 --heldout-prompts 40 --max-new-tokens 40 --plot runs/plots/quality_16x8_partial.png --json {json}", 30, kind="quality"),
    _f("quality_demo_kd09", f"bench_quality.py --methods 'CE alone,forward KL (kd_ratio 0.9)' {DEMO_SHAPE} --skip-generation --plot runs/plots/quality_demo_kd09.png --json {{json}}", 10, kind="quality"),
    _f("quality_demo_setting", f"bench_quality.py --methods 'CE alone,forward KL' {DEMO_SHAPE} --skip-generation --plot runs/plots/quality_demo_setting.png --json {{json}}", 10, kind="quality"),
    _f("quality_on_policy_timing", f"bench_quality.py --methods 'CE alone,on-policy forward KL (lmbda 0.5),on-policy reverse KL (lmbda 0.5)' {DEMO_SHAPE} --plot runs/plots/quality_on_policy_timing.png --json {{json}}", 20, kind="quality"),
    _f("xtok_quality", "bench_xtok_quality.py --json {json}", 25, kind="quality"),
    _f("xtok_quality_cosine", "bench_xtok_quality.py --steps 16 --schedule cosine --json {json}", 25, kind="quality"),
    _f("xtok_quality_seqkd", "bench_xtok_quality.py --methods ce seqkd uld byte_aligned --steps 16 --schedule cosine --json {json}", 30, kind="quality"),
    _f("xtok_quality_smollm2", f"bench_xtok_quality.py --methods ce byte_aligned {SMOLLM2_STUDENT} --json {{json}}", 30, kind="quality"),
    _f("xtok_quality_smollm2_seqkd", f"bench_xtok_quality.py --methods ce seqkd {SMOLLM2_STUDENT} --json {{json}}", 30, kind="quality"),
    _f("xtok_quality_smollm2_uld", f"bench_xtok_quality.py --methods ce uld {SMOLLM2_STUDENT} --json {{json}}", 30, kind="quality"),
    _f(
        "task_quality",
        "bench_task_quality.py --workers 2 --json {json}",
        90,
        kind="quality",
    ),
    _f(
        "task_quality_warm150",
        "bench_task_quality.py --warm-steps 150 --methods \"SFT (CE on the teacher's answers);supervised KD (forward KL);"
        "GKD JSD(0.5), lmbda 0.5\" --json {json}",
        60,
        kind="quality",
    ),
    _f(
        "task_quality_curves",
        "bench_task_quality.py --curve-every 6 --seeds 0 --methods \"SFT (CE on the teacher's answers);"
        "GKD JSD(0.5), lmbda 0.5;GKD JSD(0.5), lmbda 1\" --json {json}",
        40,
        kind="quality",
    ),
    _f(
        "task_quality_why",
        "why_task_quality.py benchmarks/results/task_quality.json --json {json}",
        20,
        kind="quality",
    ),
    _f(
        "task_quality_warm150_why",
        "why_task_quality.py benchmarks/results/task_quality_warm150.json --json {json}",
        10,
        kind="quality",
    ),
    _f("task_quality_ablation", "bench_task_quality.py --ablation --json {json}", 65, kind="quality"),
    _f("draft_on_policy", "bench_draft_on_policy.py --methods \"off-policy TVD (configs/draft.yaml);on-policy TVD (DistillSpec, lmbda 1)\" --json {json}", 55, kind="quality"),
    _f(
        "draft_on_policy_mixed",
        "bench_draft_on_policy.py --threads 2 --methods \"off-policy TVD (configs/draft.yaml);"
        "on-policy TVD, lmbda 0.5 (mixed)\" --json {json}",
        30,
        kind="quality",
    ),
    _f(
        "draft_on_policy_ramp",
        "bench_draft_on_policy.py --threads 2 --methods \"off-policy TVD (configs/draft.yaml);"
        "on-policy TVD, lmbda 0 -> 1 (linear)\" --json {json}",
        15,
        kind="quality",
    ),
    _f("several_teachers", "bench_several_teachers.py --steps 24 --json {json}", 60, kind="quality"),
    _f(
        "how_far",
        "lmdistill recipe configs/recipes/how_far.yaml train.overwrite_output_dir=true",
        90,
        kind="quality",
        note="its figures were collected by hand from the recipe's report into the results file",
        entry="src/lmdistill/recipes/run.py",
        extra_sources=["configs/recipes/how_far.yaml"],
    ),
    _f(
        "demo",
        "lmdistill demo",
        6,
        kind="quality",
        threads=None,
        note="it writes runs/demo/results.json; copy that file to benchmarks/results/demo.json",
        entry="src/lmdistill/demo.py",
    ),
    _f("all", "bench_all.py --collect", 0.1, threads=None, note="bench_all.py's table, from the files above"),
]  # fmt: skip

BY_NAME = {f.name: f for f in FIGURES}


# ---- provenance -------------------------------------------------------------------------------------


def _module_file(name: str) -> Path | None:
    """The source file of an `lmdistill` module or package (None for anything else)."""
    if name != "lmdistill" and not name.startswith("lmdistill."):
        return None
    base = PACKAGE.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.cache  # every figure's closure reads the same modules: parse each once per process
def _imports(path: Path) -> frozenset[Path]:
    """The `lmdistill` modules `path` imports anywhere in its code (functions included), and for
    `from lmdistill.x import y` the submodule `lmdistill.x.y` when it is one."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[Path] = set()
    package = path.parent
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import inside the package
                base = package
                for _ in range(node.level - 1):
                    base = base.parent
                rel = ".".join(base.relative_to(PACKAGE).parts)
                module = f"{rel}.{node.module}" if node.module else rel
            else:
                module = node.module or ""
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # a submodule imports its packages' __init__ too
                file = _module_file(".".join(parts[:i]))
                if file is not None:
                    found.add(file)
    return frozenset(found)


def sources(figure: Figure) -> list[Path]:
    """The files whose change makes `figure` stale: its script, every `lmdistill` module it imports
    (transitively), and its extra sources. Sorted, repository-relative."""
    todo = [figure.script] if figure.script is not None else []
    if figure.entry is not None:
        todo = [ROOT / figure.entry]
    todo += [ROOT / m for m in figure.follows]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        todo.extend(_imports(path) - seen)
    seen.update(ROOT / p for p in figure.extra_sources)  # an absolute path stays absolute
    return sorted(_relative(p) for p in seen if p.is_file())


def _relative(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def blob_hashes(paths: list[Path]) -> dict[str, str]:
    """git's blob hash of each file as it is on disk now (committed or not)."""
    if not paths:
        return {}
    out = _git("hash-object", *[str(p) for p in paths]).splitlines()
    return dict(zip([str(p) for p in paths], out, strict=True))


def hashes_at(commit: str, paths: list[Path]) -> dict[str, str]:
    """git's blob hash of each file at `commit` (a file it does not hold: "absent")."""
    out = {}
    for p in paths:
        done = subprocess.run(["git", "rev-parse", f"{commit}:{p}"], cwd=ROOT, capture_output=True, text=True)
        out[str(p)] = done.stdout.strip() if done.returncode == 0 else "absent"
    return out


def provenance(figure: Figure, at: str | None = None, **extra) -> dict:
    """The commit and source hashes of a measurement: now (the working tree), or `at` a commit the file
    was measured at (recorded after the fact)."""
    paths = sources(figure)
    if at is not None:
        commit = _git("rev-parse", at)
        return {
            "commit": commit,
            "uncommitted_changes_in_sources": None,
            "stamped": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(figure.argv).replace("{json}", str(_relative(figure.path))),
            "sources": hashes_at(commit, [p for p in paths if not p.is_absolute()]),
            "recorded_after_the_run": True,
            **extra,
        }
    tracked = [str(p) for p in paths if not p.is_absolute()]  # inside the repository
    dirty = bool(_git("status", "--porcelain", "--", *tracked)) if tracked else False
    return {
        "commit": _git("rev-parse", "HEAD"),
        "uncommitted_changes_in_sources": dirty,
        "stamped": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(figure.argv).replace("{json}", str(_relative(figure.path))),
        "sources": blob_hashes(paths),
        **extra,
    }


def stamp(figure: Figure, recorded: dict | None = None, **extra) -> None:
    """Record the provenance in the results file (rewritten whole, atomically): `recorded` (taken when the
    run started, so a source changed during the run makes the file stale), or the sources as they are now."""
    data = json.loads(figure.path.read_text(encoding="utf-8"))
    data["provenance"] = {**(recorded or provenance(figure)), **extra}
    from lmdistill.io import atomic_write_json

    atomic_write_json(figure.path, data)


def staleness(figure: Figure) -> tuple[str, list[str]]:
    """("fresh" | "stale" | "unrecorded" | "missing", the reasons)."""
    if not figure.path.is_file():
        return "missing", [f"{_relative(figure.path)} does not exist"] + (
            [figure.pending] if figure.pending else []
        )
    recorded = json.loads(figure.path.read_text(encoding="utf-8")).get("provenance")
    if not recorded:
        return "unrecorded", ["written before results recorded their provenance"]
    now = blob_hashes(sources(figure))
    then = recorded.get("sources", {})
    changed = sorted(p for p in set(now) | set(then) if now.get(p) != then.get(p))
    return ("stale", [f"changed since: {p}" for p in changed]) if changed else ("fresh", [])


# ---- figures on the pages ------------------------------------------------------------------------

PAGES = ["README.md", "benchmarks/RESULTS.md", "docs/*.md"]
#: A measured-looking number: a ratio, a percentage, a rate, a time, a size, a divergence.
FIGURE = re.compile(
    r"\b\d[\d,]*(?:\.\d+)?\s?(?:x\b|%|tokens/s|tok/s|ms\b|s wall|min wall|GiB|MiB|MB\b|GB\b|nats|bits/byte)"
)
CITED = re.compile(r"results/([\w.\-]+\.json)")
#: A section whose numbers are not measurements (limits, settings, arithmetic) says so, with why.
NOT_MEASURED = re.compile(r"<!--\s*figures:\s*not measured\b[^>]*-->")


def page_sections(path: Path) -> list[tuple[str, str]]:
    """(heading, text) of each section of a markdown page, code blocks included."""
    text = path.read_text(encoding="utf-8")
    parts = re.split(r"\n(?=#{1,4} )", text)
    return [(part.split("\n", 1)[0].strip(), part) for part in parts]


def untraced_sections() -> list[str]:
    """Sections of the README and docs that show measured figures but cite no results file (and do not
    say their numbers are not measured), and cited results files that do not exist."""
    problems = []
    for pattern in PAGES:
        for path in sorted(ROOT.glob(pattern)):
            for heading, text in page_sections(path):
                where = f"{path.relative_to(ROOT)} \u00a7 {heading[:70]}"
                for name in CITED.findall(text):
                    if not (RESULTS / name).is_file() and name != "results.json":
                        problems.append(f"{where}: cites results/{name}, which does not exist")
                figures = FIGURE.findall(text)
                if figures and not CITED.search(text) and not NOT_MEASURED.search(text):
                    problems.append(
                        f"{where}: {len(figures)} figure(s) ({', '.join(figures[:3])}) and no results file"
                    )
    return problems


# ---- the command ------------------------------------------------------------------------------------


def _loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def rerun(figure: Figure) -> int:
    python = sys.executable
    if figure.peers:
        python = str(ROOT / ".venv-bench" / "bin" / "python")
        if not Path(python).exists():
            print(f"{figure.name}: skipped, needs .venv-bench (bash benchmarks/setup_peers.sh)")
            return 0
    argv = [a.replace("{json}", str(figure.path)) for a in figure.argv]
    if figure.script is None:
        print(
            f"{figure.name}: rerun by hand: {' '.join(argv)} ({figure.note}), then "
            f"python benchmarks/figures.py --stamp {figure.name}"
        )
        return 0
    cmd = [python, str(ROOT / "benchmarks" / argv[0]), *argv[1:]]
    env = dict(os.environ)
    if figure.threads is not None:
        env["OMP_NUM_THREADS"] = str(figure.threads)
    recorded, before, started = provenance(figure), _loadavg(), time.time()
    print(f"{figure.name}: {' '.join(cmd[1:])} (load {before})", flush=True)
    done = subprocess.run(cmd, cwd=ROOT, env=env)
    if done.returncode != 0:
        print(f"{figure.name}: failed (exit {done.returncode}); the old file is kept")
        return done.returncode
    stamp(
        figure,
        recorded,
        load_average_before=before,
        load_average_after=_loadavg(),
        wall_s=round(time.time() - started),
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rerun", action="store_true", help="rerun the stale and unrecorded files")
    parser.add_argument("--only", default="", help="comma list of names (default: all)")
    parser.add_argument("--kind", choices=["speed", "quality"], help="only this kind")
    parser.add_argument("--stamp", metavar="NAME", help="record provenance for a file written by hand")
    parser.add_argument("--at", metavar="COMMIT", help="with --stamp: the commit the file was measured at")
    parser.add_argument("--pages", action="store_true", help="list page sections with untraced figures")
    a = parser.parse_args(argv)
    if a.pages:
        problems = untraced_sections()
        print("\n".join(problems) or "every figure on the pages cites a results file")
        return 1 if problems else 0
    if a.stamp:
        figure = BY_NAME[a.stamp]
        stamp(figure, provenance(figure, at=a.at) if a.at else None)
        return 0
    chosen = [
        f for f in FIGURES if (not a.only or f.name in a.only.split(",")) and (not a.kind or f.kind == a.kind)
    ]
    todo = []
    for f in chosen:
        state, why = staleness(f)
        print(f"{state:10s} {f.name:28s} {f.kind:7s} ~{f.minutes:g} min  {'; '.join(why)[:120]}")
        if state != "fresh":
            todo.append(f)
    print(f"{len(todo)} of {len(chosen)} to rerun (~{sum(f.minutes for f in todo):g} min)")
    if not a.rerun:
        return 0
    failed = 0
    for f in sorted(todo, key=lambda f: f.minutes):
        failed += rerun(f) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
