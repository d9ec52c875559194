"""ApiTeacher against a real loopback HTTP server with scripted faults (no client mocks)."""

from __future__ import annotations

import json
import logging
import socket
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from lmdistill.errors import UserError
from lmdistill.teachers.api import ApiTeacher, TokenBucket, estimate_tokens, parse_retry_after
from lmdistill.teachers.cache import CachedTeacher, ResponseCache
from lmdistill.teachers.types import Request, Sampling
from tests.teachers.faultserver import FaultServer


@pytest.fixture
def server():
    s = FaultServer().start()
    yield s
    s.stop()


def req(prompt: str, **sampling) -> Request:
    return Request.chat([{"role": "user", "content": prompt}], Sampling(**sampling))


def teacher_for(server, **kw) -> ApiTeacher:
    kw.setdefault("api_key_env", None)
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("backoff_max", 2.0)
    return ApiTeacher("fake", base_url=server.url, **kw)


def test_maps_request_and_response(server):
    t = teacher_for(server)
    sampled = req("one two three four", max_new_tokens=3, temperature=0.7, top_p=0.9, seed=4, top_logprobs=2)
    plain = req("hi", stop=("xyz",), seed=None)
    out = t.generate([sampled, plain])

    assert out[0].text == "answer to: one" and out[0].finish_reason == "length"
    assert (out[0].prompt_tokens, out[0].completion_tokens) == (4, 3)
    assert [e["token"] for e in out[0].logprobs] == ["answer", "to:", "one"]
    assert out[0].logprobs[0]["top"] == [
        {"token": "answer", "logprob": -0.1},
        {"token": "alt1", "logprob": -1.1},
    ]
    assert out[1].text == "answer to: hi" and out[1].finish_reason == "stop" and out[1].logprobs is None
    assert out[1].error is None

    bodies = {r["prompt"]: r["body"] for r in server.requests}
    b = bodies["one two three four"]
    assert b["model"] == "fake" and b["messages"] == [{"role": "user", "content": "one two three four"}]
    assert (b["max_tokens"], b["temperature"], b["top_p"], b["seed"]) == (3, 0.7, 0.9, 4)
    assert (b["logprobs"], b["top_logprobs"]) == (True, 2) and "stop" not in b
    b = bodies["hi"]
    assert b["stop"] == ["xyz"] and "seed" not in b and "logprobs" not in b and "top_logprobs" not in b
    assert t.requests_sent == 2 and (t.prompt_tokens, t.completion_tokens) == (5, 6)
    assert t.stats()["failed"] == 0


def test_429_with_retry_after_waits_then_succeeds(server, clock):
    server.script("p", ("429", 1))
    t = teacher_for(server, sleep=clock.sleep)
    [out] = t.generate([req("p")])
    assert out.finish_reason == "stop" and out.text == "answer to: p"
    assert clock.waits == [1.0]  # the server's Retry-After, not the backoff
    assert (t.retries, t.requests_sent, t.failed) == (1, 2, 0)


def test_429_retry_after_holds_back_every_worker(server):
    server.script("a", ("429", 1))
    server.script("b", ("timeout", 0.3))  # a slow answer: its worker is free again at ~0.3 s
    t = teacher_for(server, concurrency=2)
    out = t.generate([req("a"), req("b"), req("c")])
    assert all(r.finish_reason == "stop" for r in out)
    [first_a, _] = server.times("a")
    [c] = server.times("c")
    assert c - first_a >= 0.95  # c waited for the rate limit too, not only a's worker


def test_retry_after_is_capped_and_parsed():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({}) is None and parse_retry_after({"retry-after": "soon"}) is None
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 28 <= parse_retry_after({"retry-after": when}) <= 30
    past = format_datetime(datetime.now(timezone.utc) - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after({"retry-after": past}) == 0.0


def test_retry_after_longer_than_max_retry_after_is_capped(server, clock):
    server.script("p", ("429", 100))
    t = teacher_for(server, max_retry_after=0.2, sleep=clock.sleep)
    [out] = t.generate([req("p")])
    assert out.finish_reason == "stop" and clock.waits == [0.2]


def test_two_500s_then_success(server):
    server.script("p", ("500",), ("503", "overloaded"))
    t = teacher_for(server)
    [out] = t.generate([req("p")])
    assert out.finish_reason == "stop"
    assert t.retries == 2 and server.per_prompt["p"] == 3


def test_gives_up_after_max_retries(server):
    server.script("p", ("500", "down"), ("502",), ("500", "still down"), ("ok",))
    t = teacher_for(server, max_retries=2)
    [out] = t.generate([req("p")])
    assert out.finish_reason == "error" and out.text == ""
    assert out.error.startswith("500: still down") and "3 tries" in out.error
    assert server.per_prompt["p"] == 3 and (t.retries, t.failed) == (2, 1)


def test_timeout_is_retried(server):
    server.script("slow", ("timeout", 2))
    t = teacher_for(server, timeout=0.5)
    [out] = t.generate([req("slow")])
    assert out.finish_reason == "stop" and out.text == "answer to: slow"
    # the 2 s answer was not waited for: had it been, the first try would have succeeded
    assert server.per_prompt["slow"] == 2 and t.retries == 1


def test_dropped_connection_is_retried(server):
    server.script("p", ("drop",))
    t = teacher_for(server)
    [out] = t.generate([req("p")])
    assert out.finish_reason == "stop" and server.per_prompt["p"] == 2


def test_unreachable_server_fails_without_raising():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = ApiTeacher(
        "fake", base_url=f"http://127.0.0.1:{port}/v1", api_key_env=None, max_retries=1, backoff_base=0.01
    )
    [out] = t.generate([req("p")])
    assert out.finish_reason == "error" and out.error.startswith("connection error")
    assert (t.requests_sent, t.retries, t.failed) == (2, 1, 1)


@pytest.mark.parametrize("status", ["400", "401", "404", "422"])
def test_other_4xx_is_not_retried(server, status):
    server.script("bad", (status, "prompt is too long"))
    t = teacher_for(server)
    out = t.generate([req("bad"), req("fine")])
    assert out[0].finish_reason == "error" and out[0].error == f"{status}: prompt is too long"
    assert out[1].finish_reason == "stop"
    assert server.per_prompt["bad"] == 1 and t.retries == 0 and t.failed == 1


def test_concurrency_limit_is_used_and_held():
    with FaultServer(latency=0.2) as server:
        t = teacher_for(server, concurrency=3)
        requests = [req(f"q{i}") for i in range(12)]
        pairs = list(t.generate_iter(requests))
    assert sorted(i for i, _ in pairs) == list(range(12))
    assert all(r.text == f"answer to: q{i}" for i, r in pairs)
    assert server.max_in_flight == 3  # used (12 requests of 0.2 s overlap) and never exceeded


def test_requests_per_minute_limit(server, clock):
    t = teacher_for(server, concurrency=1, requests_per_minute=120, sleep=clock.sleep)  # one every 0.5 s
    out = t.generate([req(f"q{i}") for i in range(6)])
    assert all(r.finish_reason == "stop" for r in out)
    assert clock.waits == pytest.approx([0.5] * 5, abs=1e-9)  # the first is free: the bucket holds one


def test_token_bucket_charges_estimates_and_corrects():
    waits: list[float] = []
    bucket = TokenBucket(rate=100.0, capacity=100.0, sleep=waits.append)
    assert bucket.acquire(60) == 0.0
    assert bucket.acquire(60) == pytest.approx(0.2, abs=0.02)  # 20 short, at 100 tokens/s
    bucket.refund(120)  # both were estimates; the real usage was 0
    assert bucket.acquire(100) == pytest.approx(0.0, abs=0.02)
    assert bucket.acquire(500) == pytest.approx(1.0, abs=0.02)  # above capacity: waits for a full bucket
    assert bucket.acquire(1) == pytest.approx(5.01, abs=0.05)  # then pays off the debt first
    assert len(waits) == 3
    assert estimate_tokens(req("x" * 40, max_new_tokens=10)) == 20


class VirtualClock:
    """Stands in for the `time` module of lmdistill.teachers.api: time moves only when the limiter
    sleeps, so the waits it decides are exact figures, whatever the machine's load."""

    def __init__(self):
        self.now = 1000.0
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> VirtualClock:
    """A VirtualClock as lmdistill.teachers.api's `time`; pass `sleep=clock.sleep` to the teacher. For
    one worker at a time only: several threads sleeping would move one shared clock."""
    import lmdistill.teachers.api as api

    c = VirtualClock()
    monkeypatch.setattr(api, "time", c)
    return c


def test_tokens_per_minute_limit_paces_requests(server, clock):
    # 600 tokens/min = 10/s, a bucket of 10. Each request is estimated at 1 + 9 = 10 tokens but really
    # costs 1 + 3 = 4: corrected with the usage, each later one waits 0.4 s, not the 1 s of its estimate.
    t = teacher_for(server, concurrency=1, tokens_per_minute=600, sleep=clock.sleep)
    out = t.generate([req(f"q{i}", max_new_tokens=9) for i in range(4)])
    assert [r.text for r in out] == [f"answer to: q{i}" for i in range(4)]
    assert (t.prompt_tokens, t.completion_tokens) == (4, 12)
    assert clock.waits == pytest.approx([0.4, 0.4, 0.4], abs=1e-9)  # the first is free: the bucket is full
    assert [r["prompt"] for r in server.requests] == [f"q{i}" for i in range(4)]  # one at a time, in order


def test_missing_key_variable_is_a_user_error(monkeypatch):
    monkeypatch.delenv("LMD_MISSING_KEY", raising=False)
    with pytest.raises(UserError, match="LMD_MISSING_KEY"):
        ApiTeacher("fake", base_url="https://api.example.invalid/v1", api_key_env="LMD_MISSING_KEY")


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/v1", "http://localhost:8000/v1", "http://[::1]:8000/v1", "http://127.5.0.1/v1"],
)
def test_a_loopback_server_needs_no_key(server, monkeypatch, url):
    """The README's example (`lmdistill serve`, then generate with api_key_env: OPENAI_API_KEY) works
    without exporting a key: a loopback server gets the placeholder."""
    monkeypatch.delenv("LMD_MISSING_KEY", raising=False)
    ApiTeacher("fake", base_url=url, api_key_env="LMD_MISSING_KEY")  # no UserError
    t = teacher_for(server, api_key_env="LMD_MISSING_KEY")
    assert t.generate([req("p")])[0].text == "answer to: p"
    assert server.requests[-1]["headers"]["authorization"] == "Bearer EMPTY"
    # a key that is set is still sent, loopback or not
    monkeypatch.setenv("LMD_MISSING_KEY", "sk-local-0123456789")
    teacher_for(server, api_key_env="LMD_MISSING_KEY").generate([req("q")])
    assert server.requests[-1]["headers"]["authorization"] == "Bearer sk-local-0123456789"


@pytest.mark.parametrize(
    "url",
    [
        "https://user:sk-SENTINEL-url@example.invalid/v1",
        "http://sk-SENTINEL-url@127.0.0.1:8000/v1",
        "http://:sk-SENTINEL-url@localhost/v1",
    ],
)
def test_credentials_in_the_url_are_refused_without_showing_them(url, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(UserError) as exc:
        ApiTeacher("m", base_url=url, api_key_env=None)
    message = str(exc.value)
    assert "***@" in message and "user name or password" in message
    captured = capsys.readouterr()
    for text in (message, captured.out, captured.err, caplog.text):
        assert "SENTINEL" not in text


@pytest.mark.parametrize("url", ["127.0.0.1:8000/v1", "ftp://host/v1", "http://host:99999/v1", "http:///v1"])
def test_a_url_that_is_not_http_is_refused(url):
    with pytest.raises(UserError, match=r"teacher\.base_url"):
        ApiTeacher("m", base_url=url, api_key_env=None)


def test_no_key_sends_a_placeholder(server, monkeypatch):
    monkeypatch.setenv("LMD_EMPTY_KEY", "")
    for env in (None, "", "LMD_EMPTY_KEY"):
        teacher_for(server, api_key_env=env).generate([req("p")])
    assert [r["headers"]["authorization"] for r in server.requests] == ["Bearer EMPTY"] * 3


def test_api_key_never_leaks(server, tmp_path, monkeypatch, capsys, caplog):
    sentinel = "sk-SENTINEL-0c1d2e3f4a5b6c7d8e9f"
    monkeypatch.setenv("LMD_TEST_KEY", sentinel)
    caplog.set_level(logging.DEBUG)
    server.script("who am i", ("401", "Incorrect API key provided: {auth}"))
    server.script("bad", ("400", f"invalid prompt (key {sentinel})"))
    server.script("flaky", ("500", f"upstream failed for {sentinel}"))
    server.script("gone", *[("503", f"no capacity for {sentinel}")] * 3)

    t = ApiTeacher("fake", base_url=server.url, api_key_env="LMD_TEST_KEY", max_retries=2, backoff_base=0.01)
    requests = [req(p) for p in ("fine", "who am i", "bad", "flaky", "gone")]
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        cached = CachedTeacher(t, cache)
        out = cached.generate(requests)
        for f in tmp_path.rglob("*"):  # the WAL before any checkpoint
            assert sentinel.encode() not in f.read_bytes()
        # what a run would write and print: records, a summary, the teacher's repr
        with open(tmp_path / "out.jsonl", "w") as fh:
            for r in out:
                fh.write(json.dumps(r.to_json()) + "\n")
        summary = {"teacher": repr(cached), **t.stats(), "hits": cached.hits}
        (tmp_path / "summary.json").write_text(json.dumps(summary))
        print(summary, repr(t), str(t))
        logging.getLogger("lmdistill").info("run done: %s", summary)

    assert [r.finish_reason for r in out] == ["stop", "error", "error", "stop", "error"]
    assert out[1].error.startswith("401: Incorrect API key provided: Bearer ***")
    assert out[2].error == "400: invalid prompt (key ***)"
    assert repr(t) == f"ApiTeacher(model='fake', base_url={server.url!r})"

    # it was sent where it belongs ...
    assert {r["headers"]["authorization"] for r in server.requests} == {f"Bearer {sentinel}"}
    # ... and nowhere else
    captured = capsys.readouterr()
    assert "ApiTeacher(model='fake'" in captured.out
    assert "retrying" in caplog.text and "failed for good" in caplog.text
    for text in (
        captured.out,
        captured.err,
        caplog.text,
        repr(t),
        repr(cached),
        *(r.error or "" for r in out),
    ):
        assert sentinel not in text
    files = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert {f.name for f in files} >= {"cache.sqlite", "out.jsonl", "summary.json"}
    for f in files:
        assert sentinel.encode() not in f.read_bytes(), f
