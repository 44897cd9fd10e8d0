"""The docs' stream snippets run as written, with the demo's adapter as ``myapp.model``."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pypit.pool import open_pool

ROOT = Path(__file__).parents[1]
ADAPTER = "examples.demo_adapter:DemoModel"


def stream_snippets(page: str) -> list[str]:
    """The Python blocks of ``page`` that use ``pool.stream``, on the demo's adapter."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), re.DOTALL)
    return [b.replace("myapp.model:Model", ADAPTER) for b in blocks if "pool.stream" in b]


def run(source: str, **names: Any) -> dict[str, Any]:
    namespace = dict(names)
    exec(compile(source, "<docs>", "exec"), namespace)
    return namespace


def test_every_stream_snippet_is_checked() -> None:
    """The pages that show streams hold the snippets the tests below run, and no other."""
    pages = ["README.md", *(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
    found = {page: len(stream_snippets(page)) for page in pages if stream_snippets(page)}
    assert found == {"docs/configuration.md": 2}


@pytest.mark.anyio
async def test_the_async_stream_snippet(capsys: pytest.CaptureFixture[str]) -> None:
    """The fragment of the Streams section, inside a pool (it names it ``pool``)."""
    fragment = next(s for s in stream_snippets("docs/configuration.md") if "async with" in s)
    body = "async def snippet(pool):\n" + textwrap.indent(fragment, "    ")
    snippet = run(body)["snippet"]
    async with open_pool(ADAPTER, size=1, status_interval=0) as pool:
        await snippet(pool)

    assert capsys.readouterr().out.split() == [f"hi-{i}" for i in range(8)]


def test_the_synchronous_snippet(capsys: pytest.CaptureFixture[str]) -> None:
    """The Synchronous code section, whole."""
    program = next(s for s in stream_snippets("docs/configuration.md") if "start_pool" in s)
    run(program)

    lines = capsys.readouterr().out.split("\n")
    assert lines[0].startswith("{'y': ")
    assert lines[1:9] == [f"hi-{i}" for i in range(8)]
