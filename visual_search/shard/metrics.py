"""Prometheus metrics of a shard (one registry per process; every series carries `shard`).

Names, labels and buckets follow helm/visual-search/METRICS.md, the contract the chart's dashboard
and alerts query; tests/load/test_metrics_contract.py scrapes a real shard against it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from visual_search.shard.engine import ShardEngine
    from visual_search.shard.replication import Replicator

# The contract's latency bounds plus three sub-millisecond ones: shard stages often take < 1 ms,
# and a superset of the gateway's bounds keeps quantiles comparable across processes.
_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
)
_INGEST_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)


class ShardMetrics:
    def __init__(self, engine: ShardEngine, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        shard = str(engine.shard_id)
        r = self.registry
        self.shard = shard
        self.requests = Counter(
            "vsearch_shard_requests", "Shard API calls by outcome", ["shard", "method", "code"], registry=r
        )

        def histogram(name: str, doc: str, *labels: str, buckets: tuple[float, ...] = _BUCKETS) -> Histogram:
            return Histogram(name, doc, ["shard", *labels], buckets=buckets, registry=r)

        self.search_seconds = histogram("vsearch_shard_search_seconds", "Shard-side latency of one search")
        self.stage = histogram(
            "vsearch_shard_search_stage_seconds", "Per-stage search latency: ann, rescore, filter", "stage"
        )
        self.rpc = histogram(
            "vsearch_shard_rpc_seconds",
            "Latency of every shard RPC by method (beyond the contract)",
            "method",
        )
        ingest_lag = histogram(
            "vsearch_shard_ingest_lag_seconds",
            "Seconds from a write's WAL fsync until it is searchable (R12)",
            buckets=_INGEST_LAG_BUCKETS,
        )
        engine.on_ingest_lag = ingest_lag.labels(shard).observe
        info = Gauge(
            "vsearch_shard_info", "Model version stamped on the shard", ["shard", "model_version"], registry=r
        )
        info.labels(shard, engine.model_version).set(1)
        gauges = {
            "vsearch_shard_vectors": ("Live entries (vectors)", lambda: engine.store.n_entries),
            "vsearch_shard_items": ("Live items", lambda: len(engine.store.items)),
            "vsearch_shard_tombstones": ("Dead entries still in the ANN index", lambda: engine.tombstones),
            "vsearch_shard_wal_bytes": ("Write-ahead log size", lambda: engine.wal.size_bytes),
            "vsearch_shard_wal_sequence": ("Last applied WAL sequence", lambda: engine.applied_seq),
            "vsearch_shard_snapshot_age_seconds": (
                "Seconds since the last durable snapshot",
                lambda: time.time() - engine.snapshot_time,
            ),
            "vsearch_shard_index_age_seconds": (
                "Seconds since the ANN index was (re)built",
                lambda: time.time() - engine.index_built_at,
            ),
            "vsearch_shard_index_trained": (
                "1 when serving IVF-PQ, 0 while exact",
                lambda: int(engine.index.trained),
            ),
            "vsearch_shard_rebuilding": ("1 while a background rebuild runs", lambda: int(engine.rebuilding)),
            "vsearch_shard_last_applied_write_timestamp_seconds": (
                "Unix time this replica last applied a write (freshness: compare with the gateway's "
                "vsearch_gateway_last_write_ack_timestamp_seconds)",
                lambda: engine.last_write_unix,
            ),
        }
        self._gauges(gauges)

    def _gauges(self, gauges: dict[str, tuple[str, Callable[[], float]]]) -> None:
        for name, (doc, fn) in gauges.items():
            g = Gauge(name, doc, ["shard"], registry=self.registry)
            g.labels(self.shard).set_function(fn)

    def watch_replication(self, replicator: Replicator) -> None:
        """Replication state (shard README "Replicas")."""
        engine = replicator.engine
        self._gauges(
            {
                "vsearch_shard_replica_caught_up": (
                    "1 once this replica caught up with its peers (serving), 0 while seeding",
                    lambda: int(replicator.caught_up.is_set()),
                ),
                "vsearch_shard_replica_items_copied": (
                    "Items and delete markers pulled from peers since start",
                    replicator.items_copied,
                ),
                "vsearch_shard_delete_markers": (
                    "Deleted item ids remembered with their version",
                    lambda: len(engine.versions.deleted),
                ),
            }
        )
