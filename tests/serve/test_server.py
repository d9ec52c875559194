"""The OpenAI-compatible server, end to end: a real uvicorn server on loopback, the real openai client."""

from __future__ import annotations

import inspect
import json
import threading

import httpx
import openai
import pytest
import torch

from lmdistill.serve import ServerThread, create_app, raw_prompt_teacher, raw_request, serve
from lmdistill.teachers.types import Request, Sampling
from tests.serve.conftest import MODEL_NAME

PROMPTS = [
    "Hello world, how are you?",
    "What is the capital of France?",
    "The cat sat on the mat.",
    "Alice has 3 apples.",
    "Distillation trains a student.",
    '{"answer": "yes"}',
    "0 1 2 3 4 5",
    "Thank you very much.",
]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def greedy(max_new_tokens: int, **kw) -> Sampling:
    return Sampling(max_new_tokens=max_new_tokens, temperature=0.0, **kw)


def direct(teacher, messages, sampling):
    """What the teacher answers without the server (one request, one batch)."""
    return teacher.generate([Request.chat(messages, sampling)])[0]


def test_models_list(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    raw = httpx.get(f"{server.base_url}/v1/models").json()
    assert raw["object"] == "list"
    assert raw["data"][0] | {"created": 0} == {
        "id": MODEL_NAME,
        "object": "model",
        "owned_by": "lmdistill",
        "created": 0,
    }
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME


def test_greedy_chat_matches_local_teacher(client, teacher):
    messages = [{"role": "system", "content": "Be brief."}, *user("What is the capital of France?")]
    expected = direct(teacher, messages, greedy(10))
    out = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=10, temperature=0)
    choice = out.choices[0]
    assert out.object == "chat.completion"
    assert out.model == MODEL_NAME
    assert choice.message.role == "assistant"
    assert choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason
    assert choice.logprobs is None
    assert out.usage.prompt_tokens == expected.prompt_tokens
    assert out.usage.completion_tokens == expected.completion_tokens


def test_max_tokens_gives_length_and_usage(client, teacher):
    messages = user("Hello world, how are you?")
    out = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=4, temperature=0)
    prompt = teacher.prompt_text(Request.chat(messages))
    n_prompt = len(teacher.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert out.choices[0].finish_reason == "length"
    assert out.usage.prompt_tokens == n_prompt
    assert out.usage.completion_tokens == 4
    assert out.usage.total_tokens == n_prompt + 4
    # max_completion_tokens is the newer name for the same limit
    out = client.chat.completions.create(
        model=MODEL_NAME, messages=messages, max_completion_tokens=3, temperature=0
    )
    assert (out.choices[0].finish_reason, out.usage.completion_tokens) == ("length", 3)


def test_default_max_tokens_is_cut_to_the_context(client, teacher):
    """Without max_tokens the answer may use the rest of the model's context (256 tokens), no more: with
    a prompt that leaves about 10 tokens of room, the answer is the teacher's own answer with
    max_new_tokens = context - prompt tokens (counted here), and it stops there."""
    context = teacher.model.config.max_position_embeddings

    def prompt_tokens(messages) -> int:
        prompt = teacher.prompt_text(Request.chat(messages))
        return len(teacher.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    words = 1
    while prompt_tokens(user("the cat " * words)) < context - 10:
        words += 1
    messages = user("the cat " * words)
    room = context - prompt_tokens(messages)
    expected = direct(teacher, messages, greedy(room))
    assert 1 <= room <= 10 and (expected.finish_reason, expected.completion_tokens) == ("length", room)
    out = client.chat.completions.create(model=MODEL_NAME, messages=messages, temperature=0)
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (context - room, room)
    assert (out.choices[0].message.content, out.choices[0].finish_reason) == (expected.text, "length")


def test_seeded_sampling_is_reproducible(client):
    kw = dict(model=MODEL_NAME, messages=user("Hello world"), max_tokens=8, temperature=0.9, top_p=0.95)
    first = client.chat.completions.create(seed=7, **kw).choices[0].message.content
    again = client.chat.completions.create(seed=7, **kw).choices[0].message.content
    assert first == again
    other = {client.chat.completions.create(seed=s, **kw).choices[0].message.content for s in (8, 9, 10)}
    assert other - {first}  # the seed is used (three other seeds do not all give the same sample)


def test_logprobs_and_top_logprobs(client, teacher):
    messages = user("The cat sat on the mat.")
    out = client.chat.completions.create(
        model=MODEL_NAME, messages=messages, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens == 6
    expected = direct(teacher, messages, greedy(6, top_logprobs=3))
    for tok, ref in zip(content, expected.logprobs, strict=True):
        assert tok.token == ref["token"]
        assert tok.logprob <= 0.0
        assert tok.bytes == list(tok.token.encode("utf-8"))
        assert len(tok.top_logprobs) == 3
        values = [a.logprob for a in tok.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert all(v <= 0.0 for v in values)
        assert tok.logprob == pytest.approx(values[0])  # greedy picks the most likely token
        assert tok.logprob == pytest.approx(ref["logprob"], abs=1e-5)
    # logprobs without top_logprobs: the chosen tokens only
    out = client.chat.completions.create(
        model=MODEL_NAME, messages=messages, max_tokens=3, temperature=0, logprobs=True
    )
    content = out.choices[0].logprobs.content
    assert len(content) == 3 and all(t.top_logprobs == [] and t.logprob <= 0 for t in content)


def test_stop_strings(client, teacher):
    messages = user("Alice has 3 apples.")
    full = direct(teacher, messages, greedy(12, top_logprobs=1))
    tokens = [t["token"] for t in full.logprobs]
    # a stop string the greedy answer reaches after a few tokens
    stop = next(t for t in tokens[3:] if t.strip() and t.isprintable() and t.isascii())
    expected = direct(teacher, messages, greedy(12, stop=(stop,)))
    assert expected.finish_reason == "stop"
    for form in (stop, [stop, "never-generated"]):
        out = client.chat.completions.create(
            model=MODEL_NAME, messages=messages, max_tokens=12, temperature=0, stop=form
        )
        choice = out.choices[0]
        assert choice.finish_reason == "stop"
        assert choice.message.content == expected.text
        assert stop not in choice.message.content
        assert full.text.startswith(choice.message.content)


def test_completions_use_the_raw_prompt(client, teacher):
    prompt = "The cat sat"
    tok, model = teacher.tokenizer, teacher.model
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    reference = tok.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)

    out = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=6, temperature=0)
    assert out.object == "text_completion"
    choice = out.choices[0]
    assert choice.finish_reason == "length"
    assert choice.text == reference  # no chat template around the prompt
    assert out.usage.prompt_tokens == ids["input_ids"].shape[1]
    assert out.usage.completion_tokens == 6

    # several prompts: one choice each, in order; legacy logprobs format
    prompts = ["The cat sat", "Hello world"]
    out = client.completions.create(model=MODEL_NAME, prompt=prompts, max_tokens=4, temperature=0, logprobs=2)
    assert [c.index for c in out.choices] == [0, 1]
    raw = raw_prompt_teacher(teacher).generate([raw_request(p, greedy(4)) for p in prompts])
    assert [c.text for c in out.choices] == [r.text for r in raw]
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert all(v <= 0 for v in lp.token_logprobs)
    assert all(1 <= len(top) <= 2 for top in lp.top_logprobs)


def test_concurrent_requests_are_batched_and_each_gets_its_answer(app, server, teacher, monkeypatch):
    expected = [direct(teacher, user(p), greedy(8)) for p in PROMPTS]

    # watch the model: one thread, never two calls at once
    active, most, threads = [0], [0], set()
    lock = threading.Lock()
    generate = teacher.model.generate

    def watched(*args, **kwargs):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
            threads.add(threading.get_ident())
        try:
            return generate(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(teacher.model, "generate", watched)

    barrier = threading.Barrier(len(PROMPTS))
    results: list = [None] * len(PROMPTS)
    errors: list = []

    def ask(i: int) -> None:
        try:
            with openai.OpenAI(base_url=server.url, api_key="EMPTY", max_retries=0, timeout=60) as c:
                barrier.wait(timeout=30)
                results[i] = c.chat.completions.create(
                    model=MODEL_NAME, messages=user(PROMPTS[i]), max_tokens=8, temperature=0
                )
        except Exception as exc:  # reported below
            errors.append(exc)

    workers = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert not errors
    for out, ref in zip(results, expected, strict=True):
        assert out.choices[0].message.content == ref.text
        assert out.choices[0].finish_reason == ref.finish_reason
        assert out.usage.prompt_tokens == ref.prompt_tokens

    stats = app.state.stats
    assert stats.requests == len(PROMPTS)
    assert stats.batches < len(PROMPTS)  # batched: fewer generate calls than requests
    assert stats.largest_batch >= 2
    assert most[0] == 1 and len(threads) == 1
    assert httpx.get(f"{server.base_url}/stats").json()["requests"] == len(PROMPTS)


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL_NAME}, "messages"),
        ({"model": MODEL_NAME, "messages": []}, "messages"),
        ({"model": MODEL_NAME, "messages": user("hi"), "n": 2}, "n"),
        (
            {"model": MODEL_NAME, "messages": user("hi"), "stream_options": {"include_usage": True}},
            "stream_options",
        ),
        ({"model": MODEL_NAME, "messages": user("hi"), "temperature": 3}, "temperature"),
        ({"model": MODEL_NAME, "messages": user("hi"), "max_tokens": 0}, "max_tokens"),
        ({"model": MODEL_NAME, "messages": user("hi"), "top_logprobs": 2}, "top_logprobs"),
        ({"model": MODEL_NAME, "messages": user("hi"), "max_tokens": 10_000}, "messages"),
    ],
)
def test_bad_chat_requests_are_400(server, body, param):
    r = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400
    err = _error(r)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param


def test_errors_in_openai_shape(server, client):
    base = server.base_url
    r = httpx.post(
        f"{base}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and _error(r)["code"] == "invalid_json"
    r = httpx.post(f"{base}/v1/chat/completions", content=json.dumps([1, 2]))
    assert r.status_code == 400 and _error(r)
    r = httpx.get(f"{base}/v1/nowhere")
    assert r.status_code == 404 and _error(r)
    r = httpx.post(f"{base}/v1/completions", json={"prompt": "hi", "best_of": 2})
    assert r.status_code == 400 and _error(r)["param"] == "best_of"
    r = httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": MODEL_NAME, "messages": user("a " * 300), "max_tokens": 5},
    )
    assert r.status_code == 400 and _error(r)["code"] == "context_length_exceeded"

    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gpt-4o", messages=user("hi"), max_tokens=2)
    assert exc.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MODEL_NAME, messages=user("hi"), max_tokens=2, n=2)
    assert exc.value.param == "n"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MODEL_NAME, messages=user("hi"), max_tokens=2, seed=2**64)
    assert exc.value.param == "seed"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    # the server still answers after all that
    out = client.chat.completions.create(model=MODEL_NAME, messages=user("hi"), max_tokens=2, temperature=0)
    assert out.usage.completion_tokens == 2


def test_default_host_is_loopback(app):
    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(ServerThread).parameters["host"].default == "127.0.0.1"
    with ServerThread(app) as server:
        assert server._sock.getsockname()[0] == "127.0.0.1"
        assert server.url == f"http://127.0.0.1:{server.port}/v1"
        assert httpx.get(f"{server.base_url}/v1/models").status_code == 200
    # stopped: the port is closed and the app can be served again
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.base_url}/v1/models", timeout=2)
    with ServerThread(app) as again:
        assert httpx.get(f"{again.base_url}/v1/models").status_code == 200


def test_api_teacher_round_trip(server, teacher):
    """lmdistill's own API teacher, pointed at the server, answers like the local teacher."""
    from lmdistill.teachers.api import ApiTeacher

    requests = [Request.chat(user(p), greedy(6, top_logprobs=2)) for p in PROMPTS[:4]]
    expected = [teacher.generate([r])[0] for r in requests]
    api = ApiTeacher(MODEL_NAME, base_url=server.url, api_key_env=None, max_retries=0, concurrency=4)
    for got, ref in zip(api.generate(requests), expected, strict=True):
        assert (got.text, got.finish_reason) == (ref.text, ref.finish_reason)
        assert (got.prompt_tokens, got.completion_tokens) == (ref.prompt_tokens, ref.completion_tokens)
        assert [t["token"] for t in got.logprobs] == [t["token"] for t in ref.logprobs]
        assert [t["logprob"] for t in got.logprobs] == pytest.approx(
            [t["logprob"] for t in ref.logprobs], abs=1e-5
        )


def test_create_app_rejects_a_bad_max_batch(teacher):
    with pytest.raises(ValueError):
        create_app(teacher, model_name=MODEL_NAME, max_batch=0)


def test_the_readme_generate_example_needs_no_key(teacher, tmp_path, monkeypatch):
    """`lmdistill serve`, then `lmdistill generate configs/generate/responses_api.yaml` as shipped
    (api_key_env: OPENAI_API_KEY) with no key exported: a loopback server needs none. Only the port
    and the output folder are changed; everything else is the shipped file."""
    from pathlib import Path

    from lmdistill.generate import load_generate_config, run_generate

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = Path(__file__).resolve().parents[2] / "configs" / "generate" / "responses_api.yaml"
    app = create_app(teacher, model_name="smollm2-135m", max_batch=8)
    with ServerThread(app) as server:
        cfg = load_generate_config(
            str(config),
            [
                f"teacher.base_url={server.url}",
                f"output={tmp_path / 'out.jsonl'}",
                "sampling.max_new_tokens=4",
                "keep_cut=true",
            ],
        )
        assert cfg.teacher.api_key_env == "OPENAI_API_KEY" and cfg.teacher.name == "smollm2-135m"
        summary = run_generate(cfg, log=lambda *_: None)
    assert summary["input_rows"] == 8 and summary["requests_sent"] == 8
    assert summary["kept"] >= 1 and (tmp_path / "out.jsonl").exists()


def test_credentials_in_base_url_are_refused_before_anything_is_written(tmp_path):
    from pathlib import Path

    from lmdistill.errors import UserError
    from lmdistill.generate import load_generate_config

    config = Path(__file__).resolve().parents[2] / "configs" / "generate" / "responses_api.yaml"
    with pytest.raises(UserError) as exc:
        load_generate_config(
            str(config),
            ["teacher.base_url=http://me:sk-SENTINEL@127.0.0.1:8000/v1", f"output={tmp_path / 'o.jsonl'}"],
        )
    assert "SENTINEL" not in str(exc.value) and "***@127.0.0.1" in str(exc.value)
    assert list(tmp_path.iterdir()) == []


def test_requests_that_differ_only_in_max_tokens_share_a_batch(app, server, teacher):
    """Each row stops at its own max_tokens: the same answers as alone, in fewer model calls."""
    lengths = [1, 3, 6, 12, 2, 9, 4, 7]
    expected = [direct(teacher, user(p), greedy(n)) for p, n in zip(PROMPTS, lengths, strict=True)]
    barrier = threading.Barrier(len(PROMPTS))
    results: list = [None] * len(PROMPTS)

    def ask(i: int) -> None:
        with openai.OpenAI(base_url=server.url, api_key="EMPTY", max_retries=0, timeout=60) as c:
            barrier.wait(timeout=30)
            results[i] = c.chat.completions.create(
                model=MODEL_NAME, messages=user(PROMPTS[i]), max_tokens=lengths[i], temperature=0
            )

    workers = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    for out, ref, n in zip(results, expected, lengths, strict=True):
        assert out.choices[0].message.content == ref.text
        assert out.choices[0].finish_reason == ref.finish_reason
        assert out.usage.completion_tokens == ref.completion_tokens <= n
    assert app.state.stats.largest_batch >= 2
    assert app.state.stats.batches < len(PROMPTS)
