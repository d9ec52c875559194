"""Awaiting batcher jobs from HTTP handlers: client disconnects abandon them, streams go out as SSE.

`wait_watching` awaits a request's jobs while polling the connection: a client that disconnects (or
times out and closes the connection) abandons its jobs, so the worker drops them from the queue or
stops them at the next token instead of finishing work nobody will read.

`stream_jobs` submits a streaming request's jobs, each with a sink for its text; `open_stream` waits
until every one of them is admitted (a refused prompt is still an ordinary JSON error), then returns
the server-sent events: OpenAI chunks as the worker sends text, each choice's last chunk with its
finish_reason, an optional usage chunk, and `data: [DONE]`. A disconnect cancels the stream's
generator, which abandons the jobs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence

from fastapi import Request as HTTPRequest
from fastapi.responses import StreamingResponse

from lmdistill.serve.batcher import JobFuture, ServeError, StreamSink
from lmdistill.teachers.types import Response

log = logging.getLogger(__name__)

#: Seconds between checks of the client's connection while its request waits or runs.
POLL_S = 0.25


async def result(future: JobFuture):
    """Await a batcher future (a `Response` or a `Scored`); failures become 500 errors in the OpenAI shape."""
    try:
        response = await asyncio.wrap_future(future)
    except ServeError:
        raise
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # The details go to the server's log, not to the client.
        log.exception("generation failed")
        raise ServeError("Generation failed (see the server log).", status=500, type="server_error") from exc
    if isinstance(response, Response) and response.finish_reason == "error":
        raise ServeError(f"Generation failed: {response.error}", status=500, type="server_error")
    return response


def abandon(futures: Sequence[JobFuture | None]) -> None:
    for f in futures:
        if f is not None and not f.done():
            f.abandon()


async def wait_watching(request: HTTPRequest, futures: Sequence[JobFuture | None]) -> list:
    """The futures' results in order (None for None), abandoning all of them if the client goes away
    or any of them fails (the other prompts of the request are then not worth finishing)."""

    async def none() -> None:
        return None

    gathered = asyncio.gather(*(result(f) if f is not None else none() for f in futures))
    try:
        while True:
            done, _ = await asyncio.wait({gathered}, timeout=POLL_S)
            if done:
                return gathered.result()
            if await request.is_disconnected():
                raise ServeError("The client went away.", status=499)
    except BaseException:
        abandon(futures)
        gathered.cancel()
        # A cancelled gather does not end cancelled: it ends with CancelledError as its *exception*
        # (set by the first child that was cancelled), which nobody awaits any more; asyncio would print
        # "_GatheringFuture exception was never retrieved" and a traceback when it is collected.
        gathered.add_done_callback(_retrieve)
        raise


def _retrieve(future: asyncio.Future) -> None:
    """Mark a finished future's exception as seen (it is of no use to anyone: the client is gone)."""
    if not future.cancelled():
        future.exception()


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


class Chunks:
    """OpenAI stream chunks for one request: `chat.completion.chunk` or `text_completion`."""

    def __init__(self, *, chat: bool, model: str, include_usage: bool):
        self.chat = chat
        self.model = model
        self.include_usage = include_usage
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _wrap(self, choices: list[dict], usage: dict | None = None, *, last: bool = False) -> dict:
        out = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self.include_usage:
            out["usage"] = usage if last else None
        return out

    def _choice(self, index: int, text: str | None, finish: str | None, *, role: bool = False) -> dict:
        if not self.chat:
            return {"text": text or "", "index": index, "logprobs": None, "finish_reason": finish}
        delta: dict = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

    def start(self, n: int) -> list[dict]:
        """Chat streams open with the assistant role (and empty content), as OpenAI's do."""
        return [self._wrap([self._choice(i, "", None, role=True)]) for i in range(n)] if self.chat else []

    def delta(self, index: int, text: str) -> dict:
        return self._wrap([self._choice(index, text, None)])

    def finish(self, index: int, reason: str) -> dict:
        return self._wrap([self._choice(index, None if self.chat else "", reason)])

    def usage(self, responses: Sequence[Response]) -> dict:
        prompt = sum(r.prompt_tokens for r in responses)
        completion = sum(r.completion_tokens for r in responses)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        return self._wrap([], usage, last=True)


async def stream_jobs(
    request: HTTPRequest, n: int, submit: Callable[[int, StreamSink], JobFuture], chunks: Chunks
) -> StreamingResponse:
    """Submit a streaming request's `n` jobs, `submit(i, sink)` returning the future of choice i, each
    with a sink that carries its events to this loop, and stream their text (`open_stream`)."""
    events: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()
    sinks = [StreamSink(loop, events, i) for i in range(n)]
    futures = [submit(i, sinks[i]) for i in range(n)]
    for i, f in enumerate(futures):
        f.add_done_callback(lambda _f, i=i: sinks[i].put("end", i))
    return await open_stream(request, futures, events, chunks)


async def open_stream(
    request: HTTPRequest,
    futures: list[JobFuture],
    events: asyncio.Queue,
    chunks: Chunks,
) -> StreamingResponse:
    """Wait until every job is admitted (a refusal raises its ServeError, a JSON error), then stream.

    `events` receives ("admitted", i), ("delta", i, text) and ("end", i) (from each future's
    done-callback, which the caller adds).
    """
    early: list[tuple] = []
    admitted: set[int] = set()
    try:
        while len(admitted) < len(futures):
            try:
                event = await asyncio.wait_for(events.get(), timeout=POLL_S)
            except TimeoutError:
                if await request.is_disconnected():
                    raise ServeError("The client went away.", status=499) from None
                continue
            if event[0] == "admitted":
                admitted.add(event[1])
            elif event[0] == "end" and event[1] not in admitted:
                await result(futures[event[1]])  # refused before admission: raises its error
                admitted.add(event[1])  # (cannot happen: an admitted job ends only after "admitted")
            else:
                early.append(event)
    except BaseException:
        abandon(futures)
        raise

    async def body() -> AsyncIterator[str]:
        responses: list[Response | None] = [None] * len(futures)
        ended = 0
        try:
            for chunk in chunks.start(len(futures)):
                yield sse(chunk)
            while ended < len(futures):
                event = early.pop(0) if early else await events.get()
                if event[0] == "delta":
                    yield sse(chunks.delta(event[1], event[2]))
                elif event[0] == "end":
                    ended += 1
                    try:
                        responses[event[1]] = await result(futures[event[1]])
                    except ServeError as exc:  # mid-stream: an error event, as OpenAI sends them
                        yield sse(exc.to_json())
                        abandon(futures)
                        break
                    yield sse(chunks.finish(event[1], responses[event[1]].finish_reason))
            else:
                if chunks.include_usage:
                    yield sse(chunks.usage([r for r in responses if r is not None]))
            yield sse("[DONE]")
        finally:  # the client went away (the response task was cancelled), or we are done
            abandon(futures)

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
