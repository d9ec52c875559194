"""Reading a request body: at most so many bytes, JSON, then validated into a `protocol` body model.

Every problem is a `ServeError` in the OpenAI shape: 413 `request_too_large` for a body over the limit
(from `Content-Length` before reading, or while reading a chunked body), 400 `invalid_json` for bytes
that are not JSON, and the 400s of `protocol.parse_body` for JSON that is not a valid request.
"""

from __future__ import annotations

import asyncio
import json

from fastapi import Request as HTTPRequest

from lmdistill.serve.batcher import ServeError
from lmdistill.serve.protocol import parse_body

#: Largest request body accepted (bytes); a larger one is a 413 before it is read.
MAX_BODY_BYTES = 8 * 1024 * 1024
#: Bodies above this many bytes are decoded and validated off the event loop, so they hold up nobody.
BIG_BODY = 64 * 1024


async def read_body(request: HTTPRequest, model, limit: int):
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
    if len(raw) > BIG_BODY:
        return await asyncio.to_thread(decode_body, raw, model)
    return decode_body(raw, model)


def decode_body(raw: bytes, model):
    """The body's JSON validated into `model` (`protocol.ChatBody` or `protocol.CompletionBody`)."""
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
