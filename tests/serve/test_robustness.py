"""A server that stays responsive: abandoned requests are cancelled, huge bodies refused, seeds honoured
whatever the batch, and fields it cannot honour refused by name."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import openai
import pytest

from lmdistill.serve import ServerThread, create_app
from tests.serve.conftest import MODEL_NAME

STEP_S = 0.02  # an artificial cost per forward pass, so that a long generation takes seconds


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def slow_server(teacher):
    """The tiny teacher made slow (STEP_S per forward): 200 tokens take about 4 s."""
    handle = teacher.model.register_forward_pre_hook(lambda *_: time.sleep(STEP_S))
    app = create_app(teacher, model_name=MODEL_NAME, max_batch=8, max_wait_ms=5.0)
    try:
        with ServerThread(app) as server:
            yield server, app
    finally:
        handle.remove()


def chat(server, max_tokens: int, *, timeout: float = 60.0, **extra) -> httpx.Response:
    body = {"model": MODEL_NAME, "messages": user("Hello world"), "max_tokens": max_tokens, **extra}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=timeout)


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_a_client_that_times_out_cancels_its_generation(slow_server):
    """Today's bug: the next request waited behind the abandoned one for its whole generation."""
    server, app = slow_server
    with pytest.raises(httpx.ReadTimeout):  # 200 tokens would take ~4 s; the client gives up after 0.5 s
        chat(server, 200, timeout=0.5, temperature=0)
    start = time.monotonic()
    r = chat(server, 3, temperature=0)
    waited = time.monotonic() - start
    assert r.status_code == 200
    # the abandoned generation had >= 3.5 s left; stopping it leaves the next request ~0.1 s of work
    assert waited < 2.5, f"the next request waited {waited:.1f} s behind an abandoned one"
    assert wait_for(lambda: app.state.stats.snapshot()["abandoned"] == 1)


def test_an_abandoned_queued_request_never_runs(slow_server):
    server, app = slow_server
    running = threading.Thread(target=chat, args=(server, 60), kwargs={"temperature": 0})
    running.start()  # ~1.2 s of generation holds the worker
    assert wait_for(lambda: app.state.stats.snapshot()["batches"] == 1)
    with pytest.raises(httpx.ReadTimeout):  # queued behind it (other sampling), then abandoned
        chat(server, 50, timeout=0.3, temperature=0.5)
    running.join(30)
    assert wait_for(lambda: app.state.stats.snapshot()["abandoned"] == 1)
    assert app.state.stats.snapshot()["requests"] == 1  # the abandoned request never reached the model


def test_a_closed_stream_stops_generating(slow_server, teacher):
    server, app = slow_server
    calls = [0]
    handle = teacher.model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        body = {
            "model": MODEL_NAME,
            "messages": user("Hi"),
            "max_tokens": 200,
            "temperature": 0,
            "stream": True,
        }
        with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            for _ in range(3):
                next(lines)
        # the connection is closed after a few chunks: the generation stops within a few steps
        assert wait_for(lambda: app.state.stats.snapshot()["abandoned"] == 1)
        after = calls[0]
        time.sleep(0.5)
        assert calls[0] == after < 100  # no forward pass after the stop; far fewer than 200
    finally:
        handle.remove()


def test_a_huge_body_is_413_and_holds_up_nobody(server):
    base = server.base_url
    big = b'{"prompt": "' + b"a" * (9 * 1024 * 1024) + b'"}'
    r = httpx.post(
        f"{base}/v1/completions", content=big, headers={"content-type": "application/json"}, timeout=30
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: the cap applies while reading
        for _ in range(10):
            yield b"a" * (1024 * 1024)

    r = httpx.post(f"{base}/v1/completions", content=chunks(), timeout=30)
    assert r.status_code == 413

    # a client that sends a header promising a body and then dribbles it out holds up nobody
    slow = socket.create_connection((server.host, server.port))
    try:
        slow.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000\r\n\r\n" + b'{"prompt": "' + b"a" * 1000
        )
        start = time.monotonic()
        out = httpx.post(
            f"{base}/v1/completions", json={"prompt": "Hello", "max_tokens": 2, "temperature": 0}, timeout=30
        )
        assert out.status_code == 200 and time.monotonic() - start < 5
    finally:
        slow.close()


def test_a_long_prompt_is_refused_without_tokenizing_it(server):
    r = httpx.post(f"{server.base_url}/v1/completions", json={"prompt": "ab" * 1_000_000}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


PROMPTS = ["Hello world", "The cat sat on the mat.", "Alice has 3 apples.", "What is the capital of France?"]


def test_a_seeded_request_gives_the_same_text_alone_or_among_others(client, server):
    kw = dict(model=MODEL_NAME, max_tokens=12, temperature=1.0, top_p=1.0, seed=7)
    alone = {
        p: client.chat.completions.create(messages=user(p), **kw).choices[0].message.content for p in PROMPTS
    }
    together: dict = {}
    barrier = threading.Barrier(len(PROMPTS) * 2)

    def ask(p: str, seed: int | None) -> None:
        with openai.OpenAI(base_url=server.url, api_key="EMPTY", max_retries=0, timeout=60) as c:
            barrier.wait(30)
            out = c.chat.completions.create(messages=user(p), **{**kw, "seed": seed})
            if seed == 7:
                together[p] = out.choices[0].message.content

    # the same prompts again, all at once, among unseeded sampled requests with the same settings
    threads = [threading.Thread(target=ask, args=(p, s)) for p in PROMPTS for s in (7, None)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert together == alone
    # and streamed
    p = PROMPTS[0]
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(messages=user(p), stream=True, **kw)
        if c.choices
    )
    assert text.strip() == alone[p].strip()


@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1, 10**30, 1.5, [7]])
def test_a_seed_out_of_range_is_400(server, seed):
    r = chat(server, 2, seed=seed, temperature=1.0)
    assert r.status_code == 400 and r.json()["error"]["param"] == "seed"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("response_format", {"type": "json_object"}),
        ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}),
        ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
        ("tool_choice", "auto"),
        ("functions", [{"name": "f"}]),
        ("logit_bias", {"5": 100}),
        ("frequency_penalty", 0.5),
        ("presence_penalty", -1),
        ("top_k", 5),
        ("repetition_penalty", 1.2),
        ("guided_json", {"type": "object"}),
        ("min_tokens", 3),
        ("prompt_logprobs", 1),  # chat: score through /v1/completions
        ("add_generation_prompt", False),
        ("modalities", ["text", "audio"]),
    ],
)
def test_fields_the_server_cannot_honour_are_400_by_name(server, field, value):
    r = chat(server, 2, temperature=0, **{field: value})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and field in err["message"]


def test_neutral_values_of_those_fields_are_accepted(server):
    neutral = {
        "response_format": {"type": "text"},
        "tools": [],
        "tool_choice": "none",
        "logit_bias": {},
        "frequency_penalty": 0,
        "presence_penalty": 0.0,
        "top_k": -1,
        "user": "someone",
        "metadata": {"a": "b"},
    }
    r = chat(server, 2, temperature=0, **neutral)
    assert r.status_code == 200, r.text
    r = httpx.post(
        f"{server.base_url}/v1/completions",
        json={"prompt": "hi", "max_tokens": 2, "frequency_penalty": 0.7},
        timeout=30,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "frequency_penalty"


def test_wrong_method_is_405_and_a_rejecting_chat_template_is_400(teacher):
    teacher.tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] not in ('user', 'system') %}"
        "{{ raise_exception('roles must be user or system') }}{% endif %}{{ m['content'] }}{% endfor %}"
    )
    with ServerThread(create_app(teacher, model_name=MODEL_NAME)) as server:
        r = httpx.get(f"{server.base_url}/v1/chat/completions", timeout=30)
        assert r.status_code == 405 and r.json()["error"]["message"]
        body = {"messages": [{"role": "tool", "content": "x"}], "max_tokens": 2}
        r = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "messages" and "roles must be" in r.json()["error"]["message"]
        body["messages"] = user("hi")
        assert httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30).status_code == 200
