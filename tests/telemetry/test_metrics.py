"""Metric definitions, reporters and the poller."""

from __future__ import annotations

import inspect
import io
import math
import re
import socket
import typing
import urllib.request
import warnings
from collections.abc import Iterable
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from pypit import telemetry
from pypit.telemetry import metrics

STOP = ("app", "call", "stop")


def test_name_means_event_and_measurement() -> None:
    """ "a.b.c.d" is event (a, b, c) and measurement d; both may be given explicitly."""
    metric = metrics.summary("pypit.python.call.stop.duration", unit=("native", "millisecond"))
    assert metric.event_name == ("pypit", "python", "call", "stop")
    assert metric.measurement == "duration"
    assert metric.value({"duration": 2_500_000}, {}) == 2.5

    explicit = metrics.last_value(
        "my.metric", event_name="app.call.stop", measurement=lambda m, md: m["a"] + m["b"]
    )
    assert explicit.event_name == STOP
    assert explicit.value({"a": 1, "b": 2}, {}) == 3


def test_counter_counts_events_without_a_measurement() -> None:
    """A counter's value is 1 per event, whatever the measurements."""
    metric = metrics.counter("app.call.stop.count")
    assert metric.value({}, {}) == 1


@pytest.mark.parametrize(
    ("unit", "value", "expected"),
    [
        (("native", "millisecond"), 3_000_000, 3.0),
        (("native", "second"), 1_500_000_000, 1.5),
        (("byte", "kilobyte"), 2048, 2.048),
        ("millisecond", 7, 7),
        (None, 7, 7),
    ],
)
def test_unit_conversion(unit: Any, value: int, expected: float) -> None:
    """("native", "millisecond") divides nanoseconds; a single unit converts nothing."""
    metric = metrics.sum("app.call.stop.v", unit=unit)
    assert metric.value({"v": value}, {}) == pytest.approx(expected)


def test_tags_tag_values_keep_and_drop() -> None:
    """tags pick metadata (after tag_values); keep/drop filter events."""
    metric = metrics.counter(
        "app.call.stop.count",
        tags=["kind"],
        tag_values=lambda md: {**md, "kind": md["command"].upper()},
        keep=lambda md: md["command"] != "skip",
    )
    assert metric.tag_set({"command": "run"}) == {"kind": "RUN"}
    assert metric.accepts({"command": "run"})
    assert not metric.accepts({"command": "skip"})
    dropping = metrics.counter("app.call.stop.count", drop=lambda md: md.get("x") == 1)
    assert not dropping.accepts({"x": 1})
    assert metrics.counter("a.b.count", tags=["missing"]).tag_set({}) == {"missing": None}


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: metrics.counter("single"), ValueError),
        (lambda: metrics.counter("a..b"), ValueError),
        (lambda: metrics.summary("a.b.c", unit=("native", "byte")), ValueError),
        (lambda: metrics.summary("a.b.c", unit="parsec"), ValueError),
        (lambda: metrics.counter("a.b.c", keep=lambda m: True, drop=lambda m: True), ValueError),
        (lambda: metrics.counter("a.b.c", tags=[1]), TypeError),  # type: ignore[list-item]
        (lambda: metrics.counter("a.b.c", measurement=3), TypeError),  # type: ignore[arg-type]
        (
            lambda: metrics.distribution("a.b.c", reporter_options={"buckets": [3, 1]}),
            ValueError,
        ),
    ],
)
def test_invalid_definitions_raise_at_construction(build: Any, error: type[Exception]) -> None:
    """A bad definition fails where it is written, with a clear message."""
    with pytest.raises(error):
        build()


TAGS = "tags must be a list of metadata keys such as ['pool_name'], not "
BUCKETS = "buckets must be a list of increasing numbers (no NaN) such as [0.1, 1, 10], not "


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"tags": "pool_name"}, TypeError, TAGS + "'pool_name'"),
        ({"tags": None}, TypeError, TAGS + "None"),
        ({"tags": ["pool_name", 1]}, TypeError, TAGS + "['pool_name', 1]"),
        ({"reporter_options": "buckets"}, TypeError, "reporter_options must be a mapping, not "),
        ({"reporter_options": {"buckets": [1, math.nan, 2]}}, ValueError, BUCKETS + "[1, nan, 2]"),
        ({"reporter_options": {"buckets": [math.nan]}}, ValueError, BUCKETS + "[nan]"),
        ({"reporter_options": {"buckets": [1, 1]}}, ValueError, BUCKETS + "[1, 1]"),
        ({"reporter_options": {"buckets": []}}, ValueError, BUCKETS + "[]"),
        ({"reporter_options": {"buckets": "0.1"}}, TypeError, BUCKETS + "'0.1'"),
        ({"reporter_options": {"buckets": [1, "2"]}}, TypeError, BUCKETS + "[1, '2']"),
    ],
)
def test_a_sequence_argument_refuses_a_str_and_buckets_must_increase(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    """A bare str where a list of str goes is refused (tags="pool_name" made one tag per
    letter), and so are buckets holding NaN, not increasing or not numbers, each with a
    one-line message naming the argument and the value."""
    with pytest.raises(error) as info:
        metrics.distribution("myapp.req.size", **options)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_one_item_where_a_list_goes_or_a_list_where_a_function_goes_is_refused() -> None:
    """A drop that is not a function (it was accepted, and failed at each event), one
    metric given to a reporter and one function given to a poller (bare "not iterable"
    errors) raise a TypeError saying what the argument takes."""
    with pytest.raises(TypeError, match=r"^drop is a function of the metadata, not \['x'\]$"):
        metrics.counter("myapp.req.count", drop=["x"])  # type: ignore[arg-type]
    metric = metrics.counter("myapp.req.count")
    with pytest.raises(TypeError, match=r"^a reporter takes a list of metric definitions "):
        metrics.ConsoleReporter(metric)  # type: ignore[arg-type]

    def measure() -> None:
        """A measurement."""

    with pytest.raises(TypeError, match=r"^a poller takes a list of functions without arg"):
        metrics.Poller(measure)  # type: ignore[arg-type]


def test_good_tags_and_buckets_are_kept() -> None:
    """Tags from any iterable of str, and increasing buckets (infinity included)."""
    metric = metrics.distribution(
        "myapp.req.size",
        tags=(tag for tag in ["pool_name"]),
        reporter_options={"buckets": (0.1, 1, math.inf)},
    )
    assert metric.tags == ("pool_name",)
    assert metric.reporter_options["buckets"] == [0.1, 1, math.inf]


def test_console_reporter_prints_each_update() -> None:
    """The console reporter prints one line per metric update, and detaches on stop."""
    out = io.StringIO()
    definitions = [
        metrics.summary("app.call.stop.duration", unit=("native", "millisecond"), tags=["cmd"]),
        metrics.counter("app.call.stop.count"),
    ]
    with metrics.ConsoleReporter(definitions, stream=out):
        telemetry.execute(STOP, {"duration": 2_000_000}, {"cmd": "predict"})
    telemetry.execute(STOP, {"duration": 1}, {"cmd": "after"})

    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "app.call.stop.duration (summary)" in lines[0]
    assert "value=2.0 millisecond" in lines[0]
    assert "cmd=predict" in lines[0]
    assert telemetry.list_handlers() == []


def scrape(port: int) -> dict[str, list[Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    families: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = list(family.samples)
    return families


def test_prometheus_reporter_serves_every_type() -> None:
    """Counter, sum, last_value, summary and histogram over a real HTTP scrape."""
    definitions = [
        metrics.counter("app.call.stop.count", tags=["cmd"]),
        metrics.sum("app.call.stop.bytes", unit="byte"),
        metrics.last_value("app.call.stop.depth", tags=["cmd"]),
        metrics.summary("app.call.stop.duration", unit=("native", "millisecond")),
        metrics.distribution(
            "app.call.stop.size", reporter_options={"buckets": [10, 100]}, description="sizes"
        ),
    ]
    with metrics.PrometheusReporter(definitions, port=0) as reporter:
        for depth, size in ((3, 5), (7, 50)):
            telemetry.execute(
                STOP,
                {"bytes": 10, "depth": depth, "duration": 4_000_000, "size": size},
                {"cmd": "run"},
            )
        assert reporter.port is not None
        families = scrape(reporter.port)

    def sample(family: str, name: str, **labels: str) -> float:
        for s in families[family]:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
        raise AssertionError(f"no {name} {labels} in {families.get(family)}")

    assert sample("app_call_stop", "app_call_stop_total", cmd="run") == 2
    assert sample("app_call_stop_bytes", "app_call_stop_bytes_total") == 20
    assert sample("app_call_stop_depth", "app_call_stop_depth", cmd="run") == 7
    assert (
        sample("app_call_stop_duration_milliseconds", "app_call_stop_duration_milliseconds_sum")
        == 8
    )
    assert sample("app_call_stop_size", "app_call_stop_size_bucket", le="10.0") == 1
    assert sample("app_call_stop_size", "app_call_stop_size_bucket", le="100.0") == 2
    assert telemetry.list_handlers() == []


def test_prometheus_reporter_registers_with_the_applications_registry() -> None:
    """Given a registry, the reporter adds its metrics there and removes them on stop."""
    registry = CollectorRegistry()
    with metrics.PrometheusReporter([metrics.counter("app.call.stop.count")], registry=registry):
        telemetry.execute(STOP, {}, {})
        assert registry.get_sample_value("app_call_stop_total") == 1
    assert registry.get_sample_value("app_call_stop_total") is None


def registered(registry: CollectorRegistry) -> list[str]:
    """The names of the metric families in ``registry``."""
    return sorted(family.name for family in registry.collect())


def test_a_prometheus_reporter_whose_port_is_taken_leaves_nothing_registered() -> None:
    """A start that cannot serve raises an OSError naming the address, leaves the
    application's registry as it was, and can be tried again once the port is free."""
    registry = CollectorRegistry()
    definitions = [metrics.counter("app.call.stop.count"), metrics.last_value("app.call.stop.v")]
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    reporter = metrics.PrometheusReporter(definitions, registry=registry, port=port)
    try:
        with pytest.raises(OSError, match="PrometheusReporter cannot serve") as info:
            reporter.start()
    finally:
        taken.close()

    assert f"PrometheusReporter cannot serve /metrics on 127.0.0.1:{port}: " in str(info.value)
    assert registered(registry) == []
    assert telemetry.list_handlers() == []
    assert reporter.port is None

    with reporter:
        telemetry.execute(STOP, {"v": 4}, {})
        assert reporter.port == port
        assert registry.get_sample_value("app_call_stop_v") == 4
    assert registered(registry) == []


def test_a_prometheus_reporter_whose_names_clash_leaves_the_registry_as_it_was() -> None:
    """When one of its metrics is already in the application's registry, the reporter
    raises and removes the metrics it registered before it, so stop() has nothing to undo
    and the other reporter keeps its own."""
    registry = CollectorRegistry()
    first = metrics.PrometheusReporter([metrics.counter("app.call.stop.count")], registry=registry)
    second = metrics.PrometheusReporter(
        [metrics.last_value("app.call.stop.v"), metrics.counter("app.call.stop.count")],
        registry=registry,
    )
    with first:
        with pytest.raises(ValueError, match="app_call_stop"):
            second.start()
        assert registered(registry) == ["app_call_stop"]
        second.stop()
        telemetry.execute(STOP, {"v": 1}, {})
        assert registry.get_sample_value("app_call_stop_total") == 1
        assert [h.id for h in telemetry.list_handlers()] == [first._handler_id]
    assert registered(registry) == []


def test_a_reporter_whose_attach_fails_releases_what_it_prepared() -> None:
    """An unknown pypit event under warnings-as-errors makes start raise; the metrics it
    registered are removed again."""
    registry = CollectorRegistry()
    reporter = metrics.PrometheusReporter(
        [metrics.last_value("pypit.pool.stauts.queue_depth")], registry=registry
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", telemetry.UnknownEventWarning)
        with pytest.raises(telemetry.UnknownEventWarning, match="'pypit', 'pool', 'status'"):
            reporter.start()

    assert registered(registry) == []
    assert telemetry.list_handlers() == []


def test_a_metric_on_a_misspelled_event_warns_at_the_applications_line() -> None:
    """The warning of a reporter's attach points at the code that started the reporter."""
    reporter = metrics.ConsoleReporter([metrics.counter("pypit.rpc.calls.stop.count")])
    with pytest.warns(telemetry.UnknownEventWarning) as caught:
        reporter.start()
    reporter.stop()

    (warning,) = caught
    assert "did you mean ('pypit', 'rpc', 'call', 'stop')?" in str(warning.message)
    assert warning.filename == __file__


KEYWORDS = [
    "event_name",
    "measurement",
    "tags",
    "tag_values",
    "keep",
    "drop",
    "description",
    "unit",
    "reporter_options",
]


@pytest.mark.parametrize("kind", ["counter", "sum", "last_value", "summary", "distribution"])
def test_builders_have_their_own_typed_signatures(kind: str) -> None:
    """Each builder is a function of its own, written with its keyword arguments and
    their types, so that type checkers and editors see them (not ``Callable[..., Metric]``)."""
    builder = getattr(metrics, kind)
    signature = inspect.signature(builder)
    hints = typing.get_type_hints(builder)

    assert inspect.getsource(builder).startswith(f"def {kind}(\n    name: str | Iterable[str],")
    assert list(signature.parameters)[1:] == KEYWORDS
    assert all(signature.parameters[k].kind is inspect.Parameter.KEYWORD_ONLY for k in KEYWORDS)
    assert hints["tags"] == Iterable[str]
    assert hints["return"] is metrics.Metric
    assert builder.__doc__.startswith(f"A {kind.replace('_', '-')} metric: ")
    assert builder("app.call.stop.v").kind == kind


def test_a_failing_metric_is_skipped_and_logged() -> None:
    """A metric whose keep raises is skipped for that event; the others still update."""
    out = io.StringIO()

    def broken(metadata: Any) -> bool:
        raise RuntimeError("bug in keep")

    definitions = [
        metrics.counter("app.call.stop.count", keep=broken),
        metrics.last_value("app.call.stop.depth"),
    ]
    with (
        structlog.testing.capture_logs() as logs,
        metrics.ConsoleReporter(definitions, stream=out),
    ):
        telemetry.execute(STOP, {"depth": 1}, {})

    assert "app.call.stop.depth" in out.getvalue()
    assert [e["event"] for e in logs] == ["metric failed on an event; skipped"]


def test_poller_runs_measurements_and_removes_failing_ones() -> None:
    """A measurement that raises is removed and logged; the others keep running."""
    calls: list[str] = []

    def good() -> None:
        calls.append("good")
        telemetry.execute(("app", "polled"), {"value": 1})

    def bad() -> None:
        calls.append("bad")
        raise ValueError("broken measurement")

    with telemetry.capture(("app", "polled")) as seen, structlog.testing.capture_logs() as logs:
        with metrics.Poller([good, bad], period=0.01) as poller:
            seen.wait_sync(("app", "polled"), count=3)
        assert poller.measurements == [good]

    assert calls.count("bad") == 1
    assert any("removed" in e["event"] for e in logs)
    with pytest.raises(ValueError, match="period"):
        metrics.Poller([good], period=0)
    with pytest.raises(TypeError):
        metrics.Poller([1])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("period", "error", "shown"),
    [
        (math.nan, ValueError, "nan"),
        (math.inf, ValueError, "inf"),
        (1e300, ValueError, "1e+300"),
        (-1, ValueError, "-1"),
        ("5", TypeError, "'5'"),
        (True, TypeError, "True"),
    ],
)
def test_a_poller_period_is_a_duration_its_thread_can_wait(
    period: Any, error: type[Exception], shown: str
) -> None:
    """A period that is not a number of seconds above 0, up to 1e9, is refused where the
    poller is made (NaN busy-looped, infinity killed the thread with OverflowError)."""
    expected = f"period must be a number of seconds > 0 and <= 1e9, not {shown}"
    with pytest.raises(error, match=f"^{re.escape(expected)}$"):
        metrics.Poller([lambda: None], period=period)
    assert metrics.Poller([lambda: None], period=1e9).period == 1e9
