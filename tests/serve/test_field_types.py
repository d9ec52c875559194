"""Request fields of the wrong JSON type, and text that is not Unicode, are 400s naming the field (as the
OpenAI API answers them), never coerced and never a 500. A real server on loopback, raw HTTP bodies."""

from __future__ import annotations

import json

import httpx

from tests.serve.conftest import MODEL_NAME

CHAT = {
    "model": MODEL_NAME,
    "messages": [{"role": "user", "content": "Hi"}],
    "max_tokens": 2,
    "temperature": 0,
}
COMPLETION = {"model": MODEL_NAME, "prompt": "Hi", "max_tokens": 2, "temperature": 0}

#: (endpoint, field, value, what the field expects): every numeric and boolean field, given a string, a
#: boolean for a number, or a number for a boolean. Today's server read "12" as 12 and true as 1.
WRONG_TYPES = [
    ("chat", "max_tokens", "12", "an integer"),
    ("chat", "max_tokens", True, "an integer"),
    ("chat", "max_tokens", 8.0, "an integer"),
    ("chat", "max_completion_tokens", "3", "an integer"),
    ("chat", "max_completion_tokens", True, "an integer"),
    ("chat", "temperature", "0.5", "a number"),
    ("chat", "temperature", True, "a number"),
    ("chat", "top_p", "1", "a number"),
    ("chat", "top_p", False, "a number"),
    ("chat", "n", True, "an integer"),
    ("chat", "n", "1", "an integer"),
    ("chat", "seed", "7", "an integer"),
    ("chat", "seed", True, "an integer"),
    ("chat", "logprobs", "true", "a boolean"),
    ("chat", "logprobs", 1, "a boolean"),
    ("chat", "top_logprobs", "2", "an integer"),
    ("chat", "top_logprobs", True, "an integer"),
    ("chat", "stream", "true", "a boolean"),
    ("completion", "max_tokens", "2", "an integer"),
    ("completion", "max_tokens", True, "an integer"),
    ("completion", "temperature", "0", "a number"),
    ("completion", "top_p", True, "a number"),
    ("completion", "n", True, "an integer"),
    ("completion", "seed", "7", "an integer"),
    ("completion", "logprobs", True, "an integer"),
    ("completion", "logprobs", "1", "an integer"),
    ("completion", "prompt_logprobs", True, "an integer"),
    ("completion", "prompt_logprobs", "1", "an integer"),
    ("completion", "best_of", True, "an integer"),
    ("completion", "best_of", "1", "an integer"),
    ("completion", "echo", "true", "a boolean"),
    ("completion", "echo", 1, "a boolean"),
]

JSON_TYPE = {bool: "a boolean", int: "an integer", float: "a decimal", str: "a string"}


def post(server, endpoint: str, body: dict | bytes) -> httpx.Response:
    path = "chat/completions" if endpoint == "chat" else "completions"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{server.base_url}/v1/{path}",
        content=content,
        headers={"content-type": "application/json"},
        timeout=60,
    )


def test_numbers_and_booleans_of_the_wrong_type_are_400_naming_the_field(server):
    wrong = []
    for endpoint, field, value, expected in WRONG_TYPES:
        r = post(server, endpoint, {**(CHAT if endpoint == "chat" else COMPLETION), field: value})
        message = (
            f"Invalid type for '{field}': expected {expected}, but got {JSON_TYPE[type(value)]} instead."
        )
        want = (
            400,
            {"message": message, "type": "invalid_request_error", "param": field, "code": "invalid_type"},
        )
        got = (r.status_code, r.json().get("error") if r.status_code == 400 else r.text[:80])
        if got != want:
            wrong.append((endpoint, field, value, got))
    assert wrong == []
    # nested fields and the members of a union are named too
    r = post(server, "chat", {**CHAT, "stream": True, "stream_options": {"include_usage": "yes"}})
    assert (r.status_code, r.json()["error"]["param"]) == (400, "stream_options.include_usage")
    r = post(server, "chat", {**CHAT, "stop": 5})
    assert r.status_code == 400 and r.json()["error"] == {
        "message": "Invalid type for 'stop': expected a string or an array, but got an integer instead.",
        "type": "invalid_request_error",
        "param": "stop",
        "code": "invalid_type",
    }
    r = post(server, "completion", {**COMPLETION, "stop": ["a", 3]})
    assert (r.status_code, r.json()["error"]["param"]) == (400, "stop.1")
    r = post(server, "chat", {**CHAT, "messages": [{"role": "user", "content": 5}]})
    assert (r.status_code, r.json()["error"]["param"]) == (400, "messages.0.content")
    # the right types still work: an integer where a number is expected, null for "not set"
    r = post(server, "chat", {**CHAT, "temperature": 0, "top_p": 1, "seed": None, "logprobs": False})
    assert r.status_code == 200, r.text
    r = post(server, "completion", {**COMPLETION, "max_tokens": 0, "prompt_logprobs": 1, "echo": False})
    assert r.status_code == 200, r.text


#: (endpoint, raw JSON body, the field named): a lone UTF-16 surrogate, which JSON's \u escapes can
#: spell but which is not a character, in every text the model or the stop check reads. Today's
#: server answered each with a 500 and a traceback in its log (the tokenizer could not encode it).
SURROGATES = [
    (
        "chat",
        rb'{"messages": [{"role": "user", "content": "a\ud800b"}], "max_tokens": 2}',
        "messages.0.content",
    ),
    (
        "chat",
        rb'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}], "max_tokens": 2}',
        "messages.0.content.0.text",
    ),
    (
        "chat",
        rb'{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "stop": "x\udc00"}',
        "stop",
    ),
    ("completion", rb'{"prompt": "a\ud800b", "max_tokens": 2}', "prompt"),
    ("completion", b'{"prompt": "a\xed\xa0\x80b", "max_tokens": 2}', "prompt"),  # the same, UTF-8-encoded
    ("completion", rb'{"prompt": ["ok", "\ud83d"], "max_tokens": 2}', "prompt.1"),
    ("completion", rb'{"prompt": "ab", "max_tokens": 2, "stop": ["ok", "\udc00"]}', "stop.1"),
    ("completion", rb'{"prompt": "ab", "max_tokens": 2, "stream": true, "stop": ["\udc00"]}', "stop.0"),
    (
        "completion",
        rb'{"prompt": "ab", "max_tokens": 0, "prompt_logprobs": 1, "echo": false, "x": "\ud800"}',
        "x",
    ),
]


def test_a_lone_surrogate_is_400_naming_the_field(server):
    wrong = []
    for endpoint, raw, field in SURROGATES:
        r = post(server, endpoint, raw)
        err = r.json().get("error") if r.headers.get("content-type") == "application/json" else r.text[:80]
        ok = r.status_code == 400 and (err["param"], err["code"]) == (field, "invalid_value")
        if not ok or "lone UTF-16 surrogate" not in err["message"]:
            wrong.append((raw, r.status_code, err))
    assert wrong == []
    # in a field name: the object holding it is named (None: the body itself), never the name itself,
    # which could not be written back as JSON
    for raw, param in (
        (rb'{"prompt": "ab", "max_tokens": 2, "\ud800": 1}', None),
        (rb'{"messages": [{"role": "user", "content": "Hi", "x\udc00": 1}], "max_tokens": 2}', "messages.0"),
    ):
        r = post(server, "completion" if b"prompt" in raw else "chat", raw)
        assert r.status_code == 400, r.text
        assert (r.json()["error"]["param"], r.json()["error"]["code"]) == (param, "invalid_value")
        assert "a field name" in r.json()["error"]["message"]
    r = post(server, "chat", SURROGATES[0][1])
    assert r.json()["error"]["message"] == (
        "Invalid value for 'messages.0.content': it holds a lone UTF-16 surrogate (\\ud800 at character 1), "
        "which is not a Unicode character; send text as UTF-8 or as \\u escapes of whole surrogate pairs."
    )
    # a surrogate pair (one character, 😀) is text like any other, and the server still answers
    r = post(
        server, "completion", rb'{"prompt": "a\ud83d\ude00b", "max_tokens": 2, "stop": ["\ud83d\ude00"]}'
    )
    assert r.status_code == 200, r.text
    assert server.app.state.stats.snapshot()["failed"] == 0


def test_json_nested_too_deeply_is_400_invalid_json(server):
    """Python's JSON decoder recurses: 100,000 nested arrays raised RecursionError, a 500 with a traceback."""
    deep = b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b', "max_tokens": 2}'
    r = post(server, "completion", deep)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_json"
    assert "nested" in r.json()["error"]["message"]
    assert post(server, "completion", COMPLETION).status_code == 200
