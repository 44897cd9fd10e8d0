"""The :telemetry contract of attach / attach_many / detach / execute / list_handlers."""

from __future__ import annotations

import re
import threading
import warnings
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pypit import HandlerExistsError, HandlerNotFoundError, telemetry
from pypit.telemetry import EventName

Calls = list[tuple[EventName, dict[str, Any], dict[str, Any], Any]]


def recorder(calls: Calls, tag: Any = None) -> telemetry.HandlerFunction:
    def handler(event: EventName, measurements: Any, metadata: Any, config: Any) -> None:
        calls.append(
            (event, dict(measurements), dict(metadata), tag if tag is not None else config)
        )

    return handler


def test_execute_runs_handler_with_its_four_arguments() -> None:
    """The handler gets the event, the measurements, the metadata and its config."""
    calls: Calls = []
    telemetry.attach("h", ("a", "b"), recorder(calls), {"cfg": 1})

    telemetry.execute(("a", "b"), {"x": 1}, {"m": 2})

    assert calls == [(("a", "b"), {"x": 1}, {"m": 2}, {"cfg": 1})]


def test_execute_without_metadata_passes_an_empty_mapping() -> None:
    """Metadata defaults to an empty mapping, never None."""
    calls: Calls = []
    telemetry.attach("h", ("a",), recorder(calls))

    telemetry.execute(("a",), {"x": 1})

    assert calls[0][2] == {}


def test_execute_accepts_a_list_event_name() -> None:
    """A list name reaches the handlers attached to the equal tuple, as a tuple."""
    calls: Calls = []
    telemetry.attach("h", ["a", "b"], recorder(calls))

    telemetry.execute(["a", "b"], {})  # type: ignore[arg-type]

    assert [c[0] for c in calls] == [("a", "b")]


def test_execute_refuses_a_dotted_string_that_names_an_attached_event() -> None:
    """``execute("a.b", ...)`` would reach no handler: where ``("a", "b")`` has handlers it
    raises TypeError with the tuple to write, and no handler runs or is detached; after
    detach, the string is as unknown as any other."""
    calls: Calls = []
    telemetry.attach("h", ("a", "b"), recorder(calls))

    with pytest.raises(TypeError, match=r"not a str: 'a\.b'; write \('a', 'b'\)"):
        telemetry.execute("a.b", {})  # type: ignore[arg-type]

    assert calls == []
    assert [h.id for h in telemetry.list_handlers()] == ["h"]
    telemetry.execute(("a", "b"), {})
    assert len(calls) == 1
    telemetry.detach("h")
    telemetry.execute("a.b", {})  # type: ignore[arg-type]
    assert telemetry.list_handlers() == []


def test_execute_with_no_handlers_does_nothing() -> None:
    """An event nobody listens to reaches no handler: not those on its prefix, on a longer
    name or on another event."""
    calls: Calls = []
    for handler_id, event in (
        ("prefix", ("nobody",)),
        ("longer", ("nobody", "listens", "here")),
        ("other", ("somebody", "listens")),
    ):
        telemetry.attach(handler_id, event, recorder(calls))

    telemetry.execute(("nobody", "listens"), {"x": 1})
    telemetry.execute(("somebody", "listens"), {"x": 2})

    assert [c[0] for c in calls] == [("somebody", "listens")]


def test_handler_ids_are_unique_across_events() -> None:
    """A second attach with the same id, even on another event, raises and changes nothing."""
    calls: Calls = []
    telemetry.attach("dup", ("a",), recorder(calls))

    with pytest.raises(HandlerExistsError):
        telemetry.attach("dup", ("b",), recorder(calls))
    with pytest.raises(ValueError, match="already attached"):
        telemetry.attach_many("dup", [("c",)], recorder(calls))

    assert [(h.id, h.event_name) for h in telemetry.list_handlers()] == [("dup", ("a",))]


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ((), ValueError),
        (("a", ""), ValueError),
        (("a", 1), TypeError),
        ("a.b", TypeError),
        (None, TypeError),
    ],
)
def test_bad_event_names_raise_before_any_change(event: Any, error: type[Exception]) -> None:
    """Malformed names raise TypeError/ValueError and attach nothing."""
    with pytest.raises(error):
        telemetry.attach("bad", event, recorder([]))
    with pytest.raises(error):
        telemetry.attach_many("bad", [("good",), event], recorder([]))

    assert telemetry.list_handlers() == []


def test_bad_ids_and_functions_raise_type_error() -> None:
    """A non-str id or a non-callable function is misuse."""
    with pytest.raises(TypeError):
        telemetry.attach(1, ("a",), recorder([]))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        telemetry.attach("h", ("a",), "not callable")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one event"):
        telemetry.attach_many("h", [], recorder([]))

    assert telemetry.list_handlers() == []


def test_attach_many_deduplicates_and_detach_removes_from_every_event() -> None:
    """One handler on several events; detach takes it off all of them."""
    calls: Calls = []
    telemetry.attach_many("many", [("a",), ["b"], ("a",)], recorder(calls))

    assert [h.event_name for h in telemetry.list_handlers()] == [("a",), ("b",)]
    telemetry.execute(("a",), {})
    telemetry.execute(("b",), {})
    telemetry.detach("many")
    telemetry.execute(("a",), {})
    telemetry.execute(("b",), {})

    assert [c[0] for c in calls] == [("a",), ("b",)]
    assert telemetry.list_handlers() == []


def test_detach_unknown_id_raises_lookup_error() -> None:
    """Detaching an id that is not attached raises HandlerNotFoundError."""
    with pytest.raises(HandlerNotFoundError):
        telemetry.detach("never")
    with pytest.raises(LookupError):
        telemetry.detach("never")


def test_detach_keeps_other_handlers_of_the_event() -> None:
    """Only the detached handler leaves an event."""
    calls: Calls = []
    telemetry.attach("one", ("a",), recorder(calls, "one"))
    telemetry.attach("two", ("a",), recorder(calls, "two"))

    telemetry.detach("one")
    telemetry.execute(("a",), {})

    assert [c[3] for c in calls] == ["two"]


def test_handlers_run_in_attach_order() -> None:
    """Attach order is call order."""
    calls: Calls = []
    for name in ["c", "a", "b", "e", "d"]:
        telemetry.attach(name, ("ev",), recorder(calls, name))

    telemetry.execute(("ev",), {})

    assert [c[3] for c in calls] == ["c", "a", "b", "e", "d"]


def test_handler_list_is_a_snapshot_per_dispatch() -> None:
    """A handler detached during a dispatch still runs in it; one attached then does not."""
    calls: Calls = []

    def first(event: EventName, m: Any, md: Any, config: Any) -> None:
        calls.append((event, {}, {}, "first"))
        if not calls[1:]:
            telemetry.detach("second")
            telemetry.attach("third", ("ev",), recorder(calls, "third"))

    telemetry.attach("first", ("ev",), first)
    telemetry.attach("second", ("ev",), recorder(calls, "second"))

    telemetry.execute(("ev",), {})
    assert [c[3] for c in calls] == ["first", "second"]

    telemetry.execute(("ev",), {})
    assert [c[3] for c in calls] == ["first", "second", "first", "third"]


def test_misuse_of_detach_attach_many_and_list_handlers_is_a_clear_type_error() -> None:
    """A handler id that is not a str (detach raised HandlerNotFoundError, or a bare
    "unhashable type"), events that are not a list (attach_many raised "'NoneType' object
    is not iterable") and a dotted prefix (list_handlers listed nothing, silently) raise a
    one-line TypeError; nothing changes."""
    telemetry.attach("kept", ("myapp", "x"), recorder([]))
    with pytest.raises(TypeError, match=r"^a handler id is a str, not 1$"):
        telemetry.detach(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^a handler id is a str, not \['kept'\]$"):
        telemetry.detach(["kept"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^a handler id is a str, not None$"):
        telemetry.attach(None, ("myapp", "y"), recorder([]))  # type: ignore[arg-type]
    message = r"^attach_many takes a list of event names \(tuples of str\), not None$"
    with pytest.raises(TypeError, match=message):
        telemetry.attach_many("id", None, recorder([]))  # type: ignore[arg-type]
    for prefix in ("myapp", "myapp.x"):
        dotted = re.escape(repr(tuple(prefix.split("."))))
        with pytest.raises(
            TypeError, match=rf"^an event name is a tuple of str, not a str: .*{dotted}$"
        ):
            telemetry.list_handlers(prefix)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^an event name is a tuple of str, not int: 1$"):
        telemetry.list_handlers(1)  # type: ignore[arg-type]
    assert [h.id for h in telemetry.list_handlers(())] == ["kept"]
    assert [h.id for h in telemetry.list_handlers([])] == ["kept"]


def test_list_handlers_matches_whole_segments() -> None:
    """A prefix matches whole segments: ("a", "b") does not match ("a", "bc")."""
    telemetry.attach("ab", ("a", "b", "c"), recorder([]))
    telemetry.attach("abc", ("a", "bc"), recorder([]))
    telemetry.attach("x", ("x",), recorder([]), config={"k": 1})

    assert [h.id for h in telemetry.list_handlers(("a", "b"))] == ["ab"]
    assert [h.id for h in telemetry.list_handlers(("a",))] == ["ab", "abc"]
    assert [h.id for h in telemetry.list_handlers()] == ["ab", "abc", "x"]
    assert telemetry.list_handlers(("a", "b", "c", "d")) == []
    (entry,) = telemetry.list_handlers(["x"])
    assert (entry.id, entry.event_name, entry.config) == ("x", ("x",), {"k": 1})


def test_handler_records_are_frozen() -> None:
    """list_handlers entries cannot be changed."""
    telemetry.attach("h", ("a",), recorder([]))
    (entry,) = telemetry.list_handlers()

    with pytest.raises(AttributeError):
        entry.id = "other"  # type: ignore[misc]


def test_failing_handler_is_detached_reported_and_contained() -> None:
    """The emitter sees nothing, the others run, and the failure event has exactly its keys."""
    calls: Calls = []
    failures: Calls = []
    boom = RuntimeError("boom")

    def bad(event: EventName, m: Any, md: Any, config: Any) -> None:
        raise boom

    telemetry.attach("failure-watch", ("telemetry", "handler", "failure"), recorder(failures))
    telemetry.attach("before", ("ev",), recorder(calls, "before"))
    telemetry.attach_many("bad", [("ev",), ("other",)], bad, {"cfg": True})
    telemetry.attach("after", ("ev",), recorder(calls, "after"))

    telemetry.execute(("ev",), {"x": 1})

    assert [c[3] for c in calls] == ["before", "after"]
    assert telemetry.list_handlers(("other",)) == []
    assert [h.id for h in telemetry.list_handlers(("ev",))] == ["before", "after"]
    ((event, measurements, metadata, _),) = failures
    spec = telemetry.catalog_event(("telemetry", "handler", "failure"))
    assert event == ("telemetry", "handler", "failure")
    assert spec.measurement_keys == set(measurements)
    assert spec.metadata_keys == set(metadata)
    assert all(isinstance(v, int) for v in measurements.values())
    assert metadata["event_name"] == ("ev",)
    assert metadata["handler_id"] == "bad"
    assert metadata["handler_config"] == {"cfg": True}
    assert metadata["kind"] == "error"
    assert metadata["reason"] is boom
    assert metadata["stacktrace"] is boom.__traceback__


def test_failure_handler_that_fails_does_not_recurse() -> None:
    """A handler of the failure event that raises is detached once; no loop."""
    calls: list[str] = []

    def bad(event: EventName, m: Any, md: Any, config: Any) -> None:
        calls.append(str(config))
        raise ValueError(config)

    telemetry.attach("bad-failure", ("telemetry", "handler", "failure"), bad, "failure")
    telemetry.attach("bad-event", ("ev",), bad, "event")

    telemetry.execute(("ev",), {})

    assert calls == ["event", "failure"]
    assert telemetry.list_handlers() == []


def test_failing_handler_logs_an_error_once(capsys: pytest.CaptureFixture[str]) -> None:
    """The failure is logged once, with the handler id."""

    def bad(event: EventName, m: Any, md: Any, config: Any) -> None:
        raise KeyError("lost")

    telemetry.attach("logged", ("ev",), bad)
    telemetry.execute(("ev",), {})
    telemetry.execute(("ev",), {})

    out = capsys.readouterr().out
    assert out.count("telemetry handler failed and was detached") == 1
    assert "logged" in out


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_base_exceptions_from_handlers_propagate(exc_type: type[BaseException]) -> None:
    """BaseException is never swallowed, and the handler stays attached."""

    def bad(event: EventName, m: Any, md: Any, config: Any) -> None:
        raise exc_type

    telemetry.attach("base", ("ev",), bad)

    with pytest.raises(exc_type):
        telemetry.execute(("ev",), {})
    assert [h.id for h in telemetry.list_handlers()] == ["base"]


def test_concurrent_attach_detach_while_executing_loses_nothing() -> None:
    """Threads attaching and detaching while others execute: no error, no lost handler."""
    errors: list[BaseException] = []
    stop = threading.Event()
    hits = [0]

    def hit(event: EventName, m: Any, md: Any, config: Any) -> None:
        hits[0] += 1

    telemetry.attach("stable", ("ev",), hit)

    def churn(n: int) -> None:
        try:
            for i in range(300):
                telemetry.attach_many(f"churn-{n}-{i}", [("ev",), ("ev", str(n))], hit)
            for i in range(0, 300, 2):
                telemetry.detach(f"churn-{n}-{i}")
        except BaseException as exc:
            errors.append(exc)

    def emit() -> None:
        try:
            while not stop.is_set():
                telemetry.execute(("ev",), {})
        except BaseException as exc:
            errors.append(exc)

    emitters = [threading.Thread(target=emit) for _ in range(2)]
    churners = [threading.Thread(target=churn, args=(n,)) for n in range(4)]
    for t in emitters + churners:
        t.start()
    for t in churners:
        t.join()
    stop.set()
    for t in emitters:
        t.join()

    assert errors == []
    ids = {h.id for h in telemetry.list_handlers(("ev",)) if h.event_name == ("ev",)}
    expected = {"stable"} | {f"churn-{n}-{i}" for n in range(4) for i in range(1, 300, 2)}
    assert expected == ids
    hits[0] = 0
    telemetry.execute(("ev",), {})
    assert len(expected) == hits[0]


segments = st.text(min_size=1, max_size=12)
names = st.lists(segments, min_size=1, max_size=6).map(tuple)


@given(name=names, other=names)
def test_any_valid_name_round_trips(name: EventName, other: EventName) -> None:
    """Any non-empty tuple of non-empty str is a name; events reach only their own handlers."""
    calls: Calls = []
    with warnings.catch_warnings():
        # Hypothesis also draws the constants of the code, "pypit" among them.
        warnings.simplefilter("ignore", telemetry.UnknownEventWarning)
        telemetry.attach("prop", name, recorder(calls))
    try:
        telemetry.execute(name, {"v": 1})
        telemetry.execute(other, {"v": 2})
    finally:
        telemetry.detach("prop")

    expected = [1] if name != other else [1, 2]
    assert expected == [c[1]["v"] for c in calls]


@given(name=st.lists(st.one_of(st.integers(), st.none(), st.just("")), min_size=1).map(tuple))
def test_names_with_bad_segments_are_refused(name: tuple[Any, ...]) -> None:
    """Any segment that is not a non-empty str is refused with TypeError or ValueError."""
    with pytest.raises((TypeError, ValueError)):
        telemetry.attach("prop", name, recorder([]))
    assert telemetry.list_handlers() == []


# -- mistakes a newcomer makes, caught where they are written -----------------------------


def test_a_misspelled_pypit_event_warns_with_the_closest_name() -> None:
    """A typo under ("pypit", ...) warns, naming the handler and the closest catalog event,
    pointing at the caller's line; the handler is attached all the same."""
    with pytest.warns(telemetry.UnknownEventWarning) as caught:
        telemetry.attach("typo", ("pypit", "rpc", "calls", "stop"), recorder([]))

    (warning,) = caught
    message = str(warning.message)
    assert "'typo'" in message
    assert "('pypit', 'rpc', 'calls', 'stop')" in message
    assert "did you mean ('pypit', 'rpc', 'call', 'stop')?" in message
    assert warning.filename == __file__
    assert [(h.id, h.event_name) for h in telemetry.list_handlers()] == [
        ("typo", ("pypit", "rpc", "calls", "stop"))
    ]


def test_a_pypit_prefix_warns_that_handlers_take_whole_names() -> None:
    """Attaching to a prefix such as ("pypit", "pool") warns that it is a prefix, with an
    event under it; each unknown name of attach_many warns once."""
    with pytest.warns(telemetry.UnknownEventWarning) as caught:
        telemetry.attach_many(
            "prefixes",
            [("pypit", "pool"), ("pypit", "pool", "status"), ("pypit", "rpc", "stream")],
            recorder([]),
        )

    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "('pypit', 'pool'), which pypit never emits: it is a prefix of 14 events" in messages[0]
    assert "('pypit', 'pool', 'initialized')" in messages[0]
    assert "('pypit', 'rpc', 'stream'), which pypit never emits: it is a prefix" in messages[1]
    assert len(telemetry.list_handlers()) == 3


@pytest.mark.parametrize(
    ("name", "closest"),
    [
        (("telemetry", "handler", "failed"), "('telemetry', 'handler', 'failure')?"),
        (("telemetry", "handler"), "a prefix of ('telemetry', 'handler', 'failure')"),
        (("PYPIT", "pool", "status"), "('pypit', 'pool', 'status')? (names are case-sensitive)"),
        (("Pypit", "rpc", "call", "stpo"), "('pypit', 'rpc', 'call', 'stop')? (names are case"),
        (("Pypit", "python", "job", "stop"), "('pypit', 'python', 'job', 'stop')? (names are"),
    ],
)
def test_a_typo_under_the_bus_root_or_in_the_case_of_pypit_warns(
    name: EventName, closest: str
) -> None:
    """A name the bus never emits under its own ("telemetry", ...), and "pypit" in another
    case (which no event of pypit has), warn as typos under ("pypit", ...) do, naming the
    closest event; the handler is attached all the same."""
    with pytest.warns(telemetry.UnknownEventWarning) as caught:
        telemetry.attach("typo", name, recorder([]))

    (warning,) = caught
    assert f"handler 'typo' is attached to {name!r}, which pypit never emits: " in str(
        warning.message
    )
    assert closest in str(warning.message)
    assert warning.filename == __file__
    assert [h.event_name for h in telemetry.list_handlers()] == [name]


def test_catalog_events_worker_events_and_other_roots_do_not_warn() -> None:
    """Every catalog event, any ("pypit", "python", ...) name (a pool may allow it) and
    names outside ("pypit", ...) attach without a warning."""
    names = [
        *(spec.name for spec in telemetry.CATALOG),
        ("pypit", "python", "inference", "start"),
        ("pypit", "python", "call", "anything"),
        ("myapp", "rpc", "calls", "stop"),
        ("pypit",),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        telemetry.attach_many("quiet", names[:-1], recorder([]))

    assert [str(w.message) for w in caught] == []
    with pytest.warns(telemetry.UnknownEventWarning, match=r"\('pypit',\), which pypit never"):
        telemetry.attach("root", ("pypit",), recorder([]))


def test_an_unknown_name_under_warnings_as_errors_attaches_nothing() -> None:
    """An application that turns warnings into errors gets the error before any change."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", telemetry.UnknownEventWarning)
        with pytest.raises(telemetry.UnknownEventWarning, match="pool', 'status'"):
            telemetry.attach("strict", ("pypit", "pool", "stauts"), recorder([]))

    assert telemetry.list_handlers() == []


def test_a_handler_that_cannot_take_four_arguments_is_refused_at_attach() -> None:
    """Too few or too many parameters raise TypeError naming the handler id, the function
    and the four arguments, before anything is attached."""

    def two(event: EventName, measurements: Any) -> None:
        return None

    def five(event: Any, measurements: Any, metadata: Any, config: Any, extra: Any) -> None:
        return None

    def keyword_only(event: Any, measurements: Any, metadata: Any, config: Any, *, k: Any) -> None:
        return None

    for handler in (two, five, keyword_only):
        with pytest.raises(TypeError) as info:
            telemetry.attach_many("wrong", [("a",), ("b",)], handler)  # type: ignore[arg-type]
        message = str(info.value)
        assert message.startswith("handler 'wrong': ")
        assert handler.__qualname__ in message
        assert "(event, measurements, metadata, config)" in message

    assert telemetry.list_handlers() == []


def test_handlers_of_every_readable_shape_are_accepted() -> None:
    """Four parameters, defaults, *args, bound methods, partials and callables whose
    signature cannot be read are all attached."""
    import functools

    class Sink:
        def handle(self, event: Any, measurements: Any, metadata: Any, config: Any) -> None:
            return None

        def __call__(self, *args: Any) -> None:
            return None

    def with_default(event: Any, measurements: Any, metadata: Any, config: Any = None) -> None:
        return None

    def three_and_bound(prefix: str, e: Any, m: Any, md: Any, c: Any) -> None:
        return None

    handlers: list[Any] = [
        with_default,
        Sink().handle,
        Sink(),
        functools.partial(three_and_bound, "p"),
        max,  # a builtin without a signature Python can read
    ]
    for n, handler in enumerate(handlers):
        telemetry.attach(f"shape-{n}", ("a",), handler)

    assert len(telemetry.list_handlers()) == len(handlers)


@pytest.mark.parametrize(
    "events",
    ["pypit.rpc.call.stop", ("pypit", "rpc", "call", "stop"), ["pypit", "rpc", "call", "stop"]],
)
def test_one_event_name_where_a_list_belongs_has_its_own_message(events: Any) -> None:
    """attach_many given one name (a str, or a tuple or list of str) says so, not that
    'p' is not a tuple."""
    with pytest.raises(TypeError) as info:
        telemetry.attach_many("x", events, recorder([]))

    message = str(info.value)
    assert message.startswith(
        "attach_many takes a list of event names (tuples of str), not one event name"
    )
    assert "use attach(...) for one event, or wrap it in a list" in message
    assert "'p'" not in message
    assert telemetry.list_handlers() == []


def test_a_dotted_string_event_name_says_how_to_write_it() -> None:
    """attach("h", "a.b", f) answers with the tuple to write."""
    with pytest.raises(TypeError) as info:
        telemetry.attach("h", "pypit.rpc.call.stop", recorder([]))  # type: ignore[arg-type]

    assert str(info.value) == (
        "an event name is a tuple of str, not a str: 'pypit.rpc.call.stop'; "
        "write ('pypit', 'rpc', 'call', 'stop')"
    )
