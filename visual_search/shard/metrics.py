"""Prometheus metrics of a shard (one registry per process; labels carry the shard id)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from visual_search.shard.engine import ShardEngine

_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


class ShardMetrics:
    def __init__(self, engine: ShardEngine, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        shard = str(engine.shard_id)
        r = self.registry
        self.stage = Histogram(
            "vsearch_shard_stage_seconds",
            "Per-stage search latency",
            ["shard", "stage"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.rpc = Histogram(
            "vsearch_shard_rpc_seconds", "RPC latency", ["shard", "method"], buckets=_BUCKETS, registry=r
        )
        self.errors = Counter(
            "vsearch_shard_rpc_errors_total",
            "RPCs ended with an error status",
            ["shard", "method", "code"],
            registry=r,
        )
        self.shard = shard
        gauges = {
            "vsearch_shard_vectors": ("Live entries (vectors)", lambda: engine.store.n_entries),
            "vsearch_shard_items": ("Live items", lambda: len(engine.store.items)),
            "vsearch_shard_tombstones": ("Dead entries still in the ANN index", lambda: engine.tombstones),
            "vsearch_shard_wal_bytes": ("Write-ahead log size", lambda: engine.wal.size_bytes),
            "vsearch_shard_wal_sequence": ("Last applied WAL sequence", lambda: engine.applied_seq),
            "vsearch_shard_seconds_since_snapshot": (
                "Age of the last snapshot",
                lambda: __import__("time").time() - engine.snapshot_time,
            ),
            "vsearch_shard_index_age_seconds": (
                "Age of the ANN index (since (re)build)",
                lambda: __import__("time").time() - engine.index_built_at,
            ),
            "vsearch_shard_index_trained": (
                "1 when serving IVF-PQ, 0 while exact",
                lambda: int(engine.index.trained),
            ),
            "vsearch_shard_rebuilding": ("1 while a background rebuild runs", lambda: int(engine.rebuilding)),
        }
        for name, (doc, fn) in gauges.items():
            g = Gauge(name, doc, ["shard"], registry=r)
            g.labels(shard).set_function(fn)
