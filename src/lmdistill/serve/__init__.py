"""An OpenAI-compatible HTTP server for Hugging Face causal LMs (teachers and distilled students).

    lmdistill serve smollm2-135m            # http://127.0.0.1:8000/v1

Needs the `serve` extra (fastapi, uvicorn): pip install 'lmdistill[serve]'.
"""

from lmdistill.serve._deps import MissingServeDependencies  # first: a readable error without fastapi
from lmdistill.serve.app import create_app, load_app, serve
from lmdistill.serve.batcher import (
    DEFAULT_MAX_TOKENS,
    Batcher,
    BatchStats,
    ServeError,
    context_length,
    raw_prompt_teacher,
    raw_request,
)
from lmdistill.serve.thread import ServerThread, bind_socket, format_url

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "BatchStats",
    "Batcher",
    "MissingServeDependencies",
    "ServeError",
    "ServerThread",
    "bind_socket",
    "context_length",
    "create_app",
    "format_url",
    "load_app",
    "raw_prompt_teacher",
    "raw_request",
    "serve",
]
