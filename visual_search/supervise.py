"""Supervision of the local stack's children (`vsearch up` / demo): Triton and the shards.

Why: a SIGKILLed tritonserver used to leave its python-backend stub processes (~2 GB) and its
shared-memory regions (holding recent query photos) behind for minutes, and nothing restarted it
(issue 12 item 7). A watcher thread polls each child; when one exits unexpectedly it kills the
child's whole process group, removes Triton's shared-memory regions, and restarts the child with
exponential backoff (bounded attempts; the count resets once a child stayed up `stable_s`).
Every step is logged and kept in `events` (for tests and `vsearch up`'s log).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("vsearch.supervise")


@dataclass
class Child:
    """One supervised process: how to see it, clean up after it and start it again."""

    name: str
    proc: Callable[[], Any]  # -> the current subprocess.Popen (or None)
    restart: Callable[[], None]  # start again (same ports and data); may raise
    cleanup: Callable[[], str] = lambda: ""  # after an exit: kill leftovers; returns a summary
    tick: Callable[[], None] = lambda: None  # every poll while it runs (e.g. re-protect shm regions)
    attempts: int = 0
    up_since: float = field(default_factory=time.monotonic)
    given_up: bool = False


def kill_group(pid: int) -> None:
    """SIGKILL a child's process group (it was started as a session leader)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class Supervisor:
    def __init__(
        self, children: list[Child], *, poll_s: float = 0.2, base_delay_s: float = 1.0,
        max_delay_s: float = 30.0, max_attempts: int = 5, stable_s: float = 60.0,
    ) -> None:
        self.children = children
        self.poll_s = poll_s
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.max_attempts = max_attempts
        self.stable_s = stable_s
        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vsearch-supervisor", daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (before the stack stops its children on purpose)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(300)

    def _event(self, child: Child, what: str, **kw: Any) -> None:
        e = {"t": time.time(), "child": child.name, "event": what, **kw}
        self.events.append(e)
        detail = " ".join(f"{k}={v}" for k, v in kw.items())
        level = logging.ERROR if what in ("gave_up", "restart_failed") else logging.WARNING
        log.log(level, "%s %s %s", child.name, what, detail)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            for child in self.children:
                if self._stop.is_set():
                    return
                self._check(child)

    def _check(self, child: Child) -> None:
        proc = child.proc()
        if child.given_up or proc is None:
            return
        rc = proc.poll()
        if rc is None:
            child.tick()
            if child.attempts and time.monotonic() - child.up_since > self.stable_s:
                child.attempts = 0  # stayed up: the next crash starts the backoff afresh
            return
        t0 = time.monotonic()
        summary = child.cleanup()  # counts and kills what is left, removes shm
        kill_group(proc.pid)
        ms = round((time.monotonic() - t0) * 1e3, 1)
        self._event(child, "exited", returncode=rc, cleanup_ms=ms, cleaned=summary)
        while not self._stop.is_set():
            child.attempts += 1
            if child.attempts > self.max_attempts:
                child.given_up = True
                self._event(child, "gave_up", attempts=self.max_attempts)
                return
            delay = min(self.max_delay_s, self.base_delay_s * 2 ** (child.attempts - 1))
            self._event(child, "restarting", attempt=child.attempts, of=self.max_attempts, delay_s=delay)
            if self._stop.wait(delay):
                return
            try:
                child.restart()
            except Exception as e:  # noqa: BLE001 - counted as a failed attempt, then backed off
                self._event(child, "restart_failed", attempt=child.attempts, error=str(e)[:300])
                child.cleanup()
                p = child.proc()
                if p is not None:
                    kill_group(p.pid)
                continue
            child.up_since = time.monotonic()
            self._event(child, "restarted", attempt=child.attempts, pid=child.proc().pid)
            return
