"""The settings of a pool, validated once when the pool opens."""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

import attrs

from pypit._checks import check_seconds
from pypit._log import DEFAULT_LEVEL, check_category, check_level
from pypit._shared import check_pattern
from pypit._wire import DEFAULT_MAX_FRAME_SIZE

MIN_MAX_FRAME_SIZE = 65_536
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _count(minimum: int, *, optional: bool = False, maximum: int | None = None) -> Any:
    """An int (not a bool) of at least ``minimum`` (and at most ``maximum``); None too if
    ``optional``."""
    expected = f"an int >= {minimum}"
    if maximum is not None:
        expected = f"an int from {minimum} to {maximum}"
    expected += " or None" if optional else ""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if type(value) is not int:
            raise TypeError(f"{attribute.name} must be {expected}, not {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            raise ValueError(f"{attribute.name} must be {expected}, not {value!r}")

    return check


def _seconds(*, positive: bool, optional: bool = False) -> Any:
    """A number of seconds (not a bool) from 0, or above 0 if ``positive``, to 1e9; None
    too if ``optional``."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        check_seconds(attribute.name, value, positive=positive, optional=optional)

    return check


def check_timeout(value: Any, *, optional: bool) -> float | None:
    """A call's or an operation's ``timeout``: a number of seconds above 0, up to 1e9 (any
    int or float, a subclass such as numpy's float64 included, but not a bool), as a float;
    None too if ``optional``."""
    return check_seconds("timeout", value, positive=True, optional=optional)


def _patterns(value: Any) -> tuple[str, ...]:
    """A list of event name patterns; a bare string is refused, not split into letters."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(
            f"telemetry_allow must be a list of name patterns such as ['inference.*'], "
            f"not {value!r}"
        )
    return tuple(value)


def _str_mapping(name: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise TypeError(f"{name} must be a mapping of str to str, not {value!r}")
    return dict(value)


def _env(value: Any) -> dict[str, str]:
    env = _str_mapping("env", value)
    for key, text in env.items():
        if not key or "=" in key or "\0" in key or "\0" in text:
            raise ValueError(
                f"env must map variable names (not empty, without '=' or NUL) to values "
                f"without NUL, not {key!r}: {text!r}"
            )
    return env


def _log_categories(value: Any) -> dict[str, str]:
    categories = _str_mapping("log_categories", value)
    for category, level in categories.items():
        check_category(category)
        check_level(level, f"log_categories[{category!r}]")
    return categories


def _adapter(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    module, sep, qualname = value.partition(":")
    if not sep or not module or not qualname:
        raise ValueError(f"adapter is 'package.module:Class', not {value!r}")
    if module == "__main__":
        # Each worker is a new interpreter that imports the adapter by its module's name,
        # and there __main__ is the worker's own entry point: the class would be missing.
        raise ValueError(
            f"adapter {value!r} names a class of __main__ (the script or notebook that is "
            "running), which a worker cannot import: each worker is a new process whose "
            f"__main__ is pypit's worker. Move class {qualname} into an importable module "
            f"(say myapp/model.py) and name it 'myapp.model:{qualname}'"
        )


def _name(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not _NAME.fullmatch(value):
        raise ValueError(f"a pool name is 1-64 characters of [A-Za-z0-9_.-], not {value!r}")


def _text(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a str, not {value!r}")
    if "\0" in value:
        raise ValueError(f"{attribute.name} must not hold a NUL character, not {value!r}")


Affinity = Literal["hint", "strict", "strict_fail_fast"]
AFFINITIES: tuple[str, ...] = ("hint", "strict", "strict_fail_fast")


def _affinity(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in AFFINITIES:
        raise ValueError(
            f"affinity must be one of {', '.join(map(repr, AFFINITIES))}, not {value!r}"
        )


def _pattern(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_pattern(attribute.name, value)


def _level(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_level(value, attribute.name)


def _amount(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _check_amount(attribute.name, value)


def _check_amount(name: str, value: Any) -> None:
    """A resource amount as Ray takes it: a finite number >= 0, whole above 1, and below
    1 a multiple of 0.0001 (Ray's own rules, checked here so that a pool refuses it before
    any worker starts)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number >= 0, not {value!r}")
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
    if value > 1 and value != int(value):
        raise ValueError(f"{name} must be a whole number above 1 (Ray's rule), not {value!r}")
    if value < 1 and abs(value * 10_000 - round(value * 10_000)) > 1e-6:
        raise ValueError(f"{name} below 1 must be a multiple of 0.0001 (Ray's rule), not {value!r}")


_RAY_OWN: Final = ("CPU", "GPU", "memory", "object_store_memory")


def _resources(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise TypeError(f"resources must be a mapping of str to a number, not {value!r}")
    amounts: dict[str, float] = {}
    for key, amount in value.items():
        if not isinstance(key, str) or not key or key in _RAY_OWN:
            raise ValueError(
                f"resources must name custom resources (CPU and GPU are num_cpus and "
                f"num_gpus; memory and object_store_memory are Ray's own), not {key!r}"
            )
        _check_amount(f"resources[{key!r}]", amount)
        amounts[key] = float(amount)
    return amounts


def _runtime_env(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"runtime_env must be a mapping (Ray's runtime_env) or None, not {value!r}")
    return dict(value)


def _address(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _text(instance, attribute, value)
        if not value.strip():
            raise ValueError(
                "address must be a Ray address ('auto', 'ray://host:10001', ...) or None"
            )


Strategy = Literal["pack", "spread"]


@attrs.frozen(kw_only=True)
class RayWorkers:
    """Run a pool's workers as actors on a Ray cluster: ``open_pool(..., ray=RayWorkers())``.

    Each slot is one actor that runs the ordinary worker process on its node and passes
    its frames to the pool; the pool keeps its own queue, deadlines and supervision (see
    docs/scaling.md). The amounts are reserved per worker, as one bundle per slot of a
    placement group. Ray is imported only when a pool is given this option.
    """

    address: str | None = attrs.field(default=None, validator=_address)
    """The cluster to join (``"auto"``, ``"ray://head:10001"``, ``"10.0.0.1:6379"``); None:
    a local Ray started by the pool and stopped when it closes. A process already
    connected to Ray (``ray.init`` was called) uses that connection, whatever this says,
    and the pool leaves it open."""
    num_cpus: float = attrs.field(default=1, validator=_amount)
    """CPUs reserved for each worker."""
    num_gpus: float = attrs.field(default=0, validator=_amount)
    """GPUs reserved for each worker (fractions share a GPU)."""
    resources: Mapping[str, float] = attrs.field(factory=dict, converter=_resources)
    """Custom resources reserved for each worker, as the nodes declare them."""
    runtime_env: Mapping[str, Any] | None = attrs.field(default=None, converter=_runtime_env)
    """Ray's ``runtime_env`` of the actors (packages, working directory, variables)."""
    strategy: Strategy = attrs.field(default="pack")
    """``pack`` fills as few nodes as possible, ``spread`` puts workers on as many nodes as
    it can (best effort, Ray's ``PACK`` and ``SPREAD`` placement strategies)."""

    @strategy.validator
    def _check_strategy(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in ("pack", "spread"):
            raise ValueError(f"strategy must be 'pack' or 'spread', not {value!r}")

    def __attrs_post_init__(self) -> None:
        if not (self.num_cpus or self.num_gpus or any(self.resources.values())):
            raise ValueError(
                "a Ray worker must reserve something (num_cpus, num_gpus or resources above "
                "0): its placement group bundle cannot be empty"
            )

    def bundle(self) -> dict[str, float]:
        """One slot's placement group bundle."""
        amounts = {"CPU": float(self.num_cpus), "GPU": float(self.num_gpus), **self.resources}
        return {name: amount for name, amount in amounts.items() if amount}


def _ray(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, RayWorkers):
        raise TypeError(f"ray must be a pypit.pool.RayWorkers or None, not {value!r}")


def _default_size() -> int:
    return os.cpu_count() or 1


@attrs.frozen(kw_only=True)
class PoolConfig:
    """Everything :func:`~pypit.pool.open_pool` accepts, the adapter included.

    Times are in seconds. ``None`` for a timeout means no limit.
    """

    adapter: str = attrs.field(validator=[_text, _adapter])
    """The adapter class, ``"package.module:Class"``, imported by each worker."""
    size: int = attrs.field(factory=_default_size, validator=_count(1, maximum=4096))
    """Number of worker processes."""
    name: str = attrs.field(default="default", validator=[_text, _name])
    """The pool's name: in every event, and in worker ids ``<name>_worker_<n>``."""
    max_queue_size: int = attrs.field(default=1000, validator=_count(0))
    """Calls allowed to wait (accepted and not started, in the pool's queue or prefetched in
    a worker); one more is rejected with ``PoolSaturatedError``."""
    queue_timeout: float | None = attrs.field(
        default=None, validator=_seconds(positive=True, optional=True)
    )
    """Longest wait before a call starts, wherever it waits; then ``QueueTimeoutError`` and
    the call never runs."""
    max_concurrency: int = attrs.field(default=1, validator=_count(1))
    """Calls one worker runs at once, sync and async tools together; calls sent beyond it
    wait in the worker and start in the order they came."""
    prefetch: int = attrs.field(default=8, validator=_count(0))
    """Calls of quick commands (see ``prefetch_below``) a busy worker may hold beyond
    ``max_concurrency``, waiting; they count as queued until they start.

    Prefetched calls travel with others in one write and start the moment a
    slot frees, which multiplies throughput for short calls; the price is that a
    prefetched call waits behind the calls of its worker rather than taking
    whichever worker frees first. 0 never prefetches.
    """
    prefetch_below: float = attrs.field(default=0.001, validator=_seconds(positive=False))
    """A command is quick while its calls run less than this many seconds on average (as
    its workers report); unknown commands and streams are slow. Only quick calls are
    prefetched, and never behind a slow one, so a prefetched call waits about
    ``prefetch * prefetch_below`` at most. 0 treats every command but streams as quick."""
    stream_window: int = attrs.field(default=16, validator=_count(1, maximum=2**31 - 1))
    """Chunks of a stream the worker may send ahead of its consumer: when that many were
    sent and not yet taken, the generator is not advanced until the consumer takes some.
    It bounds what a stream holds in the parent (``stream_window`` chunks) whatever the
    consumer does; the consumer's credit goes back in batches of half a window, so a fast
    consumer costs one small frame per ``stream_window // 2`` chunks."""
    status_interval: float = attrs.field(default=5.0, validator=_seconds(positive=False))
    """Period of the ``pool.status`` event; 0 disables it."""
    max_frame_size: int = attrs.field(
        default=DEFAULT_MAX_FRAME_SIZE, validator=_count(MIN_MAX_FRAME_SIZE)
    )
    """Largest message, in bytes, in either direction (at least 64 KiB: a worker's
    handshake lists its tools)."""
    startup_timeout: float = attrs.field(default=30.0, validator=_seconds(positive=True))
    """Longest a worker may take from spawn to ready (import and ``setup()``)."""
    shutdown_timeout: float = attrs.field(default=10.0, validator=_seconds(positive=False))
    """Longest the pool waits for in-flight calls when it closes."""
    stop_grace: float = attrs.field(default=3.0, validator=_seconds(positive=False))
    """After a stop request, how long a worker has before SIGTERM, then again before SIGKILL."""
    restart_backoff: float = attrs.field(default=0.1, validator=_seconds(positive=False))
    """Delay before retrying a worker that failed to start; it doubles with each further
    failure in a row (with jitter), up to ``restart_backoff_max``, and the slot is retried
    for as long as the pool is open. A worker that got ready and then ended is replaced at
    once, always (see docs/supervision.md)."""
    restart_backoff_max: float = attrs.field(default=5.0, validator=_seconds(positive=False))
    """Cap on the back-off delay after failed starts."""
    cancel_grace: float = attrs.field(default=2.0, validator=_seconds(positive=False))
    """How long a worker has to answer a cancelled or timed-out call before it is killed."""
    heartbeat_interval: float = attrs.field(default=1.0, validator=_seconds(positive=False))
    """Period of the heartbeat sent to each worker; 0 disables it."""
    heartbeat_misses: int = attrs.field(default=3, validator=_count(1))
    """Unanswered heartbeats in a row after which a worker is killed and replaced."""
    reconnect_window: float = attrs.field(default=5.0, validator=_seconds(positive=False))
    """How long a worker whose channel broke (while its process lives) has to connect
    again with its token; then it is replaced. 0 replaces it at once. On Ray, how long an
    actor whose node does not answer is retried before its worker is given up."""
    max_requests: int | None = attrs.field(default=None, validator=_count(1, optional=True))
    """Recycle a worker after this many calls."""
    ttl: float | None = attrs.field(default=None, validator=_seconds(positive=True, optional=True))
    """Recycle a worker after this many seconds of service."""
    max_rss_bytes: int | None = attrs.field(default=None, validator=_count(1, optional=True))
    """Recycle a worker whose resident memory (RSS) exceeds this. Checked every heartbeat
    interval, between and during calls: a soft limit, which one call can overshoot."""
    max_vm_bytes: int | None = attrs.field(
        default=None, validator=_count(1, optional=True, maximum=2**63 - 1)
    )
    """A hard limit on each worker's virtual memory (``RLIMIT_AS``, set in the worker
    before the adapter is imported): an allocation past it fails in the worker
    (``MemoryError`` in Python code), whatever the call. Counts address space, not
    resident memory, so leave room for what the interpreter and libraries map."""
    affinity: Affinity = attrs.field(default="hint", validator=_affinity)
    """What ``session_id`` means when the session's worker is busy: ``hint`` runs the call
    on another worker (the session stays with its own), ``strict`` waits for it,
    ``strict_fail_fast`` fails at once."""
    max_sessions: int = attrs.field(default=10_000, validator=_count(1))
    """Sessions remembered for affinity (least recently used are forgotten)."""
    telemetry_allow: tuple[str, ...] = attrs.field(
        factory=tuple, converter=_patterns, validator=attrs.validators.deep_iterable(_pattern)
    )
    """Worker event names accepted beyond the catalog: exact (``"inference.stop"``),
    ``"prefix.*"`` or ``"*"``. Set by the application, never by a worker."""
    telemetry_buffer_size: int = attrs.field(default=65_536, validator=_count(1))
    """Events a worker holds before shipping; past it, events are dropped and counted."""
    sample_interval: float = attrs.field(default=10.0, validator=_seconds(positive=False))
    """Period of python.memory.sampled and python.cpu.sampled in each worker; 0 disables."""
    log_level: str = attrs.field(default=DEFAULT_LEVEL, validator=_level)
    """This pool's log level: debug, info, warning, error or none. Other pools keep
    their own."""
    log_categories: Mapping[str, str] = attrs.field(factory=dict, converter=_log_categories)
    """This pool's levels per category (``pool``, ``worker``, ``rpc``, ``telemetry``), over
    ``log_level``. The ``worker`` level is also the level its workers start with."""
    python: str = attrs.field(default=sys.executable, validator=_text)
    """The interpreter that runs the workers."""
    env: Mapping[str, str] = attrs.field(factory=dict, converter=_env)
    """Extra environment variables for the workers."""
    ray: RayWorkers | None = attrs.field(default=None, validator=_ray)
    """Where the workers run: None, processes of this machine (children of the pool's
    process); a :class:`RayWorkers`, actors on a Ray cluster (see docs/scaling.md). Under
    Ray, ``python`` does not apply: each worker runs the interpreter of its actor."""


def make_config(
    adapter: str, size: int | None, name: str, options: Mapping[str, Any]
) -> PoolConfig:
    """The :class:`PoolConfig` of ``open_pool``'s arguments; an unknown option is refused
    with the closest known one."""
    known = attrs.fields_dict(PoolConfig)
    for option in options:
        if option not in known:
            close = difflib.get_close_matches(option, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"{option!r} is not an option of a pool{hint}")
    settings: dict[str, Any] = {"adapter": adapter, "name": name, **options}
    if size is not None:
        settings["size"] = size
    return PoolConfig(**settings)
