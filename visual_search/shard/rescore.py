"""Exact re-scoring of ANN candidates from the float16 store, for a whole batch of queries.

The scores come from the float16 mmap store (the one source of exact scores). The inner products
are computed by FAISS's SIMD float16 scan (an `IndexScalarQuantizer` fp16 used as a scratch
kernel): each query's candidate rows are gathered from the mmap straight into that index's code
buffer (one `np.take`, no float32 copy) and one `search` scores them and keeps the best `take`,
sorted. This is the same kernel FAISS's own `IndexRefine` uses with an fp16 refine index; a numpy
upcast (table lookup) + matmul of the same rows measured ~8x slower here.

Entries -> items (an item has several entries: whole image + objects; it keeps its best one) is
then one vectorised pass over all queries (`best_entries_per_item`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faiss
import numpy as np

_MIN_ROWS = 1024
_PARALLEL_MIN_QUERIES = 16  # below this a second thread costs more than it saves
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _shared_pool(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < workers:  # grow only
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rescore")
        return _pool


class _Scratch:
    """One thread's fp16 scoring kernel: an IndexScalarQuantizer whose code memory is viewed as a
    float16 (capacity, dim) numpy array, so rows gathered into it are what FAISS scans."""

    def __init__(self, dim: int, capacity: int) -> None:
        # Any: search_c (FAISS's C entry point, no wrapper checks) is not in the type stubs
        self.index: Any = faiss.IndexScalarQuantizer(
            dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        )
        nbytes = capacity * dim * 2
        self.index.codes.resize(nbytes)
        self.buf = faiss.rev_swig_ptr(self.index.codes.data(), nbytes).view(np.float16).reshape(capacity, dim)
        self.capacity = capacity


class Rescorer:
    """Scratch fp16 scoring kernels, one per thread (searches run concurrently)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._local = threading.local()

    def _scratch(self, rows: int) -> _Scratch:
        sc: _Scratch | None = getattr(self._local, "scratch", None)
        if sc is None or rows > sc.capacity:
            cap = max(rows, 2 * sc.capacity if sc is not None else 0, _MIN_ROWS)
            sc = self._local.scratch = _Scratch(self.dim, cap)
        return sc

    def top(
        self, vectors: np.ndarray, query: np.ndarray, slots: np.ndarray, take: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner products of `query` with the float16 rows `vectors[slots]`; the best
        min(take, len(slots)) as (positions into `slots`, scores), best first."""
        m = len(slots)
        take = min(take, m)
        sc = self._scratch(m)
        q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        scores = np.empty((1, take), dtype=np.float32)
        pos = np.empty((1, take), dtype=np.int64)
        # IndexScalarQuantizer.search opens an OpenMP team even for one query; on a loaded host the
        # idle team member's barrier costs milliseconds, so score on this thread alone.
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            np.take(vectors, slots, axis=0, out=sc.buf[:m])
            sc.index.ntotal = m
            sc.index.search_c(1, faiss.swig_ptr(q), take, faiss.swig_ptr(scores), faiss.swig_ptr(pos))
        finally:
            faiss.omp_set_num_threads(threads)
        return pos[0], scores[0]

    def top_dense(
        self,
        vectors: np.ndarray,
        queries: np.ndarray,
        slots: np.ndarray,
        take: int,
        stop: Callable[[], bool] | None = None,
        workers: int = 1,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Every query with the same number of candidates, all valid (`slots` is (queries, m), no
        padding): the best min(take, m) per query as (slots, scores) of shape (queries, take), best
        first. Per query: one np.take into the scratch and one FAISS call writing straight into the
        output rows; big batches split over `workers` threads (both release the GIL). None if
        `stop()` fired (checked every 16 queries)."""
        nq, m = slots.shape
        if nq == 1:  # batch 1 (the common case): no closure, no pool, fewest calls
            p, s = self.top(vectors, queries[0], slots[0], take)
            return slots[0].take(p)[None, :], s[None, :]
        take = min(take, m)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        scores = np.empty((nq, take), dtype=np.float32)
        pos = np.empty((nq, take), dtype=np.int64)

        def run(a: int, b: int) -> bool:
            sc = self._scratch(m)
            buf, index = sc.buf[:m], sc.index
            index.ntotal = m
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)  # see top()
            try:
                for qi in range(a, b):
                    if stop is not None and (qi - a) % 16 == 15 and stop():
                        return False
                    np.take(vectors, slots[qi], axis=0, out=buf)
                    index.search_c(
                        1, faiss.swig_ptr(q[qi]), take, faiss.swig_ptr(scores[qi]), faiss.swig_ptr(pos[qi])
                    )
            finally:
                faiss.omp_set_num_threads(threads)
            return True

        ok = _run_split(run, nq, workers)
        return (np.take_along_axis(slots, pos, axis=1), scores) if ok else None

    def top_batch(
        self,
        vectors: np.ndarray,
        queries: np.ndarray,
        rows: np.ndarray,
        starts: np.ndarray,
        take: int,
        stop: Callable[[], bool] | None = None,
        workers: int = 1,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Per query i, its candidates rows[starts[i]:starts[i+1]] scored and the best `take` kept:
        (slots, scores) of shape (queries, take), best first, padded with -1 / -inf. Big batches are
        split over `workers` threads (FAISS and np.take release the GIL). None if `stop()` fired."""
        nq = len(queries)
        top_slots = np.full((nq, take), -1, dtype=np.int64)
        top_scores = np.full((nq, take), -np.inf, dtype=np.float32)

        def run(a: int, b: int) -> bool:
            for qi in range(a, b):
                if stop is not None and stop():
                    return False
                cand = rows[starts[qi] : starts[qi + 1]]
                if len(cand):
                    pos, sc = self.top(vectors, queries[qi], cand, take)
                    top_slots[qi, : len(pos)] = cand[pos]
                    top_scores[qi, : len(pos)] = sc
            return True

        ok = _run_split(run, nq, workers)
        return (top_slots, top_scores) if ok else None


def _run_split(run: Callable[[int, int], bool], nq: int, workers: int) -> bool:
    """run(a, b) over query ranges: this thread takes the first, the shared pool the others (big
    batches only: fewer than _PARALLEL_MIN_QUERIES / 2 queries per worker is not worth a thread)."""
    workers = max(1, min(workers, nq // (_PARALLEL_MIN_QUERIES // 2)))
    if workers == 1:
        return run(0, nq)
    bounds = np.linspace(0, nq, workers + 1).astype(int)
    futures = [
        _shared_pool(workers - 1).submit(run, int(bounds[w]), int(bounds[w + 1])) for w in range(1, workers)
    ]
    ok = run(0, int(bounds[1]))
    return all([f.result() for f in futures]) and ok


def best_entries_per_item(
    slots: np.ndarray, scores: np.ndarray, item_of: np.ndarray, k: int
) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Rows of candidates (slot, score), best first, -1 slots = padding -> per row the best entry
    of each item, at most k items, best first; and the number of items found per row. One pass
    for all rows: a stable sort by item within each row keeps every item's first (best) entry."""
    if len(slots) == 1:  # batch 1 (the common case): fewer, cheaper numpy calls
        row, row_scores = slots[0], scores[0]
        row_scores = row_scores[row >= 0]
        row = row[row >= 0]
        _, first = np.unique(item_of[row], return_index=True)
        first.sort()
        return [(row[first[:k]], row_scores[first[:k]])], np.array([len(first)])
    valid = slots >= 0
    items = np.where(valid, item_of[np.maximum(slots, 0)], -1)
    order = np.argsort(items, axis=1, kind="stable")
    sorted_items = np.take_along_axis(items, order, axis=1)
    first = np.ones(items.shape, dtype=bool)
    first[:, 1:] = sorted_items[:, 1:] != sorted_items[:, :-1]
    keep = np.empty_like(first)
    np.put_along_axis(keep, order, first, axis=1)
    keep &= valid
    found = keep.sum(axis=1)
    keep &= np.cumsum(keep, axis=1) <= k
    return [(slots[i][keep[i]], scores[i][keep[i]]) for i in range(len(slots))], found
