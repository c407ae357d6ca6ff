"""Run a `vsearch gateway` subprocess (for the launcher, tests and benchmarks); started, waited
for and stopped like every other child (supervise.ManagedProcess)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from visual_search.supervise import ManagedProcess, free_port, wait_healthy


class GatewayProcess(ManagedProcess):
    """A gateway on a free loopback port; a context manager. Metrics on a second free port."""

    def __init__(
        self,
        shards: str,
        *,
        model_version: str | None = None,
        triton_url: str | None = None,
        log_path: str | os.PathLike[str],
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        startup_timeout: float = 60.0,
        port: int | None = None,
    ) -> None:
        self.shards = shards
        self.model_version = model_version
        self.triton_url = triton_url
        self.port = port or free_port()
        self.metrics_port = free_port()
        self.log_path = Path(log_path)
        self.extra_args = list(extra_args or [])
        self.env_overrides = env
        self.startup_timeout = startup_timeout
        self.stop_timeout = 15.0
        self.proc = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "visual_search.cli",
            "gateway",
            "--shards",
            self.shards,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
        ]
        if self.model_version:
            cmd += ["--model-version", self.model_version]
        if self.triton_url:
            cmd += ["--triton", self.triton_url]
        return cmd + self.extra_args

    def env(self) -> dict[str, str]:
        return {**os.environ, **(self.env_overrides or {})}

    def wait_ready(self, timeout: float) -> None:
        try:
            wait_healthy(self.address, timeout, self.proc)
        except Exception as e:
            raise RuntimeError(f"gateway did not start: {e}\n{self.log_text()[-3000:]}") from e

    def metrics_text(self) -> str:
        import urllib.request

        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return str(r.read().decode())


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of a metric's samples in Prometheus text format whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        got = dict(p.split("=", 1) for p in rest.rstrip("}").split(",") if "=" in p)
        if all(got.get(k, "").strip('"') == v for k, v in (labels or {}).items()):
            total += float(value)
    return total
