"""The gateway's ASGI guard: no request to a /v1 route passes without a Bearer header and a body of at
most 8 MB (a chunked body is read here, counting, and replayed to the app). It also hashes the key once,
for the admission that follows. A large body (over LARGE_BODY_BYTES, or chunked) is read only for a key the
accounting actor knows, and only LARGE_BODIES of them per replica at a time: nobody makes a replica read and
parse megabytes for free."""

from __future__ import annotations

import asyncio

from fastapi.responses import JSONResponse

from serve_apps.contract import bearer_token, hash_key
from serve_apps.errors import PlatformError

MAX_BODY_BYTES = 8 * 1024 * 1024
LARGE_BODY_BYTES = 256 * 1024
LARGE_BODIES = 16  # large bodies a replica reads and parses at once (until its answer starts)
LARGE_BODY_WAIT_S = 10.0
ROUTES = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank", "/v1/models", "/v1/responses",
          "/v1/messages"}


def api_key(headers: dict) -> str:
    """The caller's key: `Authorization: Bearer <key>`, or `x-api-key: <key>` (how the anthropic SDK sends it)."""
    return (bearer_token(headers.get(b"authorization", b"").decode("latin-1"))
            or headers.get(b"x-api-key", b"").decode("latin-1").strip())


def _json(status: int, body: dict) -> JSONResponse:
    return JSONResponse(status_code=status, content=body)


class GatewayGuard:
    """ASGI middleware: no request to a /v1 route passes without a key (Bearer or x-api-key) and a body ≤ 8 MB."""

    def __init__(self, inner):
        self.inner = inner
        self._large_bodies = asyncio.Semaphore(LARGE_BODIES)

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or (path not in ROUTES and not path.startswith("/v1/models/")):
            return await self.inner(scope, receive, send)
        headers = dict(scope["headers"])
        token = api_key(headers)
        if not token:
            return await _json(400, PlatformError("ModelArts.81002").body())(scope, receive, send)
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return await _json(413, PlatformError("MaaS.0413", limit=MAX_BODY_BYTES).body())(scope, receive, send)
        key_hash = scope.setdefault("state", {})["key_hash"] = hash_key(token)
        if scope["method"] == "POST" and (length is None or not length.isdigit() or int(length) > LARGE_BODY_BYTES):
            return await self._large(scope, receive, send, key_hash, length)
        await self.inner(scope, receive, send)

    async def _large(self, scope, receive, send, key_hash: str, length) -> None:
        gateway = scope["app"].state.gateway
        if not await gateway.known_key(key_hash):  # before a byte of the body is read
            return await _json(401, PlatformError("ModelArts.81003").body())(scope, receive, send)
        try:
            await asyncio.wait_for(self._large_bodies.acquire(), LARGE_BODY_WAIT_S)
        except TimeoutError:
            return await _json(503, PlatformError("MaaS.0503", reason="too many large requests at once on this "
                                                  "replica; try again").body())(scope, receive, send)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._large_bodies.release()

        async def send_then_release(message):
            if message["type"] == "http.response.start":
                release()
            await send(message)

        try:
            await self._read_then_call(scope, receive, send_then_release, length)
        finally:
            release()

    async def _read_then_call(self, scope, receive, send, length) -> None:
        if length is None and scope["method"] == "POST":
            # No Content-Length (chunked): read the body here, counting, and replay it to the app.
            receive = await buffered(receive, MAX_BODY_BYTES)
            if receive is None:
                return await _json(413, PlatformError("MaaS.0413", limit=MAX_BODY_BYTES).body())(scope, empty_body, send)
        await self.inner(scope, receive, send)


async def buffered(receive, limit: int):
    """The request body read here (counting, at most `limit` bytes) and replayed; None when it is larger."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            return None
        if not message.get("more_body"):
            break
    body, sent = b"".join(chunks), False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def empty_body():
    return {"type": "http.request", "body": b"", "more_body": False}
