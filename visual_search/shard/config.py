"""Shard tunables (index and engine): a light module, so `vsearch shard`'s flags take their
defaults from these dataclasses without importing FAISS or numpy."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class IndexConfig:
    pq_m: int = 32
    pq_bits: int = 8  # 8 = classic PQ (R11); 4 = fast-scan ("PQ32x4fs")
    train_threshold: int = 20_000  # entries below which the shard stays exact (flat)
    nlist: int = 0  # 0 = choose from the data size
    default_nprobe: int = 32
    max_train_points: int = 256 * 1024
    use_gpu: bool = True
    # First stage on a PCA of the vectors when they are wider than this (0 = never): IVF centroids
    # and PQ sub-vectors then live in `pca_dim` dims, so 1024-d vectors keep the <= 48 B/vector index
    # RAM that 256-d had (4 KiB centroids cost ~17 B/vector at 1M x nlist 4096) and PQ32 quantises
    # 8-d instead of 32-d sub-vectors. Exact scores still come from the full float16 vectors.
    pca_dim: int = 256

    @property
    def min_train_entries(self) -> int:
        """Entries needed before IVF-PQ trains: the configured threshold, but never fewer than the
        2**pq_bits points each PQ codebook's k-means needs (FAISS refuses to train below that)."""
        return max(self.train_threshold, 2**self.pq_bits)


@dataclass(frozen=True)
class EngineConfig:
    index: IndexConfig = field(default_factory=IndexConfig)
    default_rescore_k: int = 1000
    exact_subset_max: int = 20_000  # filtered subsets this small are searched exactly
    max_overfetch: int = 20_000  # cap on ANN candidates fetched for a filtered query
    snapshot_interval_s: float = 300.0
    snapshot_wal_bytes: int = 256 * 1024 * 1024
    policy_interval_s: float = 2.0
    tombstone_ratio: float = 0.25  # rebuild when this share of the index is dead
    growth_factor: float = 2.0  # rebuild (re-choose nlist) after this growth since training
    wal_segment_bytes: int = 64 * 1024 * 1024
    fsync: bool = True
