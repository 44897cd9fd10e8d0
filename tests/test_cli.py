"""The command line, run as a user runs it: ``python -m pypit`` in a process of its own, from
the repository's root (so that ``tests.adapters`` imports), and the ``pypit`` script. Each
run checks that no worker it started outlives it."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import time
from importlib.metadata import entry_points
from pathlib import Path

import psutil
import pytest

import pypit
from pypit._cli import _text, main
from pypit.pool import start_pool
from pypit.telemetry import CATALOG
from pypit.telemetry._catalog import render_markdown
from tests.pool.conftest import adapter, options

ROOT = Path(__file__).parents[1]


def workers_of(pid: int) -> list[psutil.Process]:
    """The live processes that a pool in process ``pid`` started: its workers and the
    guard each one forks (their environment names the pool's process)."""
    found = []
    for candidate in psutil.process_iter():
        try:
            if (
                candidate.environ().get("PYPIT_WORKER_PARENT_PID") == str(pid)
                and candidate.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(candidate)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def pypit_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pypit *args`` to its end; fail if a worker it started is alive a few
    seconds later (the autouse check sees only this process's own children, and the
    workers of a process that ended are not)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pypit", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    deadline = time.monotonic() + 3
    while (left := workers_of(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.02)
    for worker in left:
        worker.kill()
    assert left == [], f"workers left behind by {args}: {[w.pid for w in left]}"
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_a_pools_workers_are_found_by_their_parent() -> None:
    """The check of leftover workers finds a worker while its pool lives."""
    with start_pool(adapter(), **options()) as pool:
        found = {w.pid for w in workers_of(psutil.Process().pid)}
        assert set(pool.workers().values()) <= found


def test_check_reports_the_start_and_the_tools_with_their_signatures() -> None:
    """A good adapter: the times of its import and setup(), the worker's memory, and each
    tool with its signature and description; status 0, nothing on stderr."""
    result = pypit_cli("check", adapter("Signatures"))

    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[0] == "adapter  tests.adapters:Signatures"
    assert lines[1] == f"python   {sys.executable}"
    assert lines[2].startswith("import   ")
    assert lines[2].endswith(" ms") or lines[2].endswith(" s")
    assert lines[3].startswith("setup    ")
    assert lines[4].startswith("memory   ")
    assert lines[4].endswith(" MiB resident after setup")
    assert lines[6:] == [
        "tools (4)",
        "  gather(value: Any, /, *rest: Any, **options: Any)",
        "      A positional-only value, then the rest as they came",
        "  largest(...)  [arguments not checked]",
        "      The largest item (a builtin: its signature cannot be read)",
        "  predict(x: float, *, scale: float = 1.0)",
        "      Scale x",
        "  undocumented(flag: bool = False)",
        "      Return the flag (the description is this docstring).",
    ]


def test_a_description_of_several_lines_is_indented_whole() -> None:
    """A description taken from a docstring of several lines keeps its lines, each under
    the signature."""
    report = {
        "adapter": "myapp.model:Model",
        "python": "python3",
        "import_seconds": 1.5,
        "setup_seconds": 0.0004,
        "rss_bytes": 3 * 2**20,
        "tools": [
            {
                "signature": "predict(x: float)",
                "description": "Predict.\n\nFrom x.",
                "stream": False,
                "async": True,
                "checked": True,
            }
        ],
    }
    assert _text(report).splitlines()[2:] == [
        "import   1.50 s",
        "setup    0.4 ms",
        "memory   3.0 MiB resident after setup",
        "",
        "tools (1)",
        "  predict(x: float)  [async]",
        "      Predict.",
        "",
        "      From x.",
    ]


def test_check_reports_as_json() -> None:
    """``--json``: the same report, with each parameter's kind, default and annotation."""
    result = pypit_cli("check", adapter(), "--json")

    assert result.returncode == 0
    report = json.loads(result.stdout)
    assert report["adapter"] == "tests.adapters:Echo"
    assert report["import_seconds"] > 0
    assert report["setup_seconds"] > 0
    assert report["rss_bytes"] > 2**20
    tools = {tool["name"]: tool for tool in report["tools"]}
    assert tools["count"] == {
        "name": "count",
        "signature": "count(n: int, delay: float = 0.0)",
        "description": "Count from 1 to n",
        "stream": True,
        "async": False,
        "checked": True,
        "parameters": [
            {"name": "n", "kind": "positional-or-keyword", "default": None, "annotation": "int"},
            {
                "name": "delay",
                "kind": "positional-or-keyword",
                "default": "0.0",
                "annotation": "float",
            },
        ],
    }
    assert tools["add"]["async"]
    assert [tool["name"] for tool in report["tools"]] == sorted(tools)


def test_check_of_an_adapter_that_cannot_be_imported_prints_the_error() -> None:
    """The worker's error and its traceback go to stderr; status 1, nothing on stdout."""
    result = pypit_cli("check", "tests.no_such_module:Model")

    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith(
        "pypit check: the worker of tests.no_such_module:Model could not start\n"
        "check_worker_1: import_failed: ModuleNotFoundError: "
        "No module named 'tests.no_such_module'\n"
    )
    assert "Traceback (most recent call last):" in result.stderr


def test_check_of_an_adapter_whose_setup_fails_prints_its_traceback_and_output() -> None:
    """What setup() raised, where, and what it wrote to stderr before."""
    result = pypit_cli("check", adapter("FailingSetup"))

    assert (result.returncode, result.stdout) == (1, "")
    err = result.stderr
    assert "check_worker_1: setup_failed: RuntimeError: the model file is missing\n" in err
    assert "It wrote to stderr:\nlooking for the model file\n" in err
    assert 'raise RuntimeError("the model file is missing")' in err
    assert err.endswith("RuntimeError: the model file is missing\n")


def test_check_gives_up_on_a_worker_not_ready_in_time() -> None:
    """``--timeout``: a setup() that takes longer fails the check (status 1), and the
    worker is stopped."""
    result = pypit_cli("check", adapter("SlowSetup"), "--timeout", "0.5")

    assert result.returncode == 1
    assert "check_worker_1: not ready within startup_timeout=0.5s" in result.stderr


def test_check_runs_the_worker_with_the_interpreter_given() -> None:
    """``--python``: an interpreter that cannot run fails the check, saying so."""
    result = pypit_cli("check", adapter(), "--python", "/nonexistent/python")

    assert result.returncode == 1
    assert "check_worker_1: exec_failed: " in result.stderr
    assert "/nonexistent/python" in result.stderr


def test_check_warns_about_a_signature_the_pool_cannot_use() -> None:
    """What the pool warned about the worker reaches stderr; the check succeeds."""
    result = pypit_cli("check", adapter("Forged"))

    assert result.returncode == 0
    assert "  forged(...)  [arguments not checked]\n" in result.stdout
    assert result.stderr.startswith(
        "pypit check: warning: the parameters the worker reported are not a signature"
    )
    assert "tool=forged" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "tests.adapters"], "an adapter is named module:Class"),
        (["check", "__main__:Model"], "names a class of __main__"),
        (["check", adapter(), "--timeout", "0"], "a number of seconds over 0, not '0'"),
        (["check"], "the following arguments are required: module:Class"),
        ([], "the following arguments are required: COMMAND"),
        (["events", "--format", "html"], "invalid choice: 'html'"),
    ],
)
def test_a_usage_error_exits_with_status_2(args: list[str], message: str) -> None:
    """A bad command line is refused before any worker starts, with the usage."""
    result = pypit_cli(*args)

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("usage: pypit")
    assert message in result.stderr


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["--help"], ["usage: pypit [-h] [--version] COMMAND", "check", "events"]),
        (["check", "--help"], ["usage: pypit check", "--python PATH", "--timeout S", "--json"]),
        (["events", "--help"], ["usage: pypit events", "--format {markdown,text}"]),
    ],
)
def test_help_describes_the_program_and_each_command(args: list[str], shown: list[str]) -> None:
    """``--help`` of the program and of each command, status 0."""
    result = pypit_cli(*args)

    assert result.returncode == 0
    for text in shown:
        assert text in result.stdout


def test_version() -> None:
    """``--version`` prints the package's version."""
    result = pypit_cli("--version")

    assert (result.returncode, result.stdout) == (0, f"pypit {pypit.__version__}\n")


def test_events_prints_the_events_page() -> None:
    """``events`` prints what ``python -m pypit.telemetry`` prints: docs/events.md."""
    result = pypit_cli("events")

    assert result.returncode == 0
    assert result.stdout == render_markdown()
    assert result.stdout == (ROOT / "docs" / "events.md").read_text()


def test_events_as_text_lists_every_event_with_its_keys() -> None:
    """``--format text``: each event of the catalog, with its keys and units, no markup."""
    result = pypit_cli("events", "--format", "text")

    assert result.returncode == 0
    assert "`" not in result.stdout
    for spec in CATALOG:
        name = "(" + ", ".join(f'"{segment}"' for segment in spec.name) + ")"
        assert f"\n{name}\n" in f"\n{result.stdout}"
    assert (
        '("pypit", "pool", "initialized")\n'
        "    start-up done: every initial worker ready or failed\n"
        "    measurements: duration (nanosecond), total_workers (count), "
        "ready_workers (count)\n"
        "    metadata: pool_name (str), adapter (str), node (str)\n"
    ) in result.stdout


def test_the_pypit_script_is_installed() -> None:
    """The package's metadata declares the ``pypit`` console script, and it runs."""
    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "pypit"]
    assert script.value == "pypit._cli:main"
    assert script.load() is main
    path = Path(sysconfig.get_path("scripts")) / "pypit"
    result = subprocess.run(
        [str(path), "--version"], capture_output=True, text=True, check=False, timeout=60
    )
    assert (result.returncode, result.stdout) == (0, f"pypit {pypit.__version__}\n")
