"""A bounded soak of `lmdistill serve` on loopback: many concurrent clients, mixed requests, some abandoned.

Starts `lmdistill serve` (the real CLI, in its own process, 127.0.0.1 only) on a model (by default a
tiny random Llama with a trained byte-level BPE tokenizer, built in a temporary folder; `--model
smollm2-135m` serves the embedded SmolLM2-135M-Instruct), then sends `--requests` requests from
`--clients` concurrent clients: chat and completions, streamed and not, greedy and seeded sampling,
prompt scoring, prompts of `--words` words (1 to 150) and `--max-tokens` new tokens (1 to 64); about
`--abandon` of them are abandoned midway (a client timeout, or a stream closed after two chunks).

Checks, all written to the JSON:
- correct and isolated: every completed answer equals the same request sent alone afterwards (one
  client, nothing else in flight): texts exactly, scores to 1e-4;
- no starvation: every latency is below the stated bound, clients x the slowest request alone x 1.5
  (the worker always serves the oldest waiting request's group next, so at most one request per
  other client can run before it, none slower than the slowest alone; 1.5 for the machine's noise);
- memory flat: the same requests are sent `--rounds` times (2); the server's RSS at the end of every
  later round, and its highest RSS during every later round, are within max(5 %, 20 MB) of the first
  round's (a leak grows round after round; the first round's rise above the RSS after warm-up, the
  allocator meeting the largest batches, is reported but not judged);
- the server still answers, and its /stats counted the abandoned requests;
- quiet: the server printed no traceback and no error on stderr (abandoned requests included).

The JSON also records the machine, the versions, the command, the date, the git commit and the load
average before and after.

    python benchmarks/soak_serve.py                       # 200 requests, 16 clients -> results/soak_serve.json
    python benchmarks/soak_serve.py --requests 40 --clients 8 --json /tmp/soak.json
    python benchmarks/soak_serve.py --model smollm2-135m --max-tokens 8,12,16 --words 1,3,8,20,40 \\
        --json benchmarks/results/soak_serve_smollm2.json  # the real embedded teacher
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import selectors
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "mat",
    "dog",
    "slept",
    "by",
    "door",
    "hello",
    "world",
    "how",
    "are",
    "you",
    "today",
    "fine",
    "thank",
    "very",
    "much",
    "alice",
    "has",
    "apples",
    "buys",
    "more",
    "eats",
    "what",
    "is",
    "capital",
    "of",
    "france",
    "paris",
    "distillation",
    "trains",
    "small",
    "student",
    "imitate",
    "large",
    "teacher",
    "answer",
    "yes",
    "reason",
    "because",
]
MODEL = "soak-model"


def build_tiny_model(folder: Path) -> Path:
    """A random 4-layer Llama (hidden 64, context 1024) and the tests' tiny tokenizer, saved to `folder`."""
    sys.path.insert(0, str(ROOT))
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.conftest import build_tiny_tokenizer

    tok = build_tiny_tokenizer(folder)
    import torch

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


class Server:
    """`lmdistill serve MODEL --port 0` in a subprocess; `.url`, `.rss()` (bytes), `.stop()`. Its
    stderr goes to `stderr_path`; its stdout (the URL line, then uvicorn's access log) is read as it
    comes, so that the pipe never fills up and blocks the server."""

    def __init__(self, model: str, *, max_batch: int, threads: int, stderr_path: Path):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
        code = "import sys; from lmdistill.cli import main; sys.exit(main(sys.argv[1:]))"
        argv = ["serve", model, "--host", "127.0.0.1", "--port", "0", "--max-batch", str(max_batch)]
        argv += ["--name", MODEL]
        self.stderr = open(stderr_path, "w")  # noqa: SIM115 (closed by stop())
        self._drain: threading.Thread | None = None
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *argv],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
        )
        line = self._line(timeout=300)
        if " at http://127.0.0.1:" not in line:
            self.stop()
            raise RuntimeError(f"the server did not start: {line!r}")
        self.stdout_lines = 0
        self._drain = threading.Thread(target=self._read_stdout, daemon=True)
        self._drain.start()
        self.url = line.split(" at ", 1)[1].split()[0]
        self.base = self.url[: -len("/v1")]
        for _ in range(200):
            try:
                httpx.get(f"{self.url}/models", timeout=5)
                return
            except httpx.ConnectError:
                time.sleep(0.05)

    def _line(self, timeout: float) -> str:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if sel.select(timeout=0.5):
                return self.proc.stdout.readline()
        return ""

    def _read_stdout(self) -> None:
        for _ in self.proc.stdout:
            self.stdout_lines += 1

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # Ctrl+C: a clean shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._drain is not None:
            self._drain.join(10)
        self.proc.stdout.close()
        self.stderr.close()


#: Default prompt lengths (words) and completion lengths (tokens) to choose from.
WORD_COUNTS = (1, 3, 8, 20, 60, 150)
MAX_TOKENS = (1, 8, 32, 64)


def make_requests(
    n: int,
    abandon: float,
    seed: int,
    token_ids: list[int],
    *,
    words: tuple[int, ...] = WORD_COUNTS,
    max_tokens: tuple[int, ...] = MAX_TOKENS,
) -> list[dict]:
    """`n` request specs: {"id", "kind", "path", "body", "abandon"}; prompts of one of `words` words
    (scored id lists of 2 to 200 ids), completions of one of `max_tokens` tokens (abandoned ones: the
    largest, so that they are abandoned midway)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.choice(words)))
        new_tokens = rng.choice(max_tokens)
        sampled = rng.random() < 0.3
        sampling = (
            {"temperature": 0.9, "top_p": 0.95, "seed": rng.randrange(1000)}
            if sampled
            else {"temperature": 0}
        )
        kind = rng.choice(["chat", "chat_stream", "completion", "completion_stream", "score"])
        if kind.startswith("chat"):
            path, body = (
                "chat/completions",
                {"messages": [{"role": "user", "content": text}], "max_tokens": new_tokens},
            )
        elif kind.startswith("completion"):
            path, body = "completions", {"prompt": text, "max_tokens": new_tokens}
        else:
            ids = [rng.choice(token_ids) for _ in range(rng.choice([2, 10, 50, 200]))]
            path, body = "completions", {"prompt": ids, "prompt_logprobs": 5, "max_tokens": 0}
        body = {"model": MODEL, **body, **(sampling if kind != "score" else {})}
        if kind.endswith("stream"):
            body["stream"] = True
        gone = None
        if rng.random() < abandon and kind != "score":
            gone = ("close", 2) if kind.endswith("stream") else ("timeout", rng.choice([0.05, 0.2, 0.5]))
            body["max_tokens"] = max(max_tokens)  # long enough to be abandoned midway
        out.append({"id": i, "kind": kind, "path": path, "body": body, "abandon": gone})
    return out


def send(client: httpx.Client, base: str, spec: dict):
    """The answer to compare ("text" or the score values) or None when abandoned; raises on errors."""
    url = f"{base}/v1/{spec['path']}"
    gone = spec["abandon"]
    if spec["body"].get("stream"):
        text, chunks = "", 0
        with client.stream("POST", url, json=spec["body"], timeout=600) as r:
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code}: {r.read().decode()[:300]}")
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    return text
                chunk = json.loads(line[len("data: ") :])
                if "error" in chunk:
                    raise RuntimeError(chunk["error"])
                chunks += 1
                if gone is not None and chunks >= gone[1]:
                    return None  # closing the stream abandons the request
                for c in chunk["choices"]:
                    text += c.get("text") or (c.get("delta") or {}).get("content") or ""
        raise RuntimeError("the stream ended without [DONE]")
    timeout = gone[1] if gone is not None else 600
    try:
        r = client.post(url, json=spec["body"], timeout=timeout)
    except httpx.TimeoutException:
        if gone is not None:
            return None
        raise
    if r.status_code != 200:
        raise RuntimeError(f"{r.status_code}: {r.text[:300]}")
    out = r.json()
    if spec["kind"] == "score":
        return [
            [e[k]["logprob"] for k in sorted(e)] if e else None for e in out["choices"][0]["prompt_logprobs"]
        ]
    choice = out["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


def same(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if (x is None) != (y is None) or (
            x is not None and (len(x) != len(y) or max(abs(p - q) for p, q in zip(x, y, strict=True)) > 1e-4)
        ):
            return False
    return True


def run(
    requests: int,
    clients: int,
    *,
    model: str | None,
    abandon: float,
    max_batch: int,
    threads: int,
    seed: int = 0,
    rounds: int = 2,
    words: tuple[int, ...] = WORD_COUNTS,
    max_tokens: tuple[int, ...] = MAX_TOKENS,
) -> dict:
    """Soak a fresh server with `requests` specs from `clients` clients, `rounds` times over; see the
    module docstring for the checks. Returns the figures (the JSON)."""
    load_start = os.getloadavg()
    shape = {"words": words, "max_tokens": max_tokens}
    with tempfile.TemporaryDirectory() as tmp:
        folder = model or str(build_tiny_model(Path(tmp) / "model"))
        from lmdistill.models import load_tokenizer  # resolves short names (smollm2-135m) too

        token_ids = sorted(set(load_tokenizer(folder).get_vocab().values()))
        specs = make_requests(requests, abandon, seed, token_ids, **shape)
        stderr_path = Path(tmp) / "server_stderr.txt"
        server = Server(folder, max_batch=max_batch, threads=threads, stderr_path=stderr_path)
        try:
            # warm-up: a few requests of each kind, then the baseline RSS
            with httpx.Client() as c:
                for spec in make_requests(10, 0.0, seed + 1, token_ids, **shape):
                    send(c, server.base, spec)
            rss_warm = server.rss()
            rss_samples = [rss_warm]
            stop_sampling = threading.Event()

            def sample():
                while not stop_sampling.wait(0.25):
                    rss_samples.append(server.rss())

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            lock = threading.Lock()
            rounds_out: list[dict[int, dict]] = []
            rss_rounds: list[int] = []
            rss_peaks: list[int] = []  # the highest RSS sampled during each round
            todo: list[dict] = []
            results: dict[int, dict] = {}

            def client_loop():
                with httpx.Client() as c:
                    while True:
                        with lock:
                            if not todo:
                                return
                            spec = todo.pop(0)
                        start = time.monotonic()
                        try:
                            answer, error = send(c, server.base, spec), None
                        except Exception as exc:  # recorded and counted as a failure
                            answer, error = None, f"{type(exc).__name__}: {exc}"
                        results[spec["id"]] = {
                            "answer": answer,
                            "error": error,
                            "latency": time.monotonic() - start,
                        }

            t0 = time.monotonic()
            for _ in range(rounds):  # the same requests again: a leak grows round after round
                todo[:] = list(specs)
                results = {}
                first_sample = len(rss_samples)
                workers = [threading.Thread(target=client_loop) for _ in range(clients)]
                for w in workers:
                    w.start()
                for w in workers:
                    w.join()
                time.sleep(1.0)  # let abandoned work drain
                rounds_out.append(results)
                rss_rounds.append(server.rss())
                rss_peaks.append(max([*rss_samples[first_sample:], rss_rounds[-1]]))
            soak_s = time.monotonic() - t0 - rounds * 1.0
            stop_sampling.set()
            sampler.join()
            rss_end = server.rss()
            stats = httpx.get(f"{server.base}/stats", timeout=30).json()

            # the same requests alone, one at a time: the reference answers and the alone latencies
            alone_latency, mismatches = [], []
            with httpx.Client() as c:
                for spec in specs:
                    if spec["abandon"] is not None:
                        continue
                    start = time.monotonic()
                    try:
                        ref = send(c, server.base, spec)
                    except Exception as exc:  # the same request fails alone: a bad spec, reported
                        ref = f"error alone: {exc}"
                    alone_latency.append(time.monotonic() - start)
                    for r, res in enumerate(rounds_out):
                        got = res[spec["id"]]
                        if got["error"] is None and not same(got["answer"], ref):
                            mismatches.append(
                                {
                                    "round": r,
                                    "id": spec["id"],
                                    "kind": spec["kind"],
                                    "soak": got["answer"],
                                    "alone": ref,
                                }
                            )
                alive = c.get(f"{server.base}/v1/models", timeout=30).status_code == 200
        finally:
            server.stop()
        # what the server printed besides uvicorn's INFO lines and the loading progress bars
        noisy = [
            line
            for line in stderr_path.read_text(errors="replace").splitlines()
            if any(word in line for word in ("Traceback", "Error", "ERROR", "never retrieved", "Exception"))
        ]
    latencies = [res[s["id"]]["latency"] for res in rounds_out for s in specs if s["abandon"] is None]
    bound = clients * max(alone_latency) * 1.5
    errors = [
        {"round": r, "id": s["id"], "error": res[s["id"]]["error"]}
        for r, res in enumerate(rounds_out)
        for s in specs
        if res[s["id"]]["error"]
    ]
    # flat: a leak grows round after round, so every later round must end, and peak, within
    # max(5 %, 20 MB) of the first round (the first round's peak above the warm-up RSS is the allocator
    # meeting the largest batches for the first time, not a leak: it is reported, not judged)
    flat = all(
        later - series[0] <= max(0.05 * series[0], 20 * 2**20)
        for series in (rss_rounds, rss_peaks)
        for later in series[1:]
    )
    out = {
        "requests": requests,
        "rounds": rounds,
        "clients": clients,
        "abandoned_sent": sum(s["abandon"] is not None for s in specs),
        "abandoned_counted_by_server": stats.get("abandoned"),
        "kinds": {k: sum(s["kind"] == k for s in specs) for k in sorted({s["kind"] for s in specs})},
        "model": model or "tiny random Llama (4 layers, hidden 64, context 1024)",
        "prompt_words": list(words),
        "max_tokens": list(max_tokens),
        "max_batch": max_batch,
        "server_threads": threads,
        "soak_seconds": round(soak_s, 2),
        "requests_per_second": round(rounds * requests / soak_s, 2),
        "latency_s": {
            "p50": round(statistics.median(latencies), 3),
            "p95": round(sorted(latencies)[int(0.95 * (len(latencies) - 1))], 3),
            "max": round(max(latencies), 3),
        },
        "alone_latency_max_s": round(max(alone_latency), 3),
        "starvation_bound_s": round(bound, 3),
        "errors": errors,
        "mismatches": mismatches,
        "rss_mb": {
            "after_warmup": round(rss_warm / 2**20, 1),
            "after_each_round": [round(x / 2**20, 1) for x in rss_rounds],
            "peak_each_round": [round(x / 2**20, 1) for x in rss_peaks],
            "end": round(rss_end / 2**20, 1),
            "max": round(max(rss_samples) / 2**20, 1),
        },
        "server_stats": stats,
        "server_alive_after": alive,
        "server_stderr_problems": noisy[:20],
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    counted = stats.get("abandoned", 0) >= 1 or not out["abandoned_sent"]
    out["checks"] = {
        "no_errors": not errors,
        "isolated": not mismatches,
        "no_starvation": max(latencies) <= bound,
        "memory_flat": flat,
        "alive_after": alive,
        "abandoned_counted": counted,
        "quiet_stderr": not noisy,
    }
    out["ok"] = all(out["checks"].values())
    return out


def provenance() -> dict:
    """When, where and with what the soak ran: date, git commit, machine and package versions."""
    from lmdistill.eval.measure import machine_info, versions

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": git("rev-parse", "HEAD"),
        # files of the server or of this script that differ from that commit (empty: it ran as committed)
        "git_changes": git("status", "--porcelain", "--", "src/lmdistill/serve", "benchmarks/soak_serve.py"),
        "machine": {**machine_info(), "memory_gb": _memory_gb()},
        "versions": versions(
            ("torch", "transformers", "fastapi", "uvicorn", "pydantic", "httpx", "lmdistill")
        ),
    }


def _memory_gb() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            kb = next(int(line.split()[1]) for line in fh if line.startswith("MemTotal:"))
        return round(kb / 2**20, 1)
    except (OSError, StopIteration):
        return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2, help="send the same requests this many times")
    p.add_argument("--abandon", type=float, default=0.1, help="fraction of requests abandoned midway")
    p.add_argument(
        "--model", default=None, help="model to serve, e.g. smollm2-135m (default: a tiny random Llama)"
    )
    p.add_argument("--words", default=",".join(map(str, WORD_COUNTS)), help="prompt lengths (words) to draw")
    p.add_argument(
        "--max-tokens", default=",".join(map(str, MAX_TOKENS)), help="completion lengths (tokens) to draw"
    )
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="OMP threads of the server process")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "soak_serve.json"))
    args = p.parse_args()
    out = run(
        args.requests,
        args.clients,
        model=args.model,
        abandon=args.abandon,
        max_batch=args.max_batch,
        threads=args.threads,
        rounds=args.rounds,
        words=tuple(int(x) for x in args.words.split(",")),
        max_tokens=tuple(int(x) for x in args.max_tokens.split(",")),
    )
    out["command"] = " ".join(["python", "benchmarks/soak_serve.py", *sys.argv[1:]])
    out.update(provenance())
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    short = {
        k: out[k]
        for k in ("ok", "soak_seconds", "latency_s", "starvation_bound_s", "rss_mb", "abandoned_sent")
    }
    print(json.dumps(short, indent=2))
    print(f"mismatches {len(out['mismatches'])}, errors {len(out['errors'])}; wrote {args.json}")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
