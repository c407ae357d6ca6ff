"""Process-level deploy runner: run `helm template` output the way a cluster would, on loopback.

    with ChartRun.render(values_files=[...], run_dir=tmp) as run:
        run.start()                       # every Deployment / StatefulSet pod, init containers first
        run.wait_ready()                  # every readiness probe declared in the manifests passes
        addr = run.service_address("vs-visual-search-gateway", "grpc")

What the kubelet would do, and what this does instead (no cluster, no container runtime here):
- Workloads: Deployments (spec.replicas, or the HPA's minReplicas when an HPA targets it),
  StatefulSets (pods <name>-0..R-1, each with its own claim dir from volumeClaimTemplates) and,
  on request, Jobs (run_job) are expanded into pods. CronJobs are not run.
- Containers: the rendered command/args/env, run from this checkout's venv through an image
  emulation (IMAGES): the vsearch image's ENTRYPOINT `vsearch` is `python -m visual_search.cli`;
  the Triton image's `tritonserver` is .cache/tritonserver with its backends; the
  model-repository image's /model_repository is generated from ensemble/generate (configs, python
  models, ONNX files). Only these images run; any other image is an error, not a silent skip.
- Volumes: ConfigMaps and Secrets are written to per-pod temp dirs, emptyDirs and claims are temp
  dirs; every mountPath (and image path) in args, env and ConfigMap/Secret files is rewritten to
  its local dir. The environment is what the manifests set (plus PATH/HOME/PYTHONPATH of the
  emulated image), not this shell's.
- Network: every container port gets a free loopback port; `0.0.0.0` binds become `127.0.0.1`;
  Service and StatefulSet pod DNS names (`name`, `name.ns`, `name.ns.svc`, `name.ns.svc.<domain>`)
  followed by a port are rewritten to `127.0.0.1:<local port>` of the pod behind them (the first
  ready pod a Service selects: no load balancing).
- Not emulated: resources, securityContext (UIDs, read-only root), affinity, NetworkPolicies,
  GPUs (the GPU-flavour model repository path is served by the CPU flavour: there is no GPU and
  the CPU tritonserver has no onnxruntime backend), probes' timing (probes are checked on demand).
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm" / "visual-search"


class DeployError(RuntimeError):
    """A rendered workload could not be run or did not become ready."""


def helm_binary() -> str | None:
    """helm from $HELM, .cache/bin (scripts/install_helm.sh) or PATH; None if absent."""
    for c in (os.environ.get("HELM"), str(REPO_ROOT / ".cache" / "bin" / "helm"), shutil.which("helm")):
        if c and os.access(c, os.X_OK):
            return c
    return None


def helm_template(
    values_files: Sequence[str | os.PathLike[str]] = (), set_values: Sequence[str] = (),
    release: str = "vs", namespace: str = "search", extra: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """`helm template` the chart; the rendered documents (raises DeployError with helm's message)."""
    helm = helm_binary()
    if helm is None:
        raise DeployError("helm not found: run scripts/install_helm.sh")
    cmd = [helm, "template", release, str(CHART), "--namespace", namespace, *extra]
    for f in values_files:
        cmd += ["-f", str(f)]
    for s in set_values:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise DeployError(proc.stderr.strip() or proc.stdout.strip())
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- pods ------------------------------------------------------------------------------------------
@dataclass
class Pod:
    """One pod of a rendered workload: its spec, local dirs and the ports its containers got."""

    name: str
    kind: str  # Deployment | StatefulSet | Job
    workload: str
    labels: dict[str, str]
    spec: dict[str, Any]
    dir: Path
    subdomain: str = ""  # StatefulSet serviceName (pod DNS <pod>.<subdomain>)
    claims: dict[str, Path] = field(default_factory=dict)  # volumeClaimTemplates name -> dir
    ports: dict[int, int] = field(default_factory=dict)  # containerPort -> local port
    named_ports: dict[str, int] = field(default_factory=dict)  # port name -> containerPort
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)  # container -> process

    def containers(self) -> list[dict[str, Any]]:
        return list(self.spec.get("containers", []))

    def local_port(self, port: int | str) -> int:
        cport = self.named_ports[port] if isinstance(port, str) and not port.isdigit() else int(port)
        return self.ports[cport]

    def log_path(self, container: str) -> Path:
        return self.dir / f"{container}.log"

    def log_tail(self, container: str, chars: int = 3000) -> str:
        try:
            return self.log_path(container).read_text(errors="replace")[-chars:]
        except OSError:
            return ""


# --- image emulation -------------------------------------------------------------------------------
@dataclass
class Emulation:
    """How a container of one image runs here: argv[0] rewrite, extra env and image paths."""

    entrypoint: list[str]  # the image's ENTRYPOINT (prepended when the container sets no command)
    resolve: Callable[[list[str]], list[str]]  # maps argv (command + args) to a local argv
    env: dict[str, str]
    paths: dict[str, Path]  # absolute paths inside the image -> local paths


def _base_env(home: Path) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    return {
        "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "LANG": "C.UTF-8",
    }


def _vsearch_image(home: Path) -> Emulation:
    def resolve(argv: list[str]) -> list[str]:
        if argv and argv[0] in ("vsearch", "/opt/vsearch/bin/vsearch"):
            return [sys.executable, "-m", "visual_search.cli", *argv[1:]]
        return argv

    return Emulation(["vsearch"], resolve, _base_env(home), {})


def _triton_image(home: Path) -> Emulation:
    from visual_search.triton.server import DEFAULT_TRITON_HOME, triton_env

    binary = DEFAULT_TRITON_HOME / "bin" / "tritonserver"

    def resolve(argv: list[str]) -> list[str]:
        if argv and argv[0] in ("tritonserver", "/opt/tritonserver/bin/tritonserver"):
            if not binary.exists():
                raise DeployError(f"{binary} not found: run scripts/install_triton.sh")
            # The official image finds its backends at /opt/tritonserver/backends by default.
            return [str(binary), f"--backend-directory={DEFAULT_TRITON_HOME / 'backends'}", *argv[1:]]
        return argv

    env = triton_env(DEFAULT_TRITON_HOME)
    keep: dict[str, str] = {
        k: env[k] for k in ("PATH", "PYTHONPATH", "LD_LIBRARY_PATH", "OMP_NUM_THREADS") if k in env
    }
    return Emulation(["/opt/nvidia/nvidia_entrypoint.sh"], resolve, {**_base_env(home), **keep}, {})


def model_repository_root(run_dir: Path) -> Path:
    """What the model-repository image holds at /model_repository: cpu/ (generated from the
    exported ONNX files, weights copied) and gpu/ (here: the CPU flavour, see the module doc)."""
    from ensemble.generate import Options, write_repository

    root = run_dir / "image-model-repository"
    cpu = root / "cpu"
    if not (cpu / "embed" / "config.pbtxt").exists():
        write_repository(Options(flavour="cpu", copy_weights=False), cpu)
    gpu = root / "gpu"
    if not gpu.exists():
        gpu.symlink_to("cpu")
    return root


def _model_repository_image(home: Path, run_dir: Path) -> Emulation:
    return Emulation(
        ["sh"], lambda argv: argv, _base_env(home), {"/model_repository": model_repository_root(run_dir)}
    )


def emulation_for(image: str, home: Path, run_dir: Path) -> Emulation:
    """The emulation of a rendered image reference (repository name decides)."""
    repo = image.split("@")[0].rsplit(":", 1)[0] if ":" in image.split("/")[-1] else image.split("@")[0]
    last = repo.rsplit("/", 1)[-1]
    if last == "vsearch":
        return _vsearch_image(home)
    if last in ("tritonserver", "vsearch-triton", "vsearch-triton-gpu"):  # GPU image: served on CPU here
        return _triton_image(home)
    if last == "model-repository":
        return _model_repository_image(home, run_dir)
    raise DeployError(
        f"image {image!r} has no local emulation "
        "(known: vsearch, vsearch-triton[-gpu], tritonserver, model-repository)"
    )


# --- string rewriting ------------------------------------------------------------------------------
_PORT_FLAG = re.compile(r"^(--[\w-]*port)=(\d+)$")


def _remap_paths(text: str, paths: dict[str, Path]) -> str:
    """Replace container paths (at a path boundary) by local ones in one pass, longest first."""
    if not paths:
        return text
    keys = sorted((p.rstrip("/") or "/" for p in paths), key=len, reverse=True)
    local = {p.rstrip("/") or "/": str(v) for p, v in paths.items()}
    pat = re.compile(r"(?<![\w./-])(" + "|".join(re.escape(k) for k in keys) + r")(?=/|$|[\s\"',;:])")
    return pat.sub(lambda m: local[m.group(1)], text)


class ChartRun:
    """The rendered chart as local processes; a context manager that stops everything on exit."""

    def __init__(self, docs: list[dict[str, Any]], run_dir: Path, namespace: str = "search",
                 cluster_domain: str = "cluster.local") -> None:
        self.docs = docs
        self.run_dir = Path(run_dir)
        self.namespace = namespace
        self.domain = cluster_domain
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
        self.secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
        self.services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
        self.pods: list[Pod] = []
        self.job_pods: list[Pod] = []
        for d in docs:
            if d["kind"] in ("Deployment", "StatefulSet"):
                self.pods += self._expand(d)
        self.dns: dict[str, Pod | dict[str, Any]] = {}
        self._index_names()

    @classmethod
    def render(cls, run_dir: Path, values_files: Sequence[str | os.PathLike[str]] = (),
               set_values: Sequence[str] = (), release: str = "vs", namespace: str = "search") -> ChartRun:
        docs = helm_template(values_files, set_values, release, namespace)
        return cls(docs, run_dir, namespace)

    # ---- expansion -------------------------------------------------------------------------
    def _replicas(self, doc: dict[str, Any]) -> int:
        if "replicas" in doc["spec"]:
            return int(doc["spec"]["replicas"])
        for hpa in self.of_kind("HorizontalPodAutoscaler"):
            ref = hpa["spec"]["scaleTargetRef"]
            if ref["kind"] == doc["kind"] and ref["name"] == doc["metadata"]["name"]:
                return int(hpa["spec"].get("minReplicas", 1))
        return 1

    def _expand(self, doc: dict[str, Any], job: bool = False) -> list[Pod]:
        kind, name = doc["kind"], doc["metadata"]["name"]
        tmpl = doc["spec"]["template"]
        labels = dict(tmpl.get("metadata", {}).get("labels", {}))
        out = []
        for r in range(1 if job else self._replicas(doc)):
            pname = f"{name}-{r}" if kind == "StatefulSet" else f"{name}-{'job' if job else r}"
            pdir = self.run_dir / "pods" / pname
            pdir.mkdir(parents=True, exist_ok=True)
            pod = Pod(pname, kind, name, labels, tmpl["spec"], pdir,
                      subdomain=doc["spec"].get("serviceName", "") if kind == "StatefulSet" else "")
            for claim in doc["spec"].get("volumeClaimTemplates", []):
                cdir = self.run_dir / "pvc" / f"{claim['metadata']['name']}-{pname}"
                cdir.mkdir(parents=True, exist_ok=True)
                pod.claims[claim["metadata"]["name"]] = cdir
            for c in [*pod.spec.get("initContainers", []), *pod.containers()]:
                for p in c.get("ports", []):
                    pod.ports[int(p["containerPort"])] = free_port()
                    if p.get("name"):
                        pod.named_ports[p["name"]] = int(p["containerPort"])
            out.append(pod)
        return out

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def _index_names(self) -> None:
        ns, dom = self.namespace, self.domain

        def names(base: str) -> list[str]:
            return [f"{base}.{ns}.svc.{dom}", f"{base}.{ns}.svc", f"{base}.{ns}", base]

        for pod in self.pods:
            if pod.subdomain:
                for n in names(f"{pod.name}.{pod.subdomain}"):
                    self.dns[n] = pod
        for svc_name, svc in self.services.items():
            for n in names(svc_name):
                self.dns[n] = svc

    def selected(self, svc: dict[str, Any]) -> list[Pod]:
        sel = svc["spec"].get("selector") or {}
        return [p for p in self.pods if sel and all(p.labels.get(k) == v for k, v in sel.items())]

    def resolve(self, host: str, port: int) -> int | None:
        """Local port behind DNS name host:port, or None if the name is not the chart's."""
        target = self.dns.get(host)
        if target is None:
            return None
        if isinstance(target, Pod):
            return target.ports.get(port)
        for sp in target["spec"].get("ports", []):
            if int(sp["port"]) != port:
                continue
            for pod in self.selected(target):
                tp = sp.get("targetPort", sp["port"])
                with contextlib.suppress(KeyError, ValueError):
                    return pod.local_port(tp)
        return None

    def service_address(self, service: str, port: int | str) -> str:
        """127.0.0.1:<local port> of a Service port (number or name) of the chart."""
        svc = self.services[service]
        for sp in svc["spec"]["ports"]:
            if port in (sp["port"], sp.get("name")):
                local = self.resolve(service, int(sp["port"]))
                if local:
                    return f"127.0.0.1:{local}"
        raise KeyError(f"service {service} has no port {port}")

    def rewrite(self, text: str, pod: Pod, paths: dict[str, Path]) -> str:
        """DNS names -> loopback ports, 0.0.0.0 -> 127.0.0.1, container paths -> local dirs."""
        def sub(m: re.Match[str]) -> str:
            local = self.resolve(m.group(1), int(m.group(2)))
            return f"127.0.0.1:{local}" if local else m.group(0)

        text = re.sub(r"([A-Za-z0-9][A-Za-z0-9.-]*[A-Za-z0-9]):(\d+)", sub, text)
        text = re.sub(r"(?<![\d.])0\.0\.0\.0(?![\d.])", "127.0.0.1", text)
        return _remap_paths(text, paths)

    def _own_ports(self, argv: list[str], pod: Pod) -> list[str]:
        """A container's own port numbers in its flags -> its local ports."""
        out = list(argv)
        for i, a in enumerate(out):
            m = _PORT_FLAG.match(a)
            if m and int(m.group(2)) in pod.ports:
                out[i] = f"{m.group(1)}={pod.ports[int(m.group(2))]}"
            elif (
                i > 0 and out[i - 1].startswith("--") and out[i - 1].endswith("port") and a.isdigit()
                and int(a) in pod.ports
            ):
                out[i] = str(pod.ports[int(a)])
        return out

    # ---- volumes ---------------------------------------------------------------------------
    def _volume_dirs(self, pod: Pod) -> dict[str, Path]:
        dirs: dict[str, Path] = {}
        for vol in pod.spec.get("volumes", []):
            vdir = pod.dir / "volumes" / vol["name"]
            if "configMap" in vol or "secret" in vol:
                if vdir.exists():
                    shutil.rmtree(vdir)
                vdir.mkdir(parents=True)
                if "configMap" in vol:
                    src = self.configmaps.get(vol["configMap"]["name"])
                    data = dict((src or {}).get("data", {}))
                    ref = vol["configMap"]
                else:
                    src = self.secrets.get(vol["secret"]["secretName"])
                    data = {k: base64.b64decode(v).decode() for k, v in (src or {}).get("data", {}).items()}
                    data.update((src or {}).get("stringData", {}))
                    ref = vol["secret"]
                if src is None:
                    raise DeployError(f"pod {pod.name}: volume {vol['name']} refers to an object the chart "
                                      "does not render (existing Secret/ConfigMap): provide it in values")
                items = ref.get("items") or [{"key": k, "path": k} for k in data]
                for it in items:
                    (vdir / it["path"]).parent.mkdir(parents=True, exist_ok=True)
                    (vdir / it["path"]).write_text(self.rewrite(data[it["key"]], pod, {}))
            elif "emptyDir" in vol:
                vdir.mkdir(parents=True, exist_ok=True)
            elif "persistentVolumeClaim" in vol:
                vdir = self.run_dir / "pvc" / vol["persistentVolumeClaim"]["claimName"]
                vdir.mkdir(parents=True, exist_ok=True)
            else:
                raise DeployError(f"pod {pod.name}: volume type of {vol['name']} not supported")
            dirs[vol["name"]] = vdir
        dirs.update(pod.claims)
        return dirs

    def update_configmap(self, name: str, data: dict[str, str]) -> int:
        """What the kubelet does after a ConfigMap change: rewrite its keys in every running pod's
        volume (atomically, as the kubelet swaps a symlinked dir). Returns the volumes updated."""
        self.configmaps[name].setdefault("data", {}).update(data)
        n = 0
        for pod in [*self.pods, *self.job_pods]:
            for vol in pod.spec.get("volumes", []):
                if vol.get("configMap", {}).get("name") != name:
                    continue
                vdir = pod.dir / "volumes" / vol["name"]
                for key, text in data.items():
                    tmp = vdir / f".{key}.tmp"
                    tmp.write_text(self.rewrite(text, pod, {}))
                    os.replace(tmp, vdir / key)
                n += 1
        return n

    def _mount_paths(self, container: dict[str, Any], vols: dict[str, Path]) -> dict[str, Path]:
        out = {}
        for m in container.get("volumeMounts", []):
            local = vols[m["name"]]
            if m.get("subPath"):
                local = local / m["subPath"]
            out[m["mountPath"]] = local
        return out

    # ---- env -------------------------------------------------------------------------------
    def _env(self, pod: Pod, container: dict[str, Any], paths: dict[str, Path]) -> dict[str, str]:
        env: dict[str, str] = {}
        for src in container.get("envFrom") or []:
            if "configMapRef" in src:
                env.update(self.configmaps[src["configMapRef"]["name"]].get("data", {}))
            if "secretRef" in src:
                sec = self.secrets.get(src["secretRef"]["name"])
                if sec is None:
                    name = src["secretRef"]["name"]
                    raise DeployError(f"pod {pod.name}: envFrom Secret {name} not rendered")
                env.update({k: base64.b64decode(v).decode() for k, v in sec.get("data", {}).items()})
        for e in container.get("env") or []:
            if "value" in e:
                env[e["name"]] = self.rewrite(str(e["value"]), pod, paths)
                continue
            vf = e["valueFrom"]
            if "fieldRef" in vf:
                field_path = vf["fieldRef"]["fieldPath"]
                env[e["name"]] = {"metadata.name": pod.name, "metadata.namespace": self.namespace,
                                  "status.podIP": "127.0.0.1"}.get(field_path, "")
            elif "secretKeyRef" in vf:
                ref = vf["secretKeyRef"]
                sec = self.secrets.get(ref["name"])
                if sec is None:
                    if ref.get("optional"):
                        continue
                    raise DeployError(f"pod {pod.name}: Secret {ref['name']} is not rendered by the chart")
                raw = sec.get("stringData", {}).get(ref["key"])
                if raw is None:
                    raw = base64.b64decode(sec["data"][ref["key"]]).decode()
                env[e["name"]] = raw
            elif "configMapKeyRef" in vf:
                ref = vf["configMapKeyRef"]
                env[e["name"]] = self.configmaps[ref["name"]]["data"][ref["key"]]
        return env

    # ---- processes -------------------------------------------------------------------------
    def _argv(self, pod: Pod, container: dict[str, Any], emu: Emulation, paths: dict[str, Path]) -> list[str]:
        argv = list(container.get("command") or emu.entrypoint) + list(container.get("args", []))
        argv = [self.rewrite(str(a), pod, paths) for a in argv]
        return emu.resolve(self._own_ports(argv, pod))

    def _launch(self, pod: Pod, container: dict[str, Any], vols: dict[str, Path]) -> subprocess.Popen[bytes]:
        home = pod.dir / "home"
        home.mkdir(exist_ok=True)
        emu = emulation_for(container["image"], home, self.run_dir)
        paths = {**emu.paths, **self._mount_paths(container, vols)}
        env = {**emu.env, **self._env(pod, container, paths)}
        argv = self._argv(pod, container, emu, paths)
        log = pod.log_path(container["name"]).open("ab")
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        cwd = paths.get(container.get("workingDir", ""), pod.dir)
        try:
            return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                    start_new_session=True)
        finally:
            log.close()

    def start_pod(self, pod: Pod, init_timeout: float = 300.0) -> None:
        """Init containers to completion (in order), then the containers."""
        vols = self._volume_dirs(pod)
        for c in pod.spec.get("initContainers", []):
            proc = self._launch(pod, c, vols)
            try:
                rc = proc.wait(init_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise DeployError(f"{pod.name}: init container {c['name']} timed out") from None
            if rc != 0:
                tail = pod.log_tail(c["name"])
                raise DeployError(f"{pod.name}: init container {c['name']} exited {rc}:\n{tail}")
        for c in pod.containers():
            pod.procs[c["name"]] = self._launch(pod, c, vols)

    def start(self) -> ChartRun:
        try:
            for pod in self.pods:
                self.start_pod(pod)
        except BaseException:
            self.stop()
            raise
        return self

    def run_job(self, name: str, timeout: float = 300.0) -> tuple[int, str]:
        """Run a rendered Job's pod to completion; (exit status of its first container, its log)."""
        (doc,) = [d for d in self.of_kind("Job") if d["metadata"]["name"] == name]
        (pod,) = self._expand(doc, job=True)
        self.job_pods.append(pod)
        self.start_pod(pod)
        cname = pod.containers()[0]["name"]
        proc = pod.procs[cname]
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = -9
        return rc, pod.log_tail(cname, 20000)

    # ---- probes ----------------------------------------------------------------------------
    def probe(self, pod: Pod, spec: dict[str, Any], timeout: float = 3.0) -> bool:
        """Run one probe spec (grpc, httpGet, tcpSocket, exec unsupported) against a pod once."""
        if "grpc" in spec:
            import grpc
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            port = pod.local_port(spec["grpc"]["port"])
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                try:
                    req = health_pb2.HealthCheckRequest(service=spec["grpc"].get("service", ""))
                    r = health_pb2_grpc.HealthStub(ch).Check(req, timeout=timeout)
                except grpc.RpcError:
                    return False
                return bool(r.status == health_pb2.HealthCheckResponse.SERVING)
        if "httpGet" in spec:
            port = pod.local_port(spec["httpGet"]["port"])
            try:
                url = f"http://127.0.0.1:{port}{spec['httpGet'].get('path', '/')}"
                with urllib.request.urlopen(url, timeout=timeout) as r:
                    return 200 <= int(r.status) < 400
            except OSError:
                return False
        if "tcpSocket" in spec:
            port = pod.local_port(spec["tcpSocket"]["port"])
            try:
                socket.create_connection(("127.0.0.1", port), timeout).close()
                return True
            except OSError:
                return False
        raise DeployError(f"probe {spec} not supported")

    def probes(self, kinds: Sequence[str] = ("startupProbe", "readinessProbe", "livenessProbe")) -> Iterator[
        tuple[Pod, str, str, dict[str, Any]]
    ]:
        """(pod, container, probe kind, spec) of every probe declared on running pods."""
        for pod in [*self.pods, *self.job_pods]:
            for c in pod.containers():
                for kind in kinds:
                    if kind in c:
                        yield pod, c["name"], kind, c[kind]

    def _check_pod(self, pod: Pod) -> None:
        for cname, proc in pod.procs.items():
            if proc.poll() is not None:
                tail = pod.log_tail(cname)
                raise DeployError(f"{pod.name}/{cname} exited with {proc.returncode}:\n{tail}")

    def check_exited(self) -> None:
        for pod in self.pods:
            self._check_pod(pod)

    def wait_ready(self, timeout: float = 300.0) -> float:
        """Until every readiness probe passes; returns the seconds it took."""
        t0 = time.monotonic()
        pending = list(self.probes(("readinessProbe",)))
        while pending:
            self.check_exited()
            pending = [p for p in pending if not self.probe(p[0], p[3])]
            if not pending:
                break
            if time.monotonic() - t0 > timeout:
                waiting = ", ".join(f"{p[0].name}/{p[1]}" for p in pending)
                tails = "\n".join(f"--- {p[0].name}/{p[1]}\n{p[0].log_tail(p[1], 1500)}" for p in pending)
                raise DeployError(f"not ready after {timeout:.0f}s: {waiting}\n{tails}")
            time.sleep(0.5)
        return time.monotonic() - t0

    def wait_probe(self, pod: Pod, kind: str = "readinessProbe", timeout: float = 300.0,
                   want: bool = True) -> float:
        """Until the pod's `kind` probe passes (or, want=False, fails); seconds taken."""
        t0 = time.monotonic()
        specs = [c[kind] for c in pod.containers() if kind in c]
        while True:
            if all(self.probe(pod, s) for s in specs) == want:
                return time.monotonic() - t0
            self._check_pod(pod)
            if time.monotonic() - t0 > timeout:
                state = "failing" if want else "passing"
                raise DeployError(f"{pod.name} {kind} still {state} after {timeout}s")
            time.sleep(0.3)

    def metrics_urls(self) -> list[tuple[Pod, str]]:
        """(pod, URL) of every container port named `metrics` (what the ServiceMonitor scrapes)."""
        return [
            (pod, f"http://127.0.0.1:{pod.local_port('metrics')}/metrics")
            for pod in self.pods if "metrics" in pod.named_ports
        ]

    def pods_of(self, workload_prefix: str) -> list[Pod]:
        return [p for p in self.pods if p.workload.endswith(workload_prefix)]

    # ---- stop ------------------------------------------------------------------------------
    def stop_pod(self, pod: Pod, grace: float = 30.0) -> None:
        for proc in pod.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in pod.procs.values():
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop(self) -> None:
        """Gateways first (drain), then shards (final snapshot), then the rest."""
        order = sorted([*self.job_pods, *self.pods],
                       key=lambda p: (0 if p.kind == "Job" else 1 if "gateway" in p.name else 2 if
                                      p.kind == "StatefulSet" else 3))
        for pod in order:
            self.stop_pod(pod)

    def __enter__(self) -> ChartRun:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
