"""Run a real `vsearch shard` process (the local stack, tests and benchmarks).

    with ShardProcess(tmp_path / "shard0", model_version="m1") as shard:
        stub = shard.stub()            # SearchShardStub on a loopback channel
        shard.kill()                   # SIGKILL (crash); shard.start() restarts on the same dir

The process is `python -m visual_search.cli shard ...` in its own process group
(supervise.ManagedProcess); readiness = gRPC health SERVING. Shards require a token
(shard/auth.py): ShardProcess makes sure this process has one in its environment (random when none
is configured), so the shards, a gateway and jobs started from here inherit it, and `stub()`
sends it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc

from visual_search.shard import auth as shard_auth
from visual_search.supervise import ManagedProcess, free_port, wait_healthy
from visual_search.v1 import shard_pb2_grpc


class ShardProcess(ManagedProcess):
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
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.shard_id = shard_id
        self.model_version = model_version
        self.metrics_port = metrics_port
        self.extra_args = list(extra_args or [])
        self.log_path = (
            Path(log_path) if log_path else self.data_dir.parent / f"shard{shard_id}-{self.port}.log"
        )
        self.startup_timeout = startup_timeout
        self.proc = None
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

    def wait_ready(self, timeout: float) -> None:
        wait_healthy(self.address, timeout, self.proc)

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
        super().kill()

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM: graceful shutdown (drain + final snapshot); SIGKILL if it hangs."""
        self._close_channel()
        return super().stop(timeout)
