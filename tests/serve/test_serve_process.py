"""`serve()` as the CLI runs it: a separate process, a printed URL, Ctrl+C to stop."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from lmdistill.errors import UserError
from lmdistill.serve import bind_socket, serve

SCRIPT = "import sys; from lmdistill.serve import serve; serve(sys.argv[1], port=0, max_batch=4)"


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(timeout=0.5):
            return proc.stdout.readline()
        if proc.poll() is not None:
            break
    return ""


def _start_serve(folder: str) -> subprocess.Popen:
    """`lmdistill serve FOLDER --port 0` in its own process, one thread, pipes for stdout and stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, folder],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_serve_prints_url_answers_and_stops_on_ctrl_c(tiny_model_dirs):
    folder = str(tiny_model_dirs[1])
    proc = _start_serve(folder)
    try:
        line = _read_line(proc, timeout=120)
        assert line.startswith(f"lmdistill serve: {folder} at http://127.0.0.1:"), (line, proc.poll())
        url = line.split(" at ", 1)[1].split()[0]
        assert url.endswith("/v1")
        models = None
        for _ in range(100):  # the line is printed just before uvicorn starts listening
            try:
                models = httpx.get(f"{url}/models", timeout=5).json()
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        assert models is not None and models["data"][0]["id"] == folder
        body = {
            "model": folder,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 3,
            "temperature": 0,
        }
        out = httpx.post(f"{url}/chat/completions", json=body, timeout=60).json()
        assert out["usage"]["completion_tokens"] <= 3
        assert out["choices"][0]["finish_reason"] in ("stop", "length")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_serve_on_a_busy_port_is_a_user_error(tiny_model_dirs):
    busy = bind_socket("127.0.0.1", 0)
    busy.listen()
    try:
        with pytest.raises(UserError, match="cannot listen"):
            serve(str(tiny_model_dirs[1]), port=busy.getsockname()[1])
    finally:
        busy.close()


@pytest.mark.parametrize("port", [-1, 65536, 70000])
def test_a_port_out_of_range_is_a_user_error(port):
    with pytest.raises(UserError, match="--port must be between 0 and 65535"):
        bind_socket("127.0.0.1", port)


def test_the_cli_says_one_line_for_a_bad_port(capsys):
    from lmdistill.cli import main

    assert main(["serve", "whatever-model", "--port", "70000"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "--port must be between 0 and 65535" in err


def test_abandoned_requests_leave_nothing_on_stderr(tiny_model_dirs):
    """Clients that time out or close their stream midway: the server process drops their work and
    prints no traceback. It printed `_GatheringFuture exception was never retrieved` (with a
    CancelledError traceback) for abandoned non-streamed requests: the gather of the request's jobs was
    cancelled and its exception never read."""
    folder = str(tiny_model_dirs[0])
    proc = _start_serve(folder)
    try:
        line = _read_line(proc, timeout=120)
        url = line.split(" at ", 1)[1].split()[0]
        for _ in range(100):
            try:
                httpx.get(f"{url}/models", timeout=5)
                break
            except httpx.ConnectError:
                time.sleep(0.1)

        def abandon(i: int) -> None:
            if i % 4 == 3:  # a stream closed after two events
                body = {"prompt": ["Hello world", "The cat"], "max_tokens": 200, "stream": True}
                with httpx.stream("POST", f"{url}/completions", json=body, timeout=60) as r:
                    lines = r.iter_lines()
                    next(lines), next(lines)
                return
            body = {"messages": [{"role": "user", "content": f"Hi {i}"}], "max_tokens": 200}
            path = "chat/completions" if i % 2 else "completions"
            if path == "completions":  # two prompts: two jobs in one request
                body = {"prompt": [f"Hi {i}", "Hello"], "max_tokens": 200, "temperature": 0}
            with contextlib.suppress(httpx.ReadTimeout):  # 200 tokens x 16 clients take longer
                httpx.post(f"{url}/{path}", json=body, timeout=0.05 + 0.03 * (i % 8))

        for _ in range(2):
            clients = [threading.Thread(target=abandon, args=(i,)) for i in range(16)]
            for c in clients:
                c.start()
            for c in clients:
                c.join(60)
        # the server still answers; ask a few more times, so that the garbage of the abandoned
        # requests is collected (an unretrieved exception is printed when its future is collected)
        for i in range(20):
            body = {"prompt": f"Hi {i}", "max_tokens": 2, "temperature": 0}
            assert httpx.post(f"{url}/completions", json=body, timeout=60).status_code == 200
        stats = httpx.get(f"{url.removesuffix('/v1')}/stats", timeout=30).json()
        assert stats["abandoned"] >= 16 and stats["failed"] == 0, stats  # of 32 requests
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        err = proc.stderr.read()
        assert "Traceback" not in err and "never retrieved" not in err, err
        assert "ERROR" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
