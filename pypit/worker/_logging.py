"""What a worker's code logs and prints, shipped to the pool as data.

Three sources feed one buffer, in the order they were written, and the pool
logs each entry as one of its own records (category ``worker``):

- the stdlib's log records: a handler on the root logger ships each record's
  level, logger name, message and extra fields;
- structlog's records: structlog is configured to ship each event dict
  instead of rendering it (an adapter that calls ``structlog.configure()``
  keeps what it set);
- text written to ``sys.stdout`` and ``sys.stderr``, one entry per line; a
  line left unfinished leaves at the end of the call of the thread that wrote
  it.

The runtime ships the buffer ahead of each call's answer, so what a call
logged and printed reaches the pool before its result. logging and structlog
are set up when something first imports them: an adapter that logs nothing
pays nothing at start-up. Text written to file descriptors 1 and 2 directly
-- by C code, or by child processes -- is not seen here: the pool reads it
from the worker's pipes, line by line, as it reads whatever a process forked
from the worker prints or logs, and what the worker prints as it exits (see
:func:`detach`).

``set_worker_level`` arrives in :func:`apply_level`: the level of the root
logger and of structlog's filtering.
"""

from __future__ import annotations

import io
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any, Final, Literal, TextIO

from pypit import _wire
from pypit.worker._telemetry import take

# The stdlib's numbers.
LEVELS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40, "none": 60}
_CRITICAL: Final = 50

MAX_TEXT: Final = 65_536
"""Characters kept of a line, a message or a field's value."""
MAX_FIELDS: Final = 64
MAX_KEY: Final = 128
DEFAULT_CAPACITY: Final = 65_536
MAX_BATCH: Final = 4096

Entry = _wire.Line | _wire.Record
Scalar = str | int | float | bool | None


class OutputBuffer:
    """Entries waiting to be shipped, in the order they were added, from any thread.

    Bounded: past ``capacity`` waiting entries, an entry is dropped and counted
    (the pool logs the count). ``filling`` is set when a batch's worth is
    waiting, so the shipper need not wait for its timer. While ``at_once`` is
    set (the worker is starting, and nothing ships on a timer yet), it is called
    after each entry.
    """

    def __init__(
        self, capacity: int = DEFAULT_CAPACITY, filling: threading.Event | None = None
    ) -> None:
        self._entries: deque[Entry] = deque()
        self._capacity = capacity
        self._watermark = min(MAX_BATCH, max(1, capacity // 2))
        self.filling = filling if filling is not None else threading.Event()
        self._dropped = 0
        self._lock = threading.Lock()
        self.at_once: Callable[[], None] | None = None

    def add(self, entry: Entry) -> None:
        entries = self._entries
        size = len(entries)
        if size < self._capacity:
            entries.append(entry)
            if size + 1 == self._watermark:
                self.filling.set()
        else:
            with self._lock:
                self._dropped += 1
        at_once = self.at_once
        if at_once is not None:
            at_once()

    def drain(self, limit: int = MAX_BATCH) -> _wire.Output | None:
        """Up to ``limit`` entries and the drop count, as one message, or None."""
        entries = self._entries
        if not entries and not self._dropped:
            return None
        taken = take(entries, limit)
        with self._lock:
            dropped, self._dropped = self._dropped, 0
        if not taken and not dropped:
            return None
        return _wire.Output(taken, dropped)


_buffer: OutputBuffer | None = None
_captures: list[_Capture] = []
_detached = False
"""Set in a forked child, and once the worker stops shipping: output goes to the pipes."""
_set_up: set[str] = set()
_level: int | None = None
"""The level the pool set (None: as the worker started)."""
_initial: dict[str, Any] = {}
"""What each library had before a level was first applied, to restore it."""


def install(buffer: OutputBuffer) -> None:
    """Ship this process's log records to ``buffer``: at once for logging and structlog if
    they are imported, else when they are."""
    global _buffer
    _buffer = buffer
    os.register_at_fork(after_in_child=detach)
    hooks: dict[str, Callable[[], None]] = {}
    for name, setup in (("logging", _setup_logging), ("structlog", _setup_structlog)):
        if name in sys.modules:
            setup()
        else:
            hooks[name] = setup
    if hooks:
        sys.meta_path.insert(0, _AfterImport(hooks))


def capture_stdio(buffer: OutputBuffer) -> None:
    """Ship what is written to ``sys.stdout`` and ``sys.stderr`` to ``buffer``, line by line."""
    sys.stdout = _Capture("stdout", sys.stdout, buffer)
    sys.stderr = _Capture("stderr", sys.stderr, buffer)
    _captures[:] = [sys.stdout, sys.stderr]


def end_lines(every_thread: bool = False) -> None:
    """Ship the lines this thread (or, with ``every_thread``, any thread) left unfinished."""
    for capture in _captures:
        if capture.partial:
            capture.end_lines(every_thread)


def apply_level(level: str | None) -> None:
    """Set this worker's log level (``debug`` ... ``none``), or restore it with None."""
    global _level
    numeric = None if level is None else LEVELS[level]
    if numeric == _level:
        return
    _level = numeric
    if "logging" in sys.modules:
        _level_logging()
    if "structlog" in sys.modules:
        _level_structlog()


def _level_logging() -> None:
    import logging

    root = logging.getLogger()
    initial = _initial.setdefault("logging", root.level)
    root.setLevel(initial if _level is None else _level)


def _level_structlog() -> None:
    import structlog

    initial = _initial.setdefault("structlog", structlog.get_config()["wrapper_class"])
    if _level is None:
        wrapper = initial
    elif _level > _CRITICAL:
        # "none": structlog filters only by the levels it knows; past critical, critical
        # itself is dropped too.
        wrapper = structlog.make_filtering_bound_logger(_CRITICAL)
        wrapper = type("Silent", (wrapper,), {"critical": _drop, "fatal": _drop})
    else:
        wrapper = structlog.make_filtering_bound_logger(_level)
    structlog.configure(wrapper_class=wrapper)


def _drop(self: object, event: object = None, *args: object, **kw: object) -> None:
    return None


# -- the stdlib -------------------------------------------------------------------------


def _setup_logging() -> None:
    if "logging" in _set_up:
        return
    _set_up.add("logging")
    import logging

    standard = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)))
    standard |= {"message", "asctime", "taskName"}
    formatter = logging.Formatter()

    class Shipper(logging.Handler):
        """Ships each record: level, logger, message, and the fields it was given."""

        def emit(self, record: logging.LogRecord) -> None:
            if _detached:
                _fall_back(f"{record.levelname}:{record.name}:{_message(record)}")
                return
            fields: dict[str, Any] = {}
            if isinstance(record.msg, dict) and "event" in record.msg:
                # structlog's event dict, handed to the stdlib by structlog.stdlib.
                fields.update(record.msg)
                message: Any = fields.pop("event")
            else:
                message = _message(record)
            for key, value in vars(record).items():
                if key not in standard and not key.startswith("_"):
                    fields[key] = value
            if record.exc_info:
                fields["exception"] = formatter.formatException(record.exc_info)
            elif record.exc_text:
                fields["exception"] = record.exc_text
            if record.stack_info:
                fields["stack"] = record.stack_info
            _ship(record.levelno, record.name, message, fields)

    logging.getLogger().addHandler(Shipper())
    if _level is not None:
        _level_logging()


def _message(record: Any) -> str:
    try:
        return str(record.getMessage())
    except Exception:
        return str(record.msg)


# -- structlog ----------------------------------------------------------------------------


def _setup_structlog() -> None:
    if "structlog" in _set_up:
        return
    _set_up.add("structlog")
    import structlog

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.StackInfoRenderer(),
            structlog.dev.set_exc_info,
            structlog.processors.format_exc_info,
        ],
        logger_factory=_StructlogShipper.named,
    )
    if _level is not None:
        _level_structlog()


def _shipping(level: int) -> Callable[..., None]:
    def log(self: _StructlogShipper, *rendered: Any, **event_dict: Any) -> None:
        self.ship(level, rendered, event_dict)

    return log


class _StructlogShipper:
    """What structlog hands each event dict to, once processed: it ships it."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    @classmethod
    def named(cls, *args: Any) -> _StructlogShipper:
        """The logger factory: ``structlog.get_logger(name)`` names the logger."""
        return cls(str(args[0]) if args and args[0] is not None else "")

    def ship(self, level: int, rendered: tuple[Any, ...], event_dict: dict[str, Any]) -> None:
        # An adapter that set a renderer of its own hands a rendered line instead.
        message = rendered[0] if rendered else event_dict.pop("event", "")
        if _detached:
            pairs = " ".join(f"{key}={value!r}" for key, value in event_dict.items())
            _fall_back(f"{message} {pairs}".rstrip())
            return
        _ship(level, self._name, message, event_dict)

    debug = _shipping(10)
    info = msg = _shipping(20)
    warning = warn = _shipping(30)
    error = exception = _shipping(40)
    critical = fatal = _shipping(50)


# -- records -------------------------------------------------------------------------------


def _ship(level: int, logger: str, message: Any, fields: Mapping[str, Any]) -> None:
    if _buffer is None:
        return
    kept: dict[str, Scalar] = {}
    for key, value in fields.items():
        if len(kept) == MAX_FIELDS:
            break
        kept[_text(key, MAX_KEY)] = _scalar(value)
    _buffer.add(_wire.Record(level, _text(logger, MAX_KEY), _text(message), kept))


def _scalar(value: Any) -> Scalar:
    """A value msgpack carries and the pool can log: bounded strings and numbers as they
    are, anything else as its ``repr``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value) if -(2**63) <= value < 2**64 else _text(repr(int(value)))
    if isinstance(value, str):
        return _text(value)
    try:
        return _text(repr(value))
    except Exception:
        return f"<unrepresentable {type(value).__qualname__} object>"


def shrink(entry: Entry, max_frame_size: int) -> Entry:
    """``entry`` cut to fit a frame of ``max_frame_size`` bytes whatever its characters
    (four bytes each at most in UTF-8), its fields' values as text."""
    if isinstance(entry, _wire.Line):
        return _wire.Line(entry.stream, entry.text[: (max_frame_size - 4096) // 4])
    limit = (max_frame_size - 4096) // (4 * (1 + len(entry.fields)))
    fields: dict[str, Scalar] = {
        key[:MAX_KEY]: _text(value, limit) for key, value in entry.fields.items()
    }
    return _wire.Record(entry.level, entry.logger[:limit], entry.message[:limit], fields)


def _text(value: Any, limit: int = MAX_TEXT) -> str:
    """``value`` as a str of at most ``limit`` characters that UTF-8 can hold."""
    if not isinstance(value, str):
        try:
            value = str(value)
        except Exception:
            value = f"<unprintable {type(value).__qualname__} object>"
    value = value[:limit]
    try:
        value.encode()
    except UnicodeEncodeError:
        # Lone surrogates (a file name decoded with surrogateescape): msgpack strings are UTF-8.
        value = value.encode(errors="backslashreplace").decode()
    return str(value)


# -- printed text --------------------------------------------------------------------------


class _Capture(io.TextIOBase):
    """``sys.stdout`` or ``sys.stderr`` of a worker: each line written is an entry.

    Each thread's unfinished line is kept apart, so that two tools printing at
    once do not mix their lines. What is written through ``buffer`` (bytes) and
    to ``fileno()`` goes to the original stream, as C code's output does.
    """

    def __init__(
        self, stream: Literal["stdout", "stderr"], original: TextIO, buffer: OutputBuffer
    ) -> None:
        super().__init__()
        self._stream: Literal["stdout", "stderr"] = stream
        self.original = original
        self._buffer = buffer
        self.partial: dict[int, str] = {}
        # Threads whose line grew past MAX_TEXT: its start left, the rest of it is dropped
        # up to its end (instead of becoming more lines, or an empty one at its "\n").
        self._cut: set[int] = set()
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        if _detached:
            return self.original.write(text)
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        thread = threading.get_ident()
        with self._lock:
            written = self.partial.pop(thread, "") + text
            if thread in self._cut:
                end = written.find("\n")
                if end < 0:
                    return len(text)
                self._cut.discard(thread)
                written = written[end + 1 :]
            *lines, rest = written.split("\n")
            if len(rest) > MAX_TEXT:
                lines.append(rest)
                rest = ""
                self._cut.add(thread)
            if rest:
                self.partial[thread] = rest
            for line in lines:
                self._ship(line)
        return len(text)

    def _ship(self, line: str) -> None:
        self._buffer.add(_wire.Line(self._stream, _text(line.rstrip("\r"))))

    def end_lines(self, every_thread: bool) -> None:
        with self._lock:
            if every_thread:
                unfinished = list(self.partial.values())
                self.partial.clear()
                self._cut.clear()
            else:
                self._cut.discard(threading.get_ident())
                line = self.partial.pop(threading.get_ident(), None)
                unfinished = [] if line is None else [line]
            for line in unfinished:
                self._ship(line)

    def flush(self) -> None:
        self.original.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.original.isatty()

    def fileno(self) -> int:
        return self.original.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.original.encoding

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return self.original.errors

    @property
    def buffer(self) -> Any:
        return self.original.buffer

    @property
    def name(self) -> str:
        return str(self.original.name)


# -- forks and imports --------------------------------------------------------------------


def detach() -> None:
    """From now on, what this process prints and logs goes to its stderr and stdout as text,
    which the pool reads from the worker's pipes line by line: in a process forked from the
    worker, which has no channel, and in the worker once it stops shipping (so that what it
    prints as it exits, the traceback of a crash say, still reaches the pool)."""
    global _detached
    _detached = True
    for capture in _captures:
        if sys.stdout is capture:
            sys.stdout = capture.original
        if sys.stderr is capture:
            sys.stderr = capture.original


def _fall_back(line: str) -> None:
    stream = sys.__stderr__
    if stream is not None:
        stream.write(line + "\n")


class _AfterImport:
    """A meta path finder that finds nothing itself: when a module named in ``hooks`` is
    imported, its loader is wrapped so that the hook runs once the module executed."""

    def __init__(self, hooks: dict[str, Callable[[], None]]) -> None:
        self._hooks = hooks

    def find_spec(
        self, name: str, path: Any = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name not in self._hooks:
            return None
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            if finder is self or find_spec is None:
                continue
            spec: ModuleSpec | None = find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        hook = self._hooks.pop(name)
        if not self._hooks and self in sys.meta_path:
            sys.meta_path.remove(self)
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader, hook)  # type: ignore[assignment]
        return spec


class _Loader:
    """A module's own loader, followed by a hook."""

    def __init__(self, loader: Any, after: Callable[[], None]) -> None:
        self._loader = loader
        self._after = after

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self._loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._after()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)
