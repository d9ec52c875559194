"""`lmdistill serve MODEL`: an OpenAI-compatible HTTP server for a Hugging Face causal LM.

Endpoints: GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions, POST /v1/completions and
GET /stats (batching counters, not part of the OpenAI API). Requests are batched by `Batcher`: one
worker thread calls the model, so concurrent clients are served safely and share forward passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from concurrent.futures import Future
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmdistill.serve.batcher import Batcher, ServeError, raw_request
from lmdistill.serve.protocol import (
    ChatBody,
    CompletionBody,
    chat_completion,
    check_common,
    message_dicts,
    parse_body,
    sampling_for,
    text_completion,
)
from lmdistill.teachers.local import LocalTeacher
from lmdistill.teachers.types import Request, Response

#: OpenAI's default max_tokens for the legacy completions endpoint.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16

log = logging.getLogger(__name__)


def create_app(
    teacher: LocalTeacher, *, model_name: str, max_batch: int = 8, max_wait_ms: float = 5.0
) -> FastAPI:
    """An OpenAI-compatible app serving `teacher` under the name `model_name`.

    Requests are queued and run on one worker thread in groups of at most `max_batch` requests with
    identical sampling, waiting up to `max_wait_ms` for a group to fill. `app.state.stats` (a
    `BatchStats`) counts requests and `teacher.generate` calls; `app.state.batcher` is the batcher.
    """
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

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest) -> JSONResponse:
        body: ChatBody = parse_body(ChatBody, await _json_body(request))
        check_common(body, model_name)
        if body.top_logprobs and not body.logprobs:
            raise ServeError(
                "logprobs must be set to true if top_logprobs is used.",
                param="top_logprobs",
                code="invalid_value",
            )
        k = (body.top_logprobs or 0) if body.logprobs else None
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        # the teacher only computes log-probs with top_logprobs >= 1; trim the list back to k on the way out
        sampling = sampling_for(body, max_tokens=max_tokens, top_logprobs=0 if k is None else max(k, 1))
        req = Request.chat(message_dicts(body), sampling)
        response = await _result(batcher.submit("chat", req, explicit_max_tokens=max_tokens is not None))
        return JSONResponse(chat_completion(response, model=model_name, top_logprobs=k))

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest) -> JSONResponse:
        body: CompletionBody = parse_body(CompletionBody, await _json_body(request))
        check_common(body, model_name)
        if body.echo:
            raise ServeError("echo is not supported.", param="echo", code="unsupported_value")
        if body.best_of not in (None, 1):
            raise ServeError("Only best_of=1 is supported.", param="best_of", code="unsupported_value")
        if body.suffix:
            raise ServeError("suffix is not supported.", param="suffix", code="unsupported_value")
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts:
            raise ServeError("prompt must not be empty.", param="prompt", code="invalid_value")
        k = body.logprobs
        explicit = body.max_tokens is not None
        sampling = sampling_for(
            body,
            max_tokens=body.max_tokens if explicit else COMPLETIONS_DEFAULT_MAX_TOKENS,
            top_logprobs=0 if k is None else max(k, 1),
        )
        futures = [
            batcher.submit("raw", raw_request(p, sampling), explicit_max_tokens=explicit) for p in prompts
        ]
        responses = list(await asyncio.gather(*(_result(f) for f in futures)))
        return JSONResponse(text_completion(responses, prompts, model=model_name, logprobs=k))

    return app


async def _json_body(request: HTTPRequest):
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ServeError(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
            "HTTP library correctly. The OpenAI API expects a JSON payload.)",
            code="invalid_json",
        ) from None


async def _result(future: Future) -> Response:
    """Await a batcher future; generation failures become 500 server errors in the OpenAI shape."""
    try:
        response = await asyncio.wrap_future(future)
    except ServeError:
        raise
    except Exception as exc:
        # The details go to the server's log, not to the client.
        log.exception("generation failed")
        raise ServeError("Generation failed (see the server log).", status=500, type="server_error") from exc
    if response.finish_reason == "error":
        raise ServeError(f"Generation failed: {response.error}", status=500, type="server_error")
    return response


def load_app(
    model: str,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    max_batch: int = 8,
    name: str | None = None,
    max_wait_ms: float = 5.0,
) -> FastAPI:
    """Load `model` (short name, local folder or hub id) with lmdistill.models and build its app.

    The served model name is `name`, or `model` as given (without a trailing slash).
    """
    from lmdistill.models import load_teacher, load_tokenizer

    served = name or str(model).rstrip("/\\") or str(model)
    tokenizer = load_tokenizer(model)
    lm = load_teacher(model, dtype=dtype, device=device, quantized=True)  # an int8 export serves as int8
    teacher = LocalTeacher(lm, tokenizer, name=served, batch_size=max_batch)
    return create_app(teacher, model_name=served, max_batch=max_batch, max_wait_ms=max_wait_ms)


def serve(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    dtype: str = "float32",
    device: str = "cpu",
    max_batch: int = 8,
    name: str | None = None,
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
    sock = bind_socket(host, port)  # before loading, so a busy port fails fast
    try:
        app = load_app(model, dtype=dtype, device=device, max_batch=max_batch, name=name)
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
