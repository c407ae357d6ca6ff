"""The same rendered workloads in containers (issue 11, ask 2b): ChartRun with `podman run`
instead of local processes.

Each rendered container runs from the images scripts/build_images.sh built (IMAGE_MAP maps the
chart's image repositories to them; the GPU Triton image is served by the CPU one), with its
rendered command/args/env unchanged, its volumes bind-mounted at their mountPaths (ConfigMaps
and Secrets written to host dirs, emptyDirs and claims as host dirs), on one podman network with
DNS: every Service name and StatefulSet pod name in all its forms (`name`, `name.ns`,
`name.ns.svc`, `name.ns.svc.<domain>`) is a network alias of the pod it selects (the first one:
no load balancing). Container ports are published on 127.0.0.1 so the probes, the test client
and the metrics scrape reach them from the host. `podman kube play` was not used: it runs no
StatefulSet, Job, Service or Secret volume (../shared/docs/environment.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

from visual_search.deploy.runner import ChartRun, DeployError, Pod
from visual_search.supervise import spawn

IMAGE_MAP = {
    "vsearch": "vsearch",
    "vsearch-triton-gpu": "vsearch-triton",  # no GPU here: the CPU Triton image
    "vsearch-triton": "vsearch-triton",
    "tritonserver": "vsearch-triton",
    "model-repository": "model-repository",
}


def _repo_name(image: str) -> str:
    ref = image.split("@")[0]
    last = ref.rsplit("/", 1)[-1]
    return last.split(":")[0]


class PodmanChartRun(ChartRun):
    """ChartRun whose containers are podman containers (see the module doc)."""

    def __init__(self, docs: list[dict[str, Any]], run_dir: Path, namespace: str = "search",
                 registry: str = "localhost/visual-search", tag: str = "0.1.0") -> None:
        super().__init__(docs, run_dir, namespace)
        self.registry, self.tag = registry, tag
        self.network = f"vsearch-{uuid.uuid4().hex[:8]}"
        self.containers: list[str] = []
        os.environ.setdefault("CONTAINERS_CONF", str(Path.cwd() / ".build" / "containers.conf"))

    # no rewriting: inside the containers the real names resolve and the real paths exist
    def rewrite(self, text: str, pod: Pod, paths: dict[str, Path]) -> str:
        return text

    def _aliases(self, pod: Pod) -> list[str]:
        ns, dom = self.namespace, self.domain

        def forms(base: str) -> list[str]:
            return [f"{base}.{ns}.svc.{dom}", f"{base}.{ns}.svc", f"{base}.{ns}", base]

        out = forms(f"{pod.name}.{pod.subdomain}") if pod.subdomain else []
        for name, svc in self.services.items():
            sel = self.selected(svc)
            if sel and sel[0] is pod:
                out += forms(name)
        return out

    def _image(self, image: str) -> str:
        name = IMAGE_MAP.get(_repo_name(image))
        if name is None:
            raise DeployError(f"no local image for {image!r} (known: {sorted(IMAGE_MAP)})")
        return f"{self.registry}/{name}:{self.tag}"

    def _launch(self, pod: Pod, container: dict[str, Any], vols: dict[str, Path]) -> subprocess.Popen[bytes]:
        init = container in pod.spec.get("initContainers", [])
        cname = f"{pod.name}-{container['name']}" + ("-init" if init else "")
        argv = ["podman", "run", "--rm", "--name", cname, "--network", self.network,
                "--hostname", pod.name[:63], "--shm-size", "1g"]
        if not init:
            for alias in self._aliases(pod):
                argv += ["--network-alias", alias]
            for cport, local in pod.ports.items():
                argv += ["-p", f"127.0.0.1:{local}:{cport}"]
        for m in container.get("volumeMounts", []):
            if m["mountPath"] == "/dev/shm":
                continue  # --shm-size
            host = vols[m["name"]] / m["subPath"] if m.get("subPath") else vols[m["name"]]
            _open_up(host)
            argv += ["-v", f"{host}:{m['mountPath']}" + (":ro" if m.get("readOnly") else "")]
        for k, v in self._env(pod, container, {}).items():
            argv += ["-e", f"{k}={v}"]
        if container.get("command"):
            argv += ["--entrypoint", json.dumps(container["command"])]
        argv += [self._image(container["image"]), *[str(a) for a in container.get("args", [])]]
        log_path = pod.log_path(container["name"])
        with log_path.open("ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
        self.containers.append(cname)
        return spawn(argv, log_path)

    def start(self) -> ChartRun:
        subprocess.run(["podman", "network", "create", self.network], check=True, capture_output=True)
        return super().start()

    def stop(self) -> None:
        super().stop()
        for name in self.containers:
            subprocess.run(["podman", "rm", "-f", name], capture_output=True)
        subprocess.run(["podman", "network", "rm", "-f", self.network], capture_output=True)


def _open_up(path: Path) -> None:
    """Bind-mounted dirs must be usable by the images' non-root users (UID 10001 / 1000)."""
    path.mkdir(parents=True, exist_ok=True)
    for root, dirs, files in os.walk(path):
        os.chmod(root, 0o777)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666)
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777)
