"""Prometheus metrics of the gateway (R17): per-stage and per-shard latency, hedging, partials.

Each Gateway owns its registry (several gateways can live in one test process); `serve()` exposes
it on /metrics.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# The contract's bounds (METRICS.md), shared with the shards so quantiles compare across processes.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5,
    0.75, 1.0, 2.5, 5.0,
)
# Query stages, in pipeline order (the `stage` label of vsearch_gateway_stage_seconds).
STAGES = ("decode", "detect", "embed", "fanout", "merge", "rerank")
_NORM_BUCKETS = (0.9, 0.95, 0.98, 0.99, 0.995, 1.0, 1.005, 1.01, 1.02, 1.05, 1.1)


class GatewayMetrics:
    """Names and labels follow helm/visual-search/METRICS.md (the dashboard/alert contract)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "vsearch_gateway_requests",
            "Public API calls by method and status",
            ["method", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "vsearch_gateway_request_seconds",
            "End-to-end latency of a public call",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge("vsearch_gateway_inflight_requests", "Public calls in progress", registry=r)
        self.stage_seconds = Histogram(
            "vsearch_gateway_stage_seconds",
            "Wall time per query stage: " + ", ".join(STAGES),
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.shard_seconds = Histogram(
            "vsearch_gateway_shard_request_seconds",
            "Time until a shard answered (hedge included)",
            ["shard"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.hedges = Counter(
            "vsearch_gateway_hedges", "Hedged requests: outcome=sent|won", ["shard", "outcome"], registry=r
        )
        self.shard_failures = Counter(
            "vsearch_gateway_shard_failures",
            "Failed shard replica calls; reason=deadline|unavailable|error",
            ["shard", "reason"],
            registry=r,
        )
        self.writes = Counter(
            "vsearch_gateway_shard_writes",
            "Writes per shard by replicas applied: outcome=all|quorum (acked, under-replicated)|below_quorum",
            ["shard", "outcome"],
            registry=r,
        )
        self.partial_results = Counter(
            "vsearch_gateway_partial_results", "Search responses flagged partial", registry=r
        )
        self.version_mismatch = Counter(
            "vsearch_gateway_model_version_mismatch",
            "Vector queries refused for their model version (R6)",
            registry=r,
        )
        self.last_write_ack = Gauge(
            "vsearch_gateway_last_write_ack_timestamp_seconds",
            "Unix time this gateway last acknowledged a write to the shard (its write quorum applied "
            "it); freshness = this minus each replica's vsearch_shard_last_applied_write_timestamp_seconds",
            ["shard"],
            registry=r,
        )
        # Writes received and not yet acknowledged (token -> monotonic start): ingest lag in seconds.
        self._pending_writes: dict[int, float] = {}
        self._pending_token = 0
        self.ingest_behind = Gauge(
            "vsearch_gateway_ingest_behind_seconds",
            "How far ingest is behind: age of the oldest IndexItems item this gateway received and "
            "has not yet acknowledged or failed (0 when none is pending)",
            registry=r,
        )
        self.ingest_behind.set_function(self._oldest_pending)
        self.serving_generation = Gauge(
            "vsearch_gateway_serving_generation",
            "Number of the published generation (--generation-source) this pod serves; -1 = none",
            registry=r,
        )
        self.serving_generation.set(-1)
        self.version_consistent = Gauge(
            "vsearch_gateway_model_version_consistent",
            "1 while Triton's encoder version and every reachable shard stamp equal the served "
            "version; 0 on a mismatch (the gateway is then NOT_SERVING)",
            registry=r,
        )
        self.embedding_norm = Histogram(
            "vsearch_gateway_embedding_norm",
            "L2 norm of embeddings from Triton (drift signal)",
            buckets=_NORM_BUCKETS,
            registry=r,
        )
        self.indexed_items = Counter(
            "vsearch_gateway_indexed_items", "Items through IndexItems by outcome", ["outcome"], registry=r
        )

    def _oldest_pending(self) -> float:
        pending = list(self._pending_writes.values())
        return time.monotonic() - min(pending) if pending else 0.0

    def write_started(self) -> int:
        self._pending_token += 1
        self._pending_writes[self._pending_token] = time.monotonic()
        return self._pending_token

    def write_done(self, token: int) -> None:
        self._pending_writes.pop(token, None)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
