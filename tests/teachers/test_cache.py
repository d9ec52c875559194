"""ResponseCache and CachedTeacher on real SQLite files, including a SIGKILLed run that resumes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from lmdistill.errors import UserError
from lmdistill.teachers.cache import CachedTeacher, ResponseCache
from lmdistill.teachers.types import Request, Response, Sampling, collect
from tests.teachers.faultserver import FaultServer

REPO = Path(__file__).resolve().parents[2]


def req(prompt: str, **sampling) -> Request:
    return Request.chat([{"role": "user", "content": prompt}], Sampling(**sampling))


class CountingTeacher:
    """An in-process teacher that answers "echo: <prompt>" and records what it was sent."""

    backend = "fake"

    def __init__(self, name: str = "m", fail: set[str] | None = None):
        self.name = name
        self.fail = fail or set()
        self.sent: list[Request] = []

    def generate(self, requests):
        return collect(self.generate_iter(requests), len(requests))

    def generate_iter(self, requests):
        for i, r in reversed(list(enumerate(requests))):  # out of order, like a real pool
            self.sent.append(r)
            prompt = r.message_dicts[-1]["content"]
            if prompt in self.fail:
                yield i, Response(text="", finish_reason="error", error="500: boom")
            else:
                yield i, Response(text=f"echo: {prompt}", finish_reason="stop", completion_tokens=2)


@pytest.fixture
def cache(tmp_path):
    with ResponseCache(tmp_path / "cache" / "responses.sqlite") as c:
        yield c


def test_put_get_round_trip(tmp_path):
    path = tmp_path / "r.sqlite"
    response = Response(
        text="héllo ✓",
        finish_reason="length",
        prompt_tokens=3,
        completion_tokens=2,
        logprobs=[{"token": "h", "logprob": -0.5, "top": [{"token": "h", "logprob": -0.5}]}],
    )
    with ResponseCache(path) as c:
        assert c.get("k") is None
        assert c.put("k", response)
        assert c.get("k") == response
        assert len(c) == 1 and "k" in c and "other" not in c
        assert c.get_many(["k", "other", "k"]) == {"k": response}
    with ResponseCache(path) as c:  # persisted
        assert c.get("k") == response
    with sqlite3.connect(path) as conn:  # stored as JSON with a sha256 checksum, WAL mode
        value, checksum = conn.execute("SELECT value, checksum FROM responses").fetchone()
        assert json.loads(value)["text"] == "héllo ✓"
        assert checksum == hashlib.sha256(value.encode()).hexdigest()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_get_many_handles_many_keys(cache):
    for i in range(1200):
        cache.put(f"k{i}", Response(text=str(i), finish_reason="stop"))
    got = cache.get_many(f"k{i}" for i in range(0, 1300, 1))
    assert len(got) == 1200 and got["k1199"].text == "1199"


def test_damaged_rows_are_ignored_and_overwritten(tmp_path):
    path = tmp_path / "r.sqlite"
    good = json.dumps(Response(text="ok", finish_reason="stop").to_json())
    truncated = good[: len(good) // 2]
    ResponseCache(path).close()
    with sqlite3.connect(path) as conn:
        rows = [
            ("bad-checksum", good, "0" * 64, 0.0),  # the value does not match its checksum
            ("half-written", truncated, hashlib.sha256(truncated.encode()).hexdigest(), 0.0),
            ("wrong-shape", '{"nope": 1}', hashlib.sha256(b'{"nope": 1}').hexdigest(), 0.0),
        ]
        conn.executemany("INSERT INTO responses VALUES (?, ?, ?, ?)", rows)
    with ResponseCache(path) as c:
        for key in ("bad-checksum", "half-written", "wrong-shape"):
            assert c.get(key) is None
        assert c.get_many(["bad-checksum", "half-written", "wrong-shape"]) == {}
        c.put("half-written", Response(text="fixed", finish_reason="stop"))
        assert c.get("half-written").text == "fixed"

    # A CachedTeacher treats a damaged row as a miss, re-asks and repairs it.
    teacher = CountingTeacher()
    r = req("q")
    with ResponseCache(path) as c:
        c._conn.execute(
            "INSERT INTO responses VALUES (?, ?, ?, ?)", (r.key("fake", "m"), good, "f" * 64, 0.0)
        )
        cached = CachedTeacher(teacher, c)
        assert cached.generate([r])[0].text == "echo: q"
        assert cached.misses == 1 and c.get(r.key("fake", "m")).text == "echo: q"


def test_not_a_database_is_a_user_error(tmp_path):
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match=r"junk\.sqlite"):
        ResponseCache(path)


def test_errors_are_never_cached(cache):
    assert cache.put("k", Response(text="", finish_reason="error", error="500: boom")) is False
    assert len(cache) == 0 and cache.get("k") is None

    teacher = CountingTeacher(fail={"bad"})
    cached = CachedTeacher(teacher, cache)
    out = cached.generate([req("good"), req("bad")])
    assert [o.finish_reason for o in out] == ["stop", "error"]
    assert len(cache) == 1
    out = cached.generate([req("good"), req("bad")])  # the rerun retries only the failure
    assert [r.message_dicts[0]["content"] for r in teacher.sent] == ["bad", "good", "bad"]
    assert (cached.hits, cached.misses) == (1, 3)


def test_hits_first_duplicates_once_and_stored_as_they_arrive(cache):
    teacher = CountingTeacher()
    cached = CachedTeacher(teacher, cache)
    assert (cached.backend, cached.name) == ("fake", "m")
    cached.generate([req("a")])

    requests = [req("b"), req("a"), req("c"), req("b")]
    seen = []
    for i, response in cached.generate_iter(requests):
        # by the time a response is yielded it is already committed
        assert cache.get(requests[i].key("fake", "m")) == response
        seen.append(i)
    assert seen[0] == 1  # the hit comes first
    assert sorted(seen) == [0, 1, 2, 3]
    assert [r.message_dicts[0]["content"] for r in teacher.sent] == ["a", "c", "b"]  # "b" sent once
    assert (cached.hits, cached.misses) == (1, 3)
    assert [r.text for r in cached.generate(requests)] == ["echo: b", "echo: a", "echo: c", "echo: b"]
    assert (cached.hits, cached.misses) == (5, 3)


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 1},
        {"seed": None},
        {"temperature": 0.7},
        {"max_new_tokens": 255},
        {"stop": ("\n",)},
        {"top_p": 0.9},
        {"top_logprobs": 5},
    ],
    ids=lambda c: next(iter(c)),
)
def test_any_sampling_change_misses(cache, change):
    teacher = CountingTeacher()
    cached = CachedTeacher(teacher, cache)
    base = req("q")
    cached.generate([base])
    changed = Request(base.messages, dataclasses.replace(base.sampling, **change))
    cached.generate([base, changed])
    assert (cached.hits, cached.misses) == (1, 2)


def test_model_backend_and_messages_change_the_key(cache):
    base = req("q")
    cache.put(base.key("fake", "m"), Response(text="x", finish_reason="stop"))
    for teacher in (CountingTeacher(name="m2"), type("Other", (CountingTeacher,), {"backend": "api"})()):
        cached = CachedTeacher(teacher, cache)
        cached.generate([base])
        assert (cached.hits, cached.misses) == (0, 1)
    other = Request.chat([{"role": "system", "content": "be brief"}, {"role": "user", "content": "q"}])
    assert other.key("fake", "m") != base.key("fake", "m")


def test_concurrent_puts_from_threads(cache):
    def work(t):
        for i in range(50):
            cache.put(f"{t}-{i}", Response(text=f"{t}-{i}", finish_reason="stop"))
            assert cache.get(f"{t}-{i}").text == f"{t}-{i}"

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 200


RUN_SCRIPT = textwrap.dedent(
    """
    import sys
    from lmdistill.teachers.api import ApiTeacher
    from lmdistill.teachers.cache import CachedTeacher, ResponseCache
    from lmdistill.teachers.types import Request

    url, path = sys.argv[1], sys.argv[2]
    requests = [Request.chat([{"role": "user", "content": f"question {i}"}]) for i in range(20)]
    teacher = ApiTeacher("fake", base_url=url, api_key_env="LMD_TEST_KEY", concurrency=1)
    with ResponseCache(path) as cache:
        cached = CachedTeacher(teacher, cache)
        for _ in cached.generate_iter(requests):
            pass
        print(cached.hits, cached.misses, len(cache))
    """
)


def test_kill_and_rerun_sends_only_the_missing(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RUN_SCRIPT)
    db = tmp_path / "cache.sqlite"
    sentinel = "sk-SENTINEL-kill-7f3a9c"
    env = {**os.environ, "LMD_TEST_KEY": sentinel, "PYTHONPATH": str(REPO / "src")}
    with FaultServer(latency=0.1) as server:
        cmd = [sys.executable, str(script), server.url, str(db)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while server.total < 8:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the run never reached 8 requests"
                time.sleep(0.005)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
            proc.stdout.close()
            proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        assert server.total < 20

        with sqlite3.connect(db) as conn:  # recovers the WAL left by the killed process
            rows = conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        assert 5 <= rows < 20

        before = server.total
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
        assert server.total - before == 20 - rows
        assert second.stdout.split() == [str(rows), str(20 - rows), "20"]

        before = server.total
        third = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert third.returncode == 0, third.stderr
        assert server.total - before == 0
        assert third.stdout.split() == ["20", "0", "20"]
        assert all(r["headers"]["authorization"] == f"Bearer {sentinel}" for r in server.requests)

    for out in (second, third):
        assert sentinel not in out.stdout + out.stderr
    for f in tmp_path.rglob("*"):  # the cache file (and its WAL) never holds the key
        if f.is_file():
            assert sentinel.encode() not in f.read_bytes(), f


def test_cache_key_names_the_endpoint_and_the_weights(tmp_path, tiny_llama, tiny_tokenizer):
    from lmdistill.models import load_model
    from lmdistill.teachers.api import ApiTeacher
    from lmdistill.teachers.local import LocalTeacher

    request = Request.chat([{"role": "user", "content": "hi"}])
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        a = CachedTeacher(ApiTeacher("m", base_url="http://127.0.0.1:1/v1", api_key_env=None), cache)
        b = CachedTeacher(ApiTeacher("m", base_url="http://127.0.0.1:2/v1", api_key_env=None), cache)
        assert a.key(request) != b.key(request)  # same model id, another server

        folder = tmp_path / "student"
        tiny_llama(len(tiny_tokenizer), seed=0).save_pretrained(folder)
        first = CachedTeacher(LocalTeacher(load_model(folder), tiny_tokenizer, name=str(folder)), cache)
        same = CachedTeacher(LocalTeacher(load_model(folder), tiny_tokenizer, name=str(folder)), cache)
        assert first.key(request) == same.key(request)
        tiny_llama(len(tiny_tokenizer), seed=1, num_layers=3).save_pretrained(folder)  # retrained in place
        again = CachedTeacher(LocalTeacher(load_model(folder), tiny_tokenizer, name=str(folder)), cache)
        assert again.key(request) != first.key(request)
