"""`vsearch cutover publish`: set the generation every gateway pod serves (issue 11, ask 4).

Checks the target stack first - every replica of every shard answers Stats with its shard id
and a model version stamp equal to the encoder version Triton reports - then writes the shared
generation document (format: gateway/genwatch.py) with number + 1 and the replaced generation
as `previous`. `--rollback` publishes `previous` again (checked the same way).

Where it writes: `--file PATH` (local runs, tests), or `--configmap NAME` (in a cluster, from the
chart's cutover Job): a merge-patch of the ConfigMap through the Kubernetes API with the pod's
service-account token (the chart's Role allows get/patch of that one ConfigMap). The gateways
see it at the kubelet's next ConfigMap refresh.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.request
from pathlib import Path
from typing import Any

import grpc

from visual_search.gateway.config import ShardMap
from visual_search.v1 import shard_pb2, shard_pb2_grpc

KEY = "generation.json"
SA = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class PublishError(RuntimeError):
    """The target generation is inconsistent or the document could not be written."""


def check_stack(shards: str, triton_url: str, timeout: float = 10.0, token: str | None = None) -> str:
    """The model version the stack serves; raises PublishError naming what disagrees."""
    from visual_search.triton.client import TritonClient

    try:
        with TritonClient(triton_url) as tc:
            version = tc.encoder_version()
    except Exception as exc:
        raise PublishError(f"Triton at {triton_url}: {str(exc).splitlines()[0][:200]}") from exc
    if not version:
        raise PublishError(f"Triton at {triton_url} reports no encoder version")
    md = [("authorization", f"Bearer {token}")] if token else []
    wrong = []
    for shard_id, replicas in enumerate(ShardMap.parse(shards).shards):
        for addr in replicas:
            with grpc.insecure_channel(addr) as ch:
                try:
                    st = shard_pb2_grpc.SearchShardStub(ch).Stats(
                        shard_pb2.StatsRequest(), timeout=timeout, metadata=md
                    )
                except grpc.RpcError as exc:
                    raise PublishError(f"shard {shard_id} replica {addr}: {exc.code().name}") from exc  # type: ignore[attr-defined]
            if st.shard_id != shard_id:
                wrong.append(f"{addr} is shard {st.shard_id}, placed as {shard_id}")
            elif st.model_version != version:
                wrong.append(f"{addr} is stamped {st.model_version!r}")
    if wrong:
        raise PublishError(f"Triton serves {version!r} but: " + "; ".join(wrong))
    return version


def next_document(
    current: dict[str, Any] | None, shards: str, triton_url: str, version: str
) -> dict[str, Any]:
    cur = dict(current or {})
    cur.pop("previous", None)
    return {
        "number": int(cur.get("number", 0)) + 1, "shards": ShardMap.parse(shards).to_spec(),
        "triton_url": triton_url, "model_version": version, "previous": cur or None,
    }


# ---- where the document lives --------------------------------------------------------------
def _api(method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    req = urllib.request.Request(
        f"https://{host}:{port}{path}", method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {(SA / 'token').read_text().strip()}",
                 "Content-Type": "application/merge-patch+json", "Accept": "application/json"},
    )
    ctx = ssl.create_default_context(cafile=str(SA / "ca.crt"))
    with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
        out: dict[str, Any] = json.loads(r.read())
    return out


def read_current(file: str | None, configmap: str | None, namespace: str) -> dict[str, Any] | None:
    if file:
        p = Path(file)
        return json.loads(p.read_text()) if p.exists() and p.read_text().strip() else None
    assert configmap
    data = _api("GET", f"/api/v1/namespaces/{namespace}/configmaps/{configmap}").get("data") or {}
    return json.loads(data[KEY]) if data.get(KEY, "").strip() else None


def write(doc: dict[str, Any], file: str | None, configmap: str | None, namespace: str) -> None:
    text = json.dumps(doc, indent=1)
    if file:
        tmp = Path(file).with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, file)
        return
    assert configmap
    _api("PATCH", f"/api/v1/namespaces/{namespace}/configmaps/{configmap}", {"data": {KEY: text}})


def publish(
    *, shards: str | None, triton_url: str | None, rollback: bool, file: str | None, configmap: str | None,
    namespace: str, token: str | None = None,
) -> dict[str, Any]:
    """Check the target and publish it; returns the written document."""
    if not file and not configmap:
        raise PublishError("give --file or --configmap")
    current = read_current(file, configmap, namespace)
    if rollback:
        if not current or not current.get("previous"):
            raise PublishError("no previous generation to roll back to")
        shards, triton_url = current["previous"]["shards"], current["previous"].get("triton_url", "")
    if not shards or not triton_url:
        raise PublishError("--shards and --triton are required (or --rollback)")
    if current and ShardMap.parse(shards).num_shards != ShardMap.parse(current["shards"]).num_shards:
        raise PublishError("the shard count differs from the live generation's (placement is hash mod N)")
    version = check_stack(shards, triton_url, token=token)
    doc = next_document(current, shards, triton_url, version)
    write(doc, file, configmap, namespace)
    return doc
