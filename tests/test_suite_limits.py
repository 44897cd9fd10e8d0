"""The suite's own guarantee: a test that hangs fails by itself, and the next ones run."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).parents[1]


def test_a_hanging_async_test_fails_alone_on_both_backends(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lost wake-up fails its test with TimeoutError at its limit; the tests after it
    run and pass on a sound event loop."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile(
        test_hang="""
        import anyio
        import pytest

        pytestmark = pytest.mark.anyio

        @pytest.mark.limit(0.5)
        async def test_waits_for_a_wake_up_that_never_comes():
            await anyio.Event().wait()

        async def test_after_it():
            await anyio.sleep(0)
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "tests.conftest", "-p", "no:cacheprovider", "--no-cov", "-o", "markers=limit"
    )

    result.assert_outcomes(failed=2, passed=2)
    failed = [line for line in result.outlines if line.startswith("FAILED")]
    assert len(failed) == 2
    assert all("test_waits_for_a_wake_up_that_never_comes" in line for line in failed)
    assert "E           TimeoutError" in result.outlines
