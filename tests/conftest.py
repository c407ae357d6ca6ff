"""Suite-wide policy: on CI a skip is only acceptable for missing GPU hardware.

Tests skip themselves with a clear reason when a tool they drive is absent (tritonserver, helm,
chromium); the CI script installs all of them, so a skip there means an install step broke and
must fail the run instead of hiding it. Set VSEARCH_ALLOW_SKIPS=1 to relax this locally.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import re
import subprocess
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    outcome = yield
    rep = outcome.get_result()
    strict = os.environ.get("CI") and not os.environ.get("VSEARCH_ALLOW_SKIPS")
    if strict and rep.skipped and "gpu" not in item.keywords and not hasattr(rep, "wasxfail"):
        rep.outcome = "failed"
        rep.longrepr = f"skipped on CI, where only GPU tests may skip: {rep.longrepr}"


# ---- `integration` marker, set automatically ---------------------------------------------------
# A test is an integration test when its module, or a module defining one of its fixtures, starts
# processes (tritonserver, shards, gateway, helm, the CLI). `pytest -m "not integration"` is then
# the few-second loop; the guard below keeps the marking honest.
_STARTS_PROCESSES = re.compile(
    r"\b(subprocess|Popen|TritonServer|ShardProcess|GatewayProcess|CommandProcess|Stack\(|running\(|"
    r"chart_tools|stack_missing|cli\.main|run_crash_test|ChartRun|helm_template)\b"
)
# What the guard looks for in a started command line (libraries may run small helpers of their own).
_OUR_PROCESSES = re.compile(r"tritonserver|visual_search|vsearch|helm|chrom|locust|promtool|podman")


@functools.cache
def _starts_processes(path: str | None) -> bool:
    if not path:
        return False
    try:
        return bool(_STARTS_PROCESSES.search(Path(path).read_text()))
    except OSError:
        return False


def _fixture_files(item: pytest.Item) -> set[str]:
    info = getattr(item, "_fixtureinfo", None)
    files: set[str] = set()
    for defs in (info.name2fixturedefs.values() if info else ()):
        for d in defs:
            with contextlib.suppress(TypeError, OSError):
                files.add(inspect.getsourcefile(d.func) or "")
    return files


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        paths = {getattr(module, "__file__", None), *_fixture_files(item)} - {__file__}
        if any(_starts_processes(p) for p in paths):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test not marked `integration` must not start processes (else the marker would lie)."""
    if request.node.get_closest_marker("integration"):
        yield
        return
    real_init = subprocess.Popen.__init__

    def guarded(self: subprocess.Popen[Any], args: Any, *a: Any, **kw: Any) -> None:
        argv = " ".join(map(str, args)) if isinstance(args, list | tuple) else str(args)
        if _OUR_PROCESSES.search(argv):
            raise RuntimeError(
                f"{request.node.nodeid} starts {argv[:80]!r} but is not marked integration: "
                "add the process-starting helper to tests/conftest.py:_STARTS_PROCESSES"
            )
        real_init(self, args, *a, **kw)

    subprocess.Popen.__init__ = guarded  # type: ignore[method-assign]
    try:
        yield
    finally:
        subprocess.Popen.__init__ = real_init  # type: ignore[method-assign]
