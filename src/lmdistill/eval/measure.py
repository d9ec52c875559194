"""Measurement plumbing shared by `lmdistill eval` (eval/cost.py) and the benchmark scripts.

Peak resident memory, the machine and package versions a figure was measured with, the command
line that produced it, worker processes that answer one JSON line per command, and plain-text
tables. Only the standard library and torch (imported where needed), so the benchmark
environments (`.venv-bench`, the GPU box) can run it.

Peak memory on Linux: the kernel's per-process high-water mark (VmHWM in /proc/self/status), reset
to the current RSS through /proc/self/clear_refs (Linux >= 4.0), so one process can measure several
things one after another; elsewhere `resource.getrusage` ru_maxrss, which cannot be reset.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import subprocess
import sys
from collections.abc import Sequence


def rss_kib(field: str = "VmRSS") -> int | None:
    """A memory field of /proc/self/status in KiB ("VmRSS": now, "VmHWM": peak); None off Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter to the current RSS; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def maxrss_bytes() -> int:
    """This process's peak RSS since it started (ru_maxrss), in bytes."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # bytes on macOS, KiB elsewhere


def trim() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc), so the next baseline is honest."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


class PeakMemory:
    """Peak memory growth over a baseline taken by `start()`: on CPU the peak RSS (VmHWM, reset at
    start; ru_maxrss where it cannot be reset), on CUDA the allocator's peak."""

    def __init__(self, device: str = "cpu"):
        self.cuda = str(device).startswith("cuda")
        self.base = 0
        self.method = "cuda"

    def start(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        elif reset_peak_rss():
            self.base, self.method = (rss_kib("VmRSS") or 0) * 1024, "VmHWM"
        else:
            self.base, self.method = maxrss_bytes(), "ru_maxrss"

    def peak_bytes(self) -> int:
        if self.cuda:
            import torch

            return torch.cuda.max_memory_allocated() - self.base
        peak = (rss_kib("VmHWM") or 0) * 1024 if self.method == "VmHWM" else maxrss_bytes()
        return max(peak - self.base, 0)

    def peak_mb(self) -> float:
        return self.peak_bytes() / 2**20


# ---- provenance ------------------------------------------------------------------------------------


def command_line() -> str:
    """This process's command line, paths inside the working directory made relative, thread env first."""
    here = os.getcwd()

    def rel(x: str) -> str:
        return os.path.relpath(x) if os.path.isabs(x) and x.startswith(here + os.sep) else x

    env = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS",) if k in os.environ]
    return " ".join([*env, os.path.relpath(sys.executable), *map(rel, sys.argv)])


def machine_info() -> dict:
    """Platform, CPU model and count, torch threads, GPU name (or None)."""
    import torch

    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "platform": platform.platform(),
        "cpu": model,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
    }


DEFAULT_PACKAGES = ("torch", "transformers", "accelerate", "trl", "liger-kernel", "lmdistill")


def versions(packages: Sequence[str] = DEFAULT_PACKAGES) -> dict:
    """{"python": ..., package: installed version or None} (distribution names, e.g. "liger-kernel")."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# ---- worker processes: one JSON line per command ------------------------------------------------------


def reply(obj: dict, mark: str = "") -> None:
    """Worker side: answer the driver with one JSON line (after `mark`, when the worker's stdout also
    carries other output, e.g. a Trainer's logs)."""
    sys.stdout.write(mark + json.dumps(obj) + "\n")
    sys.stdout.flush()


class Worker:
    """Driver side: a child process (`cmd`) that reads commands on stdin and answers JSON lines."""

    def __init__(self, name: str, cmd: list[str], *, mark: str = "", env: dict | None = None):
        self.name, self.mark = name, mark
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def read(self) -> dict:
        """The next answer; RuntimeError when the worker exits first."""
        for line in self.proc.stdout:
            if line.startswith(self.mark + "{"):
                return json.loads(line[len(self.mark) :])
        raise RuntimeError(f"worker {self.name} exited with code {self.proc.wait()}")

    def send(self, command: str) -> dict:
        """Send one command line and wait for its answer."""
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def wait(self) -> int:
        return self.proc.wait()


# ---- plain-text tables ------------------------------------------------------------------------------


def table(columns: Sequence[tuple[str, str]], rows: Sequence[Sequence]) -> str:
    """A fixed-width table: `columns` are (header, format spec) pairs, e.g. ("ms", ">10.1f"); the first
    column is left-aligned text. Widths fit the longest header or value."""
    cells = [[format(v, spec) for v, (_, spec) in zip(row, columns, strict=True)] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, (h, _) in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        first, *rest = values
        return "  ".join(
            [first.ljust(widths[0]), *(v.rjust(w) for v, w in zip(rest, widths[1:], strict=True))]
        )

    return "\n".join([line([h for h, _ in columns]), *map(line, cells)])


def load_line(before: Sequence[float], after: Sequence[float]) -> str:
    """The load averages around a measurement, as one line (other jobs share the machine)."""
    return (
        f"load average before {before[0]:.2f} {before[1]:.2f} {before[2]:.2f}, "
        f"after {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}"
    )
