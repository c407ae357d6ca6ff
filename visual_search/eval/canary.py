"""Canary probes (R15, R17): fixed queries with known expected neighbours, run against a deployment.

A probe set is a JSON file: either a bare list of probes (what the helm chart renders) or
`{"k": K, "model_version": V, "source": ..., "probes": [...]}`. A probe is one query plus the item
ids expected among its top k:

    {"query_item_id": "sku-1", "expected_item_ids": ["sku-1", "sku-7"]}           more like this
    {"image_path": "imgs/q.jpg", "expected_item_ids": [...]}   photo (path relative to the file)
    {"image_b64": "...", "expected_item_ids": [...]}          photo inline (self-contained file)

Photo probes exercise the whole path (Triton detector + encoder + shards), item probes only the
shards. Recall of one probe = |top-k ∩ expected| / min(k, |expected|), so a perfect answer scores
1 whether the expected list is a recorded top-k or every same-label catalog item. Mean over
probes is the canary recall; errors count as 0 and are reported separately.
"""

from __future__ import annotations

import base64
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visual_search.client import Client, VisualSearchError


@dataclass(frozen=True)
class Probe:
    expected_item_ids: tuple[str, ...]
    query_item_id: str | None = None
    image: bytes | None = None
    name: str = ""  # for reports: the photo path / item id
    label: str = ""

    def query(self) -> dict[str, Any]:
        """Keyword arguments for Client.search (default box for photos, like a user's tap)."""
        return {"image": self.image} if self.image is not None else {"item_id": self.query_item_id}


@dataclass
class ProbeSet:
    probes: list[Probe]
    k: int = 10
    model_version: str = ""  # the version the expectations were recorded with (informational)
    source: str = ""


@dataclass
class ProbeResult:
    probe: Probe
    returned: list[str] = field(default_factory=list)
    recall: float = 0.0
    model_version: str = ""
    error: str = ""


@dataclass
class CanaryReport:
    k: int
    results: list[ProbeResult]
    model_versions: list[str]  # distinct versions the gateway answered with
    seconds: float

    @property
    def recall(self) -> float:
        return sum(r.recall for r in self.results) / len(self.results) if self.results else 0.0

    @property
    def failed(self) -> int:
        return sum(1 for r in self.results if r.error)

    def recall_by_shard(self, num_shards: int) -> dict[int, float]:
        """Recall per shard: for each shard, the probes expecting items it owns (ids.shard_for),
        scored on those items only (errors count 0). A shard that lost or mangled its data shows
        here even when the mean over all probes still looks fine."""
        from visual_search.ids import shard_for

        per: dict[int, list[float]] = {}
        for r in self.results:
            by: dict[int, list[str]] = {}
            for item in r.probe.expected_item_ids:
                by.setdefault(shard_for(item, num_shards), []).append(item)
            for shard, expected in by.items():
                score = 0.0 if r.error else probe_recall(r.returned, expected, self.k)
                per.setdefault(shard, []).append(score)
        return {s: sum(v) / len(v) for s, v in sorted(per.items())}

    def verdict(self, min_recall: float, model_version: str | None = None) -> list[str]:
        """Reasons the canary fails (empty = passed)."""
        why = []
        if not self.results:
            why.append("no probes")
        if self.recall < min_recall:
            why.append(f"recall@{self.k} {self.recall:.3f} < floor {min_recall}")
        if self.results and self.failed == len(self.results):
            why.append("every probe failed")
        if model_version and self.model_versions != [model_version]:
            why.append(f"served model version {self.model_versions} != expected {model_version!r}")
        if len(self.model_versions) > 1:
            why.append(f"answers carried several model versions {self.model_versions}")
        return why


def probe_recall(returned: Sequence[str], expected: Sequence[str], k: int) -> float:
    """|top-k ∩ expected| / min(k, |expected|): 1.0 = as good as the expectation allows."""
    if not expected:
        return 0.0
    exp = set(expected)
    return len(set(returned[:k]) & exp) / min(k, len(exp))


# ---- probe files ------------------------------------------------------------------------------
def _probe_from_json(d: dict[str, Any], base: Path) -> Probe:
    expected = tuple(str(x) for x in d.get("expected_item_ids", []))
    if not expected:
        raise ValueError(f"probe {d} has no expected_item_ids")
    if d.get("query_item_id"):
        return Probe(expected, query_item_id=str(d["query_item_id"]), name=str(d["query_item_id"]))
    label = str(d.get("label", ""))
    if d.get("image_b64"):
        img = base64.b64decode(d["image_b64"])
        return Probe(expected, image=img, name=d.get("name", "inline"), label=label)
    if d.get("image_path"):
        path = Path(d["image_path"])
        path = path if path.is_absolute() else base / path
        return Probe(expected, image=path.read_bytes(), name=str(d["image_path"]), label=label)
    raise ValueError(f"probe {d} needs query_item_id, image_path or image_b64")


def load_probes(path: str | Path) -> ProbeSet:
    """Read a probe file (bare list or object; see module doc)."""
    path = Path(path)
    data = json.loads(path.read_text())
    meta: dict[str, Any] = {"probes": data} if isinstance(data, list) else data
    probes = [_probe_from_json(p, path.parent) for p in meta["probes"]]
    return ProbeSet(
        probes, int(meta.get("k", 10)), str(meta.get("model_version", "")), str(meta.get("source", ""))
    )


def save_probes(
    ps: ProbeSet, path: str | Path, inline_images: bool = False, paths: Sequence[str] = ()
) -> None:
    """Write a probe file; photo probes keep `paths[i]` (absolute) unless inline_images."""
    out = []
    for i, p in enumerate(ps.probes):
        d: dict[str, Any] = {"expected_item_ids": list(p.expected_item_ids)}
        if p.query_item_id is not None:
            d["query_item_id"] = p.query_item_id
        elif inline_images or not paths:
            assert p.image is not None
            d["image_b64"], d["name"] = base64.b64encode(p.image).decode(), p.name
        else:
            d["image_path"] = str(Path(paths[i]).resolve())
        if p.label:
            d["label"] = p.label
        out.append(d)
    doc = {"k": ps.k, "model_version": ps.model_version, "source": ps.source, "probes": out}
    Path(path).write_text(json.dumps(doc, indent=1) + "\n")


# ---- building ---------------------------------------------------------------------------------
def pick_queries(manifest: str | Path, n: int, seed: int = 0) -> list[tuple[str, Path, str]]:
    """n query-split photos of a manifest, spread over labels (round-robin), reproducibly."""
    from visual_search.client_cli import iter_source

    by_label: dict[str, list[tuple[str, Path, str]]] = {}
    for row in iter_source(manifest, "query"):
        by_label.setdefault(row[2], []).append(row)
    rng = random.Random(seed)
    labels = sorted(by_label)
    rng.shuffle(labels)
    for rows in by_label.values():
        rng.shuffle(rows)
    picked: list[tuple[str, Path, str]] = []
    while len(picked) < n and any(by_label.values()):
        for lab in labels:
            if by_label[lab] and len(picked) < n:
                picked.append(by_label[lab].pop())
    return picked


def build_from_labels(
    manifest: str | Path, n: int, k: int, seed: int = 0, catalog_ids: set[str] | None = None
) -> tuple[ProbeSet, list[str]]:
    """Expected = the catalog items of the probe's label (only those in catalog_ids, if given).

    Model-independent, so it can validate a new model; probes whose label has no catalog item
    are dropped. Returns the set and the probe photo paths.
    """
    from visual_search.client_cli import iter_source

    catalog: dict[str, list[str]] = {}
    for item_id, _path, label in iter_source(manifest, "catalog"):
        if catalog_ids is None or item_id in catalog_ids:
            catalog.setdefault(label, []).append(item_id)
    queries = [q for q in pick_queries(manifest, 10**9, seed) if catalog.get(q[2])][:n]
    probes = [
        Probe(tuple(catalog[lab]), image=p.read_bytes(), name=str(p), label=lab) for _i, p, lab in queries
    ]
    return ProbeSet(probes, k, "", f"labels of {manifest}"), [str(q[1]) for q in queries]


def build_from_deployment(
    client: Client, manifest: str | Path, n: int, k: int, seed: int = 0
) -> tuple[ProbeSet, list[str]]:
    """Expected = what the deployment answers now (its top k): a regression baseline."""
    probes, paths, versions = [], [], set()
    for _item_id, path, label in pick_queries(manifest, n, seed):
        res = client.search(image=path.read_bytes(), k=k)
        versions.add(res.model_version)
        top = [h.item_id for h in res.hits]
        if top:
            probes.append(Probe(tuple(top), image=path.read_bytes(), name=str(path), label=label))
            paths.append(str(path))
    if len(versions) > 1:
        raise RuntimeError(f"deployment answered with several model versions {sorted(versions)}")
    return ProbeSet(probes, k, next(iter(versions), ""), f"top-{k} of the deployment for {manifest}"), paths


# ---- running ----------------------------------------------------------------------------------
def run_probes(client: Client, probes: Sequence[Probe], k: int) -> CanaryReport:
    """Query every probe once (sequentially: a canary must not load the service)."""
    t0 = time.monotonic()
    results = []
    versions: list[str] = []
    for p in probes:
        r = ProbeResult(p)
        try:
            res = client.search(k=k, **p.query())
            r.returned = [h.item_id for h in res.hits]
            r.recall = probe_recall(r.returned, p.expected_item_ids, k)
            r.model_version = res.model_version
            if res.model_version not in versions:
                versions.append(res.model_version)
        except VisualSearchError as e:
            r.error = f"{e.code.name}: {e}"
        results.append(r)
    return CanaryReport(k, results, versions, time.monotonic() - t0)


def push_metrics(report: CanaryReport, url: str, job: str, num_shards: int = 0) -> None:
    """Push the METRICS.md canary gauges to a Prometheus Pushgateway (replaces the job's group)."""
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    reg = CollectorRegistry()
    recall = Gauge(
        "vsearch_canary_recall", "Mean recall@k of the probe set", ["k", "model_version"], registry=reg
    )
    recall.labels(str(report.k), ",".join(report.model_versions) or "unknown").set(report.recall)
    if num_shards:
        per_shard = Gauge(
            "vsearch_canary_shard_recall", "Recall@k of the probes' expected items owned by each shard",
            ["k", "shard"], registry=reg,
        )
        for shard, value in report.recall_by_shard(num_shards).items():
            per_shard.labels(str(report.k), str(shard)).set(value)
    last = Gauge("vsearch_canary_last_run_timestamp_seconds", "Unix time of the last run", registry=reg)
    last.set(time.time())
    Gauge("vsearch_canary_probes_failed", "Probes that errored", registry=reg).set(report.failed)
    push_to_gateway(url, job=job, registry=reg, timeout=10)


def format_report(report: CanaryReport, verbose: bool = False) -> str:
    lines = [
        f"canary: {len(report.results)} probes, recall@{report.k} {report.recall:.3f}, "
        f"{report.failed} failed, model {','.join(report.model_versions) or '-'} ({report.seconds:.1f}s)"
    ]
    for r in report.results:
        if verbose or r.error or r.recall < 1.0:
            what = r.error or f"recall {r.recall:.2f} top {r.returned[:3]}"
            lines.append(f"  {r.probe.name[-60:]:<60} {what}")
    return "\n".join(lines)


def check(
    address: str, probes: ProbeSet, k: int, min_recall: float, model_version: str | None = None,
    **client_kw: Any,
) -> tuple[CanaryReport, list[str]]:
    """Run a probe set against a gateway; returns the report and the reasons it failed (if any)."""
    with Client(address, **client_kw) as c:
        report = run_probes(c, probes.probes, k)
    return report, report.verdict(min_recall, model_version)
