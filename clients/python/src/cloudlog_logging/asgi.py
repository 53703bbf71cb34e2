"""``CloudLogMiddleware``: the request's id, path and method on every line logged while an ASGI
app (FastAPI, Starlette, any other) serves it. Pure ASGI: nothing of Starlette is imported.

    app = FastAPI()
    app.add_middleware(CloudLogMiddleware)      # Starlette's way
    app = CloudLogMiddleware(app)               # or wrap any ASGI app

Like the Flask extension: ``request_id`` is the caller's ``X-Request-ID``, else one made here;
``path`` and ``method`` are the request's. They are bound in the context (context.py) for the
request's duration, so lines logged by the app's tasks and threads started with the context
(``asyncio`` tasks, ``run_in_threadpool``) carry them too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cloudlog_logging.context import BOUND
from cloudlog_logging.events import REQUEST_ID_HEADER, request_ids

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_ID_HEADER_BYTES = REQUEST_ID_HEADER.lower().encode("latin-1")


def request_id_from(scope: Scope, header: bytes = REQUEST_ID_HEADER_BYTES) -> str:
    """The scope's ``X-Request-ID`` (ASGI header names are lower case), else a new id."""
    for name, value in scope.get("headers") or ():
        if name == header and value:
            return bytes(value).decode("latin-1")
    return request_ids.next()


class CloudLogMiddleware:
    """Binds ``request_id``, ``path`` and ``method`` for each HTTP or WebSocket request.

    ``response_header=True`` also sends the request id back as ``X-Request-ID``.
    """

    def __init__(self, app: ASGIApp, *, response_header: bool = False) -> None:
        self.app = app
        self.response_header = response_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        fields = {
            "request_id": request_id,
            "path": scope.get("path", ""),
            "method": scope.get("method", "GET" if scope["type"] == "http" else "WEBSOCKET"),
        }
        if self.response_header and scope["type"] == "http":
            send = _with_request_id(send, request_id)
        token = BOUND.set({**BOUND.get(), **fields})
        try:
            await self.app(scope, receive, send)
        finally:
            BOUND.reset(token)


def _with_request_id(send: Send, request_id: str) -> Send:
    value = request_id.encode("latin-1", "replace")

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [h for h in message.get("headers", ()) if h[0] != REQUEST_ID_HEADER_BYTES]
            message["headers"] = [*headers, (REQUEST_ID_HEADER_BYTES, value)]
        await send(message)

    return sending
