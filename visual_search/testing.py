"""Helpers to run real shard processes in tests and benchmarks.

    with ShardProcess(tmp_path / "shard0", model_version="m1") as shard:
        stub = shard.stub()            # SearchShardStub on a loopback channel
        shard.kill()                   # SIGKILL (crash); shard.start() restarts on the same dir

The process is `python -m visual_search.cli shard ...`; readiness = gRPC health SERVING.
Shards require a token (shard/auth.py): ShardProcess makes sure this process has one in its
environment (random when none is configured), so the shards, a gateway and jobs started from here
inherit it, and `stub()` sends it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from visual_search.shard import auth as shard_auth
from visual_search.v1 import shard_pb2_grpc


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float) -> int | None:
    """SIGTERM (graceful: drain, final snapshot), then SIGKILL if it has not exited in `timeout`."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def free_port() -> int:
    """A TCP port free on loopback right now (small race window; fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(address: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until the gRPC health service at `address` says SERVING (overall service "")."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before becoming healthy")
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} not healthy after {timeout}s")
            time.sleep(0.05)


class ShardProcess:
    """A `vsearch shard` subprocess on a free loopback port; a context manager."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        shard_id: int = 0,
        model_version: str = "test-model-v1",
        metrics_port: int | None = None,
        extra_args: list[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout: float = 120.0,
        new_session: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.new_session = new_session  # own process group (the launcher's supervisor kills it whole)
        self.port = port or free_port()
        self.shard_id = shard_id
        self.model_version = model_version
        self.metrics_port = metrics_port
        self.extra_args = list(extra_args or [])
        self.log_path = (
            Path(log_path) if log_path else self.data_dir.parent / f"shard{shard_id}-{self.port}.log"
        )
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._channel: grpc.Channel | None = None
        self.token = shard_auth.ensure_token()  # children inherit it through the environment

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "visual_search.cli",
            "shard",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--host",
            "127.0.0.1",
            "--shard-id",
            str(self.shard_id),
            "--model-version",
            self.model_version,
        ]
        if self.metrics_port is not None:
            cmd += ["--metrics-port", str(self.metrics_port)]
        return cmd + self.extra_args

    def start(self, wait: bool = True) -> ShardProcess:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("shard already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=self.new_session
            )
        if wait:
            wait_healthy(self.address, self.startup_timeout, self.proc)
        return self

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = shard_auth.channel(self.address, self.token)
        return self._channel

    def stub(self) -> shard_pb2_grpc.SearchShardStub:
        return shard_pb2_grpc.SearchShardStub(self.channel())

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def kill(self) -> None:
        """SIGKILL: simulates a crash (no drain, no final snapshot)."""
        self._close_channel()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM: graceful shutdown (drain + final snapshot); SIGKILL if it hangs."""
        self._close_channel()
        return terminate(self.proc, timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> ShardProcess:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
