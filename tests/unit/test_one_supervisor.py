"""Process supervision has one home (visual_search/supervise.py): no other module of the package
starts process groups, signals them or picks free ports its own way."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOME = ROOT / "visual_search" / "supervise.py"


def _calls_and_defs(path: Path) -> tuple[set[str], set[str]]:
    """Names of called functions and of keyword arguments, and names of defined functions."""
    tree = ast.parse(path.read_text())
    calls, defs = set(), set()
    for n in ast.walk(tree):
        if isinstance(n, ast.FunctionDef):
            defs.add(n.name)
        elif isinstance(n, ast.Call):
            f = n.func
            calls.add(f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else "")
            calls.update(k.arg for k in n.keywords if k.arg)
    return calls, defs


def test_only_supervise_manages_process_groups_and_ports() -> None:
    owned = {"killpg", "start_new_session", "Popen"}
    offenders = {}
    for path in sorted((ROOT / "visual_search").rglob("*.py")):
        if path == HOME:
            continue
        calls, defs = _calls_and_defs(path)
        bad = sorted((calls & owned) | (defs & {"free_port", "kill_group", "wait_healthy"}))
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert not offenders, offenders


def test_every_helper_shares_the_one_free_port() -> None:
    from visual_search import supervise, testing
    from visual_search.deploy import runner
    from visual_search.gateway import process as gateway_process
    from visual_search.shard import process as shard_process
    from visual_search.triton import server

    for module in (testing, runner, gateway_process, shard_process, server):
        assert module.free_port is supervise.free_port, module.__name__
    for cls in (gateway_process.GatewayProcess, shard_process.ShardProcess, server.TritonServer):
        assert issubclass(cls, supervise.ManagedProcess)
