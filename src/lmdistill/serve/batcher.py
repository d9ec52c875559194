"""Queue requests from many HTTP handlers and run them through one teacher, batched, on one thread.

Handlers call `Batcher.submit` from any thread and get a `JobFuture`. A single worker thread owns the
model and the tokenizer: it renders and tokenizes each prompt as it arrives (rejecting prompts that do
not fit the context), waits up to `max_wait_ms` for more requests with the same sampling settings,
and runs one batched `generate` per group of at most `max_batch` requests. The model is never called
from two threads at once.

A handler whose client went away calls `JobFuture.abandon()`: a queued job is dropped, a running one
stops at the next token (its batch ends as soon as every row in it is abandoned). A seeded sampled
request always runs in a batch of its own: Hugging Face `generate` draws every row's sample from one
random stream, so a row's sample would otherwise depend on the requests it happened to share a
batch with; alone, a seed gives the same text every time (greedy and unseeded requests still batch).
A streaming job carries a `StreamSink`: the worker sends it text deltas as tokens arrive.

Four kinds of job: "chat" (messages through the chat template), "raw" (a text prompt as is), "ids" (a
token-id prompt, generated from without re-tokenising) and "score" (log-probs of a given sequence, one
forward, no generation; see `lmdistill.serve.scoring`). Only jobs of one kind and, for generation, one
sampling setting share a model call; every scoring job batches with every other one.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass, replace
from typing import Literal

from lmdistill.serve.generation import Row, TextStream, eos_ids, generate_ids
from lmdistill.serve.scoring import TokenTexts, score_batch, score_vocab, split_by_tokens
from lmdistill.teachers.types import Request, Sampling

#: Completion length used when a request does not set max_tokens (cut to the context that is left).
DEFAULT_MAX_TOKENS = 256

Kind = Literal["chat", "raw", "ids", "score"]


class ServeError(Exception):
    """An error that becomes an OpenAI-shaped error response: {"error": {message, type, param, code}}."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code

    def to_json(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class BatchStats:
    """What the worker has done so far: `batches` is the number of batched model calls."""

    requests: int = 0  # requests passed to teacher.generate
    batches: int = 0  # teacher.generate calls
    largest_batch: int = 0
    rejected: int = 0  # requests refused before generation (prompt too long, bad chat template)
    failed: int = 0  # requests whose generation raised
    scored: int = 0  # scoring requests (prompt log-probs, no generation) among `requests`
    abandoned: int = 0  # requests whose client went away (dropped from the queue or stopped mid-batch)

    def __post_init__(self):
        self._lock = threading.Lock()

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return asdict(self)


def raw_prompt_teacher(teacher):
    """A shallow copy of `teacher` (same model and tokenizer) that uses a request's single message content
    as the prompt text verbatim, without the chat template: `/v1/completions` prompts go through it."""
    view = copy.copy(teacher)
    view.prompt_text = lambda request: request.message_dicts[0]["content"]
    return view


def raw_request(prompt: str, sampling: Sampling) -> Request:
    """A request for `raw_prompt_teacher`: the prompt as the content of one pseudo message."""
    return Request.chat([{"role": "prompt", "content": prompt}], sampling)


def context_length(model) -> int | None:
    """The model's maximum sequence length from its config, or None when the config does not say."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class JobFuture(Future):
    """A batcher job's future; `abandon()` (any thread) tells the worker the client is gone."""

    def __init__(self):
        super().__init__()
        self.abandoned = threading.Event()

    def abandon(self) -> None:
        self.abandoned.set()
        self.cancel()  # succeeds while the job is still queued


class StreamSink:
    """Where the worker sends a streaming job's events, onto the server's event loop: ("admitted", index)
    once the prompt is accepted, then ("delta", index, text) per new piece of text. The handler adds
    ("end", index) itself, from the future's done-callback."""

    def __init__(self, loop: asyncio.AbstractEventLoop, events: asyncio.Queue, index: int = 0):
        self.loop = loop
        self.events = events
        self.index = index
        self.stream: TextStream | None = None  # set by the worker when the job is admitted

    def put(self, *event) -> None:
        # a closed loop (RuntimeError) means the server is gone and nobody is listening
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)


@dataclass
class _Job:
    kind: Kind
    request: Request | None  # None for "score"
    explicit_max_tokens: bool
    future: JobFuture
    ids: list[int] | None = None  # the prompt's token ids (set on the worker for chat and raw prompts)
    text: str | None = None  # "score" of a text prompt: tokenized on the worker
    k: int = 0  # "score": top log-probs per position
    sink: StreamSink | None = None

    @property
    def key(self) -> tuple[Kind, Sampling | None]:
        """Jobs with one key share a batch: one kind, and the same sampling but for max_new_tokens
        (each row stops at its own; see `generation.Row`)."""
        if self.request is None:
            return self.kind, None
        return self.kind, replace(self.request.sampling, max_new_tokens=0)

    @property
    def alone(self) -> bool:
        """A seeded sampled request: run in a batch of its own (see the module docstring)."""
        s = None if self.request is None else self.request.sampling
        return s is not None and not s.greedy and s.seed is not None


_STOP = object()


class Batcher:
    """Batch requests for one `LocalTeacher` on a single worker thread.

    Args:
        teacher: a `LocalTeacher` (anything with `prompt_text`, `tokenizer`, `model`, `response`).
        max_batch: most requests per model call.
        max_wait_ms: how long the worker waits for more requests with the same sampling before it runs
            a group that is not full.
    """

    def __init__(self, teacher, *, max_batch: int = 8, max_wait_ms: float = 5.0):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.teacher = teacher
        self.raw_teacher = raw_prompt_teacher(teacher)
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self.context_length = context_length(getattr(teacher, "model", None))
        self.vocab = score_vocab(teacher.model, teacher.tokenizer)
        # No token decodes to more characters than its vocabulary entry has (byte-level and SentencePiece
        # entries spell their text; normalisers aside), so a prompt of more than context x this x 4
        # characters cannot fit: it is refused without tokenizing megabytes on the worker.
        self.max_token_chars = max((len(t) for t in teacher.tokenizer.get_vocab()), default=1)
        self._eos = eos_ids(teacher)
        self._token_texts = TokenTexts(teacher.tokenizer)
        self.stats = BatchStats()
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> Batcher:
        """Start the worker thread (again, after `close`); a no-op while it runs."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and not self._closed:
                return self
            if self._thread is not None and self._thread.is_alive():
                # a worker that is still finishing after close(): two workers must never share the model
                raise RuntimeError("the previous worker is still running; call close() and let it finish")
            self._queue = queue.Queue()
            self._closed = False
            self._thread = threading.Thread(target=self._loop, name="lmdistill-batcher", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float | None = 60.0) -> None:
        """Finish the requests already queued, then stop the worker; later submits raise a 503 ServeError."""
        with self._lock:
            if self._closed or self._thread is None:
                self._closed = True
                return
            self._closed = True
            self._queue.put(_STOP)
            thread = self._thread
        thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closed

    # -- submitting ------------------------------------------------------------------------------------

    def prompt_fits(self, chars: int) -> bool:
        """False when a prompt of `chars` characters certainly has more tokens than the context."""
        limit = self.context_length
        return limit is None or chars <= limit * self.max_token_chars * 4

    def submit(
        self,
        kind: Kind,
        request: Request,
        *,
        explicit_max_tokens: bool = True,
        sink: StreamSink | None = None,
    ) -> JobFuture:
        """Queue one request; the future resolves to its `Response` or raises (a `ServeError` for a
        request that cannot be served, e.g. a prompt longer than the context).

        kind: "chat" renders the messages with the chat template; "raw" uses `raw_request`'s prompt as is.
        explicit_max_tokens: False when the client did not set max_tokens, so the worker may shorten
            `sampling.max_new_tokens` to the context that is left instead of refusing the request.
        sink: stream the text to it as it is generated.
        """
        if kind not in ("chat", "raw"):
            raise ValueError(f"unknown request kind {kind!r}")
        return self._put(_Job(kind, request, explicit_max_tokens, JobFuture(), sink=sink))

    def submit_ids(
        self,
        ids: list[int],
        sampling: Sampling,
        *,
        explicit_max_tokens: bool = True,
        sink: StreamSink | None = None,
    ) -> JobFuture:
        """Queue generation from a token-id prompt (ids already checked against `self.vocab`); the future
        resolves to a `Response`."""
        job = _Job("ids", Request((), sampling), explicit_max_tokens, JobFuture(), ids=list(ids), sink=sink)
        return self._put(job)

    def submit_score(self, prompt: str | list[int], k: int) -> JobFuture:
        """Queue scoring of a text prompt (tokenized as "raw" prompts are, without special tokens) or of
        token ids (checked against `self.vocab`); the future resolves to a `scoring.Scored` with the top
        `k` log-probs per position."""
        if isinstance(prompt, str):
            job = _Job("score", None, True, JobFuture(), text=prompt, k=k)
        else:
            job = _Job("score", None, True, JobFuture(), ids=list(prompt), k=k)
        return self._put(job)

    def _put(self, job: _Job) -> JobFuture:
        if self._thread is None:
            self.start()
        with self._lock:
            if self._closed:
                raise ServeError("The server is shutting down.", status=503, type="server_error")
            self._queue.put(job)
        return job.future

    # -- worker ------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        pending: list[_Job] = []
        stopping = False
        while not (stopping and not pending):
            if not pending:
                item = self._queue.get()
                if item is _STOP:
                    break
                self._admit(item, pending)
                if not pending:
                    continue
                stopping = self._wait_for_more(pending)
            else:  # a group is left over from the last round: take what arrived meanwhile, do not wait
                stopping = self._drain(pending) or stopping
            pending = self._drop_abandoned(pending)
            if not pending:
                continue
            head = pending[0]
            if head.alone:
                group = [head]
            else:
                group = [j for j in pending if j.key == head.key and not j.alone][: self.max_batch]
            taken = {id(j) for j in group}
            pending = [j for j in pending if id(j) not in taken]
            self._answer_group(group)

    def _drop_abandoned(self, pending: list[_Job]) -> list[_Job]:
        kept = []
        for job in pending:
            if job.future.abandoned.is_set():
                with self.stats._lock:
                    self.stats.abandoned += 1
                if not job.future.done():
                    job.future.set_exception(ServeError("The client went away.", status=499))
            else:
                kept.append(job)
        return kept

    def _wait_for_more(self, pending: list[_Job]) -> bool:
        """Collect requests until the head group is full or max_wait has passed; True on stop."""
        if pending[0].alone:
            return False
        deadline = time.monotonic() + self.max_wait_s
        key = pending[0].key
        while sum(j.key == key for j in pending) < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if item is _STOP:
                return True
            self._admit(item, pending)
        return False

    def _drain(self, pending: list[_Job]) -> bool:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            self._admit(item, pending)

    def _admit(self, job: _Job, pending: list[_Job]) -> None:
        """Tokenize the prompt and check it against the context (on this thread: it owns the
        tokenizer), fix the default completion length, and queue the job; a job that cannot run fails
        right here."""
        if job.future.abandoned.is_set() or not job.future.set_running_or_notify_cancel():
            with self.stats._lock:
                self.stats.abandoned += 1
            return  # the client went away before we started
        try:
            job.request = self._prepare(job)
        except ServeError as exc:
            with self.stats._lock:
                self.stats.rejected += 1
            job.future.set_exception(exc)
            return
        except Exception as exc:  # a tokenizer failure: not the client's fault
            with self.stats._lock:
                self.stats.failed += 1
            job.future.set_exception(exc)
            return
        if job.sink is not None:
            job.sink.stream = TextStream(self.teacher.tokenizer, job.request.sampling.stop, self._eos)
            job.sink.put("admitted", job.sink.index)
        pending.append(job)

    def _prepare(self, job: _Job) -> Request | None:
        param = "messages" if job.kind == "chat" else "prompt"
        if job.kind == "score":
            if job.ids is None:
                job.ids = self.teacher.tokenizer(job.text, add_special_tokens=False)["input_ids"]
            if not job.ids:
                raise ServeError("the prompt is empty", param=param)
            if self.context_length is not None and len(job.ids) > self.context_length:
                raise _too_long(self.context_length, len(job.ids), 0, param)
            return None
        request = job.request
        if job.kind != "ids":
            if job.kind == "chat":
                try:
                    text = self.teacher.prompt_text(request)
                except Exception as exc:  # jinja TemplateError and friends: the messages do not fit
                    raise ServeError(
                        f"the model's chat template rejected the messages: {exc}", param=param
                    ) from exc
            else:
                text = self.raw_teacher.prompt_text(request)
            job.ids = self.teacher.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._fit(request, len(job.ids), job.explicit_max_tokens, param)

    def _fit(self, request: Request, n_prompt: int, explicit: bool, param: str) -> Request:
        """Refuse a prompt + completion longer than the context, or cut a default max_tokens to it."""
        s = request.sampling
        if n_prompt == 0:
            raise ServeError("the prompt is empty", param=param)
        limit = self.context_length
        if limit is None:
            return request
        if explicit:
            if n_prompt + s.max_new_tokens > limit:
                raise _too_long(limit, n_prompt, s.max_new_tokens, param)
            return request
        room = limit - n_prompt
        if room < 1:
            raise _too_long(limit, n_prompt, 1, param)
        if s.max_new_tokens > room:
            return replace(request, sampling=replace(s, max_new_tokens=room))
        return request

    def _answer_group(self, group: list[_Job]) -> None:
        """Generate for a group in one call and hand each job its answer; a failing batch is retried one
        job at a time, so only the request that broke it gets the error."""
        try:
            results = self._generate(group)
        except Exception as exc:
            if len(group) == 1:
                with self.stats._lock:
                    self.stats.failed += 1
                group[0].future.set_exception(exc)
                return
            for job in group:  # isolate the request that broke the batch; the others still get answers
                self._answer_group([job])
            return
        for job, result in zip(group, results, strict=True):
            if job.future.abandoned.is_set():
                with self.stats._lock:
                    self.stats.abandoned += 1
                job.future.set_exception(ServeError("The client went away.", status=499))
            else:
                job.future.set_result(result)

    def _generate(self, group: list[_Job]) -> list:
        kind = group[0].kind
        with self.stats._lock:
            self.stats.batches += 1
            self.stats.requests += len(group)
            self.stats.largest_batch = max(self.stats.largest_batch, len(group))
            if kind == "score":
                self.stats.scored += len(group)
        if kind == "score":
            seqs = [j.ids for j in group]
            k = max(j.k for j in group)
            out: list = [None] * len(group)
            for part in split_by_tokens(seqs):
                scored = score_batch(
                    self.teacher.model,
                    [seqs[i] for i in part],
                    k=k,
                    vocab=self.vocab,
                    texts=self._token_texts,
                )
                for i, result in zip(part, scored, strict=True):
                    out[i] = result
            return out
        limits = [j.request.sampling.max_new_tokens for j in group]
        rows = [
            Row(limit=n, abandoned=j.future.abandoned.is_set, step=self._stepper(j))
            for j, n in zip(group, limits, strict=True)
        ]
        sampling = replace(group[0].request.sampling, max_new_tokens=max(limits))
        responses, new = generate_ids(self.teacher, [j.ids for j in group], sampling, rows)
        for job, ids in zip(group, new, strict=True):
            if job.sink is not None and not job.future.abandoned.is_set():
                delta = job.sink.stream.final(ids)
                if delta:
                    job.sink.put("delta", job.sink.index, delta)
        return responses

    @staticmethod
    def _stepper(job: _Job):
        sink = job.sink
        if sink is None:
            return None

        def step(ids: list[int]) -> None:
            delta = sink.stream.update(ids)
            if delta:
                sink.put("delta", sink.index, delta)

        return step


def _too_long(limit: int, n_prompt: int, n_new: int, param: str) -> ServeError:
    where = "messages" if param == "messages" else "prompt"
    return ServeError(
        f"This model's maximum context length is {limit} tokens. However, you requested "
        f"{n_prompt + n_new} tokens ({n_prompt} in the {where}, {n_new} in the completion). "
        f"Please reduce the length of the {where} or completion.",
        param=param,
        code="context_length_exceeded",
    )
