"""The blocking facade: a pool for synchronous code, safe from many threads."""

from __future__ import annotations

import concurrent.futures
import inspect
import json
import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import psutil
import pytest

from pypit import ArgumentsError, PoolClosedError, ToolError, telemetry
from pypit.pool import Pool, SyncPool, start_pool
from tests.pool.conftest import adapter, options
from tests.processes import kill, running, track

ROOT = Path(__file__).parents[2]
INTERRUPTED = Path(__file__).with_name("interrupted_parent.py")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_blocking_execute_and_stream(backend: str) -> None:
    """execute and stream block and return plain values; errors are raised as in async code."""
    with start_pool(adapter(), backend=backend, **options()) as pool:
        assert pool.execute("add", {"a": 1, "b": 2}) == 3
        with pool.stream("count", {"n": 4}) as chunks:
            assert list(chunks) == [1, 2, 3, 4]
        with pytest.raises(ToolError, match="boom"):
            pool.execute("fail")
        assert pool.status().completed == 2
        assert pool.name == "default"
        assert "echo" in pool.tools()


def test_the_blocking_pool_checks_arguments_too() -> None:
    """execute and stream of the blocking facade refuse what does not fit, before anything
    is sent."""
    with start_pool(adapter(), **options()) as pool:
        with pytest.raises(ArgumentsError, match=r"add\(\) missing a required argument: 'b'"):
            pool.execute("add", {"a": 1})
        with pytest.raises(ArgumentsError, match=r"unexpected keyword argument 'x'"):
            with pool.stream("count", {"n": 2, "x": 1}):
                pass
        assert pool.status().requests == 0
        assert pool.execute("add", {"a": 1, "b": 2}) == 3
        assert pool.tools()["add"].signature() == "add(a: float, b: float)"


def test_many_threads_call_at_once() -> None:
    """Sixteen threads share one pool; every result reaches its own caller."""
    results: dict[tuple[int, int], object] = {}
    errors: list[BaseException] = []
    with start_pool(adapter(), **options(size=2)) as pool:

        def work(thread: int) -> None:
            try:
                for i in range(25):
                    results[thread, i] = pool.execute("identity", [thread, i])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert errors == []
    assert results == {(t, i): [t, i] for t in range(16) for i in range(25)}


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_leaving_a_stream_early_cancels_it_at_once(backend: str, tmp_path: Path) -> None:
    """Leaving the block early ends the generator in the worker before the block ends, and
    frees the worker's slot; the pool serves on."""
    notes = tmp_path / "notes"
    with (
        telemetry.capture(("pypit", "rpc", "stream", "closed")) as seen,
        start_pool(adapter(), backend=backend, **options()) as pool,
    ):
        with pool.stream("blobs", {"n": 100_000, "path": str(notes), "delay": 0.002}) as chunks:
            assert [next(chunks)[0], next(chunks)[0]] == [1, 2]
        assert "closed" in notes.read_text().split()
        assert pool.status().in_flight == 0
        assert pool.execute("identity", 9, timeout=5) == 9

    assert [e.metadata["reason"] for e in seen] == ["cancelled"]


def test_iterating_a_stream_without_with_is_a_type_error() -> None:
    """As in async code, a stream iterated outside its block raises TypeError before
    anything is sent."""
    with start_pool(adapter(), **options()) as pool:
        with pytest.raises(TypeError, match=r"with pool\.stream"):
            list(pool.stream("count", {"n": 3}))
        assert pool.status().requests == 0


def test_next_on_a_stream_without_with_gives_the_blocking_advice() -> None:
    """next() on a stream outside its block raises the TypeError of the blocking pool,
    `with pool.stream(...)` (it told the caller to use `async with`), and sends nothing."""
    with start_pool(adapter(), **options()) as pool:
        with pytest.raises(TypeError) as info:
            next(pool.stream("count", {"n": 3}))
        assert str(info.value).startswith(
            "iterate a stream inside its block: `with pool.stream(...) as chunks: for chunk in"
        )
        assert "async" not in str(info.value)
        assert pool.status().requests == 0


def test_a_stream_is_not_iterated_after_its_block_nor_entered_twice() -> None:
    """After its block a stream raises TypeError instead of yielding nothing, and a stream
    is entered once."""
    with start_pool(adapter(), **options()) as pool:
        with pool.stream("count", {"n": 3}) as chunks:
            assert next(chunks) == 1
        with pytest.raises(TypeError, match=r"this stream's block has ended"):
            list(chunks)
        with pytest.raises(TypeError, match="a stream is entered once"):
            with chunks:
                pass
        with pytest.raises(TypeError, match=r"this stream's block has ended"):
            next(chunks)


def test_close_from_another_thread_ends_a_loop_busy_with_a_chunk() -> None:
    """close() from another thread while the consumer is busy with a chunk ends its loop at
    its next step, without an error."""
    taken: list[int] = []
    with start_pool(adapter(), **options()) as pool:
        with pool.stream("count", {"n": 1000, "delay": 0.001}) as chunks:
            closer = threading.Timer(0.1, chunks.close)
            closer.start()
            for chunk in chunks:
                taken.append(chunk)
                time.sleep(0.05)
            closer.join()
        assert pool.execute("identity", 1) == 1
    assert 1 <= len(taken) < 1000


def test_closing_a_stream_from_another_thread_ends_its_iteration(tmp_path: Path) -> None:
    """close() from another thread ends an iteration blocked waiting for a chunk; the
    generator is ended in the worker once its chunk is done (a sync generator cannot be
    interrupted inside one), and its worker serves on."""
    notes = tmp_path / "notes"
    with start_pool(adapter(), **options()) as pool:
        pid = pool.execute("pid")
        with pool.stream("blobs", {"n": 1000, "path": str(notes), "delay": 1.0}) as chunks:
            closer = threading.Timer(0.2, chunks.close)
            closer.start()
            assert list(chunks) == []
            closer.join()
        assert pool.execute("pid", timeout=5) == pid

    assert notes.read_text().split() == ["1", "closed"]


def test_status_events_from_the_loop_thread() -> None:
    """emit_status runs on the pool's loop; handlers see it."""
    with telemetry.capture(("pypit", "pool", "status")) as seen:
        with start_pool(adapter(), **options()) as pool:
            pool.emit_status()
            pids = pool.workers()
        seen.wait_sync(("pypit", "pool", "status"))

    assert list(pids) == ["default_worker_1"]
    assert seen.events[0].measurements["total_workers"] == 1


def test_blocking_control_methods() -> None:
    """The blocking pool controls telemetry, log levels, recycling and sessions too."""
    stop = ("pypit", "python", "tool", "execution", "stop")
    with (
        telemetry.capture(stop) as seen,
        start_pool(adapter("Instrumented"), **options()) as pool,
    ):
        pool.configure_telemetry(enabled=False)
        pool.execute("seed_emit")
        pool.configure_telemetry(enabled=True)
        pool.execute("seed_emit")
        pool.set_worker_level("default_worker_1", "debug", timeout=5.0)
        pool.reset_worker_level("default_worker_1", timeout=5.0)
        with pytest.raises(ValueError, match=r"^timeout must be a number of seconds > 0"):
            pool.set_worker_level("default_worker_1", "debug", timeout=0)
        with pytest.raises(ValueError, match=r"^timeout must be a number of seconds > 0"):
            pool.reset_worker_level("default_worker_1", timeout=-1)
        old = pool.execute("pid", session_id="s")
        pool.recycle_worker("default_worker_1")
        new = pool.execute("pid", session_id="s")
        info = pool.session("s")
        seen.wait_sync(stop)

    assert len(seen) == 1
    assert old != new
    assert info is not None
    assert (info.worker_pid, info.rehomed) == (new, 1)


def test_the_blocking_pool_takes_the_arguments_of_the_async_pool() -> None:
    """Each method of the blocking pool takes the same parameters, with the same defaults,
    as the async pool's method of that name (the level methods lacked ``timeout``)."""
    public = [name for name in vars(Pool) if not name.startswith("_") and name != "aclose"]
    assert "set_worker_level" in public
    for name in public:
        synchronous = inspect.signature(getattr(SyncPool, name)).parameters
        asynchronous = inspect.signature(getattr(Pool, name)).parameters
        assert synchronous == asynchronous, name


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_closed_blocking_pool_raises_pool_closed_error(backend: str) -> None:
    """After the block, every method that needs the pool's loop raises PoolClosedError;
    status() is a read, and returns the closed pool's snapshot as the async pool does."""
    with start_pool(adapter(), backend=backend, **options()) as pool:
        assert pool.execute("identity", 1) == 1

    with pytest.raises(PoolClosedError, match="closed"):
        pool.execute("identity", 1)
    with pytest.raises(PoolClosedError), pool.stream("count", {"n": 2}):
        pass
    status = pool.status()
    assert (status.closed, status.completed, status.total_workers) == (True, 1, 0)


def interrupted_run(api: str, backend: str, call: str, path: Path) -> subprocess.Popen[str]:
    """Start ``interrupted_parent.py``; the caller reads its workers and signals it."""
    return subprocess.Popen(
        [sys.executable, str(INTERRUPTED), api, backend, call, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        text=True,
    )


def wait_for(condition: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("api", ["start_pool", "open_pool"])
def test_ctrl_c_cancels_the_calls_and_stops_the_pool_at_once(
    api: str, backend: str, tmp_path: Path
) -> None:
    """Ctrl-C during a minute-long call raises KeyboardInterrupt in the caller (the blocking
    pool's) or ends the async program; the pool says that it stops and cancels the call,
    and the program exits within a few seconds (not the shutdown_timeout a drain would
    wait), leaving no worker behind."""
    started = tmp_path / "started"
    workers: list[psutil.Process] = []
    with interrupted_run(api, backend, "record", started) as program:
        try:
            assert program.stdout is not None
            workers = track(json.loads(program.stdout.readline()))
            wait_for(started.exists, "the call to start")
            interrupted = time.monotonic()
            program.send_signal(signal.SIGINT)
            out, err = program.communicate(timeout=30)
            took = time.monotonic() - interrupted
        finally:
            program.kill()
            kill(workers)

    # A drain would wait shutdown_timeout (10 s) for the call.
    assert took < 8.0
    assert [worker for worker in workers if running(worker)] == []
    assert ("interrupted" in out.split()) == (api == "start_pool")
    assert "stopping: cancelling 1 call" in out
    assert err.rstrip().endswith("KeyboardInterrupt")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("api", ["start_pool", "open_pool"])
def test_a_second_ctrl_c_kills_the_workers_and_exits_at_once(
    api: str, backend: str, tmp_path: Path
) -> None:
    """While the pool stops after a Ctrl-C, waiting for a worker that cannot stop (it is
    frozen: it acts on nothing before SIGTERM and SIGCONT, a stop_grace later), a second
    Ctrl-C kills the workers left and the program exits at once, leaving none."""
    workers: list[psutil.Process] = []
    with interrupted_run(api, backend, "freeze", tmp_path / "unused") as program:
        try:
            assert program.stdout is not None
            workers = track(json.loads(program.stdout.readline()))

            def frozen() -> bool:
                return any(worker.status() == psutil.STATUS_STOPPED for worker in workers)

            wait_for(frozen, "a worker to freeze")
            program.send_signal(signal.SIGINT)
            if api == "start_pool":
                assert program.stdout.readline() == "interrupted\n"
            time.sleep(0.5)
            interrupted = time.monotonic()
            program.send_signal(signal.SIGINT)
            out, _ = program.communicate(timeout=30)
            took = time.monotonic() - interrupted
        finally:
            program.kill()
            kill(workers)

    # A liveness bound; the kill itself is told by the output below.
    assert took < 5.0
    assert [worker for worker in workers if running(worker)] == []
    assert "stopping now: killing 1 worker" in out


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_blocking_map_and_map_unordered(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The blocking maps return plain iterators inside their block, with the async ones'
    results and errors; the progress callback and a tqdm bar (a stand-in: tqdm is no
    dependency) are driven from the iterating thread."""
    threads: set[int] = set()

    def progress(done: int, total: int | None) -> None:
        threads.add(threading.get_ident())

    class Bar:
        def __init__(self, **kwargs: object) -> None:
            self.n, self.closed = 0, False
            bars.append(self)

        def update(self, n: int) -> None:
            threads.add(threading.get_ident())
            self.n += n

        def close(self) -> None:
            self.closed = True

    bars: list[Bar] = []
    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=Bar))

    with start_pool(adapter(), backend=backend, **options()) as pool:
        with pool.map("identity", range(100), progress=progress) as results:
            assert list(results) == list(range(100))
        with pool.map_unordered("identity", range(100), progress="tqdm") as results:
            assert sorted(results) == list(range(100))
        with pool.map("fail", [{"message": "a"}], return_exceptions=True) as results:
            (error,) = list(results)
        assert isinstance(error, ToolError)
        with pytest.raises(ToolError, match="b"), pool.map("fail", [{"message": "b"}]) as failing:
            list(failing)

    assert threads == {threading.get_ident()}
    assert [(bar.n, bar.closed) for bar in bars] == [(100, True)]


def test_a_blocking_map_is_iterated_inside_its_block_and_stops_when_it_ends(
    tmp_path: Path,
) -> None:
    """Iterating without with is a TypeError before anything is sent; a break leaves
    nothing running, and the worker serves the next call."""
    record = tmp_path / "record"
    inputs = [{"path": str(record), "tag": str(i), "seconds": 0.02} for i in range(200)]
    with start_pool(adapter(), **options()) as pool:
        with pytest.raises(TypeError, match=r"with pool\.map"):
            list(pool.map("identity", [1]))
        assert pool.status().requests == 0
        # chunksize=20: a frame in flight stops between its inputs.
        with pool.map("record", inputs, chunksize=20) as results:
            assert next(results) == "0"
        assert pool.status().in_flight == 0
        ran = len(record.read_text().split())
        assert pool.execute("identity", 1, timeout=5) == 1
        time.sleep(0.1)
        assert len(record.read_text().split()) == ran < 60
        with pytest.raises(TypeError, match="this map is closed"):
            list(results)


def test_submit_returns_futures_for_wait_and_as_completed() -> None:
    """submit returns concurrent.futures futures: as_completed yields each, results and
    errors are theirs."""
    with start_pool(adapter(), **options(size=2)) as pool:
        futures = [pool.submit("identity", i) for i in range(20)]
        failing = pool.submit("fail", {"message": "nope"})
        done = list(concurrent.futures.as_completed([*futures, failing], timeout=30))
        assert sorted(f.result() for f in futures) == list(range(20))
        with pytest.raises(ToolError, match="nope"):
            failing.result()

    assert len(done) == 21


def test_cancelling_a_waiting_future_means_its_call_never_runs(tmp_path: Path) -> None:
    """A call that waits behind another is cancelled: cancel() is True, wait() sees it, and
    the call never runs, even once the worker is free."""
    gate, record = tmp_path / "gate", tmp_path / "record"
    with start_pool(adapter(), **options()) as pool:
        holding = pool.submit("hold", {"gate": str(gate), "tag": "held"})
        wait_for(lambda: pool.status().in_flight == 1, "the first call to run")
        waiting = pool.submit("record", {"path": str(record), "tag": "never"})
        wait_for(lambda: pool.status().queue_depth == 1, "the second call to wait")
        assert waiting.cancel()
        done, _ = concurrent.futures.wait([waiting], timeout=10)
        assert done == {waiting}
        gate.touch()
        assert holding.result(timeout=10) == "held"
        assert pool.execute("identity", 1, timeout=5) == 1

    assert waiting.cancelled()
    assert not record.exists()


def test_cancelling_a_running_future_cancels_its_call(tmp_path: Path) -> None:
    """A running call is cancelled in its worker as a deadline would cancel it: the worker
    answers and serves the next call, and no worker is replaced."""
    gate = tmp_path / "gate"
    with start_pool(adapter(), **options()) as pool:
        pid = pool.execute("pid")
        running = pool.submit("async_hold", {"gate": str(gate)})
        wait_for(lambda: pool.status().in_flight == 1, "the call to run")
        assert running.cancel()
        assert pool.execute("pid", timeout=5) == pid
        assert pool.status().in_flight == 0

    assert running.cancelled()
    assert not gate.exists()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_future_callback_may_call_back_into_the_pool(backend: str) -> None:
    """A callback added before the result runs on a thread of the pool's, not on its
    loop, so a callback that calls pool.execute and pool.submit().result() gets answers."""
    answers: list[object] = []
    threads: list[str] = []
    called = threading.Event()
    with start_pool(adapter(), backend=backend, **options()) as pool:

        def callback(future: concurrent.futures.Future[object]) -> None:
            threads.append(threading.current_thread().name)
            answers.append(pool.execute("identity", future.result()))
            answers.append(pool.submit("identity", "again").result(timeout=10))
            called.set()

        gate_free = pool.submit("sleep", 0.05)
        gate_free.add_done_callback(callback)
        assert called.wait(timeout=20)
        late: list[object] = []
        gate_free.add_done_callback(lambda f: late.append(threading.current_thread().name))

    assert answers == [0.05, "again"]
    assert threads == ["pypit-future-callbacks"]
    assert late == [threading.current_thread().name]
