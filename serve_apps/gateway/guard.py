"""The gateway's ASGI guard: no request to a /v1 route passes without a Bearer header and a body of at
most 8 MB (a chunked body is read here, counting, and replayed to the app). It also hashes the key once,
for the admission that follows."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from serve_apps.contract import bearer_token, hash_key
from serve_apps.errors import PlatformError

MAX_BODY_BYTES = 8 * 1024 * 1024
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
        scope.setdefault("state", {})["key_hash"] = hash_key(token)
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
