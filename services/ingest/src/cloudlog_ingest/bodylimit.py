"""What a request body may cost, checked before anything parses it (ASGI middleware).

For the log endpoints (``protected``: ``POST /logs`` and ``POST /v1/logs``), in this order:

1. **Authentication, from the headers alone**: without a valid key, 401 before a byte of the
   body is read. An unauthenticated caller costs its headers and what the server reads ahead
   (uvicorn stops reading at 64 KiB), not its body; the connection is closed.
2. **Size**: a ``Content-Length`` over ``max_bytes`` is refused at once (413); a body without
   one (chunked) is read up to the limit and refused as soon as it passes it.
3. **Bytes in flight**: bodies being received or handled hold at most ``max_in_flight_bytes``
   in all, and one tenant at most half of it, so one tenant cannot take it all. A body that
   would pass the bound is refused, 503 (the service's bound) or 429 (the tenant's share),
   with ``Retry-After``: back-pressure, not growth. A declared length is reserved up front; a
   chunked body as it arrives. Released when the answer is sent.
4. **Time**: the whole body must arrive within ``timeout_seconds`` of the headers, or 408: a
   slow body cannot hold a connection and its memory for ever.

Every refusal here closes the connection (``Connection: close``), so the server does not go
on reading a body nobody will use. Other requests (health, metrics, documentation: none takes
a body) pass through untouched: their bodies are never read.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# The tenant's name for a request whose headers authenticate one, else None.
Authenticate = Callable[[Scope], str | None]

UNAUTHORIZED_DETAIL = "a valid API key is required: Authorization: Bearer <key>"


class InFlightBytes:
    """Bytes of request bodies held now, in all and per tenant, against their bounds."""

    def __init__(self, max_bytes: int, max_per_tenant: int) -> None:
        self.max_bytes = max_bytes
        self.max_per_tenant = max_per_tenant
        self.total = 0
        self._by_tenant: dict[str, int] = {}

    def reserve(self, tenant: str, size: int) -> int:
        """Reserve ``size`` bytes: 0 when done, else the status refusing them (503, 429)."""
        if self.total + size > self.max_bytes:
            return 503
        held = self._by_tenant.get(tenant, 0)
        if held + size > self.max_per_tenant:
            return 429
        self.total += size
        self._by_tenant[tenant] = held + size
        return 0

    def release(self, tenant: str, size: int) -> None:
        if not size:
            return
        self.total -= size
        left = self._by_tenant[tenant] - size
        if left:
            self._by_tenant[tenant] = left
        else:
            del self._by_tenant[tenant]


class BodySizeLimit:
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        *,
        timeout_seconds: float = 30.0,
        max_in_flight_bytes: int | None = None,
        authenticate: Authenticate | None = None,
        protected: frozenset[str] = frozenset(),
        retry_after_seconds: int = 1,
    ) -> None:
        """``authenticate`` and ``protected``: the paths whose POSTs need a key, and how to
        find the tenant from the request's headers. Without them every request's body is
        bounded (size, time, bytes in flight) but none is authenticated here."""
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds
        in_flight = max_in_flight_bytes or 4 * max_bytes
        self.in_flight = InFlightBytes(in_flight, max(in_flight // 2, min(max_bytes, in_flight)))
        self.authenticate = authenticate
        self.protected = protected
        self.retry_after = str(retry_after_seconds).encode()

    @staticmethod
    async def _answer(
        send: Send, status: int, detail: str, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _refuse_size(self, send: Send) -> None:
        await self._answer(send, 413, f"request body larger than {self.max_bytes} bytes")

    async def _refuse_in_flight(self, send: Send, status: int) -> None:
        detail = (
            "too many request bodies are being received; retry later"
            if status == 503
            else "too many of your request bodies are being received; retry later"
        )
        await self._answer(send, status, detail, ((b"retry-after", self.retry_after),))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tenant = ""
        if self.authenticate is not None:
            if scope.get("method") != "POST" or scope.get("path") not in self.protected:
                # Nothing else takes a body: it is never read, so it costs nothing.
                await self.app(scope, receive, send)
                return
            name = self.authenticate(scope)
            if name is None:
                await self._answer(
                    send, 401, UNAUTHORIZED_DETAIL, ((b"www-authenticate", b"Bearer"),)
                )
                return
            tenant = name
        declared: int | None = None
        for key, value in scope.get("headers") or []:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
                break
        if declared is not None and declared > self.max_bytes:
            await self._refuse_size(send)
            return
        reserved = 0
        try:
            if declared:
                if refused := self.in_flight.reserve(tenant, declared):
                    await self._refuse_in_flight(send, refused)
                    return
                reserved = declared
            chunks: list[bytes] = []
            size = 0
            try:
                async with asyncio.timeout(self.timeout_seconds):
                    while True:
                        message = await receive()
                        if message["type"] != "http.request":
                            return  # the client went away: nobody to answer
                        chunk = message.get("body", b"")
                        size += len(chunk)
                        if size > self.max_bytes:
                            await self._refuse_size(send)
                            return
                        if size > reserved:
                            if refused := self.in_flight.reserve(tenant, size - reserved):
                                await self._refuse_in_flight(send, refused)
                                return
                            reserved = size
                        if chunk:
                            chunks.append(chunk)
                        if not message.get("more_body", False):
                            break
            except TimeoutError:
                await self._answer(
                    send,
                    408,
                    f"the request body did not arrive within {self.timeout_seconds:g} seconds",
                )
                return
            body = b"".join(chunks)
            del chunks
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
        finally:
            self.in_flight.release(tenant, reserved)
