"""FAISS first stage: exact (flat) while the shard is small, IVF-PQ once it is big enough to
train. Ids are 64-bit entry ids (add_with_ids); the index only nominates candidates, scores
come from the float16 store. Uses a GPU copy of the index when a GPU build and device exist.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import faiss
import numpy as np

from visual_search.shard.config import IndexConfig

log = logging.getLogger(__name__)


def choose_nlist(n: int) -> int:
    """~4*sqrt(n) lists as a power of two, with >= 39 training points per list."""
    target = 4 * math.sqrt(max(n, 1))
    nlist = 2 ** max(4, round(math.log2(target)))
    while nlist > 16 and n < 39 * nlist:
        nlist //= 2
    return int(min(nlist, 65536))


def gpu_available() -> bool:
    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # noqa: BLE001 - any failure probing the GPU means "no GPU"
        return False


class AnnIndex:
    """One immutable-structure FAISS index (entries can be added; retrain = new AnnIndex)."""

    def __init__(self, index: faiss.Index, description: str, trained: bool, use_gpu: bool = False) -> None:
        self.cpu_index = index
        self.description = description
        self.trained = trained
        self.gpu = False
        self._gpu_res = None
        self.index = index
        # Fixed for the life of this object; looked up per search otherwise (~10 us each).
        self._nlist = int(faiss.extract_index_ivf(index).nlist) if trained else 0
        self._params: dict[int, Any] = {}
        if use_gpu and trained and gpu_available():  # pragma: no cover - no GPU here
            try:
                self._gpu_res = faiss.StandardGpuResources()
                self.index = faiss.index_cpu_to_gpu(self._gpu_res, 0, index)
                self.gpu = True
            except Exception as exc:  # noqa: BLE001 - e.g. fast-scan has no GPU version
                log.warning("GPU index unavailable, staying on CPU", extra={"error": str(exc)})
                self.index = index

    @classmethod
    def flat(cls, dim: int) -> AnnIndex:
        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), "flat", trained=False)

    @classmethod
    def train_ivfpq(
        cls, dim: int, vectors: np.ndarray, cfg: IndexConfig, rng: np.random.Generator | None = None
    ) -> AnnIndex:
        n = len(vectors)
        nlist = cfg.nlist or choose_nlist(n)
        suffix = "x4fs" if cfg.pq_bits == 4 else ("" if cfg.pq_bits == 8 else f"x{cfg.pq_bits}")
        desc = f"IVF{nlist},PQ{cfg.pq_m}{suffix}"
        if cfg.pca_dim and dim > cfg.pca_dim:
            desc = f"PCA{cfg.pca_dim},{desc}"  # see IndexConfig.pca_dim
        index = faiss.index_factory(dim, desc, faiss.METRIC_INNER_PRODUCT)
        rng = rng or np.random.default_rng(0)
        n_train = min(n, max(cfg.max_train_points, 0))
        sample = vectors if n_train >= n else vectors[np.sort(rng.choice(n, n_train, replace=False))]
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        return cls(index, desc, trained=True, use_gpu=cfg.use_gpu)

    @classmethod
    def deserialize(cls, data: bytes, description: str, use_gpu: bool) -> AnnIndex:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        return cls(index, description, trained=description != "flat", use_gpu=use_gpu)

    def serialize(self) -> bytes:
        index = faiss.index_gpu_to_cpu(self.index) if self.gpu else self.index  # pragma: no branch
        return bytes(faiss.serialize_index(index))

    def add(self, entry_ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(entry_ids):
            self.index.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32),
                np.ascontiguousarray(entry_ids, dtype=np.int64),
            )

    def search(self, queries: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids) of the k nearest codes per query, best first, -1 padded. Calls FAISS's
        C entry point with arrays allocated here (the Python wrapper's checks cost ~5 us a call)."""
        k = max(1, min(k, self.ntotal)) if self.ntotal else 1
        params = None
        if self.trained:
            nprobe = max(1, min(nprobe, self._nlist))
            params = self._params.get(nprobe)
            if params is None:  # read-only once built: shared by concurrent searches
                params = self._params[nprobe] = faiss.SearchParametersIVF(nprobe=nprobe)  # type: ignore[call-arg]
        x = np.ascontiguousarray(queries, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.index.d:
            raise ValueError(f"queries must be (n, {self.index.d}), got {x.shape}")
        n = len(x)
        dist = np.empty((n, k), dtype=np.float32)
        ids = np.empty((n, k), dtype=np.int64)
        index: Any = self.index  # search_c is not in the type stubs
        index.search_c(n, faiss.swig_ptr(x), k, faiss.swig_ptr(dist), faiss.swig_ptr(ids), params)
        return dist, ids

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def nlist(self) -> int:
        return self._nlist

    def memory_bytes(self) -> int:
        """RAM of codes + ids (+ centroids and codebooks) of the index, or the flat copy."""
        if not self.trained:
            return self.ntotal * (self.cpu_index.d * 4 + 8)
        ivf: Any = faiss.extract_index_ivf(self.cpu_index)
        inv: Any = faiss.downcast_InvertedLists(ivf.invlists)
        sizes = [inv.list_size(i) for i in range(ivf.nlist)]
        if hasattr(inv, "n_per_block"):  # fast-scan: codes packed in blocks of n_per_block vectors
            codes = sum(-(-n // inv.n_per_block) * inv.block_size for n in sizes)
        else:
            codes = sum(sizes) * inv.code_size
        total = codes + sum(sizes) * 8  # + 64-bit ids
        pre = self.cpu_index.d * ivf.d * 4 if self.cpu_index.d != ivf.d else 0  # PCA matrix, if any
        return int(total + ivf.nlist * ivf.d * 4 + pre)
