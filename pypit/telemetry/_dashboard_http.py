"""The dashboard's HTTP side: the page, its assets, the snapshot and the stream.

A standard-library threading server on a thread of its own. The stream is server-sent
events: a ticker thread, which runs only while at least one stream is open, builds one
frame per interval and each open stream sends it, with the events of the tail its reader
asked for. With no stream open, nothing here runs but the server's accept loop.

Routes (docs/dashboard.md):

- ``GET /`` the page; ``GET /static/<file>`` its assets, all shipped in the package;
- ``GET /api/snapshot`` one JSON document: definitions, values, pools, recent events;
- ``GET /api/stream`` ``text/event-stream``: a ``hello`` event (definitions and the
  frames kept so far), then a ``frame`` event per interval.

Both API routes take ``?events=PREFIX``: only events whose dotted name starts with it.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import sys
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Final

import msgspec

from pypit._log import get_logger
from pypit.telemetry._dashboard_state import Tail

_log = get_logger("telemetry")

HISTORY: Final = 300
"""Frames kept for a page that opens while another is open."""

MAX_STREAMS: Final = 32
"""Streams open at once; one more is refused with 503."""

MAX_CONNECTIONS: Final = 64
"""Connections served at once (streams included); one more is answered 503 and closed."""

BACKLOG: Final = 128
"""Connections the listener queues before they are accepted."""

REQUEST_DEADLINE: Final = 10.0
"""Seconds a client has to send its whole request (its line and headers): a client that
sends a header now and then cannot hold a thread of the server."""

CLOSE_WAIT: Final = 2.0
"""Seconds ``close()`` waits for the request threads once their sockets are shut down."""

_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}
_PAGE_POLICY: Final = (
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'"
)


def _fallback(value: object) -> object:
    """Metadata values JSON cannot hold (an exception, a span context) as their repr, or a
    placeholder naming their type when even that fails: never raises."""
    try:
        return repr(value)
    except Exception:
        try:
            name = type(value).__name__
        except Exception:
            name = "object"
        return f"<unrepresentable {name}>"


encoder = msgspec.json.Encoder(enc_hook=_fallback)


def _value(value: object) -> msgspec.Raw:
    """One value as JSON, or as the text of :func:`_fallback` when it cannot be encoded (a
    dict with keys JSON cannot hold, a list that holds itself)."""
    try:
        return msgspec.Raw(encoder.encode(value))
    except Exception:
        return msgspec.Raw(encoder.encode(_fallback(value)))


def _key(key: object) -> str:
    return key if isinstance(key, str) else str(_fallback(key))


def encode_events(events: Iterable[dict[str, Any]]) -> list[msgspec.Raw]:
    """Each event as JSON on its own: a value that cannot be encoded becomes its text, and
    one such event never breaks the stream or the snapshot that carry it."""
    encoded = []
    for event in events:
        try:
            encoded.append(msgspec.Raw(encoder.encode(event)))
        except Exception:
            safe = {
                **event,
                "measurements": {_key(k): _value(v) for k, v in event["measurements"].items()},
                "metadata": {_key(k): _value(v) for k, v in event["metadata"].items()},
            }
            encoded.append(msgspec.Raw(encoder.encode(safe)))
    return encoded


def assets() -> dict[str, tuple[bytes, str]]:
    """Every file of the page, by the path it is served under, with its content type."""
    root = resources.files("pypit.telemetry") / "_dashboard_static"
    found: dict[str, tuple[bytes, str]] = {}
    pending = [(root, "")]
    while pending:
        folder, prefix = pending.pop()
        for entry in folder.iterdir():
            if entry.is_dir():
                pending.append((entry, f"{prefix}{entry.name}/"))
                continue
            suffix = entry.name[entry.name.rfind(".") :] if "." in entry.name else ".txt"
            found[prefix + entry.name] = (entry.read_bytes(), _TYPES.get(suffix, _TYPES[".txt"]))
    return found


class Feed:
    """Frames for the open streams, built by a ticker thread that runs while one is open.

    ``build()`` makes a frame; ``on_open()`` and ``on_idle()`` are called (under the
    feed's lock) when the first stream opens and when the ticker stops for want of one.
    """

    def __init__(
        self,
        build: Callable[[], dict[str, Any]],
        interval: float,
        on_open: Callable[[], None],
        on_idle: Callable[[], None],
    ) -> None:
        self.interval = interval
        self._build = build
        self._on_open = on_open
        self._on_idle = on_idle
        self._changed = threading.Condition()
        self._streams = 0
        self._number = 0
        self._latest: dict[str, Any] | None = None
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._ticker: threading.Thread | None = None
        self._closed = False
        self._wake = threading.Event()

    @property
    def open_streams(self) -> int:
        return self._streams

    def join(self) -> str | None:
        """Count one more open stream (starting the ticker); why not, once closed or when
        :data:`MAX_STREAMS` are open."""
        with self._changed:
            if self._closed:
                return "the dashboard is stopping"
            if self._streams >= MAX_STREAMS:
                return f"too many streams open ({MAX_STREAMS}): close one and retry"
            self._streams += 1
            if self._ticker is None:
                self._on_open()
                self._wake.clear()
                self._ticker = threading.Thread(
                    target=self._tick, name="pypit-dashboard-ticker", daemon=True
                )
                self._ticker.start()
            return None

    def leave(self) -> None:
        with self._changed:
            self._streams -= 1

    def next(self, seen: int) -> tuple[int, dict[str, Any]] | None:
        """The first frame after frame number ``seen``, once it exists; None when the
        feed closed."""
        with self._changed:
            while not self._closed and (self._number <= seen or self._latest is None):
                self._changed.wait()
            if self._closed or self._latest is None:
                return None
            return self._number, self._latest

    def close(self) -> None:
        """Stop the ticker and end every stream."""
        with self._changed:
            self._closed = True
            ticker, self._ticker = self._ticker, None
            self._changed.notify_all()
        self._wake.set()
        if ticker is not None:
            ticker.join(timeout=10)

    def _tick(self) -> None:
        while True:
            with self._changed:
                if self._closed:
                    return
                if not self._streams:
                    # The next stream starts from frames of its own, not this session's.
                    self._ticker = None
                    self._latest = None
                    self.history.clear()
                    self._on_idle()
                    return
            try:
                frame = self._build()
            except Exception as exc:
                _log.error("the dashboard could not build a frame", error=repr(exc))
                frame = None
            if frame is not None:
                with self._changed:
                    self._latest = frame
                    self._number += 1
                    self.history.append(frame)
                    self._changed.notify_all()
            if self._wake.wait(self.interval):
                return


class Routes:
    """What the server answers, given the reporter's pieces."""

    def __init__(
        self,
        feed: Feed,
        tail: Tail,
        snapshot: Callable[[str], dict[str, Any]],
        hello: Callable[[], dict[str, Any]],
    ) -> None:
        self.feed = feed
        self.tail = tail
        self.snapshot = snapshot
        self.hello = hello
        self.assets = assets()


class _Handler(BaseHTTPRequestHandler):
    routes: Routes
    server: _HTTPServer
    server_version = "pypit-dashboard"
    # A reader that stops reading cannot hold a thread of the server for ever; one that
    # sends its request slowly is cut at REQUEST_DEADLINE (_HTTPServer.service_actions).
    timeout = 30

    def setup(self) -> None:
        super().setup()
        self.server.await_request(self.request)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("dashboard request", request=format % args)

    def do_GET(self) -> None:
        self.server.request_read(self.request)
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        prefix = query.get("events", [""])[0]
        path = url.path
        if path in ("/", "/index.html"):
            self._asset("index.html")
        elif path.startswith("/static/"):
            self._asset(path.removeprefix("/static/"))
        elif path == "/api/snapshot":
            snapshot = self.routes.snapshot(prefix)
            snapshot["events"] = encode_events(snapshot["events"])
            self._send(200, "application/json", encoder.encode(snapshot))
        elif path == "/api/stream":
            self._stream(prefix)
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")

    def _asset(self, name: str) -> None:
        found = self.routes.assets.get(name)
        if found is None:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")
        else:
            self._send(200, found[1], found[0])

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self._common_headers()
        self.end_headers()
        self.wfile.write(body)

    def _common_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", _PAGE_POLICY)

    def _stream(self, prefix: str) -> None:
        routes = self.routes
        refused = routes.feed.join()
        if refused is not None:
            self._send(503, "text/plain; charset=utf-8", f"{refused}\n".encode())
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self._common_headers()
            self.end_headers()
            # The first frame brings the recent events the tail holds, as a new filter's
            # first view.
            seen_events = 0
            hello = {**routes.hello(), "history": list(routes.feed.history)}
            self._event("hello", encoder.encode(hello), retry=2000)
            seen = 0
            while True:
                taken = routes.feed.next(seen)
                if taken is None:
                    return
                seen, frame = taken
                events = routes.tail.since(seen_events, prefix)
                if events:
                    seen_events = events[-1]["seq"]
                self._event("frame", encoder.encode({**frame, "events": encode_events(events)}))
        finally:
            routes.feed.leave()

    def _event(self, name: str, data: bytes, retry: int | None = None) -> None:
        head = f"retry: {retry}\n" if retry is not None else ""
        self.wfile.write(f"{head}event: {name}\ndata: ".encode() + data + b"\n\n")
        self.wfile.flush()


_GONE: Final = frozenset({errno.EBADF, errno.ENOTCONN, errno.ESHUTDOWN, errno.EPIPE})
"""What a socket says once its connection was shut down or closed."""


class _HTTPServer(ThreadingHTTPServer):
    """The threading server, bounded: at most :data:`MAX_CONNECTIONS` served at once, each
    request read within :data:`REQUEST_DEADLINE`, and every connection shut down on close,
    so that no client can keep ``close()`` waiting."""

    request_queue_size = BACKLOG
    # Request threads are never joined for ever: close() shuts their sockets down and
    # waits CLOSE_WAIT at most.
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type[_Handler]) -> None:
        self._lock = threading.Lock()
        self._open: dict[socket.socket, threading.Thread | None] = {}
        self._deadlines: dict[socket.socket, float] = {}
        self._closing = False
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            refused = self._closing or len(self._open) >= MAX_CONNECTIONS
            if not refused:
                self._open[request] = None
        if refused:
            self._refuse(request)
            return
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="pypit-dashboard-request",
            daemon=True,
        )
        with self._lock:
            self._open[request] = thread
        thread.start()

    def _refuse(self, request: socket.socket) -> None:
        body = f"too many connections open ({MAX_CONNECTIONS}): close one and retry\n".encode()
        head = (
            "HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        with contextlib.suppress(OSError):
            request.setblocking(False)
            request.send(head + body)
        self.shutdown_request(request)

    def await_request(self, request: socket.socket) -> None:
        """Cut ``request``'s connection unless its request is read within the deadline."""
        with self._lock:
            self._deadlines[request] = time.monotonic() + REQUEST_DEADLINE

    def request_read(self, request: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(request, None)

    def service_actions(self) -> None:
        now = time.monotonic()
        with self._lock:
            late = [request for request, due in self._deadlines.items() if due < now]
            for request in late:
                del self._deadlines[request]
        for request in late:
            _cut(request)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._open.pop(request, None)
            self._deadlines.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away (reset, broken pipe, cut by a deadline or by close())
        # is no error; anything else is logged, never printed on the application's stderr.
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError) or (
            isinstance(error, OSError) and error.errno in _GONE
        ):
            return
        _log.error("the dashboard failed on a request", error=repr(error))

    def close_connections(self) -> list[threading.Thread]:
        """Refuse new connections, shut down every open one (a handler blocked writing to
        a client that does not read returns); the threads serving them."""
        with self._lock:
            self._closing = True
            open_now = dict(self._open)
        for request in open_now:
            _cut(request)
        return [thread for thread in open_now.values() if thread is not None]


def _cut(request: socket.socket) -> None:
    with contextlib.suppress(OSError):
        request.shutdown(socket.SHUT_RDWR)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


def host_port(address: str, port: int) -> str:
    """``address:port``, an IPv6 address in brackets."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class Server:
    """The HTTP server on its thread."""

    def __init__(self, routes: Routes, address: str, port: int) -> None:
        handler = type("DashboardHandler", (_Handler,), {"routes": routes})
        server_class = _HTTPServer6 if ":" in address else _HTTPServer
        try:
            self._server = server_class((address, port), handler)
        except OSError as exc:
            message = (
                f"the dashboard cannot listen on {host_port(address, port)}: {exc.strerror or exc}"
            )
            raise (OSError(exc.errno, message) if exc.errno else OSError(message)) from exc
        self.address = address
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.25},
            name="pypit-dashboard",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        """Stop accepting, end every connection, and wait a little for their threads."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=CLOSE_WAIT)
        deadline = time.monotonic() + CLOSE_WAIT
        for thread in self._server.close_connections():
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
