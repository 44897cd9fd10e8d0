"""The settings of a pool, validated once when the pool opens."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import attrs

from pypit._log import check_level
from pypit._wire import DEFAULT_MAX_FRAME_SIZE

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _non_negative(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _optional_positive(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be > 0 or None, got {value!r}")


def _adapter(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    module, sep, qualname = value.partition(":")
    if not sep or not module or not qualname:
        raise ValueError(f"adapter is 'package.module:Class', not {value!r}")


def _name(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not _NAME.match(value):
        raise ValueError(f"a pool name is 1-64 characters of [A-Za-z0-9_.-], not {value!r}")


def _pattern(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} holds event name patterns (str), not {value!r}")


def _level(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    check_level(value)


def _default_size() -> int:
    return os.cpu_count() or 1


@attrs.frozen(kw_only=True)
class PoolConfig:
    """Everything :func:`~pypit.pool.open_pool` accepts, the adapter included.

    Times are in seconds. ``None`` for a timeout means no limit.
    """

    adapter: str = attrs.field(validator=[attrs.validators.instance_of(str), _adapter])
    """The adapter class, ``"package.module:Class"``, imported by each worker."""
    size: int = attrs.field(
        factory=_default_size, validator=[attrs.validators.instance_of(int), _positive]
    )
    """Number of worker processes."""
    name: str = attrs.field(default="default", validator=[attrs.validators.instance_of(str), _name])
    """The pool's name: in every event, and in worker ids ``<name>_worker_<n>``."""
    max_queue_size: int = attrs.field(default=1000, validator=_non_negative)
    """Calls allowed to wait (accepted and not started, in the pool's queue or prefetched in
    a worker); one more is rejected with ``PoolSaturatedError``."""
    queue_timeout: float | None = attrs.field(default=None, validator=_optional_positive)
    """Longest wait before a call starts, wherever it waits; then ``QueueTimeoutError`` and
    the call never runs."""
    max_concurrency: int = attrs.field(default=1, validator=_positive)
    """Calls one worker runs at once (threads for sync tools, tasks for async ones)."""
    prefetch: int = attrs.field(default=8, validator=_non_negative)
    """Calls of quick commands (see ``prefetch_below``) a busy worker may hold beyond
    ``max_concurrency``, waiting; they count as queued until they start.

    Prefetched calls travel with others in one write and start the moment a
    slot frees, which multiplies throughput for short calls; the price is that a
    prefetched call waits behind the calls of its worker rather than taking
    whichever worker frees first. 0 never prefetches.
    """
    prefetch_below: float = attrs.field(default=0.001, validator=_non_negative)
    """A command is quick while its calls run less than this many seconds on average (as
    its workers report); unknown commands and streams are slow. Only quick calls are
    prefetched, and never behind a slow one, so a prefetched call waits about
    ``prefetch * prefetch_below`` at most. 0 treats every command but streams as quick."""
    stream_window: int = attrs.field(
        default=16, validator=[attrs.validators.instance_of(int), _positive]
    )
    """Chunks of a stream the worker may send ahead of its consumer: when that many were
    sent and not yet taken, the generator is not advanced until the consumer takes some.
    It bounds what a stream holds in the parent (``stream_window`` chunks) whatever the
    consumer does; the consumer's credit goes back in batches of half a window, so a fast
    consumer costs one small frame per ``stream_window // 2`` chunks."""
    status_interval: float = attrs.field(default=5.0, validator=_non_negative)
    """Period of the ``pool.status`` event; 0 disables it."""
    max_frame_size: int = attrs.field(default=DEFAULT_MAX_FRAME_SIZE, validator=_positive)
    """Largest message, in bytes, in either direction."""
    startup_timeout: float = attrs.field(default=30.0, validator=_positive)
    """Longest a worker may take from spawn to ready (import and ``setup()``)."""
    shutdown_timeout: float = attrs.field(default=10.0, validator=_non_negative)
    """Longest the pool waits for in-flight calls when it closes."""
    stop_grace: float = attrs.field(default=3.0, validator=_non_negative)
    """After a stop request, how long a worker has before SIGTERM, then again before SIGKILL."""
    restart_backoff: float = attrs.field(default=0.1, validator=_non_negative)
    """Delay before retrying a worker that failed to start; it doubles with each further
    failure (with jitter), up to ``restart_backoff_max``. A worker that was serving and
    died is replaced at once."""
    restart_backoff_max: float = attrs.field(default=5.0, validator=_non_negative)
    """Cap on the back-off delay after failed starts."""
    max_restarts: int = attrs.field(default=10, validator=_non_negative)
    """Restarts of one slot allowed within ``restart_window``; one more and the slot stays
    down for a window (the pool reports itself degraded) instead of looping hot."""
    restart_window: float = attrs.field(default=60.0, validator=_positive)
    """The window, in seconds, of ``max_restarts``."""
    cancel_grace: float = attrs.field(default=2.0, validator=_non_negative)
    """How long a worker has to answer a cancelled or timed-out call before it is killed."""
    heartbeat_interval: float = attrs.field(default=1.0, validator=_non_negative)
    """Period of the heartbeat sent to each worker; 0 disables it."""
    heartbeat_misses: int = attrs.field(default=3, validator=_positive)
    """Unanswered heartbeats in a row after which a worker is killed and replaced."""
    reconnect_window: float = attrs.field(default=5.0, validator=_non_negative)
    """How long a worker whose channel broke (while its process lives) has to connect
    again with its token; then it is replaced. 0 replaces it at once."""
    max_requests: int | None = attrs.field(default=None, validator=_optional_positive)
    """Recycle a worker after this many calls."""
    ttl: float | None = attrs.field(default=None, validator=_optional_positive)
    """Recycle a worker after this many seconds of service."""
    max_rss_bytes: int | None = attrs.field(default=None, validator=_optional_positive)
    """Recycle a worker whose resident memory (RSS) exceeds this."""
    affinity: str = attrs.field(
        default="hint", validator=attrs.validators.in_(("hint", "strict", "strict_fail_fast"))
    )
    """What ``session_id`` means: ``hint`` prefers the session's worker, ``strict`` waits
    for it, ``strict_fail_fast`` fails at once when it is busy."""
    max_sessions: int = attrs.field(default=10_000, validator=_positive)
    """Sessions remembered for affinity (least recently used are forgotten)."""
    telemetry_allow: tuple[str, ...] = attrs.field(
        factory=tuple, converter=tuple, validator=attrs.validators.deep_iterable(_pattern)
    )
    """Worker event names accepted beyond the catalog: exact (``"inference.stop"``),
    ``"prefix.*"`` or ``"*"``. Set by the application, never by a worker."""
    telemetry_buffer_size: int = attrs.field(default=65_536, validator=_positive)
    """Events a worker holds before shipping; past it, events are dropped and counted."""
    sample_interval: float = attrs.field(default=10.0, validator=_non_negative)
    """Period of python.memory.sampled and python.cpu.sampled in each worker; 0 disables."""
    log_level: str | None = attrs.field(default=None, validator=attrs.validators.optional(_level))
    """pypit's log level in this process (debug, info, warning, error or none), and the
    level the workers start with."""
    log_categories: Mapping[str, str] = attrs.field(factory=dict, converter=dict)
    """Levels per category (``pool``, ``worker``, ``rpc``, ``telemetry``), over ``log_level``."""
    python: str = attrs.field(default=sys.executable)
    """The interpreter that runs the workers."""
    env: Mapping[str, str] = attrs.field(factory=dict, converter=dict)
    """Extra environment variables for the workers."""
