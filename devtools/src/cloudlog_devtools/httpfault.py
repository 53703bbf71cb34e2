"""A loopback HTTP proxy in front of ingest that plays a misbehaving load balancer, for tests.

It forwards each request to ``upstream`` (ingest) and relays the answer, unless a fault is set:

- ``maintenance``: 200 with an HTML maintenance page (a load balancer in maintenance mode);
- ``status``: the given status with a short body (403 as if ingest refused the group, ...);
- ``bad_encoding``: 200 declaring ``Content-Encoding: gzip`` over bytes that are not gzip, so
  the client raises while decoding the body (``httpx.DecodingError``, not a transport error);
- ``cut``: 200 announcing more body than it sends, then the connection is closed mid-body
  (``httpx.RemoteProtocolError``).

``fault(kind, seconds)`` sets one, for a while or until ``clear()``. Every answer is counted by
what it was (``answered``). Until ``upstream`` is set, requests are answered 502, as a load
balancer without a healthy target does. Binds 127.0.0.1 only; stopped by ``close()``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Literal

import httpx

FaultKind = Literal["maintenance", "status", "bad_encoding", "cut"]
MAINTENANCE_PAGE = (
    b"<!DOCTYPE html><html><head><title>Down for maintenance</title></head>"
    b"<body><h1>We'll be back soon</h1><p>Scheduled maintenance.</p></body></html>"
)
# Hop-by-hop headers (RFC 9110, 7.6.1) and those the proxy sets itself.
SKIPPED_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "host",
    }
)


class HttpFaultProxy:
    def __init__(self, upstream: str | None = None) -> None:
        self.upstream = upstream
        self.answered: Counter[str] = Counter()  # "forwarded", "maintenance", "status_403", ...
        self._lock = threading.Lock()
        self._fault: FaultKind | None = None
        self._status = 503
        self._until: float | None = None
        self._client = httpx.Client(timeout=httpx.Timeout(120.0, connect=5.0))
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            def do_POST(self) -> None:
                proxy._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- control ------------------------------------------------------------------------------

    def fault(self, kind: FaultKind, seconds: float | None = None, *, status: int = 503) -> None:
        """Answer every request with ``kind`` for ``seconds`` (None: until ``clear``)."""
        with self._lock:
            self._fault, self._status = kind, status
            self._until = None if seconds is None else time.monotonic() + seconds

    def clear(self) -> None:
        with self._lock:
            self._fault, self._until = None, None

    def current(self) -> FaultKind | None:
        with self._lock:
            if self._until is not None and time.monotonic() >= self._until:
                self._fault, self._until = None, None
            return self._fault

    def start(self) -> HttpFaultProxy:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()

    def __enter__(self) -> HttpFaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- serving ------------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        fault = self.current()
        with self._lock:
            status = self._status
        if fault == "maintenance":
            self._count("maintenance")
            self._answer(handler, 200, MAINTENANCE_PAGE, "text/html; charset=utf-8")
        elif fault == "status":
            self._count(f"status_{status}")
            text = f"refused by the load balancer ({status})".encode()
            self._answer(handler, status, text, "text/plain")
        elif fault == "bad_encoding":
            self._count("bad_encoding")
            self._answer(
                handler, 200, b"this is not gzip", "application/json", {"Content-Encoding": "gzip"}
            )
        elif fault == "cut":
            self._count("cut")
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", "4096")
            handler.end_headers()
            handler.wfile.write(b'{"written": 1, "rejected": 0, "results": [')
            handler.wfile.flush()
            handler.close_connection = True
        else:
            self._forward(handler, body)

    def _count(self, what: str) -> None:
        with self._lock:
            self.answered[what] += 1

    def _forward(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        if self.upstream is None:
            self._count("no_upstream")
            self._answer(handler, 502, b"no upstream", "text/plain")
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in SKIPPED_HEADERS}
        try:
            answer = self._client.request(
                handler.command, self.upstream + handler.path, content=body, headers=headers
            )
        except httpx.HTTPError:
            self._count("upstream_unreachable")
            self._answer(handler, 502, b"upstream unreachable", "text/plain")
            return
        self._count("forwarded")
        extra = {
            k: v
            for k, v in answer.headers.items()
            if k.lower() not in SKIPPED_HEADERS | {"content-type", "content-encoding"}
        }
        content_type = answer.headers.get("content-type", "application/octet-stream")
        self._answer(handler, answer.status_code, answer.content, content_type, extra)

    @staticmethod
    def _answer(
        handler: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)
