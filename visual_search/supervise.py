"""Child processes, one way: start each in its own process group, wait until it is ready, stop
the whole group, restart it with backoff when it dies.

Used by every place that runs our processes: the local stack (`vsearch up` / demo: Triton, shards,
gateway; launcher.py), the process helpers the tests and benchmarks share (TritonServer,
ShardProcess, GatewayProcess are ManagedProcess subclasses) and the deploy runner (helm-rendered
pods on loopback). Own process group: a child's children (Triton's python-backend stubs, ~2 GB)
go with it, so nothing outlives a stop or a crash.

Restarts: a watcher thread (Supervisor) polls each Child; when one exits unexpectedly it kills the
child's whole process group, runs its cleanup (Triton: remove its shared-memory regions, which hold
recent query photos), and restarts it with exponential backoff (bounded attempts; the count resets
once a child stayed up `stable_s`). Every step is logged and kept in `events` (for tests and
`vsearch up`'s log). Why (issue 12 item 7): a SIGKILLed tritonserver used to leave its stubs and
regions behind for minutes, and nothing restarted it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

log = logging.getLogger("vsearch.supervise")


# --- ports and process groups --------------------------------------------------------------------
_HANDED_OUT: set[int] = set()
_PORT_LOCK = threading.Lock()


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A TCP port free on loopback right now, for a listener started soon after.

    Picked below the kernel's ephemeral range: a port from bind(0) is an ephemeral one, which an
    outgoing connection of another local process can take as its source port before our listener
    binds it ("Address already in use", seen when a whole chart's pods start at once). Never the
    same port twice in one process. Falls back to bind(0) if the low range is exhausted.
    """
    import random

    lo, _ = _ephemeral_range()
    rng = random.Random()
    with _PORT_LOCK:
        for _ in range(200):
            port = rng.randrange(20000, max(20001, lo))
            if port in _HANDED_OUT:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        _HANDED_OUT.add(port)
        return port


def spawn(
    argv: list[str], log_path: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None,
    append: bool = True, umask: int = -1,
) -> subprocess.Popen[bytes]:
    """Start `argv` as the leader of a new session (own process group), stdout+stderr to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab" if append else "wb") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True, umask=umask
        )


def signal_group(pid: int, sig: int) -> None:
    """Send `sig` to the process group led by `pid` (gone already: nothing to do)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def kill_group(pid: int) -> None:
    """SIGKILL a child's process group (it was started as a session leader)."""
    signal_group(pid, signal.SIGKILL)


def group_pids(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(d.name))
    return out


def wait_group_gone(pgid: int, timeout: float = 5.0) -> bool:
    """Until no live process is left in the group (a SIGKILL is delivered, not awaited); bounded."""
    deadline = time.monotonic() + timeout
    while group_pids(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a child's process group, reap the leader and wait (bounded) until no member is left.

    Never signals a group id whose processes are all gone and reaped: the kernel may have given
    that number to someone else. An unreaped leader, or any live member, keeps the id ours."""
    if proc.returncode is None:  # not reaped yet (maybe a zombie): its pid is still ours
        kill_group(proc.pid)
        proc.wait()
    if group_pids(proc.pid):  # members (e.g. Triton's stubs) pin the group id
        kill_group(proc.pid)
        wait_group_gone(proc.pid)


def stop_groups(procs: Iterable[subprocess.Popen[bytes] | None], timeout: float, *,
                term_group: bool = True) -> list[int | None]:
    """Stop processes started by spawn(), all at once: SIGTERM (to the whole group, or with
    term_group=False to the leader only, which then drains and ends its own children), wait up to
    `timeout`, then SIGKILL whatever is left of each group. Returns the exit statuses."""
    live = [p for p in procs if p is not None]
    for p in live:
        if p.poll() is None:
            if term_group:
                signal_group(p.pid, signal.SIGTERM)
            else:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in live:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.0, deadline - time.monotonic()))
        end_group(p)  # the leader if it hung, and any child it left behind
    return [p.returncode for p in live]


# --- readiness -----------------------------------------------------------------------------------
def wait_until(
    ready: Callable[[], bool], timeout: float, proc: subprocess.Popen[bytes] | None = None, *,
    what: str = "process", poll_s: float = 0.05, tick: Callable[[], None] = lambda: None,
) -> None:
    """Poll `ready()` until it is true. Raises RuntimeError if `proc` exits first, TimeoutError
    after `timeout` s. `tick` runs every poll (e.g. re-protect shared memory while models load)."""
    deadline = time.monotonic() + timeout
    while True:
        tick()
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before becoming ready")
        if ready():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout}s")
        time.sleep(poll_s)


def wait_healthy(address: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until the gRPC health service at `address` says SERVING (overall service "")."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:  # one channel for the whole wait
        stub = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            except grpc.RpcError:
                return False
            return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

        wait_until(serving, timeout, proc, what=address)


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """GET `url` answers 200 (readiness endpoints: Triton's /v2/health/ready)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status) == 200
    except OSError:
        return False


# --- one managed child ---------------------------------------------------------------------------
class ManagedProcess:
    """The base of every local child process helper (Triton, shard, gateway).

    A subclass gives `command()` and `wait_ready()` (and `env()` if it needs one); this class
    starts it in its own process group with its output in `log_path`, stops the whole group
    (SIGTERM, grace, SIGKILL), kills it like a crash, and is a context manager. A Supervisor
    restarts it through `start` (same ports and data).
    """

    proc: subprocess.Popen[bytes] | None = None
    log_path: Path
    startup_timeout: float = 120.0
    stop_timeout: float = 60.0
    # SIGTERM to the leader only (it drains, then ends its children) or to the whole group.
    term_group: bool = False
    log_append: bool = True  # False: each start truncates the log
    umask: int = -1  # -1: inherit

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        return None  # inherit this process's environment

    def wait_ready(self, timeout: float) -> None:
        """Block until the child serves (raise if it exits first or takes longer than timeout)."""
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = True) -> Self:
        """Start the child (in its own process group) and, with wait, wait until it is ready; a
        child that fails to become ready is killed (group and all) before the error propagates."""
        if self.running:
            raise RuntimeError(f"{type(self).__name__} already running")
        self.proc = spawn(
            self.command(), self.log_path, env=self.env(), append=self.log_append, umask=self.umask
        )
        if wait:
            try:
                self.wait_ready(self.startup_timeout)
            except BaseException:
                self.stop(0)  # nothing to drain; subclasses' stop also removes what they leave
                raise
        return self

    def kill(self) -> None:
        """SIGKILL the whole group: a crash (no drain, no final snapshot)."""
        if self.proc is not None:
            end_group(self.proc)

    def stop(self, timeout: float | None = None) -> int | None:
        """Graceful stop: SIGTERM, up to `timeout` s to finish, then SIGKILL the group's leftovers."""
        if self.proc is None:
            return None
        timeout = self.stop_timeout if timeout is None else timeout
        return stop_groups([self.proc], timeout, term_group=self.term_group)[0]

    def group_pids(self) -> list[int]:
        """Live processes of the child's process group (it and whatever it started)."""
        return group_pids(self.proc.pid) if self.proc is not None else []

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]

    def __enter__(self) -> Self:
        return self.start() if not self.running else self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class CommandProcess(ManagedProcess):
    """Any command line as a managed child, ready when `ready()` says so (e.g. a page answers)."""

    def __init__(
        self, argv: list[str], log_path: Path, *, ready: Callable[[], bool],
        env: dict[str, str] | None = None, startup_timeout: float = 30.0, stop_timeout: float = 10.0,
    ) -> None:
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.ready = ready
        self._env = env
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.proc = None

    def command(self) -> list[str]:
        return self.argv

    def env(self) -> dict[str, str] | None:
        return self._env

    def wait_ready(self, timeout: float) -> None:
        wait_until(self.ready, timeout, self.proc, what=" ".join(self.argv[:4]), poll_s=0.2)


# --- restarts ------------------------------------------------------------------------------------
@dataclass
class Child:
    """One supervised process: how to see it, clean up after it and start it again."""

    name: str
    proc: Callable[[], Any]  # -> the current subprocess.Popen (or None)
    restart: Callable[[], object]  # start again (same ports and data); may raise
    cleanup: Callable[[], str] = lambda: ""  # after an exit: kill leftovers; returns a summary
    tick: Callable[[], None] = lambda: None  # every poll while it runs (e.g. re-protect shm regions)
    attempts: int = 0
    up_since: float = field(default_factory=time.monotonic)
    given_up: bool = False

    @classmethod
    def of(cls, name: str, process: ManagedProcess, **kw: Any) -> Child:
        """A Child for a ManagedProcess: restarted through its start() (same ports and data)."""
        return cls(name, lambda: process.proc, lambda: process.start(), **kw)


class Supervisor:
    """Watches Children on a thread; restarts the ones that exit (see the module docstring)."""

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
        end_group(proc)
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
                    end_group(p)
                continue
            child.up_since = time.monotonic()
            self._event(child, "restarted", attempt=child.attempts, pid=child.proc().pid)
            return
