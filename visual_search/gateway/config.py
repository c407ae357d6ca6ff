"""Gateway configuration: the shard map (N shards x R replicas) and tunables, from flags or env.

The shard map is written `host:port,host:port;host:port,...` (shards separated by `;`, replicas
of one shard by `,`) or given as a JSON file `{"shards": [["h:p", "h:p"], ["h:p"]]}`. Shard ids
are positions in the map, which must match `vsearch shard --shard-id` and ids.shard_for().
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ShardMap:
    """shards[i] = replica addresses of shard i (at least one each)."""

    shards: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if not self.shards:
            raise ValueError("shard map is empty: give at least one shard address")
        for i, replicas in enumerate(self.shards):
            if not replicas:
                raise ValueError(f"shard {i} has no replica addresses")
            for addr in replicas:
                host, sep, port = addr.rpartition(":")
                if not sep or not host or not port.isdigit():
                    raise ValueError(f"shard {i}: bad address {addr!r} (want host:port)")

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    @classmethod
    def parse(cls, spec: str) -> ShardMap:
        """Parse `a:1,b:2;c:3` or the path of a JSON file (see module doc)."""
        spec = spec.strip()
        if spec.endswith(".json") or (spec and _is_file(spec)):
            data = json.loads(Path(spec).read_text())
            groups = data["shards"] if isinstance(data, dict) else data
            return cls(tuple(tuple(str(a) for a in g) for g in groups))
        groups = [g for g in spec.split(";") if g.strip()]
        return cls(tuple(tuple(a.strip() for a in g.split(",") if a.strip()) for g in groups))

    def to_spec(self) -> str:
        return ";".join(",".join(r) for r in self.shards)


def _is_file(spec: str) -> bool:
    """A shard map string of real cluster DNS names is longer than a file name may be
    (ENAMETOOLONG): that is a map, not a file."""
    try:
        return Path(spec).is_file()
    except OSError:
        return False


# How many replicas of a shard must apply a write before the gateway acknowledges it:
#   all       every replica (a replica down blocks writes to its shard)
#   majority  more than half (default): an acknowledged write survives the loss of any minority of
#             replicas, and writes go on while a minority is down; R=2 needs both, R=3 two
#   one       any single replica (fastest; an acknowledged write can be lost with that replica)
# A write applied on fewer than all replicas is reported to the caller (replicas_written <
# replicas) and reaches the others through the shards' repair (shard/README.md "Replicas").
WRITE_QUORUMS = ("all", "majority", "one")

# How a default photo query (an ImageQuery with no selection) is searched:
#   max          (default) one Triton call embeds the default (most salient) box AND the whole image;
#                both go to the shards in one request and each item scores max(box, whole image).
#                Generalises better across the dev sets (benchmarks/eval.json "crossset"); costs one
#                more encoder run per photo query (~10 ms Triton CPU here: 66.6 vs 56.7 ms,
#                benchmarks/triton_stages_query_strategy.json).
#   default-box  the default box alone: one encoder run, the cheaper option.
# Either way the whole image alone is searched when nothing is detected; other selections are as asked.
QUERY_STRATEGIES = ("max", "default-box")


@dataclass
class GatewayConfig:
    """Everything the gateway needs; defaults are the documented behaviour."""

    shard_map: ShardMap
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 0  # 0 = no /metrics endpoint
    triton_url: str | None = None  # host:port of Triton gRPC; None = vector/item-id queries only
    model_version: str | None = None  # served model version; None = ask Triton / the shards
    # Hedging: if a replica has not answered after the delay, ask another; the delay is the
    # shard's recent p95 when enough samples exist (bounded), else hedge_delay_ms.
    hedge_delay_ms: float = 20.0
    hedge_adaptive: bool = True
    hedge_min_ms: float = 5.0
    hedge_max_ms: float = 200.0
    # Per-shard time budget of a search: a shard not answered by then is left out (partial=true).
    # Adaptive by default: factor x the shard's recent p99, within [min, max]; max until enough
    # samples. shard_budget_ms > 0 fixes it; a request may set its own (SearchOptions).
    shard_budget_ms: float = 0.0
    shard_budget_factor: float = 1.5
    shard_budget_min_ms: float = 100.0
    shard_budget_max_ms: float = 1000.0
    default_deadline_s: float = 5.0  # when the caller sets no deadline
    shard_margin_s: float = 0.01  # left for merge/re-rank when propagating the deadline to shards
    # Re-rank (R4/R5).
    boost_available: float = 0.02
    boost_region: float = 0.02
    dedup_threshold: float = 0.95
    # "No close match" (calibration.py): the score a hit needs to be flagged close. None = the
    # calibrated value of the served model version (artifacts/models/calibration.json; a version
    # without one is served uncalibrated: 0); a number overrides it for every version, 0 = off.
    close_match_threshold: float | None = None
    phash_max_distance: int = 6  # Hamming bits: at most this -> "the same image"
    candidate_factor: int = 2  # shards return k * factor (+ margin) so collapse can still fill k
    # Default-box photo queries: one Triton call (detect_and_embed_default). False = the older
    # detect, then embed the chosen box (two round trips); kept as the benchmark's baseline.
    single_call_default_box: bool = True
    query_strategy: str = "max"  # QUERY_STRATEGIES; the two-call path above is default-box only
    # Security / transport.
    auth_token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    max_message_bytes: int = 32 * 1024 * 1024
    # Bulk ingest (IndexItems): items in flight per stream, of which at most this many on Triton,
    # and items per shard Upsert (group commit; 1 = one item per shard call, the pre-batching path).
    # 6 in flight: Triton (4) plus decode/pHash of the next ones; 16 was slower on 2 cores (the extra
    # decodes compete with Triton for the CPU; benchmarks/ingest.json).
    index_concurrency: int = 6
    index_triton_concurrency: int = 4
    index_upsert_batch: int = 64
    index_item_timeout_s: float = 120.0
    # Photo decode + pHash run off the event loop (gateway/cpu.py): threads, and jobs admitted at
    # once (running + queued; past it RESOURCE_EXHAUSTED). cpu_inline = on the loop (bench baseline).
    cpu_workers: int = 2
    cpu_max_pending: int = 16
    cpu_inline: bool = False
    triton_health_interval_s: float = 1.0  # how often Triton's readiness is polled for health
    write_quorum: str = "majority"  # WRITE_QUORUMS
    write_grace_s: float = 0.5  # after the quorum answered, how long the other replicas get
    # Admin API (model-version switch, R15; admin.proto): its own listener, 0 = off.
    admin_host: str = "127.0.0.1"
    admin_port: int = 0
    admin_token: str | None = None
    insecure_admin: bool = False  # admin port without a token: only on a loopback admin_host
    # Token sent on every shard call (shard/auth.py); None = the configured one (env / token file).
    shard_token: str | None = None
    generation_file: str | None = None  # persisted current/previous generation (survives restarts)
    # One version truth: seconds between checks of Triton's encoder version against every shard
    # stamp (gateway/versionguard.py), and how long start-up waits for Triton to report it.
    version_check_s: float = 5.0
    # Shared serving generation (gateway/genwatch.py): the file every pod mounts, and its poll period.
    generation_source: str | None = None
    generation_poll_s: float = 1.0
    version_wait_s: float = 600.0

    def __post_init__(self) -> None:
        if self.write_quorum not in WRITE_QUORUMS:
            raise ValueError(f"write quorum {self.write_quorum!r}: choose one of {', '.join(WRITE_QUORUMS)}")
        if self.query_strategy not in QUERY_STRATEGIES:
            raise ValueError(
                f"query strategy {self.query_strategy!r}: choose one of {', '.join(QUERY_STRATEGIES)}"
            )
