"""Launch a real tritonserver (from .cache/tritonserver) on a freshly generated model repository.

The python-backend stub embeds libpython 3.11; it finds the serving venv (numpy<2,
onnxruntime, pillow) because the venv's bin/ is first on PATH, the repository root is on
PYTHONPATH (the copied model.py files import visual_search) and libpython's LIBDIR is on
LD_LIBRARY_PATH.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from visual_search.triton.repository import Options, write_repository

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TRITON_HOME = REPO_ROOT / ".cache" / "tritonserver"
SHM_DIR = Path("/dev/shm")
# The python backend's default shared-memory region prefix (its `shm-region-prefix-name`); a
# server started with shm_prefix uses its own, so its regions can be told apart and removed.
DEFAULT_SHM_PREFIX = "triton_python_backend_shm_region_"


class TritonError(RuntimeError):
    """tritonserver could not be started or did not become ready."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def triton_env(triton_home: Path, python_bin: Path | None = None) -> dict[str, str]:
    """Environment for tritonserver and its python stubs (see module docstring)."""
    env = dict(os.environ)
    venv_bin = Path(python_bin or sys.executable).parent
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["PATH"] = f"{venv_bin}:{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["LD_LIBRARY_PATH"] = ":".join(
        p for p in (str(triton_home / "lib"), libdir, env.get("LD_LIBRARY_PATH", "")) if p
    )
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@dataclass
class TritonServer:
    """A tritonserver process serving a generated repository; use as a context manager."""

    options: Options = field(default_factory=Options)
    run_dir: Path = REPO_ROOT / "run" / "triton"
    triton_home: Path = DEFAULT_TRITON_HOME
    grpc_port: int = 0  # 0: pick a free port
    http_port: int = 0
    metrics_port: int = 0
    log_verbose: int = 0
    # gRPC, HTTP and metrics listen here: loopback, as Triton has no authentication of its own
    # (its default is 0.0.0.0). In Kubernetes the chart runs the official image with its own flags.
    host: str = "127.0.0.1"
    # Own python-backend shm prefix ("" = Triton's default); regions are then removed on stop.
    shm_prefix: str = ""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "tritonserver.log"

    def start(self, timeout_s: float = 180.0) -> TritonServer:
        """Generate the repository, start the server, wait until every model is ready."""
        binary = self.triton_home / "bin" / "tritonserver"
        if not binary.exists():
            raise TritonError(f"{binary} not found; run scripts/install_triton.sh")
        self.grpc_port = self.grpc_port or free_port()
        self.http_port = self.http_port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        repo = self.run_dir / "model_repository"
        write_repository(self.options, repo)
        cmd = [
            str(binary),
            f"--model-repository={repo}",
            f"--backend-directory={self.triton_home / 'backends'}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--disable-auto-complete-config",
            f"--log-verbose={self.log_verbose}",
        ]
        if self.shm_prefix:
            cmd.append(f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd,
            env=triton_env(self.triton_home),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the python stubs go with it
            umask=0o077,  # its files and shared-memory regions (query photos) only for this user
        )
        log.close()
        self._wait_ready(timeout_s)
        self.protect_shm()
        return self

    def shm_regions(self) -> list[Path]:
        """This server's python-backend shared-memory regions (needs shm_prefix)."""
        if not self.shm_prefix:
            return []
        return sorted(SHM_DIR.glob(f"{self.shm_prefix}*"))

    def protect_shm(self) -> None:
        """Owner-only modes on the regions: the python backend creates them 0644 whatever the umask
        (measured), and query photos pass through them."""
        for p in self.shm_regions():
            with contextlib.suppress(OSError):
                p.chmod(0o600)

    def group_pids(self) -> list[int]:
        """Live processes of the server's process group (tritonserver + its python stubs)."""
        if self.proc is None:
            return []
        out = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat.rpartition(")")[2].split()
            if len(fields) > 2 and int(fields[2]) == self.proc.pid and fields[0] != "Z":
                out.append(int(d.name))
        return out

    def kill_leftovers(self) -> int:
        """SIGKILL whatever is left of the process group and remove its shm regions; returns the
        number of regions removed. For after a crash (stubs outlive a SIGKILLed tritonserver)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            if self.proc.poll() is None:
                self.proc.wait(10)
        removed = 0
        for p in self.shm_regions():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed += 1
        return removed

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            self.protect_shm()  # regions appear while models load, before Triton is ready
            if self.proc.poll() is not None:
                raise TritonError(f"tritonserver exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TritonError(f"tritonserver not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (Triton drains in-flight requests), then SIGKILL the process group; remove its
        shm regions."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout_s)
        self.kill_leftovers()

    def __enter__(self) -> TritonServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(options: Options, run_dir: Path, **kw: int) -> Iterator[TritonServer]:
    """`with running(opts, dir) as server:` a ready server, stopped on exit."""
    server = TritonServer(options=options, run_dir=run_dir, **kw)  # type: ignore[arg-type]
    with server:
        yield server
