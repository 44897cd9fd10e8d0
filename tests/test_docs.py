"""Every Python block of the README and of docs/ runs, as written, so that none can rot.

What a block is decides how it runs:

- A block whose first line is ``# myapp/<name>.py`` is that module. Before any block of its
  page runs, it is written into a package ``myapp`` put first on ``sys.path`` (which the
  workers inherit), so ``"myapp.model:Model"`` names the page's own adapter. A page that
  runs a pool writes its ``myapp/model.py``: its reader sees every tool its examples
  call.
- A block with ``await``, ``async with`` or ``async for`` outside a function is the body of
  an async function, run on asyncio and on trio.
- A block that uses the name ``pool`` without binding it gets one:
  ``open_pool("myapp.model:Model", size=2)`` (``start_pool`` for a block without
  ``await``).
- Any other block is a program, run whole.
- A block right after ``<!-- not run: reason -->`` is not run; the reason is required.

Each block runs in a namespace of its own, so it must import what it uses. The only
substitutions, ``port=9568`` and ``port=9569`` to ``port=0``, keep the suite off fixed
ports. What a block prints is checked (``PRINTS``; the others print nothing), and a
warning fails it. The README tells its readers how the blocks are run.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import CodeType
from typing import Any

import attrs
import pytest

from pypit.pool import open_pool, start_pool
from pypit.worker import Adapter
from pypit.worker._adapter import discover_tools

ROOT = Path(__file__).parents[1]
PAGES = tuple(
    str(path.relative_to(ROOT))
    for path in [*sorted(ROOT.glob("*.md")), *sorted(ROOT.glob("docs/*.md"))]
)
LANGUAGES = {"python", "console", "json"}
"""The languages a fenced block may have: Python is only ever in ``python`` blocks."""

SUBSTITUTIONS = {"port=9568": "port=0", "port=9569": "port=0"}
ADAPTER = "myapp.model:Model"
GIVEN_POOL: dict[str, Any] = {"size": 2, "status_interval": 0}

_FENCE = re.compile(r"^```(.*)$")
_NOT_RUN = re.compile(r"^<!-- not run: (\S.*?) -->$")
_MODULE = re.compile(r"^# (myapp/\w+\.py)\n")
_TOKENS = "".join(f"hi-{i}\n" for i in range(8))

PRINTS: dict[tuple[str, str], str] = {
    ("README.md", "anyio.run(main)"): r"predict default_worker_\d [\d.e-]+ ms\n\{'y': 42\.0\}\n",
    ("docs/configuration.md", 'name="models"'): r"\{'y': 2\.0\}\n",
    ("docs/configuration.md", "async for chunk in chunks"): re.escape(_TOKENS),
    ("docs/configuration.md", "start_pool"): r"\{'y': 2\.0\}\n" + re.escape(_TOKENS),
    ("docs/adapters.md", 'pool.stream("agenerate"'): "hi-0\nhi-1\nhi-2\n",
    ("docs/adapters.md", "start_pool"): "hi-0\nhi-1\nhi-2\n",
    ("docs/worker-telemetry.md", "show-inference"): (
        r"\('pypit', 'python', 'inference', 'stop'\) default_worker_\d [\d.e-]+ ms\n"
    ),
}
"""What blocks print, as a regular expression of all their output (a block is named by its
page and a piece of its source); any other block prints nothing."""


@attrs.frozen
class Block:
    """A fenced block of a page."""

    page: str
    line: int
    """The line of its opening fence, from 1."""
    language: str
    source: str
    not_run: str | None
    """Why it is not run, when a ``<!-- not run: ... -->`` comment comes right before it."""

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def module(self) -> str | None:
        """``myapp/model.py`` for a block that is that module."""
        match = _MODULE.match(self.source)
        return match[1] if match else None

    @property
    def code(self) -> CodeType:
        source = self.source
        for written, run in SUBSTITUTIONS.items():
            source = source.replace(written, run)
        code: CodeType = compile(
            source, self.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
        )
        return code

    @property
    def is_async(self) -> bool:
        """``await``, ``async with`` or ``async for`` outside a function."""
        return bool(self.code.co_flags & inspect.CO_COROUTINE)

    @property
    def needs_pool(self) -> bool:
        """It uses ``pool`` and never binds it."""
        tree = ast.parse(self.source)
        used = bound = False
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id == "pool":
                used |= isinstance(node.ctx, ast.Load)
                bound |= isinstance(node.ctx, ast.Store)
            elif isinstance(node, ast.arg) and node.arg == "pool":
                bound = True
        return used and not bound


def parse(text: str, page: str) -> list[Block]:
    """Every fenced block of ``text``, whatever its language."""
    blocks: list[Block] = []
    lines = text.splitlines()
    opened: tuple[int, str, str | None] | None = None
    body: list[str] = []
    for number, line in enumerate(lines, start=1):
        fence = _FENCE.match(line)
        if opened is None and fence:
            before = [previous for previous in lines[: number - 1] if previous.strip()]
            comment = before[-1] if before else ""
            if comment.startswith("<!-- not run") and not _NOT_RUN.match(comment):
                raise ValueError(f"{page}:{number - 1}: write <!-- not run: reason -->")
            marked = _NOT_RUN.match(comment)
            opened, body = (number, fence[1].strip(), marked[1] if marked else None), []
        elif opened is not None and line == "```":
            start, language, not_run = opened
            blocks.append(Block(page, start, language, "\n".join(body) + "\n", not_run))
            opened = None
        elif opened is not None:
            body.append(line)
    if opened is not None:
        raise ValueError(f"{page}:{opened[0]}: a block that never ends")
    return blocks


def python_blocks() -> list[Block]:
    return [
        b
        for page in PAGES
        for b in parse((ROOT / page).read_text(), page)
        if b.language == "python"
    ]


BLOCKS = python_blocks()
MODULES = [b for b in BLOCKS if b.not_run is None and b.module is not None]
PROGRAMS = [b for b in BLOCKS if b.not_run is None and b.module is None and not b.is_async]
FRAGMENTS = [b for b in BLOCKS if b.not_run is None and b.module is None and b.is_async]


def ids(blocks: list[Block]) -> list[str]:
    return [b.id for b in blocks]


def run(block: Block, pool: Any = None) -> Any:
    """Run ``block`` in a namespace of its own (with ``pool`` if given); what it returns is
    the coroutine of an async block, to await."""
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    if pool is not None:
        namespace["pool"] = pool
    return eval(block.code, namespace)


def check_prints(block: Block, output: str) -> None:
    """What ``block`` printed is what ``PRINTS`` says, or nothing."""
    expected = next(
        (
            pattern
            for (page, piece), pattern in PRINTS.items()
            if page == block.page and piece in block.source
        ),
        "",
    )
    assert re.fullmatch(expected, output), f"{block.id} printed {output!r}"


def _forget_myapp() -> None:
    for name in [n for n in sys.modules if n == "myapp" or n.startswith("myapp.")]:
        del sys.modules[name]


@pytest.fixture
def page_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], None]]:
    """Write a page's ``myapp`` package and put it first on ``sys.path``."""

    def write(page: str) -> None:
        package = tmp_path / "modules" / "myapp"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        for block in MODULES:
            if block.page == page and block.module is not None:
                (tmp_path / "modules" / block.module).write_text(block.source)
        monkeypatch.syspath_prepend(str(tmp_path / "modules"))

    _forget_myapp()
    yield write
    _forget_myapp()


def test_every_python_block_is_run_or_says_why_not() -> None:
    """Each page's Python blocks are all found, each is run as a module, a program or a
    fragment unless it is marked not run (with a reason), Python appears in no block of
    another language, and each expected output belongs to one block that is run."""
    for page in PAGES:
        text = (ROOT / page).read_text()
        blocks = parse(text, page)
        assert {b.language for b in blocks} <= LANGUAGES, page
        assert len([b for b in blocks if b.language == "python"]) == text.count("```python\n")
        markers = re.findall(r"^<!-- not run", text, re.MULTILINE)
        assert len([b for b in blocks if b.not_run]) == len(markers), page
    marked = {b.id for b in BLOCKS if b.not_run is not None}
    run_ids = ids(MODULES) + ids(PROGRAMS) + ids(FRAGMENTS)
    assert len(run_ids) == len(set(run_ids))
    assert set(run_ids) | marked == set(ids(BLOCKS))
    assert not set(run_ids) & marked
    for page, piece in PRINTS:
        assert len([b for b in PROGRAMS + FRAGMENTS if b.page == page and piece in b.source]) == 1


def test_a_page_that_runs_a_pool_shows_its_adapter() -> None:
    """Every page with a block that runs a pool of ``myapp.model:Model`` writes
    ``myapp/model.py`` itself, so a reader who follows the page has the tools its examples
    call (the configuration page ran against an adapter no page showed)."""
    runs = {b.page for b in PROGRAMS + FRAGMENTS if b.needs_pool or ADAPTER in b.source}
    shows = {b.page for b in MODULES if b.module == "myapp/model.py"}
    assert "docs/configuration.md" in runs
    assert sorted(runs - shows) == []


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("block", MODULES, ids=ids(MODULES))
def test_a_module_block_is_an_adapter_with_tools(
    block: Block, page_modules: Callable[[str], None]
) -> None:
    """A page's ``myapp`` module imports, and its adapter classes have tools."""
    assert block.module is not None
    page_modules(block.page)
    module = importlib.import_module(block.module.removesuffix(".py").replace("/", "."))
    adapters = [
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, Adapter) and value is not Adapter
    ]
    assert adapters, f"{block.id} defines no adapter"
    for adapter in adapters:
        assert discover_tools(adapter()), f"{block.id}: {adapter.__name__} has no tool"


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("block", PROGRAMS, ids=ids(PROGRAMS))
def test_a_program_runs(
    block: Block, page_modules: Callable[[str], None], capsys: pytest.CaptureFixture[str]
) -> None:
    """A program block runs whole (in a blocking pool if it uses one it does not open),
    without a warning, and prints what it should."""
    page_modules(block.page)
    if block.needs_pool:
        with start_pool(ADAPTER, **GIVEN_POOL) as pool:
            run(block, pool)
    else:
        run(block)
    check_prints(block, capsys.readouterr().out)


@pytest.mark.anyio
@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("block", FRAGMENTS, ids=ids(FRAGMENTS))
async def test_a_fragment_runs(
    block: Block, page_modules: Callable[[str], None], capsys: pytest.CaptureFixture[str]
) -> None:
    """An async block runs as the body of an async function (in a pool if it uses one it
    does not open), without a warning, and prints what it should."""
    page_modules(block.page)
    if block.needs_pool:
        async with open_pool(ADAPTER, **GIVEN_POOL) as pool:
            await run(block, pool)
    else:
        await run(block)
    check_prints(block, capsys.readouterr().out)


# -- the runner itself ---------------------------------------------------------------------

PAGE = """\
Text.

```python
print("program")
```

<!-- not run: it needs a GPU -->

```python
await pool.execute("predict", {"x": 1})
```

```python
async with open_pool("myapp.model:Model") as pool:
    print(await pool.execute("predict", {"x": 1}))
```

```python
# myapp/model.py
from pypit.worker import Adapter
```

```console
$ make test
```
"""


def test_blocks_are_told_apart() -> None:
    """Language, line, marker, module, async or not, and whether a pool is given."""
    blocks = parse(PAGE, "page.md")
    assert [(b.line, b.language, b.not_run) for b in blocks] == [
        (3, "python", None),
        (9, "python", "it needs a GPU"),
        (13, "python", None),
        (18, "python", None),
        (23, "console", None),
    ]
    program, marked, opening, module, _ = blocks
    assert not program.is_async
    assert not program.needs_pool
    assert marked.is_async
    assert marked.needs_pool
    assert opening.is_async
    assert not opening.needs_pool
    assert module.module == "myapp/model.py"


def test_a_marker_without_a_reason_is_refused() -> None:
    """``<!-- not run -->`` alone would let a block go unchecked without saying why."""
    with pytest.raises(ValueError, match=r"page\.md:1: write <!-- not run: reason -->"):
        parse("<!-- not run -->\n```python\nx = 1\n```\n", "page.md")


def test_a_block_that_raises_fails() -> None:
    """The error of a program reaches the test."""
    (block,) = parse("```python\nimport pypit\npypit.no_such_name\n```\n", "page.md")
    with pytest.raises(AttributeError, match="no_such_name"):
        run(block)


@pytest.mark.anyio
async def test_a_fragment_that_raises_fails() -> None:
    """The error of an async block reaches the test, with the block's name in its
    traceback."""
    (block,) = parse("```python\nimport anyio\nawait anyio.sleep(0)\n1 / 0\n```\n", "page.md")
    with pytest.raises(ZeroDivisionError) as info:
        await run(block)
    assert traceback.extract_tb(info.value.__traceback__)[-1].filename == "page.md:1"
