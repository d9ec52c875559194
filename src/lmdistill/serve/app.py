"""`lmdistill serve MODEL`: an OpenAI-compatible HTTP server for a Hugging Face causal LM.

Endpoints: GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions, POST /v1/completions and
GET /stats (batching counters, not part of the OpenAI API). Requests are batched by `Batcher`: one
worker thread calls the model, so concurrent clients are served safely and share forward passes.
Both POST endpoints stream (`stream: true`); /v1/completions also scores token sequences
(`prompt_logprobs`, or `echo` with `logprobs`). docs/serve.md has the whole contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmdistill.serve.batcher import Batcher, ServeError, StreamSink, raw_request
from lmdistill.serve.protocol import (
    MAX_TOP_LOGPROBS,
    ChatBody,
    CompletionBody,
    chat_completion,
    check_common,
    check_logprobs_cap,
    completion_choice,
    completion_logprobs,
    echo_logprobs,
    join_logprobs,
    message_dicts,
    parse_body,
    prompt_list,
    prompt_logprobs_json,
    sampling_for,
    text_completion,
)
from lmdistill.serve.streaming import Chunks, open_stream, wait_watching
from lmdistill.teachers.local import LocalTeacher
from lmdistill.teachers.types import Request

#: OpenAI's default max_tokens for the legacy completions endpoint.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
#: Largest request body accepted (bytes); a larger one is a 413 before it is read.
MAX_BODY_BYTES = 8 * 1024 * 1024
#: Bodies above this many bytes are decoded and validated off the event loop, so they hold up nobody.
_BIG_BODY = 64 * 1024

log = logging.getLogger(__name__)


def create_app(
    teacher: LocalTeacher,
    *,
    model_name: str,
    max_batch: int = 8,
    max_wait_ms: float = 5.0,
    max_logprobs: int = MAX_TOP_LOGPROBS,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """An OpenAI-compatible app serving `teacher` under the name `model_name`.

    Requests are queued and run on one worker thread in groups of at most `max_batch` requests of one
    kind with the same sampling but for max_tokens (seeded sampled requests alone), waiting up to
    `max_wait_ms` for a group to fill. `app.state.stats` (a
    `BatchStats`) counts requests and model calls; `app.state.batcher` is the batcher.
    `max_logprobs` is the most top log-probs per token a request may ask for (`logprobs`,
    `top_logprobs`, `prompt_logprobs`); more is a 400 naming `--max-logprobs`, as vLLM does.
    A body over `max_body_bytes` is a 413.
    """
    if max_logprobs < 0:
        raise ValueError(f"max_logprobs must be >= 0, got {max_logprobs}")
    batcher = Batcher(teacher, max_batch=max_batch, max_wait_ms=max_wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, batcher.close)

    app = FastAPI(title="lmdistill serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.teacher = teacher
    app.state.model_name = model_name
    app.state.batcher = batcher
    app.state.stats = batcher.stats

    @app.exception_handler(ServeError)
    async def _serve_error(request: HTTPRequest, exc: ServeError) -> JSONResponse:
        return JSONResponse(exc.to_json(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: HTTPRequest, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}."
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed for {request.url.path}."
        else:
            message = str(exc.detail)
        err = ServeError(message, status=exc.status_code, code=None)
        return JSONResponse(err.to_json(), status_code=exc.status_code, headers=exc.headers)

    def model_card() -> dict:
        return {"id": model_name, "object": "model", "created": 0, "owned_by": "lmdistill"}

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict:
        if model_id != model_name:
            raise ServeError(
                f"The model '{model_id}' does not exist.", status=404, param="model", code="model_not_found"
            )
        return model_card()

    @app.get("/stats")
    async def stats() -> dict:
        return {"model": model_name, **batcher.stats.snapshot()}

    async def body_of(request: HTTPRequest, model):
        return await _parse(request, model, max_body_bytes)

    def check_prompt_size(chars: int, param: str) -> None:
        if not batcher.prompt_fits(chars):
            raise ServeError(
                f"This model's maximum context length is {batcher.context_length} tokens; the {param} "
                f"({chars} characters) is certainly longer. Please reduce the length of the {param}.",
                param=param,
                code="context_length_exceeded",
            )

    def streamer(request: HTTPRequest, n: int):
        """(sinks, events, attach): one sink per choice, and `attach(futures)` that adds the end events."""
        events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        sinks = [StreamSink(loop, events, i) for i in range(n)]

        def attach(futures):
            for i, f in enumerate(futures):
                f.add_done_callback(lambda _f, i=i: sinks[i].put("end", i))

        return sinks, events, attach

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest):
        body: ChatBody = await body_of(request, ChatBody)
        check_common(body, model_name)
        if body.top_logprobs and not body.logprobs:
            raise ServeError(
                "logprobs must be set to true if top_logprobs is used.",
                param="top_logprobs",
                code="invalid_value",
            )
        if body.stream and body.logprobs:
            raise ServeError(
                "logprobs are not supported with stream=true; send stream=false to get them.",
                param="logprobs",
                code="unsupported_value",
            )
        check_logprobs_cap(body.top_logprobs, "top_logprobs", max_logprobs)
        k = (body.top_logprobs or 0) if body.logprobs else None
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        # the teacher only computes log-probs with top_logprobs >= 1; trim the list back to k on the way out
        sampling = sampling_for(body, max_tokens=max_tokens, top_logprobs=0 if k is None else max(k, 1))
        messages = message_dicts(body)
        check_prompt_size(sum(len(m["content"]) for m in messages), "messages")
        req = Request.chat(messages, sampling)
        explicit = max_tokens is not None
        if body.stream:
            sinks, events, attach = streamer(request, 1)
            futures = [batcher.submit("chat", req, explicit_max_tokens=explicit, sink=sinks[0])]
            attach(futures)
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            chunks = Chunks(chat=True, model=model_name, include_usage=include_usage)
            return await open_stream(request, futures, events, chunks)
        (response,) = await wait_watching(
            request, [batcher.submit("chat", req, explicit_max_tokens=explicit)]
        )
        return JSONResponse(chat_completion(response, model=model_name, top_logprobs=k))

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest):
        body: CompletionBody = await body_of(request, CompletionBody)
        check_common(body, model_name)
        if body.best_of not in (None, 1):
            raise ServeError("Only best_of=1 is supported.", param="best_of", code="unsupported_value")
        if body.suffix:
            raise ServeError("suffix is not supported.", param="suffix", code="unsupported_value")
        if (
            isinstance(body.prompt, list) and len(body.prompt) > 10_000
        ):  # a long id list: check it off the loop
            prompts = await asyncio.to_thread(prompt_list, body.prompt, vocab=batcher.vocab)
        else:
            prompts = prompt_list(body.prompt, vocab=batcher.vocab)
        for p in prompts:
            check_prompt_size(len(p) if isinstance(p, str) else 0, "prompt")
        k, k_prompt, echo = body.logprobs, body.prompt_logprobs, bool(body.echo)
        check_logprobs_cap(k, "logprobs", max_logprobs)
        check_logprobs_cap(k_prompt, "prompt_logprobs", max_logprobs)
        scoring = echo or k_prompt is not None
        if body.stream:
            for name, value in (("logprobs", k), ("prompt_logprobs", k_prompt), ("echo", body.echo or None)):
                if value is not None:
                    raise ServeError(
                        f"{name} is not supported with stream=true; send stream=false.",
                        param=name,
                        code="unsupported_value",
                    )
        if body.max_tokens == 0 and not scoring:
            raise ServeError(
                "max_tokens=0 generates nothing: use it with echo=true or prompt_logprobs to score the prompt.",
                param="max_tokens",
                code="invalid_value",
            )
        generating = body.max_tokens != 0
        explicit = body.max_tokens is not None
        sampling = sampling_for(
            body,
            max_tokens=body.max_tokens if explicit else COMPLETIONS_DEFAULT_MAX_TOKENS,
            top_logprobs=0 if k is None else max(k, 1),
        )

        def submit_generation(p, sink=None):
            if isinstance(p, str):
                return batcher.submit(
                    "raw", raw_request(p, sampling), explicit_max_tokens=explicit, sink=sink
                )
            return batcher.submit_ids(p, sampling, explicit_max_tokens=explicit, sink=sink)

        if body.stream:
            sinks, events, attach = streamer(request, len(prompts))
            futures = [submit_generation(p, sinks[i]) for i, p in enumerate(prompts)]
            attach(futures)
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            chunks = Chunks(chat=False, model=model_name, include_usage=include_usage)
            return await open_stream(request, futures, events, chunks)

        # one scoring job (a forward over the prompt) and/or one generation job per prompt
        score_k = max(k_prompt or 0, (k or 0) if echo else 0)
        scores = [batcher.submit_score(p, score_k) if scoring else None for p in prompts]
        gens = [submit_generation(p) if generating else None for p in prompts]
        results = await wait_watching(request, scores + gens)
        scored, responses = results[: len(prompts)], results[len(prompts) :]

        choices, n_prompt, n_completion = [], 0, 0
        for i, (p, sc, r) in enumerate(zip(prompts, scored, responses, strict=True)):
            text, logprobs = "", None
            if echo:
                text = p if isinstance(p, str) else sc.text
                if k is not None:
                    logprobs = echo_logprobs(sc, k)
            if r is not None:
                if k is not None:
                    offset = len(text) if echo else (len(p) if isinstance(p, str) else 0)
                    generated = completion_logprobs(r, k, offset)
                    logprobs = generated if logprobs is None else join_logprobs(logprobs, generated)
                text += r.text
            n_prompt += len(sc.ids) if sc is not None else r.prompt_tokens
            n_completion += r.completion_tokens if r is not None else 0
            choices.append(
                completion_choice(
                    i,
                    text,
                    r.finish_reason if r is not None else "length",
                    logprobs=logprobs,
                    prompt_logprobs=None if k_prompt is None else prompt_logprobs_json(sc, k_prompt),
                )
            )
        return JSONResponse(
            text_completion(choices, model=model_name, prompt_tokens=n_prompt, completion_tokens=n_completion)
        )

    return app


async def _parse(request: HTTPRequest, model, limit: int):
    """Read, decode and validate a JSON body of at most `limit` bytes (else a 413, before reading it
    all); a big body is decoded on a thread so that it does not hold up the event loop."""
    too_large = ServeError(
        f"The request body is larger than this server accepts ({limit} bytes).",
        status=413,
        code="request_too_large",
    )
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_large
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        parts.append(chunk)
    raw = b"".join(parts)
    if len(raw) > _BIG_BODY:
        return await asyncio.to_thread(_decode, raw, model)
    return _decode(raw, model)


def _decode(raw: bytes, model):
    try:
        data = json.loads(raw)
    except RecursionError:  # the decoder recurses once per nested array or object
        raise ServeError(
            "We could not parse the JSON body of your request: it is nested too deeply.", code="invalid_json"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ServeError(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
            "HTTP library correctly. The OpenAI API expects a JSON payload.)",
            code="invalid_json",
        ) from None
    return parse_body(model, data)


def load_app(
    model: str,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    max_batch: int = 8,
    name: str | None = None,
    max_wait_ms: float = 5.0,
    max_logprobs: int = MAX_TOP_LOGPROBS,
) -> FastAPI:
    """Load `model` (short name, local folder or hub id) with lmdistill.models and build its app.

    The served model name is `name`, or `model` as given (without a trailing slash).
    """
    from lmdistill.models import load_teacher, load_tokenizer

    served = name or str(model).rstrip("/\\") or str(model)
    tokenizer = load_tokenizer(model)
    lm = load_teacher(model, dtype=dtype, device=device, quantized=True)  # an int8 export serves as int8
    teacher = LocalTeacher(lm, tokenizer, name=served, batch_size=max_batch)
    return create_app(
        teacher, model_name=served, max_batch=max_batch, max_wait_ms=max_wait_ms, max_logprobs=max_logprobs
    )


def serve(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    dtype: str = "float32",
    device: str = "cpu",
    max_batch: int = 8,
    name: str | None = None,
    max_logprobs: int = MAX_TOP_LOGPROBS,
) -> None:
    """Load `model` and serve it over HTTP until interrupted (Ctrl+C).

    Binds to 127.0.0.1 unless `host` says otherwise; there is no authentication, so think twice before
    serving on 0.0.0.0. Prints one line with the base URL and the served model name.
    """
    import uvicorn

    from lmdistill.serve.thread import bind_socket, format_url

    if max_batch < 1:
        from lmdistill.errors import UserError

        raise UserError(f"--max-batch must be >= 1, got {max_batch}")
    if max_logprobs < 0:
        from lmdistill.errors import UserError

        raise UserError(f"--max-logprobs must be >= 0, got {max_logprobs}")
    sock = bind_socket(host, port)  # before loading, so a busy port fails fast
    try:
        app = load_app(
            model, dtype=dtype, device=device, max_batch=max_batch, name=name, max_logprobs=max_logprobs
        )
        bound_host, bound_port = sock.getsockname()[:2]
        print(
            f"lmdistill serve: {app.state.model_name} at {format_url(bound_host, bound_port)} "
            "(OpenAI-compatible; Ctrl+C to stop)",
            flush=True,
        )
        if bound_host not in ("127.0.0.1", "::1", "localhost"):
            print(
                f"warning: listening on {bound_host}, not loopback; the server has no authentication",
                file=sys.stderr,
                flush=True,
            )
        config = uvicorn.Config(app, log_level="info", lifespan="on", timeout_graceful_shutdown=10)
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl+C it shut down on
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
