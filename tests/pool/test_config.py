"""Options and call arguments are checked where they are written, with one-line errors."""

from __future__ import annotations

import math
import re
import socket
import subprocess
import sys
import threading
from typing import Any

import attrs
import pytest

from pypit import telemetry
from pypit._checks import MAX_SECONDS
from pypit.pool import PoolConfig, RayWorkers, open_pool, start_pool
from pypit.pool._config import make_config
from tests.pool.conftest import adapter, options

ABOVE_0 = "a number of seconds > 0 and <= 1e9"
FROM_0 = "a number of seconds from 0 to 1e9"
SECONDS_OPTIONS = [
    field.name for field in attrs.fields(PoolConfig) if str(field.type) in ("float", "float | None")
]

BAD_OPTIONS = [
    ({"size": 2.5}, TypeError, "size must be an int from 1 to 4096, not 2.5"),
    ({"size": True}, TypeError, "size must be an int from 1 to 4096, not True"),
    ({"size": 0}, ValueError, "size must be an int from 1 to 4096, not 0"),
    ({"max_concurrency": 1.5}, TypeError, "max_concurrency must be an int >= 1"),
    ({"max_queue_size": -1}, ValueError, "max_queue_size must be an int >= 0"),
    ({"prefetch": "8"}, TypeError, "prefetch must be an int >= 0, not '8'"),
    ({"max_frame_size": 10}, ValueError, "max_frame_size must be an int >= 65536, not 10"),
    ({"queue_timeout": 0}, ValueError, f"queue_timeout must be {ABOVE_0} or None, not 0"),
    ({"queue_timeout": math.nan}, ValueError, f"queue_timeout must be {ABOVE_0} or None"),
    ({"queue_timeout": 1e300}, ValueError, f"queue_timeout must be {ABOVE_0} or None, not 1e+300"),
    ({"startup_timeout": math.inf}, ValueError, f"startup_timeout must be {ABOVE_0}, not inf"),
    ({"cancel_grace": "2"}, TypeError, f"cancel_grace must be {FROM_0}, not '2'"),
    ({"ttl": -1.0}, ValueError, f"ttl must be {ABOVE_0} or None, not -1.0"),
    ({"prefetch_below": 1e300}, ValueError, f"prefetch_below must be {FROM_0}, not 1e+300"),
    ({"sample_interval": 1e10}, ValueError, f"sample_interval must be {FROM_0}, not 10000000000.0"),
    ({"reconnect_window": 2**64}, ValueError, f"reconnect_window must be {FROM_0}, not 1844"),
    ({"max_rss_bytes": 1.0e9}, TypeError, "max_rss_bytes must be an int >= 1 or None"),
    ({"telemetry_allow": "inference.*"}, TypeError, "telemetry_allow must be a list of name"),
    ({"telemetry_allow": ["ok", ""]}, ValueError, "telemetry_allow holds event name patterns"),
    ({"env": {"A": 1}}, TypeError, "env must be a mapping of str to str"),
    ({"env": ["A=1"]}, TypeError, "env must be a mapping of str to str"),
    ({"log_categories": {"pool": 10}}, TypeError, "log_categories must be a mapping of str"),
    ({"log_categories": {"pools": "info"}}, ValueError, "log_categories' keys must be among"),
    ({"log_categories": {"pool": "loud"}}, ValueError, "log_categories['pool'] must be one of"),
    ({"log_level": "loud"}, ValueError, "log_level must be one of debug, info, warning, error"),
    ({"log_level": 10}, TypeError, "log_level must be one of debug, info, warning, error, none"),
    ({"log_level": None}, TypeError, "log_level must be one of"),
    ({"telemetry_allow": ["inference*"]}, ValueError, "prefix ending in '.*'"),
    ({"telemetry_allow": ["a..b"]}, ValueError, "not 'a..b'"),
    ({"telemetry_allow": ["a.*.b"]}, ValueError, "not 'a.*.b'"),
    ({"telemetry_allow": [".*"]}, ValueError, "not '.*'"),
    ({"telemetry_allow": [3]}, ValueError, "not 3"),
    ({"affinity": "sticky"}, ValueError, "affinity must be one of 'hint', 'strict'"),
    ({"python": None}, TypeError, "python must be a str, not None"),
    ({"name": "a b"}, ValueError, "a pool name is 1-64 characters"),
    ({"name": "models\n"}, ValueError, "a pool name is 1-64 characters"),
    ({"env": {"A": "x\0y"}}, ValueError, "env must map variable names"),
    ({"env": {"A=B": "x"}}, ValueError, "env must map variable names"),
    ({"env": {"": "x"}}, ValueError, "env must map variable names"),
    ({"python": "python\0"}, ValueError, "python must not hold a NUL character"),
    ({"size": 10**12}, ValueError, "size must be an int from 1 to 4096"),
    ({"stream_window": 2**70}, ValueError, "stream_window must be an int from 1 to"),
    ({"max_vm_bytes": 2**63}, ValueError, "max_vm_bytes must be an int from 1 to"),
    ({"ray": {"num_cpus": 1}}, TypeError, "ray must be a pypit.pool.RayWorkers or None, not {"),
    ({"ray": "auto"}, TypeError, "ray must be a pypit.pool.RayWorkers or None, not 'auto'"),
]

BAD_RAY_SETTINGS = [
    ({"num_cpus": -1}, ValueError, "num_cpus must be a finite number >= 0, not -1"),
    ({"num_gpus": "1"}, TypeError, "num_gpus must be a number >= 0, not '1'"),
    ({"num_cpus": math.inf}, ValueError, "num_cpus must be a finite number >= 0, not inf"),
    ({"resources": ["tpu"]}, TypeError, "resources must be a mapping of str to a number"),
    ({"resources": {"GPU": 1}}, ValueError, "resources must name custom resources"),
    ({"resources": {"tpu": True}}, TypeError, "resources['tpu'] must be a number >= 0"),
    ({"resources": {"tpu": math.nan}}, ValueError, "resources['tpu'] must be a finite number"),
    ({"runtime_env": "env"}, TypeError, "runtime_env must be a mapping (Ray's runtime_env)"),
    ({"strategy": "strict_spread"}, ValueError, "strategy must be 'pack' or 'spread'"),
    ({"address": ""}, ValueError, "address must be a Ray address"),
    ({"address": "   "}, ValueError, "address must be a Ray address"),
    ({"num_cpus": 1e-9}, ValueError, "num_cpus below 1 must be a multiple of 0.0001"),
    ({"num_gpus": 1.5}, ValueError, "num_gpus must be a whole number above 1"),
    ({"resources": {"tpu": 0.00001}}, ValueError, "resources['tpu'] below 1 must be a multiple"),
    ({"resources": {"memory": 1}}, ValueError, "memory and object_store_memory are Ray's own"),
    ({"address": 6379}, TypeError, "address must be a str, not 6379"),
    ({"num_cpus": 0}, ValueError, "a Ray worker must reserve something"),
]


@pytest.mark.parametrize(("settings", "kind", "message"), BAD_RAY_SETTINGS)
def test_a_bad_ray_setting_names_itself_its_value_and_what_it_takes(
    settings: dict[str, Any], kind: type[Exception], message: str
) -> None:
    """Ray's settings are checked like the pool's options, in one line, without Ray."""
    with pytest.raises(kind) as info:
        RayWorkers(**settings)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_ray_is_imported_only_by_a_pool_that_runs_on_it() -> None:
    """Ray is optional and heavy: importing pypit and checking a pool's options, Ray's
    included, leave it unimported."""
    code = (
        "import sys, pypit, pypit.pool, pypit.worker, pypit.telemetry\n"
        "from pypit.pool._config import make_config\n"
        "from pypit.pool import RayWorkers\n"
        "make_config('m:C', 2, 'p', {'ray': RayWorkers(num_gpus=0.5, resources={'a': 1})})\n"
        "assert 'ray' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_ray_bundle_holds_what_each_worker_reserves() -> None:
    """Each slot's placement group bundle: the amounts above 0, by Ray's resource names."""
    assert RayWorkers().bundle() == {"CPU": 1.0}
    placement = RayWorkers(num_cpus=0, num_gpus=0.5, resources={"tpu": 2, "unused": 0})
    assert placement.bundle() == {"GPU": 0.5, "tpu": 2.0}


@pytest.mark.parametrize(("settings", "kind", "message"), BAD_OPTIONS)
def test_a_bad_option_names_itself_its_value_and_what_it_takes(
    settings: dict[str, Any], kind: type[Exception], message: str
) -> None:
    """One line, with the option, the value given and what is expected."""
    with pytest.raises(kind) as info:
        PoolConfig(adapter="tests.adapters:Echo", **settings)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert "Attribute(" not in str(info.value)


def test_the_defaults_and_good_values_are_accepted() -> None:
    """The defaults pass their own checks, and so do values of every accepted form."""
    PoolConfig(adapter="tests.adapters:Echo")
    config = PoolConfig(
        adapter="tests.adapters:Echo",
        size=2,
        queue_timeout=1,
        max_frame_size=65_536,
        telemetry_allow=("inference.*", "x.y", "*", "a.b.*"),
        env={"A": "1"},
        ttl=None,
        affinity="strict",
    )
    assert config.telemetry_allow == ("inference.*", "x.y", "*", "a.b.*")
    assert config.log_level == "info"


@pytest.mark.parametrize("option", SECONDS_OPTIONS)
def test_every_duration_takes_up_to_1e9_seconds(option: str) -> None:
    """Each option in seconds takes the bound itself and refuses the next float above it,
    naming the bound: a larger value would break where it ends up (a thread's wait, a
    socket's timeout, an int of nanoseconds)."""
    assert getattr(make_config(adapter(), None, "default", {option: 1e9}), option) == 1e9
    above = math.nextafter(1e9, math.inf)
    message = rf"^{option} must be ({FROM_0}|{ABOVE_0})( or None)?, not {re.escape(repr(above))}$"
    with pytest.raises(ValueError, match=message):
        make_config(adapter(), None, "default", {option: above})


def test_the_bound_fits_where_durations_end_up() -> None:
    """1e9 s fits a thread's wait, a socket's timeout and an int of nanoseconds, which a
    larger duration (1e300, or above threading.TIMEOUT_MAX) overflows."""
    lock = threading.Lock()
    assert lock.acquire(timeout=MAX_SECONDS)
    lock.release()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(MAX_SECONDS)
        assert sock.gettimeout() == MAX_SECONDS
    assert int(MAX_SECONDS * 1e9) < 2**63
    with pytest.raises(OverflowError):
        lock.acquire(timeout=1e300)


@pytest.mark.anyio
async def test_a_pool_opens_serves_and_closes_with_every_duration_at_the_bound() -> None:
    """Every option in seconds at 1e9 at once: the pool opens, serves calls with a timeout
    of 1e9, takes a live change bounded by 1e9 and closes."""
    at_bound = dict.fromkeys(SECONDS_OPTIONS, MAX_SECONDS)
    # Every duration at the bound, those options() sets (status_interval, stop_grace)
    # included: the bound is what the test is about.
    async with open_pool(adapter(), **{**options(), **at_bound}) as pool:
        assert await pool.execute("identity", 1, timeout=MAX_SECONDS) == 1
        await pool.configure_telemetry(sampling_rate=0.5, timeout=MAX_SECONDS)
        assert await pool.execute("identity", 2, timeout=MAX_SECONDS) == 2
    assert pool.status().closed


@pytest.mark.anyio
async def test_an_adapter_of_main_is_refused_before_any_worker_starts() -> None:
    """A class of the running script or notebook (module ``__main__``) cannot be imported
    by a worker, whose ``__main__`` is pypit's: the pool refuses it when it opens, with
    what to do, instead of every worker failing its start."""
    with telemetry.capture(("pypit", "pool", "worker", "spawn_started")) as spawns:
        with pytest.raises(ValueError, match="__main__") as info:
            async with open_pool("__main__:Model", **options()):
                pass
    message = str(info.value)
    assert "adapter '__main__:Model' names a class of __main__" in message
    assert "a worker cannot import" in message
    assert "Move class Model into an importable module" in message
    assert "'myapp.model:Model'" in message
    assert spawns.events == []
    PoolConfig(adapter="myapp.__main__:Model")  # a package's __main__ module is importable


@pytest.mark.anyio
async def test_a_bad_call_argument_is_refused_before_anything_is_sent() -> None:
    """timeout, session_id, correlation_id and affinity are checked in the caller; the
    refused calls are not counted and nothing reaches a worker."""
    async with open_pool(adapter(), **options()) as pool:
        cases: list[tuple[dict[str, Any], type[Exception]]] = [
            ({"timeout": 0}, ValueError),
            ({"timeout": -1}, ValueError),
            ({"timeout": math.nan}, ValueError),
            ({"timeout": math.inf}, ValueError),
            ({"timeout": "5"}, TypeError),
            ({"timeout": True}, TypeError),
            ({"session_id": 1}, TypeError),
            ({"correlation_id": b"id"}, TypeError),
            ({"affinity": "sticky"}, ValueError),
        ]
        for kwargs, kind in cases:
            with pytest.raises(kind, match=next(iter(kwargs))):
                await pool.execute("identity", 1, **kwargs)
        with pytest.raises(ValueError, match=rf"^timeout must be {ABOVE_0} or None, not 1e\+300$"):
            await pool.execute("identity", 1, timeout=1e300)
        status = pool.status()
        assert (status.requests, status.completed, status.failed) == (0, 0, 0)
        assert await pool.execute("identity", 1, timeout=5) == 1

        class Seconds(float):
            """A float subclass, as numpy's float64 is."""

        assert await pool.execute("identity", 2, timeout=Seconds(5.0)) == 2


class Tagged(str):
    """A subclass of str, as an application's own id type may be; its repr does not show
    the class, so an error about it would read like one about a plain str."""


@pytest.mark.anyio
async def test_ids_and_commands_that_subclass_str_are_taken_as_the_str_they_hold() -> None:
    """A str subclass given as command, session_id, correlation_id or worker_id works as
    the plain str (these are pypit's own parameters): the call runs, the worker and the
    events see an exact str, and the session and the worker are found by it."""
    async with open_pool(adapter(), **options()) as pool:
        (worker_id,) = pool.workers()
        with telemetry.capture(("pypit", "rpc", "call", "start")) as starts:
            session_id, _, _ = await pool.execute(
                Tagged("session_state"),
                session_id=Tagged("s-1"),
                correlation_id=Tagged("c-1"),
            )
        assert (type(session_id), session_id) == (str, "s-1")
        (start,) = starts.events
        assert type(start.metadata["correlation_id"]) is str
        assert start.metadata["correlation_id"] == "c-1"
        session = pool.session(Tagged("s-1"))
        assert session is not None
        assert session.worker_id == worker_id
        async with pool.stream(Tagged("session_ids"), 2, session_id=Tagged("s-1")) as chunks:
            assert [chunk async for chunk in chunks] == ["s-1", "s-1"]
        await pool.set_worker_level(Tagged(worker_id), "debug")
        await pool.reset_worker_level(Tagged(worker_id))
        await pool.configure_telemetry(sampling_rate=0.5, worker_id=Tagged(worker_id))
        assert pool._control.message(worker_id).sampling_rate == 0.5


@pytest.mark.anyio
async def test_a_command_that_is_not_a_str_is_a_type_error() -> None:
    """execute and stream refuse a command that is not a str with a TypeError naming it,
    not UnknownCommandError (which says the adapter lacks a tool), before anything is
    sent."""
    async with open_pool(adapter(), **options()) as pool:
        with pytest.raises(TypeError, match=r"^command must be a str, not 1$"):
            await pool.execute(1)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"^command must be a str, not None$"):
            async with pool.stream(None, 2):  # type: ignore[arg-type]
                pass
        assert pool.status().requests == 0


@pytest.mark.anyio
async def test_every_operation_on_a_worker_refuses_a_worker_id_that_is_not_a_str() -> None:
    """recycle_worker, set_worker_level, reset_worker_level and configure_telemetry raise
    the same TypeError for a worker_id of the wrong type (recycle_worker raised
    UnknownWorkerError), and nothing changes."""
    async with open_pool(adapter(), **options()) as pool:
        workers = pool.workers()
        for worker_id in (None, 1):
            message = rf"^worker_id must be a str, not {worker_id}$"
            with pytest.raises(TypeError, match=message):
                await pool.recycle_worker(worker_id)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match=message):
                await pool.set_worker_level(worker_id, "debug")  # type: ignore[arg-type]
            with pytest.raises(TypeError, match=message):
                await pool.reset_worker_level(worker_id)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"^worker_id must be a str or None, not 1$"):
            await pool.configure_telemetry(enabled=False, worker_id=1)  # type: ignore[arg-type]
        assert pool.workers() == workers
        assert pool._control.message(next(iter(workers))).enabled


@pytest.mark.anyio
async def test_idempotent_and_a_session_lookup_are_checked() -> None:
    """idempotent must be a bool (a str such as "yes" was taken as true), and session()
    names session_id when given what is not a str (it raised a bare "unhashable type")."""
    async with open_pool(adapter(), **options()) as pool:
        with pytest.raises(TypeError, match=r"^idempotent must be True or False, not 'yes'$"):
            await pool.execute("identity", 1, idempotent="yes")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"^session_id must be a str, not \[\]$"):
            pool.session([])  # type: ignore[arg-type]
        assert pool.status().requests == 0
        assert await pool.execute("identity", 1, idempotent=True) == 1


def test_an_unknown_option_is_refused_with_the_closest_one() -> None:
    """A misspelt option names itself and the option it resembles, in one line, before any
    worker or thread starts."""
    with pytest.raises(TypeError, match="'sise' is not an option of a pool; did you mean 'size'"):
        make_config("tests.adapters:Echo", None, "default", {"sise": 2})
    with pytest.raises(TypeError, match=r"'colour' is not an option of a pool$"):
        make_config("tests.adapters:Echo", None, "default", {"colour": "red"})


def test_start_pool_checks_its_backend_and_options_before_it_starts_a_thread() -> None:
    """An unknown backend is a ValueError naming the choices (not anyio's LookupError), and
    a bad option is refused in the caller's thread, before the loop thread starts."""
    threads = threading.active_count()
    with pytest.raises(ValueError, match="backend must be one of 'asyncio', 'trio', not 'foo'"):
        with start_pool(adapter(), **options(), backend="foo"):
            pass
    with pytest.raises(TypeError, match=r"size must be an int from 1 to 4096, not 2\.5"):
        with start_pool(adapter(), **options(size=2.5)):
            pass
    with pytest.raises(TypeError, match="did you mean 'queue_timeout'"):
        with start_pool(adapter(), queue_timout=1, **options()):
            pass
    assert threading.active_count() == threads


@pytest.mark.anyio
async def test_a_correlation_id_that_is_not_a_str_is_refused_where_it_is_set() -> None:
    """set_correlation_id refuses anything but a str; one set around it anyway is refused
    by the call, in the caller, and the worker serves on."""
    from pypit._shared import correlation_id_var
    from pypit.worker.telemetry import set_correlation_id

    with pytest.raises(TypeError, match="a correlation id is a str, not 123"):
        set_correlation_id(123)  # type: ignore[arg-type]
    async with open_pool(adapter(), **options()) as pool:
        pid = await pool.execute("pid")
        token = correlation_id_var.set(123)  # type: ignore[arg-type]
        try:
            with pytest.raises(TypeError, match="correlation id must be a str"):
                await pool.execute("identity", 1)
        finally:
            correlation_id_var.reset(token)
        assert await pool.execute("pid") == pid


@pytest.mark.anyio
async def test_live_control_arguments_are_checked_before_anything_changes() -> None:
    """configure_telemetry, set_worker_level and reset_worker_level refuse a bad argument
    with a typed error, and a refused change is not applied."""
    async with open_pool(adapter(), **options()) as pool:
        (worker_id,) = pool.workers()
        cases: list[tuple[dict[str, Any], type[Exception], str]] = [
            ({"enabled": "no"}, TypeError, "enabled must be True, False or None"),
            ({"sampling_rate": "0.5"}, TypeError, "sampling_rate must be a number"),
            ({"sampling_rate": True}, TypeError, "sampling_rate must be a number"),
            ({"sampling_rate": 2.0}, ValueError, "sampling_rate must be a number"),
            ({"deny": ["*"], "timeout": "5"}, TypeError, "timeout must be a number"),
            ({"deny": ["*"], "timeout": 0}, ValueError, "timeout must be a number"),
            ({"deny": ["*"], "timeout": math.nan}, ValueError, "timeout must be a number"),
            ({"deny": ["*"], "timeout": 1e300}, ValueError, f"timeout must be {ABOVE_0}, not"),
            ({"deny": ["*"], "worker_id": 123}, TypeError, "worker_id must be a str"),
            ({"deny": "*"}, TypeError, "deny must be a list of name patterns"),
            ({"deny": ["*", "a..b"]}, ValueError, "deny holds event name patterns"),
            ({"allow": ["inference*"]}, ValueError, "allow holds event name patterns"),
        ]
        for kwargs, kind, message in cases:
            with pytest.raises(kind, match=message):
                await pool.configure_telemetry(**kwargs)
        with pytest.raises(TypeError, match="timeout must be a number"):
            await pool.set_worker_level(worker_id, "debug", timeout="x")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout must be a number"):
            await pool.reset_worker_level(worker_id, timeout=-1)
        with pytest.raises(ValueError, match="level must be one of debug, info"):
            await pool.set_worker_level(worker_id, "loud")
        with pytest.raises(TypeError, match="level must be one of debug, info"):
            await pool.set_worker_level(worker_id, 10)  # type: ignore[arg-type]
        # None of the refused deny lists was applied (the test reads the settings the pool
        # would send the worker, which are private).
        assert pool._control.message(worker_id).deny == []
