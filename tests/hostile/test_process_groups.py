"""The one supervisor base with real processes: a stop ends the whole process group (what a child
started too), a child that ignores SIGTERM is killed after the grace period, and one that dies
before it is ready fails the start with its exit status and leaves nothing behind."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from visual_search.supervise import CommandProcess, group_pids

# The leader starts a grandchild that ignores SIGTERM, writes its pid, then sleeps (optionally
# ignoring SIGTERM itself). Ready = the pid file exists.
LEADER = """
import os, signal, subprocess, sys, time
ignore = sys.argv[2] == "ignore"
g = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
if ignore:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(sys.argv[1], "w").write(str(g.pid))
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("leader_ignores_term", [False, True])
def test_stop_ends_the_whole_group(tmp_path: Path, leader_ignores_term: bool) -> None:
    pid_file = tmp_path / "grandchild.pid"
    mode = "ignore" if leader_ignores_term else "obey"
    child = CommandProcess(
        [sys.executable, "-c", LEADER, str(pid_file), mode], tmp_path / "leader.log",
        ready=pid_file.exists, stop_timeout=1.0,
    )
    with child:
        assert child.proc is not None
        grandchild = int(pid_file.read_text())
        assert grandchild in child.group_pids() and _alive(grandchild)
        leader = child.proc.pid
        t0 = time.monotonic()
    took = time.monotonic() - t0
    assert not _alive(leader) and not _alive(grandchild)
    assert group_pids(leader) == []
    rc = child.proc.returncode
    if leader_ignores_term:
        assert rc == -signal.SIGKILL and took >= 1.0  # killed after the grace period
    else:
        assert rc == -signal.SIGTERM


def test_child_dying_before_ready_fails_the_start(tmp_path: Path) -> None:
    child = CommandProcess(
        [sys.executable, "-c", "raise SystemExit(7)"], tmp_path / "x.log", ready=lambda: False,
        startup_timeout=30,
    )
    with pytest.raises(RuntimeError, match="exited with 7 before becoming ready"):
        child.start()
    assert child.proc is not None and child.proc.returncode == 7
    assert not child.running


def test_kill_is_a_crash_of_the_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    child = CommandProcess(
        [sys.executable, "-c", LEADER, str(pid_file), "obey"], tmp_path / "leader.log", ready=pid_file.exists
    )
    child.start()
    grandchild = int(pid_file.read_text())
    child.kill()
    assert child.proc is not None and child.proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while _alive(grandchild):
        assert time.monotonic() < deadline, "grandchild outlived the group kill"
        time.sleep(0.05)
    assert os.getpgid(os.getpid()) != child.proc.pid  # it had its own group: we were not hit
