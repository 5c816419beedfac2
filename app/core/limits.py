"""Limits before work: the request body is bounded and its JSON nesting checked before
any route, dependency (auth) or parser sees it.

`RequestLimits` is the outermost middleware of every process (`build_app`). It refuses
a declared Content-Length over the limit without reading anything, counts the bytes of
the body while it streams in (a missing or lying Content-Length cannot make it buffer
more than the limit), and, for any body that may be parsed as JSON (routes that read
their body raw parse it whatever its content type), refuses nesting deeper than
`MAX_JSON_DEPTH`: Python's json parser recurses once per level, and a deep enough
body raised RecursionError (a 500) in a route that parses it itself. The checked body is
then handed to the app as one message, so routes read it as usual. A refused body up to
a few times the limit is read through and dropped before the 413, so that the client can
read the answer (closing on unread bytes resets the connection); a larger one is cut off.

Every refusal is the error envelope: 413 PayloadTooLarge, 422 MalformedJSON.
"""

from __future__ import annotations

import numpy as np
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import ErrorEnvelope

# Deeper than any body the processes take (an ingestion batch nests an event's object
# properties 16 deep under 3 levels of envelope) and far below the parser's recursion
# limit (about 1,000).
MAX_JSON_DEPTH = 64

# A refused body up to this many times the limit is read through (and dropped) before
# the 413, so the client can read it: see `_discard`.
_DRAIN_FACTOR = 4

# Everything but brackets and quotes is dropped before counting (C speed); numpy then
# tells inside from outside string literals by the parity of the quotes before each
# bracket, and the running sum of +1/-1 steps is the depth. About 5 ms for a 500 KB
# ingestion batch (json.loads of it: 10-20 ms); the common small body is one count().
_NOT_COUNTED = bytes(b for b in range(256) if b not in b'[]{}"')
_STEP = np.zeros(256, dtype=np.int32)
_STEP[list(b"[{")] = 1
_STEP[list(b"]}")] = -1
_QUOTE = ord('"')


def nests_deeper_than(body: bytes, limit: int) -> bool:
    """Returns whether the brackets of `body` nest more than `limit` deep outside string
    literals (escapes understood; invalid JSON is left to the parser's own error)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    # An escaped backslash, then an escaped quote, never delimits a string: drop them in
    # that order (left to right, as JSON reads escapes) so every quote left is a delimiter.
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = np.frombuffer(unescaped.translate(None, _NOT_COUNTED), dtype=np.uint8)
    outside = (np.cumsum(marks == _QUOTE, dtype=np.int32) & 1) == 0
    return int(np.cumsum(_STEP[marks] * outside).max()) > limit


# Bodies that are never parsed as JSON. Not "everything but application/json": a route
# that reads its body raw (serving's batch) parses whatever it is sent, so a deep JSON
# body labelled text/plain was a 500 too. The check is cheap for non-JSON text.
_NEVER_JSON = (b"multipart/", b"application/octet-stream")


def _may_be_parsed_as_json(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return not value.strip().lower().startswith(_NEVER_JSON)
    return True


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def _refuse(send: Send, status: int, error: str, detail: str) -> None:
    body = ErrorEnvelope(error=error, detail=detail).model_dump_json(exclude_none=True).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # The rest of the body stays unread: the connection cannot be reused.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    """ASGI middleware: body size (413) and JSON depth (422) checked before the app."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            if declared <= _DRAIN_FACTOR * limit:
                await _discard(receive)
            await _refuse(
                send, 413, "PayloadTooLarge", f"Body of {declared} bytes exceeds {limit} bytes"
            )
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                await self.app(scope, _replay([], message, receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > limit:
                if more:
                    await _discard(receive, _DRAIN_FACTOR * limit - size)
                await _refuse(send, 413, "PayloadTooLarge", f"Body exceeds {limit} bytes")
                return
            chunks.append(chunk)
        body = b"".join(chunks)
        if body and _may_be_parsed_as_json(scope) and nests_deeper_than(body, MAX_JSON_DEPTH):
            await _refuse(
                send, 422, "MalformedJSON", f"JSON nesting is deeper than {MAX_JSON_DEPTH} levels"
            )
            return
        first: Message = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, _replay([first], None, receive), send)


async def _discard(receive: Receive, budget: float = float("inf")) -> None:
    """Reads and drops the rest of the body (at most `budget` more bytes), keeping
    nothing. Closing a connection with unread bytes makes the kernel reset it, and most
    clients then report a broken connection instead of the 413; a body a few times the
    limit is read through so they see the answer, a larger one is cut off."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _replay(messages: list[Message], then: Message | None, receive: Receive) -> Receive:
    """Returns a `receive` that yields `messages`, then `then`, then the real receive's."""
    queue = [*messages, *([then] if then is not None else [])]

    async def replay() -> Message:
        if queue:
            return queue.pop(0)
        return await receive()

    return replay
