"""A fault-injecting HTTP reverse proxy in front of a local AWS endpoint (moto server, LocalStack).

Tests and benchmarks point their boto3 clients at the proxy instead of at the emulator. The proxy
forwards every request unchanged and relays the response, and on the way it:

* counts requests per AWS action (``"logs.PutLogEvents"``, ``"sqs.ReceiveMessage"``, ...), for the
  JSON protocol (``X-Amz-Target``) and the older query protocol (``Action=...``);
* checks every PutLogEvents body against the documented CloudWatch Logs limits that moto does not
  enforce (batch bytes, event count, event size, order, 24 h span, names) and records violations,
  optionally rejecting them with ``400 InvalidParameterException`` as AWS does;
* injects faults for real, at the network, per action pattern, changeable at runtime: throttling
  (``ThrottlingException``), server errors (``ServiceUnavailableException``), stalls (delayed or
  never answered), and a whole-endpoint outage (``down()``: connection refused, ``up()``: back);
* optionally demands CloudWatch Logs sequence tokens like AWS did before 2023
  (``InvalidSequenceTokenException`` with ``expectedSequenceToken``,
  ``DataAlreadyAcceptedException``).

Only the standard library is used, so the module imports fast and runs anywhere. The proxy keeps
the client's ``Host`` header and never re-signs, so it is meant for endpoints that do not verify
SigV4 signatures (moto, LocalStack), not for real AWS.

In a pytest fixture (moto started elsewhere, e.g. a session fixture yielding its URL)::

    @pytest.fixture
    def aws_proxy(moto_url: str) -> Iterator[AwsProxy]:
        with AwsProxy(moto_url, seed=1) as proxy:
            yield proxy

    def test_writer_survives_throttling(aws_proxy: AwsProxy) -> None:
        aws_proxy.throttle("logs.PutLogEvents", 0.3)
        ...  # point boto3 at aws_proxy.url
        assert aws_proxy.violations() == []

Run it by hand::

    python -m cloudlog_devtools.awsproxy --upstream http://127.0.0.1:4566 --port 4567 --throttle 0.3

Memory is bounded: request bodies are not kept, only counters, at most ``max_violations`` recent
violation strings (plus a total), and per-stream sequence-token state for at most
``max_tracked_streams`` streams (oldest forgotten first).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import random
import re
import select
import signal
import socket
import socketserver
import sys
import threading
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, Literal, cast
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "EVENT_OVERHEAD_BYTES",
    "LEGACY_MAX_EVENT_BYTES",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_EVENTS",
    "MAX_BATCH_SPAN_MS",
    "MAX_EVENT_BYTES",
    "AwsProxy",
    "FaultKind",
    "FaultRule",
    "main",
    "validate_put_log_events",
]

LOG = logging.getLogger(__name__)

# --- CloudWatch Logs PutLogEvents limits (see /work/shared/ARCHITECTURE.md) -------------------
MAX_BATCH_BYTES = 1_048_576
MAX_BATCH_EVENTS = 10_000
EVENT_OVERHEAD_BYTES = 26
MAX_EVENT_BYTES = 1_048_576  # per event, including the 26-byte overhead (since April 2025)
LEGACY_MAX_EVENT_BYTES = 262_144  # endpoints that still hold the old 256 KB limit
MAX_BATCH_SPAN_MS = 24 * 60 * 60 * 1000
MAX_NAME_CHARS = 512
_GROUP_NAME_RE = re.compile(r"[\.\-_/#A-Za-z0-9]+")

PUT_LOG_EVENTS = "logs.PutLogEvents"
_DESCRIBE_LOG_STREAMS = "logs.DescribeLogStreams"
_CREATE_LOG_STREAM = "logs.CreateLogStream"
_DELETE_LOG_STREAM = "logs.DeleteLogStream"
_DELETE_LOG_GROUP = "logs.DeleteLogGroup"
_TOKEN_ACTIONS = frozenset(
    {_DESCRIBE_LOG_STREAMS, _CREATE_LOG_STREAM, _DELETE_LOG_STREAM, _DELETE_LOG_GROUP}
)

# X-Amz-Target prefixes -> service name used in counts() keys.
_TARGET_PREFIXES = {"Logs_20140328": "logs", "AmazonSQS": "sqs"}
# Query-protocol API versions -> service, used when the request carries no SigV4 scope.
_QUERY_VERSIONS = {"2012-11-05": "sqs"}
_SCOPE_RE = re.compile(r"Credential=[^/,\s]+/\d{8}/[^/,\s]+/([^/,\s]+)/aws4_request")

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Request headers not forwarded (besides hop-by-hop): the proxy sets its own Content-Length and
# answers "Expect: 100-continue" itself.
_DROP_REQUEST_HEADERS = _HOP_BY_HOP | {"content-length", "expect"}
# Response headers not relayed: the proxy recomputes the length (it may rewrite bodies).
_DROP_RESPONSE_HEADERS = _HOP_BY_HOP | {"content-length", "x-amz-crc32"}

MAX_REQUEST_BODY_BYTES = 64 * 1024 * 1024
_MAX_ACTION_KEYS = 1_000  # distinct counts() keys; further unknown actions count as "other"
_POLL_S = 0.05

FaultKind = Literal["throttle", "error", "stall"]
_INJECTED_KINDS = (
    "throttle",
    "error",
    "stall",
    "invalid_sequence_token",
    "data_already_accepted",
    "rejected_invalid",
    "upstream_error",
    "dropped_connections",
)


# --- PutLogEvents validation -----------------------------------------------------------------


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_put_log_events(
    payload: object, *, max_event_bytes: int = MAX_EVENT_BYTES
) -> list[str]:
    """Every documented PutLogEvents limit this request body (parsed JSON) breaks.

    Each string starts with a kind and a colon: ``malformed``, ``bad_group_name``,
    ``bad_stream_name``, ``empty_batch``, ``too_many_events``, ``batch_too_large``,
    ``event_too_large``, ``empty_message``, ``unordered``, ``span_too_long``. An empty list means
    the batch is within every limit. Per-event problems are reported once per kind per batch.
    The span is measured as newest minus oldest timestamp (last minus first when ordered).
    """
    if not isinstance(payload, dict):
        return ["malformed: request body is not a JSON object"]
    out: list[str] = []
    group = payload.get("logGroupName")
    stream = payload.get("logStreamName")
    where = f" (group={_short(group)}, stream={_short(stream)})"

    if not isinstance(group, str):
        out.append(f"bad_group_name: logGroupName missing or not a string{where}")
    else:
        if not 1 <= len(group) <= MAX_NAME_CHARS:
            out.append(f"bad_group_name: length {len(group)} not in 1-{MAX_NAME_CHARS}{where}")
        elif not _GROUP_NAME_RE.fullmatch(group):
            out.append(f"bad_group_name: characters outside [.-_/#A-Za-z0-9]{where}")
        if group.startswith("aws/"):
            out.append(f"bad_group_name: starts with 'aws/'{where}")
    if not isinstance(stream, str):
        out.append(f"bad_stream_name: logStreamName missing or not a string{where}")
    else:
        if not 1 <= len(stream) <= MAX_NAME_CHARS:
            out.append(f"bad_stream_name: length {len(stream)} not in 1-{MAX_NAME_CHARS}{where}")
        if ":" in stream or "*" in stream:
            out.append(f"bad_stream_name: contains ':' or '*'{where}")

    events = payload.get("logEvents")
    if not isinstance(events, list):
        out.append(f"malformed: logEvents missing or not a list{where}")
        return out
    if not events:
        out.append(f"empty_batch: logEvents is empty{where}")
        return out
    if len(events) > MAX_BATCH_EVENTS:
        out.append(f"too_many_events: {len(events)} events > {MAX_BATCH_EVENTS}{where}")

    total_bytes = 0
    malformed = empty = too_big = unordered = 0
    first_malformed = first_empty = first_too_big = first_unordered = -1
    biggest = 0
    prev_ts: float | None = None
    oldest: float | None = None
    newest: float | None = None
    for index, event in enumerate(events):
        message = event.get("message") if isinstance(event, dict) else None
        ts = event.get("timestamp") if isinstance(event, dict) else None
        if not isinstance(message, str) or isinstance(ts, bool) or not isinstance(ts, int | float):
            malformed += 1
            if first_malformed < 0:
                first_malformed = index
            continue
        size = len(message.encode("utf-8", "surrogatepass")) + EVENT_OVERHEAD_BYTES
        total_bytes += size
        if not message:
            empty += 1
            if first_empty < 0:
                first_empty = index
        if size > max_event_bytes:
            too_big += 1
            biggest = max(biggest, size)
            if first_too_big < 0:
                first_too_big = index
        if prev_ts is not None and ts < prev_ts:
            unordered += 1
            if first_unordered < 0:
                first_unordered = index
        prev_ts = ts
        oldest = ts if oldest is None else min(oldest, ts)
        newest = ts if newest is None else max(newest, ts)

    if malformed:
        out.append(
            f"malformed: {malformed} event(s) without a string message and a numeric timestamp "
            f"(first at index {first_malformed}){where}"
        )
    if total_bytes > MAX_BATCH_BYTES:
        out.append(
            f"batch_too_large: {total_bytes} bytes (messages + {EVENT_OVERHEAD_BYTES} per event) "
            f"> {MAX_BATCH_BYTES}{where}"
        )
    if too_big:
        out.append(
            f"event_too_large: {too_big} event(s) over {max_event_bytes} bytes incl. overhead, "
            f"largest {biggest} (first at index {first_too_big}){where}"
        )
    if empty:
        out.append(f"empty_message: {empty} event(s) (first at index {first_empty}){where}")
    if unordered:
        out.append(
            f"unordered: {unordered} timestamp(s) earlier than the one before "
            f"(first at index {first_unordered}){where}"
        )
    if oldest is not None and newest is not None and newest - oldest > MAX_BATCH_SPAN_MS:
        out.append(
            f"span_too_long: {int(newest - oldest)} ms between oldest and newest event "
            f"> {MAX_BATCH_SPAN_MS}{where}"
        )
    return out


# --- fault rules ---------------------------------------------------------------------------------


@dataclass(eq=False)
class FaultRule:
    """One fault: which requests it hits (``action`` is an fnmatch pattern over counts() keys,
    e.g. ``"logs.PutLogEvents"``, ``"sqs.*"``, ``"*"``), how many and how often, and what happens.

    ``first``: the rule considers only the first K matching requests (counted from when it was
    added), then is spent. ``fraction``: each considered request is hit with this probability,
    drawn from the proxy's seeded generator (1.0 = every one, no draw). ``stall_s``: for a stall,
    hold the request that long and then forward it (even if the client gave up meanwhile, like a
    slow server); ``None`` holds it without ever answering, until the client disconnects.

    ``seen`` and ``fired`` are maintained by the proxy (read them, do not write them).
    """

    kind: FaultKind
    action: str = "*"
    fraction: float = 1.0
    first: int | None = None
    status: int = 400
    code: str = "ThrottlingException"
    message: str = "Rate exceeded"
    stall_s: float | None = None
    seen: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.kind not in ("throttle", "error", "stall"):
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fraction must be within [0, 1], got {self.fraction}")
        if self.first is not None and self.first < 0:
            raise ValueError(f"first must be >= 0, got {self.first}")
        if self.stall_s is not None and self.stall_s < 0:
            raise ValueError(f"stall_s must be >= 0, got {self.stall_s}")

    @property
    def spent(self) -> bool:
        return self.first is not None and self.seen >= self.first


# --- sequence tokens -----------------------------------------------------------------------------


@dataclass
class _StreamTokens:
    expected: str | None = None  # None: a fresh stream, the first put must carry no token
    previous: str | None = None  # the token accepted last (for DataAlreadyAcceptedException)


@dataclass
class _TokenClaim:
    key: tuple[str, str]
    given: str | None
    previous_before: str | None
    next_token: str


@dataclass
class _Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    reason: str | None = None


def _json_error(status: int, code: str, message: str, content_type: str, **extra: Any) -> _Reply:
    body: dict[str, Any] = {"__type": code, "message": message}
    body.update({k: v for k, v in extra.items() if v is not None})
    headers = [
        ("Content-Type", content_type),
        ("x-amzn-ErrorType", code),
        ("x-amzn-RequestId", str(uuid.uuid4())),
    ]
    return _Reply(status, headers, json.dumps(body).encode())


def _xml_error(status: int, code: str, message: str) -> _Reply:
    """An error in the query protocol's XML shape (older SQS clients)."""
    request_id = str(uuid.uuid4())
    kind = "Receiver" if status >= 500 else "Sender"
    text = (
        f'<?xml version="1.0"?><ErrorResponse><Error><Type>{kind}</Type><Code>{code}</Code>'
        f"<Message>{_xml_escape(message)}</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    )
    headers = [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)]
    return _Reply(status, headers, text.encode())


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --- upstream connections ------------------------------------------------------------------------


class _UpstreamPool:
    """Keep-alive connections to the upstream, reused LIFO, at most ``max_idle`` kept idle."""

    def __init__(self, url: str, timeout: float, max_idle: int = 64) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream must be an http(s) URL, got {url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        self.host_header = parts.netloc
        self.timeout = timeout
        self._max_idle = max_idle
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connect(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _acquire(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._connect(), False

    def _release(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def request(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> _Reply:
        """One request upstream. A pooled connection the server closed meanwhile is retried once
        on a fresh one (as urllib3 does); every other failure propagates."""
        path = self.base_path + target
        for attempt in (0, 1):
            conn, reused = self._acquire()
            try:
                conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    conn.putheader(name, value)
                conn.endheaders(body if body else None)
                resp = conn.getresponse()
                data = resp.read()
            except (ConnectionResetError, BrokenPipeError, http.client.BadStatusLine):
                conn.close()
                if reused and attempt == 0:
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            if resp.will_close:
                conn.close()
            else:
                self._release(conn)
            return _Reply(resp.status, list(resp.getheaders()), data, resp.reason)
        raise AssertionError("unreachable")  # pragma: no cover


# --- the HTTP side ---------------------------------------------------------------------------


class _BadRequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], proxy: AwsProxy) -> None:
        self.proxy = proxy
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup: skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        LOG.debug("awsproxy: error serving %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120  # an idle keep-alive client connection is closed after this many seconds

    @property
    def proxy(self) -> AwsProxy:
        return cast(_Server, self.server).proxy

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle's algorithm and the
        # client's delayed ACK add about 40 ms to every response.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.proxy._register_client(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.proxy._unregister_client(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("awsproxy: " + format, *args)

    def _handle(self) -> None:
        try:
            body = self._read_body()
        except _BadRequestError as exc:
            self.close_connection = True
            self._send(_Reply(exc.status, [("Content-Type", "text/plain")], str(exc).encode()))
            return
        except (OSError, ValueError):
            self.close_connection = True
            return
        try:
            reply = self.proxy._process(self, body)
        except Exception:
            LOG.exception("awsproxy: failed to process %s %s", self.command, self.path)
            self.close_connection = True
            reply = _json_error(
                500, "InternalFailure", "awsproxy failed", "application/x-amz-json-1.1"
            )
        if reply is None:  # dropped without an answer
            self.close_connection = True
            return
        self._send(reply)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _handle

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            size = 0
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise _BadRequestError(400, "truncated chunked body")
                length = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if length == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                size += length
                if size > MAX_REQUEST_BODY_BYTES:
                    raise _BadRequestError(413, "request body too large")
                chunks.append(self.rfile.read(length))
                self.rfile.readline(1024)
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        length = int(raw)
        if length < 0:
            raise _BadRequestError(400, "negative Content-Length")
        if length > MAX_REQUEST_BODY_BYTES:
            raise _BadRequestError(413, "request body too large")
        body = self.rfile.read(length)
        if len(body) != length:
            raise _BadRequestError(400, "truncated body")
        return body

    def _send(self, reply: _Reply) -> None:
        try:
            head = self.command == "HEAD"
            no_body = head or reply.status in (204, 304) or reply.status < 200
            self.send_response_only(reply.status, reply.reason)
            for name, value in reply.headers:
                lower = name.lower()
                if lower not in _DROP_RESPONSE_HEADERS or (head and lower == "content-length"):
                    self.send_header(name, value)
            if not no_body:
                self.send_header("Content-Length", str(len(reply.body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if not no_body and reply.body:
                self.wfile.write(reply.body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def client_gone(self) -> bool:
        """True when the client has closed (or reset) its side of the connection."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return not self.connection.recv(1, socket.MSG_PEEK)
        except (OSError, ValueError):
            return True


# --- the proxy -----------------------------------------------------------------------------------


class AwsProxy:
    """Threaded reverse proxy with request accounting, PutLogEvents checks and fault injection.

    Use as a context manager (``with AwsProxy(upstream) as proxy:``) or ``start()`` / ``stop()``.
    Every public method is thread-safe and may be called while traffic flows.
    """

    def __init__(
        self,
        upstream: str,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        strict: bool = True,
        reject_violations: bool = False,
        max_event_bytes: int = MAX_EVENT_BYTES,
        seed: int | None = None,
        upstream_timeout: float = 30.0,
        max_violations: int = 1_000,
        max_tracked_streams: int = 100_000,
    ) -> None:
        if upstream_timeout <= 0:
            raise ValueError("upstream_timeout must be > 0")
        self.upstream = upstream.rstrip("/")
        self._pool = _UpstreamPool(self.upstream, upstream_timeout)
        self.host = host
        self._port = port
        self._lock = threading.Lock()
        self._state_lock = threading.Lock()  # start/stop/down/up
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._started = False
        self._down = False
        self._stopping = threading.Event()
        self._clients: set[socket.socket] = set()

        self._strict = strict
        self._reject = reject_violations
        self._max_event_bytes = max_event_bytes
        self._rng = random.Random(seed)
        self._rules: list[FaultRule] = []
        self._counts: Counter[str] = Counter()
        self._injected: Counter[str] = Counter()
        self._violations: deque[str] = deque(maxlen=max_violations)
        self._violation_total = 0
        self._violation_kinds: Counter[str] = Counter()
        self._max_tracked_streams = max_tracked_streams
        self._token_usage: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._seq_tokens = False
        self._data_already_accepted = False
        self._tokens: OrderedDict[tuple[str, str], _StreamTokens] = OrderedDict()
        self._token_counter = 0

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port once started (the requested one, possibly 0, before)."""
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}"

    @property
    def is_down(self) -> bool:
        return self._down

    def start(self) -> AwsProxy:
        with self._state_lock:
            if self._started:
                return self
            self._stopping.clear()
            self._listen()
            self._started = True
            self._down = False
        return self

    def stop(self) -> None:
        """Close the listening socket and every client connection; idempotent."""
        with self._state_lock:
            self._stopping.set()
            self._close_listener()
            self._started = False
            self._down = False
        self._drop_clients()
        self._pool.close()

    def __enter__(self) -> AwsProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def down(self) -> None:
        """Refuse connections: close the listening socket and drop every open client connection,
        so clients see connection refused (botocore: ``EndpointConnectionError``)."""
        with self._state_lock:
            if not self._started or self._down:
                return
            self._close_listener()
            self._down = True
        dropped = self._drop_clients()
        with self._lock:
            self._injected["dropped_connections"] += dropped

    def up(self) -> None:
        """Listen again on the same port after ``down()``."""
        with self._state_lock:
            if not self._started or not self._down:
                return
            self._listen()
            self._down = False

    def _listen(self) -> None:
        server = _Server((self.host, self._port), self)
        self._port = int(server.server_address[1])
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL_S},
            name=f"awsproxy-{self._port}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()

    def _close_listener(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def _register_client(self, sock: socket.socket) -> None:
        with self._lock:
            self._clients.add(sock)

    def _unregister_client(self, sock: socket.socket) -> None:
        with self._lock:
            self._clients.discard(sock)

    def _drop_clients(self) -> int:
        with self._lock:
            clients = list(self._clients)
        for sock in clients:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return len(clients)

    # -- accounting -----------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Requests seen per action, e.g. ``{"logs.PutLogEvents": 12}`` (non-AWS: ``"other"``)."""
        with self._lock:
            return dict(self._counts)

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()

    def injected(self) -> dict[str, int]:
        """Faults injected so far, per kind (every kind present, zero if none)."""
        with self._lock:
            return {kind: self._injected[kind] for kind in _INJECTED_KINDS}

    def reset_injected(self) -> None:
        with self._lock:
            self._injected.clear()

    def violations(self) -> list[str]:
        """The most recent PutLogEvents violations (at most ``max_violations``), oldest first."""
        with self._lock:
            return list(self._violations)

    def violation_count(self) -> int:
        """All violations recorded since the last ``clear_violations()``, kept or not."""
        with self._lock:
            return self._violation_total

    def violation_kinds(self) -> dict[str, int]:
        """Violations per kind (the prefix of each string, e.g. ``"batch_too_large"``)."""
        with self._lock:
            return dict(self._violation_kinds)

    def clear_violations(self) -> None:
        with self._lock:
            self._violations.clear()
            self._violation_total = 0
            self._violation_kinds.clear()

    def sequence_token_usage(self) -> dict[tuple[str, str], int]:
        """PutLogEvents requests that carried a ``sequenceToken``, per (group, stream)."""
        with self._lock:
            return dict(self._token_usage)

    # -- configuration --------------------------------------------------------------------------

    def set_strict(self, enabled: bool) -> None:
        with self._lock:
            self._strict = enabled

    def set_reject_violations(self, enabled: bool) -> None:
        with self._lock:
            self._reject = enabled

    def set_max_event_bytes(self, max_event_bytes: int) -> None:
        with self._lock:
            self._max_event_bytes = max_event_bytes

    def seed(self, seed: int | None) -> None:
        """Re-seed the generator behind every ``fraction`` draw."""
        with self._lock:
            self._rng.seed(seed)

    def add_rule(self, rule: FaultRule) -> FaultRule:
        """Rules are tried in the order added; the first that fires decides the request."""
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove_rule(self, rule: FaultRule) -> None:
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def throttle(
        self,
        action: str,
        fraction: float = 1.0,
        *,
        first: int | None = None,
        code: str = "ThrottlingException",
        message: str = "Rate exceeded",
    ) -> FaultRule:
        """Answer matching requests 400 ``ThrottlingException`` (as AWS does)."""
        return self.add_rule(FaultRule("throttle", action, fraction, first, 400, code, message))

    def fail(
        self,
        action: str,
        fraction: float = 1.0,
        *,
        status: int = 503,
        first: int | None = None,
        code: str = "ServiceUnavailableException",
        message: str = "The service is unavailable. Please try again later.",
    ) -> FaultRule:
        """Answer matching requests with a server error (default 503 ServiceUnavailable)."""
        return self.add_rule(FaultRule("error", action, fraction, first, status, code, message))

    def stall(
        self,
        action: str,
        fraction: float = 1.0,
        *,
        seconds: float | None = None,
        first: int | None = None,
    ) -> FaultRule:
        """Hold matching requests ``seconds`` before forwarding; ``None``: never answer."""
        return self.add_rule(FaultRule("stall", action, fraction, first, stall_s=seconds))

    def set_sequence_tokens(self, enabled: bool, *, data_already_accepted: bool = False) -> None:
        """Demand CloudWatch Logs sequence tokens as AWS did before 2023.

        Per (group, stream) the proxy expects the token it handed out last (none for a stream it
        has not seen accepted yet). A put without the right token gets 400
        ``InvalidSequenceTokenException`` with ``expectedSequenceToken``; a right one is forwarded
        and answered with a fresh ``nextSequenceToken``. With ``data_already_accepted``, replaying
        the token accepted last answers ``DataAlreadyAcceptedException`` instead.
        ``DescribeLogStreams`` answers show ``uploadSequenceToken`` for streams with a token.
        """
        with self._lock:
            self._seq_tokens = enabled
            self._data_already_accepted = data_already_accepted

    def sequence_token(self, group: str, stream: str) -> str | None:
        """The token the proxy expects next for this stream (``None``: no token expected)."""
        with self._lock:
            state = self._tokens.get((group, stream))
            return state.expected if state else None

    def reset_sequence_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    # -- request processing -----------------------------------------------------------------

    def _process(self, handler: _Handler, body: bytes) -> _Reply | None:
        headers = handler.headers
        action = _classify(handler.command, handler.path, headers, body)
        json_type = headers.get("Content-Type", "")
        query_protocol = not headers.get("X-Amz-Target") and action not in ("other",)
        if not json_type.startswith("application/x-amz-json"):
            json_type = "application/x-amz-json-1.1"

        with self._lock:
            if action not in self._counts and len(self._counts) >= _MAX_ACTION_KEYS:
                action_key = "other"
            else:
                action_key = action
            self._counts[action_key] += 1
            strict, reject, max_event_bytes = self._strict, self._reject, self._max_event_bytes
            seq_tokens = self._seq_tokens

        payload: Any = None
        if action == PUT_LOG_EVENTS or (seq_tokens and action in _TOKEN_ACTIONS):
            try:
                payload = json.loads(body) if body else None
            except ValueError:
                payload = None

        problems: list[str] = []
        if action == PUT_LOG_EVENTS:
            if strict:
                problems = validate_put_log_events(payload, max_event_bytes=max_event_bytes)
            self._record_put(payload, problems)

        rule = self._decide(action)
        if rule is not None:
            if rule.kind == "stall":
                if not self._hold(handler, rule.stall_s):
                    return None
            elif query_protocol:
                return _xml_error(rule.status, rule.code, rule.message)
            else:
                return _json_error(rule.status, rule.code, rule.message, json_type)

        if problems and reject:
            with self._lock:
                self._injected["rejected_invalid"] += 1
            return _json_error(
                400, "InvalidParameterException", "; ".join(problems)[:2000], json_type
            )

        claim: _TokenClaim | None = None
        if seq_tokens and action == PUT_LOG_EVENTS and isinstance(payload, dict):
            decision = self._claim_token(payload, json_type)
            if isinstance(decision, _Reply):
                return decision
            claim = decision

        forward_headers = [
            (name, value)
            for name, value in headers.items()
            if name.lower() not in _DROP_REQUEST_HEADERS
        ]
        if "host" not in (name.lower() for name, _ in forward_headers):
            forward_headers.append(("Host", self._pool.host_header))
        if body or handler.command in ("POST", "PUT", "PATCH"):
            forward_headers.append(("Content-Length", str(len(body))))
        try:
            reply = self._pool.request(handler.command, handler.path, forward_headers, body)
        except TimeoutError as exc:
            self._upstream_failed(claim, exc)
            return _Reply(504, [("Content-Type", "text/plain")], b"", "Gateway Timeout")
        except (OSError, http.client.HTTPException) as exc:
            self._upstream_failed(claim, exc)
            return _Reply(502, [("Content-Type", "text/plain")], b"", "Bad Gateway")

        if seq_tokens or claim is not None:
            self._after_token_action(action, payload, reply, claim)
        return reply

    def _decide(self, action: str) -> FaultRule | None:
        with self._lock:
            for rule in self._rules:
                if rule.spent or not fnmatchcase(action, rule.action):
                    continue
                rule.seen += 1
                if rule.fraction >= 1.0 or self._rng.random() < rule.fraction:
                    rule.fired += 1
                    self._injected[rule.kind] += 1
                    return rule
        return None

    def _hold(self, handler: _Handler, seconds: float | None) -> bool:
        """Stall a request. True: go on and forward it; False: drop it unanswered."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while True:
            if self._stopping.is_set():
                return False
            if deadline is None:
                if handler.client_gone():
                    return False
                self._stopping.wait(_POLL_S)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            self._stopping.wait(min(left, _POLL_S))

    def _record_put(self, payload: Any, problems: list[str]) -> None:
        with self._lock:
            for problem in problems:
                self._violations.append(problem)
                self._violation_total += 1
                self._violation_kinds[problem.split(":", 1)[0]] += 1
            if isinstance(payload, dict) and payload.get("sequenceToken") is not None:
                key = (str(payload.get("logGroupName")), str(payload.get("logStreamName")))
                self._token_usage[key] = self._token_usage.get(key, 0) + 1
                self._token_usage.move_to_end(key)
                while len(self._token_usage) > self._max_tracked_streams:
                    self._token_usage.popitem(last=False)

    def _new_token(self) -> str:
        self._token_counter += 1
        return f"4959{self._token_counter:052d}"

    def _claim_token(self, payload: dict[str, Any], json_type: str) -> _TokenClaim | _Reply:
        key = (str(payload.get("logGroupName")), str(payload.get("logStreamName")))
        given = payload.get("sequenceToken")
        given = None if given is None else str(given)
        with self._lock:
            state = self._tokens.get(key)
            if state is None:
                state = self._tokens[key] = _StreamTokens()
                while len(self._tokens) > self._max_tracked_streams:
                    self._tokens.popitem(last=False)
            self._tokens.move_to_end(key)
            if given == state.expected:
                claim = _TokenClaim(key, given, state.previous, self._new_token())
                state.previous, state.expected = given, claim.next_token
                return claim
            expected = state.expected
            if self._data_already_accepted and given is not None and given == state.previous:
                self._injected["data_already_accepted"] += 1
                return _json_error(
                    400,
                    "DataAlreadyAcceptedException",
                    "The given batch of log events has already been accepted. "
                    f"The next batch can be sent with sequenceToken: {expected}",
                    json_type,
                    expectedSequenceToken=expected,
                )
            self._injected["invalid_sequence_token"] += 1
        shown = "null" if expected is None else expected
        return _json_error(
            400,
            "InvalidSequenceTokenException",
            f"The given sequenceToken is invalid. The next expected sequenceToken is: {shown}",
            json_type,
            expectedSequenceToken=expected,
        )

    def _release_claim(self, claim: _TokenClaim) -> None:
        with self._lock:
            state = self._tokens.get(claim.key)
            if state is not None and state.expected == claim.next_token:
                state.expected, state.previous = claim.given, claim.previous_before

    def _upstream_failed(self, claim: _TokenClaim | None, exc: BaseException) -> None:
        LOG.warning("awsproxy: upstream %s failed: %r", self.upstream, exc)
        with self._lock:
            self._injected["upstream_error"] += 1
        if claim is not None:
            self._release_claim(claim)

    def _after_token_action(
        self, action: str, payload: Any, reply: _Reply, claim: _TokenClaim | None
    ) -> None:
        ok = 200 <= reply.status < 300
        if claim is not None:
            if not ok:
                self._release_claim(claim)
                return
            next_token = claim.next_token

            def add_next(doc: dict[str, Any]) -> None:
                doc["nextSequenceToken"] = next_token

            _rewrite_json(reply, add_next)
            return
        if not ok or not isinstance(payload, dict):
            return
        group = _group_of(payload)
        if action in (_CREATE_LOG_STREAM, _DELETE_LOG_STREAM):
            with self._lock:
                self._tokens.pop((group, str(payload.get("logStreamName"))), None)
        elif action == _DELETE_LOG_GROUP:
            with self._lock:
                for key in [k for k in self._tokens if k[0] == group]:
                    del self._tokens[key]
        elif action == _DESCRIBE_LOG_STREAMS:

            def add_tokens(doc: dict[str, Any]) -> None:
                for item in doc.get("logStreams") or ():
                    if isinstance(item, dict):
                        token = self.sequence_token(group, str(item.get("logStreamName")))
                        if token is not None:
                            item["uploadSequenceToken"] = token

            _rewrite_json(reply, add_tokens)


def _group_of(payload: dict[str, Any]) -> str:
    name = payload.get("logGroupName")
    if name is None:
        ident = str(payload.get("logGroupIdentifier", ""))
        # "arn:aws:logs:REGION:ACCOUNT:log-group:NAME" or a plain name
        name = ident.split(":log-group:", 1)[1] if ":log-group:" in ident else ident
    return str(name)


def _rewrite_json(reply: _Reply, change: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``change`` to the reply's JSON object body in place (not if encoded or not JSON)."""
    if any(name.lower() == "content-encoding" for name, _ in reply.headers):
        return
    try:
        doc = json.loads(reply.body) if reply.body.strip() else {}
    except ValueError:
        return
    if not isinstance(doc, dict):
        return
    change(doc)
    reply.body = json.dumps(doc).encode()


def _classify(method: str, path: str, headers: Any, body: bytes) -> str:
    """The counts() key of a request: ``"<service>.<Action>"``, or ``"other"``."""
    scope = _SCOPE_RE.search(headers.get("Authorization", "") or "")
    scope_service = scope.group(1) if scope else None
    target = headers.get("X-Amz-Target")
    if target:
        prefix, _, operation = str(target).rpartition(".")
        service = _TARGET_PREFIXES.get(prefix) or scope_service or prefix.lower() or "unknown"
        return f"{service}.{operation}"
    params = parse_qs(urlsplit(path).query)
    if "Action" not in params and body:
        content_type = headers.get("Content-Type", "") or ""
        if content_type.startswith("application/x-www-form-urlencoded"):
            params = parse_qs(body.decode("utf-8", "replace"))
    actions = params.get("Action")
    if actions:
        version = (params.get("Version") or [""])[0]
        service = scope_service or _QUERY_VERSIONS.get(version) or "unknown"
        return f"{service}.{actions[0]}"
    return "other"


# --- command line --------------------------------------------------------------------------------


def _parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cloudlog_devtools.awsproxy",
        description="Fault-injecting proxy in front of a local AWS endpoint (moto, LocalStack).",
    )
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:4566")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4567, help="0 picks a free port")
    parser.add_argument(
        "--action", default=PUT_LOG_EVENTS, help="fnmatch pattern the faults apply to"
    )
    parser.add_argument("--throttle", type=float, default=0.0, help="fraction throttled")
    parser.add_argument("--fail", type=float, default=0.0, help="fraction answered 5xx")
    parser.add_argument("--fail-status", type=int, default=503)
    parser.add_argument("--stall", type=float, default=0.0, help="fraction stalled")
    parser.add_argument(
        "--stall-seconds", type=float, default=None, help="default: never answer a stalled one"
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-strict", action="store_true", help="skip PutLogEvents checks")
    parser.add_argument("--reject-violations", action="store_true")
    parser.add_argument("--max-event-bytes", type=int, default=MAX_EVENT_BYTES)
    parser.add_argument("--sequence-tokens", action="store_true")
    parser.add_argument("--data-already-accepted", action="store_true")
    parser.add_argument("--upstream-timeout", type=float, default=30.0)
    return parser.parse_args(None if argv is None else list(argv))


def main(argv: Iterable[str] | None = None) -> int:
    args = _parse_args(argv)
    proxy = AwsProxy(
        args.upstream,
        args.port,
        host=args.host,
        strict=not args.no_strict,
        reject_violations=args.reject_violations,
        max_event_bytes=args.max_event_bytes,
        seed=args.seed,
        upstream_timeout=args.upstream_timeout,
    )
    if args.throttle > 0:
        proxy.throttle(args.action, args.throttle)
    if args.fail > 0:
        proxy.fail(args.action, args.fail, status=args.fail_status)
    if args.stall > 0:
        proxy.stall(args.action, args.stall, seconds=args.stall_seconds)
    if args.sequence_tokens:
        proxy.set_sequence_tokens(True, data_already_accepted=args.data_already_accepted)

    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    proxy.start()
    print(f"awsproxy listening on {proxy.url} -> {proxy.upstream}", flush=True)
    try:
        while not done.wait(0.2):
            pass
    finally:
        proxy.stop()
        report = {
            "counts": proxy.counts(),
            "total": proxy.total(),
            "injected": proxy.injected(),
            "violations": proxy.violation_count(),
            "violation_kinds": proxy.violation_kinds(),
        }
        print(json.dumps(report, indent=2, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
