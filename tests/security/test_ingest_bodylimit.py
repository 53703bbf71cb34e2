"""The body guard (bodylimit.py) at the ASGI level: authentication before the body, bytes in
flight, time to receive (issue 14, item 7)."""

from __future__ import annotations

import asyncio
from typing import Any

from cloudlog_ingest.bodylimit import BodySizeLimit

Message = dict[str, Any]


def scope(key: str | None, length: int | None, path: str = "/v1/logs") -> dict[str, Any]:
    headers = [(b"content-type", b"application/json")]
    if key:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http", "method": "POST", "path": path, "headers": headers}


def authenticate(scope: Any) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization" and value.startswith(b"Bearer good-"):
            return value.decode().removeprefix("Bearer good-")
    return None


class App:
    """Reads the whole body, then waits for ``release`` before answering 200."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.release = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        self.bodies.append(message["body"])
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def call(
    guard: BodySizeLimit, request: dict[str, Any], body: list[bytes], *, stall: bool = False
) -> Message:
    """The response start message, and how many body chunks were received. ``stall``: the
    client says more is coming, and sends nothing."""
    chunks = list(body)
    received = 0
    answer: Message = {}

    async def receive() -> Message:
        nonlocal received
        if not chunks:
            await asyncio.sleep(3600)  # a stalled client
        received += 1
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks) or stall}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            answer.update(message)

    await guard(request, receive, send)
    return {**answer, "received": received}


def test_no_key_is_a_401_before_any_of_the_body_is_read() -> None:
    async def scenario() -> Message:
        guard = BodySizeLimit(App(), 1024 * 1024, authenticate=authenticate, protected={"/v1/logs"})
        return await call(guard, scope(None, 1000), [b"x" * 1000])

    answer = asyncio.run(scenario())
    assert answer["status"] == 401
    assert answer["received"] == 0
    assert (b"connection", b"close") in answer["headers"]
    assert (b"www-authenticate", b"Bearer") in answer["headers"]


def test_a_body_that_does_not_arrive_in_time_is_a_408() -> None:
    async def scenario() -> Message:
        guard = BodySizeLimit(
            App(),
            1024 * 1024,
            timeout_seconds=0.2,
            authenticate=authenticate,
            protected=frozenset({"/v1/logs"}),
        )
        return await call(guard, scope("good-a", 1000), [b"x" * 10], stall=True)

    answer = asyncio.run(scenario())
    assert answer["status"] == 408
    assert (b"connection", b"close") in answer["headers"]


def test_bytes_in_flight_are_bounded_in_all_and_per_tenant() -> None:
    async def scenario() -> tuple[list[int], int]:
        app = App()
        guard = BodySizeLimit(
            app,
            4000,
            max_in_flight_bytes=10_000,
            authenticate=authenticate,
            protected=frozenset({"/v1/logs"}),
            retry_after_seconds=3,
        )
        held = [
            asyncio.create_task(call(guard, scope(f"good-{tenant}", 4000), [b"x" * 4000]))
            for tenant in ("a", "b")
        ]
        await asyncio.sleep(0.05)  # both bodies read, held by the app
        refused_a = await call(guard, scope("good-a", 2000), [b"x" * 2000])  # a: 6000 > 5000
        refused_all = await call(guard, scope("good-c", 3000), [b"x" * 3000])  # 11000 > 10000
        chunked = await call(guard, scope("good-c", None), [b"x" * 1500] * 2)  # 11000 again
        assert refused_a["headers"][-1] == (b"retry-after", b"3")
        app.release.set()
        await asyncio.gather(*held)
        statuses = [refused_a["status"], refused_all["status"], chunked["status"]]
        return statuses, guard.in_flight.total

    statuses, left = asyncio.run(scenario())
    assert statuses == [429, 503, 503]
    assert left == 0


def test_other_paths_never_read_the_body() -> None:
    async def scenario() -> Message:
        app = App()
        app.release.set()
        guard = BodySizeLimit(app, 1024, authenticate=authenticate, protected={"/v1/logs"})
        request = scope(None, 10) | {"method": "GET", "path": "/healthz"}

        async def receive() -> Message:
            raise AssertionError("the body was read")

        answer: Message = {}

        async def send(message: Message) -> None:
            answer.update(message)

        async def no_body_app(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})

        guard.app = no_body_app
        await guard(request, receive, send)
        return answer

    assert asyncio.run(scenario())["status"] == 200
