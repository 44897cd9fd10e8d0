"""``pypit top URL``: the dashboard in the terminal, drawn in place (docs/dashboard.md).

A thread reads the dashboard's stream (``URL/api/stream``, server-sent events) and keeps
the latest frame; the main thread redraws the pools, their workers, the metrics and the
latest events with rich, and reads the keyboard: ``q`` quits, as does Ctrl-C. A stream
that breaks, or that is not a dashboard's, is opened again each second; the screen says
so meanwhile. Needs rich (the ``top`` extra).

Whatever the stream holds is shown as plain text: never read as rich markup, and its
control characters (an escape sequence a name or a tag value may hold) shown as escapes,
never sent to the terminal.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import select
import socket
import sys
import termios
import threading
import time
import tty
import urllib.parse
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final, NotRequired, TypedDict

import msgspec

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.text import Text

EVENTS_SHOWN: Final = 8
CONNECT_TIMEOUT: Final = 5.0
"""Seconds to connect and to receive the stream's hello."""
READ_MARGIN: Final = 5.0
"""Seconds a frame may be late, over three of the intervals the hello announces."""
MAX_READ_TIMEOUT: Final = 3600.0

# C0 but for none, DEL and C1: shown as escapes, never sent to the terminal.
_CONTROLS: Final = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}


def plain(value: object) -> str:
    """``value`` as text to show: its control characters as escapes."""
    return str(value).translate(_CONTROLS)


# What the stream must hold for the view: decoding checks it, and anything else is a
# malformed stream, reported on screen.


class _Definition(TypedDict):
    name: str
    kind: str
    unit: NotRequired[str | None]


class _Hello(TypedDict):
    interval: float
    metrics: list[_Definition]


class _Status(TypedDict):
    closed: bool
    degraded: bool
    queue_depth: int
    max_queue_size: int
    in_flight: int
    busy_workers: int
    total_workers: int


class _Worker(TypedDict):
    worker_id: str
    state: str
    calls: int
    in_flight: int
    pid: int | None
    node: str | None
    uptime: float
    restarts: int
    last_exit: str | None
    failure: str | None
    rss_bytes: NotRequired[float | None]
    cpu_percent: NotRequired[float | None]
    calls_per_s: NotRequired[float | None]


class _Pool(TypedDict):
    name: str
    status: _Status
    saturation: NotRequired[float | None]
    rates: NotRequired[dict[str, float | None]]
    workers: list[_Worker]


class _Entry(TypedDict):
    tags: dict[str, Any]
    value: NotRequired[float | None]
    total: NotRequired[float | None]
    p50: NotRequired[float | None]
    p99: NotRequired[float | None]
    count: NotRequired[int]


class _Event(TypedDict):
    time: float
    name: str
    metadata: dict[str, Any]


class _Frame(TypedDict):
    metrics: list[list[_Entry]]
    pools: list[_Pool]
    events: NotRequired[list[_Event]]


_hello = msgspec.json.Decoder(_Hello)
_frame = msgspec.json.Decoder(_Frame)


class NotAStreamError(ValueError):
    """The server answered something else than a dashboard's stream."""


def read_timeout(interval: float) -> float:
    """Seconds to wait for a frame, given the interval the hello announces."""
    return min(3 * interval + READ_MARGIN, MAX_READ_TIMEOUT)


def stream_url(url: str, events: str = "") -> str:
    """The stream's address, from the page's (``http://host:port/``) or the stream's own."""
    if "://" not in url:
        url = f"http://{url}"
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/")
    if not path.endswith("/api/stream"):
        path = f"{path}/api/stream"
    query = urllib.parse.urlencode({"events": events}) if events else ""
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, query, ""))


def server_sent_events(lines: Iterator[bytes]) -> Iterator[tuple[str, str]]:
    """``(event, data)`` of each event in a ``text/event-stream``'s lines."""
    name, data = "message", list[str]()
    for raw in lines:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield name, "\n".join(data)
            name, data = "message", list[str]()
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


class Reader:
    """Reads the stream on a thread of its own and keeps what the view shows."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.definitions: list[dict[str, Any]] = []
        self.frame: dict[str, Any] | None = None
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_SHOWN)
        self.frames = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="pypit-top-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        sock = self._sock
        if sock is not None:
            # A read waiting for the next frame returns at once.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._read()
                self.error = "the dashboard ended the stream"
            except NotAStreamError as exc:
                self.error = f"not a pypit dashboard stream: {exc}"
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.error = f"cannot read {self.url}: {exc}"
            except Exception as exc:
                # Whatever else a server sends is said on screen, and the reader goes on.
                self.error = f"cannot read {self.url}: {exc!r}"
            self._stop.wait(1.0)

    def _read(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        secure = parts.scheme == "https"
        kind = http.client.HTTPSConnection if secure else http.client.HTTPConnection
        if parts.hostname is None:
            raise NotAStreamError(f"{self.url!r} names no host")
        connection = kind(parts.hostname, parts.port, timeout=CONNECT_TIMEOUT)
        try:
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            connection.request("GET", target, headers={"Accept": "text/event-stream"})
            # The response reads from this socket after the connection let go of it.
            sock = self._sock = connection.sock
            if self._stop.is_set():
                return
            response = connection.getresponse()
            if response.status != 200:
                reason = response.read(200).decode("utf-8", "replace").strip()
                raise OSError(f"HTTP {response.status}: {reason or response.reason}")
            kind_of = response.getheader("Content-Type", "")
            if not kind_of.startswith("text/event-stream"):
                raise NotAStreamError(f"its content type is {kind_of!r}")
            for name, data in server_sent_events(iter(response.readline, b"")):
                if self._stop.is_set():
                    return
                interval = self._take(name, data)
                if interval is not None and sock is not None:
                    sock.settimeout(read_timeout(interval))
        finally:
            self._sock = None
            connection.close()

    def _take(self, name: str, data: str) -> float | None:
        """Keep one event of the stream; the interval a hello announces."""
        try:
            if name == "hello":
                hello = _hello.decode(data)
                if not hello["interval"] > 0:
                    raise NotAStreamError(f"its interval is {hello['interval']!r}")
                self.definitions = list(hello["metrics"])  # type: ignore[arg-type]
                self.error = None
                return hello["interval"]
            if name == "frame":
                frame = _frame.decode(data)
                self.events.extend(frame.get("events", ()))  # type: ignore[arg-type]
                self.frame = frame  # type: ignore[assignment]
                self.frames += 1
                self.error = None
        except msgspec.MsgspecError as exc:
            raise NotAStreamError(f"its {plain(name)} event: {exc}") from None
        return None


def _number(value: float | None, unit: str | None = None) -> str:
    if value is None:
        return "-"
    shown = f"{value:,.0f}" if abs(value) >= 100 or float(value).is_integer() else f"{value:.2f}"
    return f"{shown} {unit}" if unit else shown


def _tags(tags: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in tags.items()) or "all"


def _text(value: object) -> Text:
    """``value`` as a cell: plain text, never markup."""
    from rich.text import Text

    return Text(plain(value))


def render(reader: Reader, url: str, *, keys: bool = True) -> RenderableType:
    """The whole screen, from what ``reader`` holds (``keys``: say that q quits)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[RenderableType] = []
    title = Text.assemble(
        ("pypit top", "bold"), f"  {plain(url)}  ", ("q quits" if keys else "", "dim")
    )
    if reader.error:
        title.append(f"  {plain(reader.error)}", style="bold red")
    parts.append(title)
    frame = reader.frame
    if frame is None:
        parts.append(Text("waiting for the first frame…", style="dim"))
        return Group(*parts)
    for pool in frame["pools"]:
        status, rates = pool["status"], pool.get("rates") or {}
        state = "closed" if status["closed"] else "degraded" if status["degraded"] else "serving"
        parts.append(
            Text.assemble(
                (f"\npool {plain(pool['name'])}", "bold"),
                (f"  {state}", "red" if state != "serving" else "green"),
                f"  queue {status['queue_depth']}/{status['max_queue_size']}",
                f" ({100 * (pool.get('saturation') or 0):.0f}% full)",
                f"  in flight {status['in_flight']}",
                f"  busy {status['busy_workers']}/{status['total_workers']}",
                f"  requests/s {_number(rates.get('requests'))}",
                f"  failed/s {_number(rates.get('failed'))}",
                f"  rejected/s {_number(rates.get('rejected'))}",
            )
        )
        table = Table(box=None, header_style="bold dim", pad_edge=False)
        for column in ("worker", "state", "calls", "calls/s", "in flight", "pid", "node"):
            table.add_column(
                column, justify="right" if column.startswith(("calls", "in", "pid")) else "left"
            )
        for column in ("RSS MiB", "CPU %", "uptime s", "restarts", "last exit"):
            table.add_column(column, justify="left" if column == "last exit" else "right")
        for w in pool["workers"]:
            rss = w.get("rss_bytes")
            cells = (
                w["worker_id"],
                w["state"],
                str(w["calls"]),
                _number(w.get("calls_per_s")),
                str(w["in_flight"]),
                str(w["pid"] or "-"),
                w["node"] or "-",
                "-" if rss is None else f"{rss / 2**20:.1f}",
                _number(w.get("cpu_percent")),
                f"{w['uptime']:.0f}",
                str(w["restarts"]),
                w["last_exit"] or w["failure"] or "-",
            )
            table.add_row(*map(_text, cells))
        parts.append(table)
    metrics = Table(title="\nmetrics", title_justify="left", box=None, header_style="bold dim")
    for column in ("metric", "tags", "value"):
        metrics.add_column(column)
    for definition, series in zip(reader.definitions, frame["metrics"], strict=False):
        for entry in series:
            metrics.add_row(
                _text(definition["name"]),
                _text(_tags(entry["tags"])),
                _text(_shown(definition, entry)),
            )
    parts.append(metrics)
    parts.append(Text("\nevents", style="italic"))
    for event in list(reader.events)[::-1]:
        metadata = " ".join(f"{k}={_short(v)}" for k, v in event["metadata"].items())
        when = _clock(event["time"])
        line = Text(
            plain(f"{when}  {event['name']:<30} {metadata}"), no_wrap=True, overflow="ellipsis"
        )
        parts.append(line)
    return Group(*parts)


def _clock(seconds: float) -> str:
    """A time of day, or ``?`` for one no clock shows."""
    try:
        return time.strftime("%H:%M:%S", time.localtime(seconds))
    except (OverflowError, ValueError, OSError):
        return "?"


def _short(value: object) -> str:
    """A metadata value on one line, cut at 60 characters."""
    text = " ".join(str(value).split())
    return text if len(text) <= 60 else text[:59] + "…"


def _shown(definition: dict[str, Any], entry: dict[str, Any]) -> str:
    unit = definition.get("unit")
    kind = definition["kind"]
    if kind == "counter":
        return f"{_number(entry.get('value'))}/s (total {_number(entry.get('total'))})"
    if kind == "sum":
        return f"{_number(entry.get('value'), unit)}/s"
    if kind == "last_value":
        return _number(entry.get("value"), unit)
    return (
        f"p50 {_number(entry.get('p50'), unit)}  p99 {_number(entry.get('p99'), unit)}"
        f"  ({entry.get('count', 0)} values)"
    )


@contextlib.contextmanager
def _keys() -> Iterator[int | None]:
    """The terminal's file descriptor in cbreak mode (keys arrive one by one, Ctrl-C still
    interrupts), restored on exit; None when standard input is not a terminal."""
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    if fd < 0 or not os.isatty(fd):
        yield None
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run(url: str, events: str = "") -> int:
    """Draw the dashboard at ``url`` until ``q`` or Ctrl-C; the exit status."""
    from rich.live import Live

    if not sys.stdout.isatty():
        print("pypit top draws in a terminal: its output is not one", file=sys.stderr)
        return 2
    address = stream_url(url, events)
    reader = Reader(address)
    reader.start()
    try:
        with _keys() as fd, Live(render(reader, url), screen=True, auto_refresh=False) as live:
            shown: tuple[int, str | None] = (-1, None)
            while True:
                if fd is not None:
                    ready, _, _ = select.select([fd], [], [], 0.1)
                    if ready and os.read(fd, 1) in (b"q", b"Q"):
                        return 0
                else:
                    time.sleep(0.1)
                if (reader.frames, reader.error) != shown:
                    shown = (reader.frames, reader.error)
                    live.update(render(reader, url), refresh=True)
    finally:
        reader.stop()


def show(url: str, stop: threading.Event) -> None:
    """Draw the dashboard at ``url`` in place, below what the terminal shows, until
    ``stop`` is set; the last screen stays. For an application's own terminal (``make
    demo``): no keyboard, and what the application prints goes above it."""
    from rich.live import Live

    reader = Reader(stream_url(url))
    reader.start()
    try:
        first = render(reader, url, keys=False)
        with Live(first, auto_refresh=False, vertical_overflow="crop") as live:
            shown: tuple[int, str | None] = (-1, None)
            while not stop.wait(0.1):
                if (reader.frames, reader.error) != shown:
                    shown = (reader.frames, reader.error)
                    live.update(render(reader, url, keys=False), refresh=True)
    finally:
        reader.stop()
