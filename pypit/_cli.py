"""The command line, ``pypit`` or ``python -m pypit`` (docs/cli.md).

``pypit check module:Class`` opens a pool of one worker, as an application would, and
reports what an adapter author wants to know before deploying: how long the import and
``setup()`` take, the memory the worker holds once set up, and the tools with their
signatures; or, when the worker cannot start, why, with its traceback. A real worker
rather than an import in this process: what is checked is what a pool will run, in a
process of its own, found through the same path.

``pypit events`` prints the event catalog, as the events page shows it.

``pypit top URL`` draws a dashboard's pools, workers, metrics and events in the terminal
(``pypit._top``).

Exit status: 0 done, 1 the worker could not start, 2 a usage error (130 on Ctrl-C, 141
when the reader of the output left). Importing this module costs little: a subcommand
imports what it needs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pypit._version import __version__

if TYPE_CHECKING:
    from structlog.typing import EventDict

    from pypit._errors import WorkerStartError
    from pypit.pool import ToolDescription

Command = Callable[[argparse.ArgumentParser, argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: the process's arguments); the exit
    status."""
    parser = _parser()
    options = parser.parse_args(argv)
    command: Command = options.command
    try:
        status = command(options.parser, options)
        sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader left (`| head`): end quietly, as a process that SIGPIPE killed, and
        # keep the interpreter from failing again as it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pypit",
        description="pypit, a worker pool with a telemetry bus: check an adapter, print "
        "the events pypit emits, or watch a dashboard in the terminal.",
    )
    parser.add_argument("--version", action="version", version=f"pypit {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    check = commands.add_parser(
        "check",
        help="start one worker of an adapter and report on it",
        description="Start one worker of the adapter, through a pool as an application "
        "would, and report how long importing the adapter and its setup() took, the "
        "worker's memory once set up, and the tools with their signatures. If the worker "
        "cannot start, print its error and traceback to stderr and exit with status 1.",
    )
    check.add_argument(
        "adapter",
        type=_adapter,
        metavar="module:Class",
        help="the adapter, as a pool names it (myapp.model:Model), importable from the "
        "current directory or the installed packages",
    )
    check.add_argument(
        "--python",
        metavar="PATH",
        help="the interpreter that runs the worker (default: the one running pypit)",
    )
    check.add_argument(
        "--timeout",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="seconds the worker may take to import the adapter and run setup() (default: 30)",
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(command=_check, parser=check)

    events = commands.add_parser(
        "events",
        help="print the catalog of events pypit emits",
        description="Print every event pypit emits, with its measurement and metadata "
        "keys: the events page of the documentation.",
    )
    events.add_argument(
        "--format",
        choices=("markdown", "text"),
        default="markdown",
        help="markdown, as the events page (the default), or plain text",
    )
    events.set_defaults(command=_events, parser=events)

    top = commands.add_parser(
        "top",
        help="show a dashboard's pools, workers, metrics and events in the terminal",
        description="Read the stream of a dashboard (metrics.DashboardReporter) and draw its "
        "pools, their workers, the metrics and the latest events in place, until q or "
        "Ctrl-C. Needs rich: pip install 'pypit[top]'.",
    )
    top.add_argument(
        "url",
        metavar="URL",
        help="the dashboard's page, as the application printed it (http://127.0.0.1:9569/)",
    )
    top.add_argument(
        "--events",
        default="",
        metavar="PREFIX",
        help="show only events whose dotted name starts with PREFIX (pypit.pool.worker)",
    )
    top.set_defaults(command=_top, parser=top)
    return parser


def _adapter(text: str) -> str:
    module, sep, name = text.partition(":")
    if not (module and sep and name):
        raise argparse.ArgumentTypeError(
            f"an adapter is named module:Class (myapp.model:Model), not {text!r}"
        )
    return text


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"a number of seconds over 0, not {text!r}")
    return seconds


# -- check --------------------------------------------------------------------------------


class _Records:
    """The pool's log records, kept instead of printed: the report is this command's
    output, and the record of a failed start carries the worker's traceback."""

    def __init__(self) -> None:
        self.records: list[EventDict] = []

    def __call__(self, logger: Any, method: str, event_dict: EventDict) -> EventDict:
        from structlog import DropEvent

        self.records.append(event_dict)
        raise DropEvent


def _check(parser: argparse.ArgumentParser, options: argparse.Namespace) -> int:
    import anyio
    import structlog

    from pypit._errors import WorkerStartError
    from pypit.pool._config import make_config

    pool_options: dict[str, Any] = {
        "startup_timeout": options.timeout,
        "status_interval": 0,  # one report, no periodic status
    }
    if options.python is not None:
        pool_options["python"] = options.python
    try:
        make_config(options.adapter, 1, "check", dict(pool_options))
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    records = _Records()
    # This process is the application here: its log is for this command to read.
    structlog.configure(processors=[structlog.processors.add_log_level, records])
    try:
        report = anyio.run(_report, options.adapter, options.python, pool_options)
    except WorkerStartError as error:
        _print_failure(options.adapter, error, records.records)
        return 1
    if options.json:
        print(json.dumps(report, indent=2))
    else:
        print(_text(report), end="")
    _print_warnings(records.records)
    return 0


async def _report(adapter: str, python: str | None, pool_options: dict[str, Any]) -> dict[str, Any]:
    """Open a pool of one worker of ``adapter`` and say what it took."""
    import psutil

    from pypit.pool import open_pool

    async with open_pool(adapter, size=1, name="check", **pool_options) as pool:
        (worker,) = pool.worker_status()
        assert worker.pid is not None  # the pool is open: its worker is ready
        rss = psutil.Process(worker.pid).memory_info().rss
        tools = [
            {
                "name": tool.name,
                "signature": tool.signature(),
                "description": tool.description,
                "stream": tool.stream,
                "async": tool.is_async,
                "checked": _checked(tool),
                "parameters": None
                if tool.parameters is None
                else [
                    {
                        "name": p.name,
                        "kind": p.kind,
                        "default": p.default,
                        "annotation": p.annotation,
                    }
                    for p in tool.parameters
                ],
            }
            for tool in sorted(pool.tools().values(), key=lambda tool: tool.name)
        ]
    return {
        "adapter": adapter,
        "python": python or sys.executable,
        "import_seconds": worker.import_seconds,
        "setup_seconds": worker.setup_seconds,
        "rss_bytes": rss,
        "tools": tools,
    }


def _checked(tool: ToolDescription) -> bool:
    """Whether the pool checks a call's arguments against the tool's signature: it does
    when the worker could read it and it is one a function could have."""
    from pypit._signature import ArgumentCheck

    if tool.parameters is None:
        return False
    try:
        ArgumentCheck(tool.name, tool.parameters)
    except ValueError:
        return False
    return True


def _text(report: dict[str, Any]) -> str:
    lines = [
        f"adapter  {report['adapter']}",
        f"python   {report['python']}",
        f"import   {_duration(report['import_seconds'])}",
        f"setup    {_duration(report['setup_seconds'])}",
        f"memory   {report['rss_bytes'] / 2**20:.1f} MiB resident after setup",
        "",
        f"tools ({len(report['tools'])})",
    ]
    for tool in report["tools"]:
        marks = [mark for mark in ("stream", "async") if tool[mark]]
        if not tool["checked"]:
            marks.append("arguments not checked")
        lines.append(f"  {tool['signature']}" + "".join(f"  [{mark}]" for mark in marks))
        lines += [f"      {line}".rstrip() for line in tool["description"].splitlines()]
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.1f} ms"


def _print_failure(adapter: str, error: WorkerStartError, records: list[EventDict]) -> None:
    """What each start failed with, then the worker's traceback and what it wrote to
    stderr before, from the pool's record of the failure."""
    lines = [f"pypit check: the worker of {adapter} could not start"]
    lines += [f"{worker_id}: {failure}" for worker_id, failure in error.failures.items()]
    for record in records:
        if record.get("event") != "worker failed to start":
            continue
        if record.get("stderr"):
            lines += ["", "It wrote to stderr:", record["stderr"].rstrip("\n")]
        if record.get("traceback"):
            lines += ["", record["traceback"].rstrip("\n")]
    print("\n".join(lines), file=sys.stderr)


def _print_warnings(records: list[EventDict]) -> None:
    """The warnings the pool logged about the worker (a tool whose reported signature is
    unusable, say), to stderr."""
    for record in records:
        if record.get("level") in ("warning", "error", "critical"):
            fields = ", ".join(
                f"{key}={value}"
                for key, value in record.items()
                if key not in ("event", "level", "category", "pool_name")
            )
            print(f"pypit check: {record['level']}: {record['event']} ({fields})", file=sys.stderr)


# -- top --------------------------------------------------------------------------------


def _top(parser: argparse.ArgumentParser, options: argparse.Namespace) -> int:
    try:
        import rich  # noqa: F401
    except ImportError:
        print("pypit top needs rich: pip install 'pypit[top]'", file=sys.stderr)
        return 2
    from pypit._top import run

    return run(options.url, options.events)


# -- events -------------------------------------------------------------------------------


def _events(parser: argparse.ArgumentParser, options: argparse.Namespace) -> int:
    if options.format == "markdown":
        from pypit.telemetry._catalog import render_markdown

        sys.stdout.write(render_markdown())
    else:
        sys.stdout.write(_catalog_text())
    return 0


def _catalog_text() -> str:
    """The catalog as plain text: each event, when it is emitted, and its keys."""
    from pypit.telemetry import CATALOG

    lines: list[str] = []
    for spec in CATALOG:
        measurements = ", ".join(f"{m.name} ({m.unit})" for m in spec.measurements)
        metadata = ", ".join(
            f"{key.name} ({key.type}{' or None' if key.nullable and key.type != 'Any' else ''})"
            for key in spec.metadata
        )
        if spec.open:
            measurements = f"as emitted, e.g. {measurements}"
            metadata = f"as emitted + {metadata}"
        name = ", ".join(f'"{segment}"' for segment in spec.name)
        lines += [
            f"({name})",
            f"    {spec.when.replace('`', '')}",
            f"    measurements: {measurements or '-'}",
            f"    metadata: {metadata or '-'}",
            "",
        ]
    return "\n".join(lines)
