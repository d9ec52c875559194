"""A real HTTP server on loopback that scores token ids like vLLM's /v1/completions, with scriptable faults.

    with ScoringServer(tokenizer) as server:
        server.script(("429", 0.2), ("500",))      # the next requests fail so, then answers resume
        source = ServerTeacher.connect(cfg, tokenizer, k=4, vocab=server.vocab)

The teacher is a fixed random bigram table: the log-probs at position j are log_softmax(table[ids[j - 1]])
(`expected(ids)`), so a test knows every answer exactly. Options:
    echo_only        refuse `prompt_logprobs` with a 400 (as OpenAI does with unknown fields): clients
                     must fall back to `echo: true, logprobs: k, max_tokens: 0`;
    max_logprobs     a request asking for more is a 400 naming --max-logprobs, as vLLM's;
    short            answer with this many log-probs per position whatever was asked (a silent cap);
    text_of          id -> the token text the server reports (default: the tokenizer's decode([id]));
                     another mapping plays a server with another vocabulary;
    broken_after     once this many scoring replies have been answered (default 1: the probe's), every
                     later reply is broken as follows, so a client meets the fault after a clean probe:
    mangle           (prompt ids, j, {id: log-prob}) -> {id: anything}: rewrites position j's entries in
                     those replies (NaN log-probs, strings, ids outside the vocabulary, another order, ...);
    fail_status      answer those requests with this HTTP status instead (e.g. 500: a server that breaks).
Scripted actions, one per completions request: ("429", retry_after_seconds), ("500",), ("503",), ("ok",).
`requests` records every completions body received (JSON).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

MODEL = "bigram-teacher"


class ScoringServer:
    def __init__(
        self,
        tokenizer,
        *,
        seed: int = 0,
        echo_only: bool = False,
        max_logprobs: int = 20,
        short: int | None = None,
        text_of=None,
        broken_after: int = 1,
        mangle=None,
        fail_status: int | None = None,
    ):
        self.tokenizer = tokenizer
        self.vocab = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
        g = torch.Generator().manual_seed(seed)
        self.table = torch.log_softmax(
            3.0 * torch.randn(self.vocab, self.vocab, generator=g, dtype=torch.float64), -1
        )
        self.echo_only, self.max_logprobs, self.short = echo_only, max_logprobs, short
        self.text_of = text_of or (lambda i: tokenizer.decode([i]))
        self.broken_after, self.mangle, self.fail_status = broken_after, mangle, fail_status
        self.answered = 0  # scoring replies sent (200)
        self.actions: deque = deque()
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> ScoringServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def script(self, *actions) -> None:
        with self.lock:
            self.actions.extend(actions)

    def expected(self, ids: list[int]) -> torch.Tensor:
        """[len(ids) - 1, V] float64 log-probs: row j - 1 is the distribution of token j."""
        return self.table[torch.tensor(ids[:-1])]

    # -- answers --------------------------------------------------------------------------------------

    def answer(self, body: dict) -> tuple[int, dict, dict]:
        """(status, headers, JSON body) for a /v1/completions request."""
        with self.lock:
            self.requests.append(body)
            action = self.actions.popleft() if self.actions else ("ok",)
            broken = self.answered >= self.broken_after
        if broken and self.fail_status is not None:
            return self.fail_status, {}, _error("the teacher is broken", "server_error")
        if action[0] == "429":
            return 429, {"Retry-After": str(action[1])}, _error("rate limited", "rate_limit_exceeded")
        if action[0] in ("500", "503"):
            return int(action[0]), {}, _error("the server is overloaded", "server_error")
        ids = body.get("prompt")
        if not (isinstance(ids, list) and ids and all(isinstance(i, int) for i in ids)):
            return 400, {}, _error("this test server scores token-id prompts only", "invalid_value")
        if "prompt_logprobs" in body:
            if self.echo_only:
                return 400, {}, _error("Unrecognized request argument supplied: prompt_logprobs", "invalid")
            if body.get("max_tokens") == 0 and not body.get("echo"):  # as vLLM's SamplingParams
                return 400, {}, _error("max_tokens must be at least 1, got 0.", "invalid_value")
            return self._counted(self._scored(ids, int(body["prompt_logprobs"]), "prompt_logprobs", broken))
        if body.get("echo") and body.get("logprobs") is not None:
            return self._counted(self._scored(ids, int(body["logprobs"]), "echo", broken))
        return 400, {}, _error("nothing to score", "invalid_value")

    def _counted(self, reply: tuple[int, dict, dict]) -> tuple[int, dict, dict]:
        if reply[0] == 200:
            with self.lock:
                self.answered += 1
        return reply

    def _text(self, i) -> str:
        return self.text_of(i) if isinstance(i, int) and 0 <= i < self.vocab else "<none>"

    def _scored(self, ids: list[int], k: int, field: str, broken: bool = False) -> tuple[int, dict, dict]:
        if k > self.max_logprobs:
            msg = f"Requested {field} of {k}, which is greater than max allowed: {self.max_logprobs}"
            return 400, {}, _error(msg + " (start the server with --max-logprobs)", "invalid_value")
        k = self.short if self.short is not None else k
        rows = self.expected(ids)
        entries: list = [None]
        for j, row in enumerate(rows, start=1):
            values, top = row.topk(k)
            pairs = dict(zip(top.tolist(), values.tolist(), strict=True))
            pairs.setdefault(ids[j], float(row[ids[j]]))  # vLLM adds the prompt token itself
            entries.append(self.mangle(ids, j, pairs) if broken and self.mangle is not None else pairs)
        choice = {"index": 0, "text": "", "finish_reason": "length"}
        if field == "prompt_logprobs":
            ranks = {}
            for pairs in entries[1:]:
                numbers = {i: v for i, v in pairs.items() if isinstance(v, float)}
                order = sorted(numbers, key=lambda i: -numbers[i])
                ranks = {i: r + 1 for r, i in enumerate(order)}
                for i in list(pairs):
                    pairs[i] = {"logprob": pairs[i], "rank": ranks.get(i), "decoded_token": self._text(i)}
            choice.update(
                text="x",
                prompt_logprobs=[None if e is None else {str(i): v for i, v in e.items()} for e in entries],
            )
        else:
            choice["logprobs"] = {
                "tokens": [self.text_of(i) for i in ids],
                "token_logprobs": [None] + [float(rows[j - 1][ids[j]]) for j in range(1, len(ids))],
                "top_logprobs": [None] + [{self._text(i): lp for i, lp in e.items()} for e in entries[1:]],
                "text_offset": list(range(len(ids))),
            }
        return (
            200,
            {},
            {
                "id": "cmpl-test",
                "object": "text_completion",
                "created": 0,
                "model": MODEL,
                "choices": [choice],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)},
            },
        )


def _error(message: str, code: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


def _handler(server: ScoringServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _send(self, status: int, headers: dict, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.rstrip("/") == "/v1/models":
                self._send(
                    200,
                    {},
                    {
                        "object": "list",
                        "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "test"}],
                    },
                )
            else:
                self._send(404, {}, _error("not found", "not_found"))

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self.path.rstrip("/") != "/v1/completions":
                self._send(404, {}, _error("not found", "not_found"))
                return
            self._send(*server.answer(body))

    return Handler
