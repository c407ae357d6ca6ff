"""Launch a real tritonserver (from .cache/tritonserver) on a freshly generated model repository.

The python-backend stub embeds libpython 3.11; it finds the serving venv (numpy<2,
onnxruntime, pillow) because the venv's bin/ is first on PATH, the repository root is on
PYTHONPATH (the copied model.py files import visual_search) and libpython's LIBDIR is on
LD_LIBRARY_PATH.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from visual_search.supervise import ManagedProcess, end_group, free_port, http_ok, stop_groups, wait_until
from visual_search.triton.repository import Options, write_repository

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TRITON_HOME = REPO_ROOT / ".cache" / "tritonserver"
SHM_DIR = Path("/dev/shm")
# The python backend's default shared-memory region prefix (its `shm-region-prefix-name`); a
# server started with shm_prefix uses its own, so its regions can be told apart and removed.
DEFAULT_SHM_PREFIX = "triton_python_backend_shm_region_"


class TritonError(RuntimeError):
    """tritonserver could not be started or did not become ready."""


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
class TritonServer(ManagedProcess):
    """A tritonserver process serving a generated repository; use as a context manager.

    Started in its own process group (supervise.ManagedProcess): its python-backend stubs are in
    that group, so stop() and kill_leftovers() end them too and then remove its shm regions."""

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
    # ManagedProcess settings: SIGTERM the whole group (Triton drains, stubs end with it); each
    # start truncates the log; files and shm regions (query photos) only for this user.
    term_group = True
    log_append = False
    umask = 0o077
    startup_timeout: float = 180.0
    stop_timeout = 30.0

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def __post_init__(self) -> None:
        self.log_path = self.run_dir / "tritonserver.log"

    def start(self, wait: bool = True) -> TritonServer:
        """Generate the repository, start the server, wait until every model is ready
        (`startup_timeout`)."""
        binary = self.triton_home / "bin" / "tritonserver"
        if not binary.exists():
            raise TritonError(f"{binary} not found; run scripts/install_triton.sh")
        self.grpc_port = self.grpc_port or free_port()
        self.http_port = self.http_port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        write_repository(self.options, self.repository)
        super().start(wait)
        self.protect_shm()
        return self

    @property
    def repository(self) -> Path:
        return self.run_dir / "model_repository"

    def command(self) -> list[str]:
        cmd = [
            str(self.triton_home / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
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
        return cmd

    def env(self) -> dict[str, str]:
        return triton_env(self.triton_home)

    def wait_ready(self, timeout: float) -> None:
        """Until every model is ready; regions are protected as they appear (while models load)."""
        try:
            wait_until(
                lambda: http_ok(f"{self.http_url}/v2/health/ready"), timeout, self.proc,
                what="tritonserver", poll_s=0.2, tick=self.protect_shm,
            )
        except (RuntimeError, TimeoutError) as e:
            raise TritonError(f"{e}:\n{self.log_tail()}") from e

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

    def kill_leftovers(self) -> int:
        """SIGKILL whatever is left of the process group and remove its shm regions; returns the
        number of regions removed. For after a crash (stubs outlive a SIGKILLed tritonserver)."""
        if self.proc is not None:
            end_group(self.proc)
        removed = 0
        for p in self.shm_regions():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed += 1
        return removed

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM the group (Triton drains in-flight requests), then SIGKILL what is left; remove
        its shm regions."""
        if self.proc is None:
            return None
        rc = stop_groups([self.proc], self.stop_timeout if timeout is None else timeout, term_group=True)[0]
        self.kill_leftovers()
        return rc


@contextlib.contextmanager
def running(options: Options, run_dir: Path, **kw: int) -> Iterator[TritonServer]:
    """`with running(opts, dir) as server:` a ready server, stopped on exit."""
    server = TritonServer(options=options, run_dir=run_dir, **kw)  # type: ignore[arg-type]
    with server:
        yield server
