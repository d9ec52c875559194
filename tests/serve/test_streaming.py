"""Streaming (`stream: true`): server-sent events in OpenAI's chunk format, read by the official client."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.serve.conftest import MODEL_NAME


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_chat_stream_with_the_openai_client_equals_the_plain_answer(client):
    kw = dict(model=MODEL_NAME, messages=user("What is the capital of France?"), max_tokens=12, temperature=0)
    plain = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL_NAME for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    with_choices = [c for c in chunks if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    finishes = [c.choices[0].finish_reason for c in with_choices]
    assert finishes[-1] == plain.choices[0].finish_reason and set(finishes[:-1]) == {None}
    if plain.choices[0].finish_reason == "length":
        assert text == plain.choices[0].message.content
    else:  # a finished answer is whitespace-stripped when not streamed (docs/serve.md)
        assert text.strip() == plain.choices[0].message.content
    assert len(with_choices) >= 3  # it did stream: the text came in pieces
    # include_usage: a last chunk with no choices and the usage; the others carry usage null
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_stream_of_several_prompts(client):
    prompts = ["The cat sat", "Hello world"]
    plain = client.completions.create(model=MODEL_NAME, prompt=prompts, max_tokens=8, temperature=0)
    stream = client.completions.create(
        model=MODEL_NAME, prompt=prompts, max_tokens=8, temperature=0, stream=True
    )
    texts, finish = {0: "", 1: ""}, {}
    for chunk in stream:
        assert chunk.object == "text_completion"
        for c in chunk.choices:
            texts[c.index] += c.text
            if c.finish_reason is not None:
                finish[c.index] = c.finish_reason
    for i, choice in enumerate(plain.choices):
        assert finish[i] == choice.finish_reason
        assert (
            texts[i] == choice.text if choice.finish_reason == "length" else texts[i].strip() == choice.text
        )


def test_stream_stops_at_a_stop_string_and_never_sends_it(client, teacher):
    messages = user("Alice has 3 apples.")
    full = client.chat.completions.create(
        model=MODEL_NAME, messages=messages, max_tokens=12, temperature=0, logprobs=True, top_logprobs=1
    )
    tokens = [t.token for t in full.choices[0].logprobs.content]
    stop = next(t for t in tokens[3:] if t.strip() and t.isprintable() and t.isascii())
    kw = dict(model=MODEL_NAME, messages=messages, max_tokens=12, temperature=0, stop=[stop])
    plain = client.chat.completions.create(**kw).choices[0]
    chunks = list(client.chat.completions.create(stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert plain.finish_reason == "stop" == chunks[-1].choices[0].finish_reason
    assert stop not in text
    assert text.strip() == plain.message.content


def test_raw_server_sent_events(server):
    body = {"model": MODEL_NAME, "messages": user("Hi"), "max_tokens": 4, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e[len("data: ") :]) for e in events[:-1]]
    assert payloads[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all("usage" not in p for p in payloads)  # only with stream_options.include_usage


def test_a_refused_stream_is_a_plain_json_error(client, server):
    """Checks that need the tokenizer (context length) still answer 400 JSON, not a broken stream."""
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MODEL_NAME, messages=user("a " * 300), max_tokens=5, stream=True)
    assert exc.value.code == "context_length_exceeded"
    for body, param in (
        ({"messages": user("hi"), "stream": True, "logprobs": True}, "logprobs"),
        ({"prompt": "hi", "stream": True, "echo": True}, "echo"),
        ({"prompt": [1, 2], "stream": True, "prompt_logprobs": 1}, "prompt_logprobs"),
        ({"messages": user("hi"), "stream": True, "stream_options": {"chunk_size": 2}}, "stream_options"),
    ):
        path = "chat/completions" if "messages" in body else "completions"
        r = httpx.post(f"{server.base_url}/v1/{path}", json=body, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == param
