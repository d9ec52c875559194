"""A real OpenAI-compatible HTTP server on loopback, with scriptable faults, for tests and benchmarks.

    with FaultServer(latency=0.2) as server:
        server.script("bad prompt", ("400", "prompt too long"))      # per prompt (last user message)
        server.script_next(("429", 1), ("500",))                      # for the next requests, any prompt
        teacher = ApiTeacher("fake", base_url=server.url, api_key_env=None)

Actions, consumed one per request (per-prompt queue first, then the global queue, else "ok"):
    ("ok",)                       answer normally
    ("reply", text)               answer with this text (then the usual max_tokens / stop handling)
    ("429", retry_after)          429; Retry-After header = retry_after (number or HTTP date; None: no header)
    ("500",) / ("503", message)   any HTTP status with an OpenAI-style error body;
                                  "{auth}" in the message is replaced by the Authorization header received
    ("timeout", seconds)          sleep that long, then answer (a client with a shorter timeout gives up)
    ("drop",)                     close the connection without answering

Answers are deterministic: "answer to: <last user message>", or `responder(prompt)` when one is set
(`FaultServer(responder=fn)`: a scripted teacher that answers by rule), one token per whitespace-separated word,
cut at max_tokens (finish_reason "length") or at a stop string, with usage and, when asked, logprobs.
Counters: `total`, `in_flight`, `max_in_flight`, `per_prompt` (Counter), and `requests`, a record of
every request (path, headers with lower-case names, JSON body, arrival time).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _prompt(body: dict) -> str:
    for m in reversed(body.get("messages") or []):
        if m.get("role") == "user":
            return str(m.get("content", ""))
    return ""


def completion(body: dict, text: str | None = None) -> dict:
    """The deterministic chat completion for a request body (or the scripted `text`)."""
    prompt = _prompt(body)
    text = f"answer to: {prompt}" if text is None else text
    finish = "stop"
    for stop in body.get("stop") or []:
        cut = text.find(stop)
        if cut >= 0:
            text = text[:cut]
    words = text.split()
    limit = body.get("max_tokens")
    if limit is not None and len(words) > limit:
        words, finish = words[:limit], "length"
        text = " ".join(words)
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or [])
    logprobs = None
    if body.get("logprobs"):
        k = int(body.get("top_logprobs") or 0)
        content = []
        for i, w in enumerate(words):
            lp = -0.1 * (i + 1)
            top = [{"token": w, "logprob": lp, "bytes": None}]
            top += [{"token": f"alt{j}", "logprob": lp - j, "bytes": None} for j in range(1, k)]
            content.append({"token": w, "logprob": lp, "bytes": None, "top_logprobs": top[:k]})
        logprobs = {"content": content, "refusal": None}
    return {
        "id": "chatcmpl-fault",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", "fake"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": logprobs,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        },
    }


class FaultServer:
    """See the module docstring. Start with `start()` or `with FaultServer() as server:`."""

    def __init__(self, latency: float = 0.0, model: str = "fake", responder=None):
        self.latency = latency
        self.responder = responder
        self.model = model
        self._lock = threading.Lock()
        self._global: deque[tuple] = deque()
        self._by_prompt: dict[str, deque[tuple]] = {}
        self.total = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.per_prompt: Counter[str] = Counter()
        self.requests: list[dict] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control ------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start the server first"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def script(self, prompt: str, *actions: tuple) -> None:
        with self._lock:
            self._by_prompt.setdefault(prompt, deque()).extend(actions)

    def script_next(self, *actions: tuple) -> None:
        with self._lock:
            self._global.extend(actions)

    def reset_counters(self) -> None:
        with self._lock:
            self.total = 0
            self.max_in_flight = self.in_flight
            self.per_prompt.clear()
            self.requests.clear()

    def times(self, prompt: str) -> list[float]:
        """Arrival times (time.monotonic) of the requests for `prompt`."""
        with self._lock:
            return [r["time"] for r in self.requests if r["prompt"] == prompt]

    def start(self) -> FaultServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

            def log_message(self, format, *args):  # quiet
                pass

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    data = {
                        "object": "list",
                        "data": [{"id": server.model, "object": "model", "created": 0, "owned_by": "fault"}],
                    }
                    self._send(200, data)
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                server._serve(self, body)

            def _send(self, status: int, data: dict, headers: dict | None = None):
                payload = json.dumps(data).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, str(v))
                    self.end_headers()
                    self.wfile.write(payload)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError, OSError):
                    self.close_connection = True  # the client gave up (a timeout test)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request, client_address):  # quiet on client disconnects
                pass

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="faultserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- serving ------------------------------------------------------------------------------------

    def _serve(self, handler, body: dict) -> None:
        prompt = _prompt(body)
        with self._lock:
            self.total += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.per_prompt[prompt] += 1
            self.requests.append(
                {
                    "path": handler.path,
                    "headers": {k.lower(): v for k, v in handler.headers.items()},
                    "body": body,
                    "prompt": prompt,
                    "time": time.monotonic(),
                }
            )
            queue = self._by_prompt.get(prompt)
            if queue:
                action = queue.popleft()
            elif self._global:
                action = self._global.popleft()
            else:
                action = ("ok",)
        try:
            if self.latency:
                time.sleep(self.latency)
            kind = str(action[0])
            if not handler.path.rstrip("/").endswith("/chat/completions"):
                handler._send(404, {"error": {"message": f"no route {handler.path}", "type": "not_found"}})
            elif kind == "ok":
                text = None if self.responder is None else self.responder(prompt)
                handler._send(200, completion(body, text=text))
            elif kind == "reply":
                handler._send(200, completion(body, text=str(action[1])))
            elif kind == "timeout":
                time.sleep(float(action[1]))
                handler._send(200, completion(body))
            elif kind == "drop":
                handler.close_connection = True
                handler.connection.close()
            elif kind == "429":
                retry_after = action[1] if len(action) > 1 else None
                headers = {} if retry_after is None else {"Retry-After": retry_after}
                error = {"message": "Rate limit reached, slow down", "type": "rate_limit_error", "code": None}
                handler._send(429, {"error": error}, headers)
            else:
                status = int(kind)
                message = action[1] if len(action) > 1 else f"fault {status}"
                message = message.replace("{auth}", handler.headers.get("Authorization", ""))
                error = {"message": message, "type": "fault", "param": None, "code": str(status)}
                handler._send(status, {"error": error})
        finally:
            with self._lock:
                self.in_flight -= 1
