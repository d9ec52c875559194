"""`lmdistill serve MODEL`: an OpenAI-compatible HTTP server for a Hugging Face causal LM.

Endpoints: GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions, POST /v1/completions and
GET /stats (batching counters, not part of the OpenAI API). Requests are batched by `Batcher`: one
worker thread calls the model, so concurrent clients are served safely and share forward passes.
Both POST endpoints stream (`stream: true`); /v1/completions also scores token sequences
(`prompt_logprobs`, or `echo` with `logprobs`). docs/serve.md has the whole contract.

Where each part lives: this module builds the app (`create_app`) and runs it (`load_app`, `serve`);
`body` reads and validates a request body against `protocol`'s models; `endpoints` holds the two POST
handlers (checking a request's settings, submitting its jobs, building the answer); `streaming` awaits
jobs while watching the connection, and streams them as server-sent events; `batcher` runs the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmdistill.serve.batcher import Batcher, ServeError
from lmdistill.serve.body import MAX_BODY_BYTES
from lmdistill.serve.endpoints import Served, chat_completions, completions
from lmdistill.serve.protocol import MAX_TOP_LOGPROBS
from lmdistill.teachers.local import LocalTeacher


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

    The POST handlers live in `lmdistill.serve.endpoints`; this function wires them up with the
    batcher's lifetime, the error handlers and the GET endpoints.
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
    _add_error_handlers(app)
    _add_info_routes(app, model_name, batcher)
    served = Served(batcher, model_name, max_logprobs, max_body_bytes)

    @app.post("/v1/chat/completions")
    async def _chat_completions(request: HTTPRequest):
        return await chat_completions(request, served)

    @app.post("/v1/completions")
    async def _completions(request: HTTPRequest):
        return await completions(request, served)

    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape: a ServeError as it says, an unknown URL or method as 404 / 405."""

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


def _add_info_routes(app: FastAPI, model_name: str, batcher: Batcher) -> None:
    """GET /v1/models, /v1/models/{id} (the one served model) and /stats (the batcher's counters)."""

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
