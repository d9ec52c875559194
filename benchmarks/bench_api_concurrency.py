"""Throughput of the API teacher against a loopback server with fixed latency: concurrency 8 against 1,
then the same requests again through the response cache (nothing should be sent).

The server (tests/teachers/faultserver.py) answers every request after `--latency` seconds, as a
remote API would; the time is spent waiting, so concurrency should scale throughput almost linearly.

    python benchmarks/bench_api_concurrency.py [--requests 48 --latency 0.2 --concurrency 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.teachers.faultserver

from lmdistill.teachers.api import ApiTeacher
from lmdistill.teachers.cache import CachedTeacher, ResponseCache
from lmdistill.teachers.types import Request, Sampling
from tests.teachers.faultserver import FaultServer


def _requests(n: int) -> list[Request]:
    return [
        Request.chat([{"role": "user", "content": f"benchmark question {i}"}], Sampling(max_new_tokens=32))
        for i in range(n)
    ]


def _run(server: FaultServer, teacher, requests: list[Request], label: str) -> dict:
    before = server.total
    server.max_in_flight = 0
    start = time.perf_counter()
    out = teacher.generate(requests)
    seconds = time.perf_counter() - start
    failed = sum(r.finish_reason == "error" for r in out)
    return {
        "case": label,
        "requests": len(requests),
        "seconds": seconds,
        "requests_per_s": len(requests) / seconds,
        "sent": server.total - before,
        "max_in_flight": server.max_in_flight,
        "failed": failed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--latency", type=float, default=0.2, help="server seconds per request")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()

    requests = _requests(a.requests)
    rows = []
    with FaultServer(latency=a.latency) as server, tempfile.TemporaryDirectory() as tmp:
        serial = ApiTeacher("fake", base_url=server.url, api_key_env=None, concurrency=1)
        rows.append(_run(server, serial, requests, "concurrency 1"))
        parallel = ApiTeacher("fake", base_url=server.url, api_key_env=None, concurrency=a.concurrency)
        with ResponseCache(Path(tmp) / "cache.sqlite") as cache:
            cached = CachedTeacher(parallel, cache)
            rows.append(_run(server, cached, requests, f"concurrency {a.concurrency} (cold cache)"))
            rows.append(_run(server, cached, requests, f"concurrency {a.concurrency} (cached rerun)"))
            cache_stats = {"hits": cached.hits, "misses": cached.misses, "rows": len(cache)}

    speedup = rows[1]["requests_per_s"] / rows[0]["requests_per_s"]
    print(f"{a.requests} requests, server latency {a.latency:g} s")
    print(f"{'case':<32} {'seconds':>8} {'req/s':>8} {'sent':>5} {'max in flight':>14} {'failed':>7}")
    for r in rows:
        print(
            f"{r['case']:<32} {r['seconds']:>8.3f} {r['requests_per_s']:>8.1f} {r['sent']:>5} "
            f"{r['max_in_flight']:>14} {r['failed']:>7}"
        )
    print(f"speed-up, concurrency {a.concurrency} over 1: {speedup:.2f}x (ideal {a.concurrency}x)")
    print(f"cache: {cache_stats['hits']} hits, {cache_stats['misses']} sent, {cache_stats['rows']} rows")

    if a.json:
        meta = {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "system": platform.system(),
        }
        result = {"rows": rows, "speedup": speedup, "cache": cache_stats, "args": vars(a), "machine": meta}
        with open(a.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
