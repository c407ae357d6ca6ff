"""Shard engine vs FAISS alone on the SAME trained first stage, in one run (part of `vsearch bench shard`).

FAISS alone = `IndexRefine(IVF-PQ, IndexScalarQuantizer fp16)` with k_factor = candidates / 10,
i.e. FAISS's own answer to "PQ candidates re-scored exactly from float16 vectors". The engine is a
real `ShardEngine` called in-process (no gRPC) whose index is that very IVF-PQ object (entry id =
row number, so both sides get identical candidates). Timings are paired query by query (batch 1)
and batch by batch (batch 64), FAISS then engine, so load from other processes on a shared host
hits both sides alike; the load average is recorded before and after.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any


def mixture2(n: int, centres: Any, rng: Any, spread: float = 1.25) -> Any:
    """Points unit(c + spread*g/sqrt(d)) around random centres c (g ~ N(0, I))."""
    import numpy as np

    dim = centres.shape[1]
    out = np.empty((n, dim), dtype=np.float32)
    for a in range(0, n, 100_000):
        b = min(n, a + 100_000)
        x = centres[rng.integers(0, len(centres), b - a)]
        x += (spread / np.sqrt(dim)) * rng.standard_normal((b - a, dim)).astype(np.float32)
        out[a:b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def mixture2_centres(dim: int, rng: Any, supers: int = 100, clusters: int = 10_000) -> Any:
    """Two-level mixture (issue 13): 100 super-centres; cluster centres unit(s + 0.7*g/sqrt(d))."""
    import numpy as np

    s = rng.standard_normal((supers, dim)).astype(np.float32)
    s /= np.linalg.norm(s, axis=1, keepdims=True)
    return mixture2(clusters, s, rng, spread=0.7)


def _stats(lat_s: list[float]) -> dict[str, float]:
    import numpy as np

    a = np.asarray(lat_s) * 1000
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 4),
        "p99_ms": round(float(np.percentile(a, 99)), 4),
        "mean_ms": round(float(a.mean()), 4),
        "qps": round(1000 / float(a.mean()), 1),
        "qps_at_p50": round(1000 / float(np.percentile(a, 50)), 1),
    }


def _recall10(found: Any, truth: Any) -> float:
    hits = sum(len(set(list(f)[:10]) & set(list(t)[:10])) for f, t in zip(found, truth, strict=True))
    return round(hits / (10 * len(truth)), 4)


def compare(
    xb: Any,
    xq: Any,
    gt: Any,
    ann: Any,
    nprobes: list[int],
    candidates: list[int],
    latency_queries: int,
    batch: int = 64,
) -> dict[str, Any]:
    """`ann` is an AnnIndex (IVF-PQ) holding rows 0..n-1 of `xb` under ids 0..n-1."""
    import faiss
    import numpy as np

    from visual_search.shard.engine import EngineConfig, ShardEngine
    from visual_search.shard.index import IndexConfig
    from visual_search.v1 import shard_pb2 as pb

    n, dim = xb.shape
    k = 10
    t0 = time.time()
    refine = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    for a in range(0, n, 100_000):
        refine.add(np.ascontiguousarray(xb[a : a + 100_000]))
    faiss_alone = faiss.IndexRefine(ann.index, refine)
    tmp = Path(tempfile.mkdtemp(prefix="vsearch-vs-faiss-"))
    try:
        md = pb.ItemMetadata(category="c", available=True)
        no_box: tuple[float, ...] = ()
        records = [(f"item-{i}", md, [i], [no_box]) for i in range(n)]
        eng = ShardEngine(
            tmp / "data",
            shard_id=0,
            model_version="bench",
            dim=dim,
            config=EngineConfig(index=IndexConfig(use_gpu=False), fsync=False),
        )
        eng.bulk_import(records, xb.astype(np.float16), index=ann)
        del records
        setup_s = time.time() - t0
        print(f"vs-faiss: refine index + engine import in {setup_s:.1f}s", flush=True)

        params_cache: dict[tuple[int, int], Any] = {}

        def faiss_search(q: Any, nprobe: int, cand: int) -> Any:
            # Parameter objects built once per config and reused (as the engine does for its own),
            # so FAISS is timed at its best, not with ~10-30 us of SWIG object construction a call.
            params = params_cache.get((nprobe, cand))
            if params is None:
                ivf_params = faiss.SearchParametersIVF(nprobe=nprobe)  # type: ignore[call-arg]
                params = params_cache[(nprobe, cand)] = (
                    faiss.IndexRefineSearchParameters(  # type: ignore[call-arg]
                        k_factor=cand / k, base_index_params=ivf_params
                    ),
                    ivf_params,  # kept alive with its owner
                )
            return faiss_alone.search(q, k, params=params[0])[1]

        stages: list[tuple[float, float, float]] = []

        def engine_search(q: Any, nprobe: int, cand: int) -> list[list[int]]:
            res, t = eng.search(q, k, nprobe=nprobe, rescore_k=cand)
            stages.append((t.ann_s, t.filter_s, t.rescore_s))
            return [[h.entry_id for h in hits] for hits in res]

        rows = []
        load_before = os.getloadavg()
        for nprobe in nprobes:
            for cand in candidates:
                f_found = np.vstack(
                    [faiss_search(xq[a : a + batch], nprobe, cand) for a in range(0, len(xq), batch)]
                )
                e_found = [
                    r
                    for a in range(0, len(xq), batch)
                    for r in engine_search(xq[a : a + batch], nprobe, cand)
                ]
                lat_f, lat_e = [], []
                stages.clear()
                for q in xq[:latency_queries]:
                    q1 = q[None, :]
                    ts = time.perf_counter()
                    faiss_search(q1, nprobe, cand)
                    tm = time.perf_counter()
                    engine_search(q1, nprobe, cand)
                    lat_f.append(tm - ts)
                    lat_e.append(time.perf_counter() - tm)
                nb = (min(len(xq), 10 * batch) // batch) * batch
                bf = be = 0.0
                for a in range(0, nb, batch):
                    ts = time.perf_counter()
                    faiss_search(xq[a : a + batch], nprobe, cand)
                    tm = time.perf_counter()
                    engine_search(xq[a : a + batch], nprobe, cand)
                    bf += tm - ts
                    be += time.perf_counter() - tm
                st = np.asarray(stages[: len(lat_e)]) * 1e6  # the batch-1 calls (batch-64 ones follow)
                total_us = np.asarray(lat_e) * 1e6
                stage_p50 = {
                    "ivf_search": round(float(np.median(st[:, 0])), 1),
                    "id_to_slot_and_masks": round(float(np.median(st[:, 1])), 1),
                    "rescore_and_items": round(float(np.median(st[:, 2])), 1),
                    "rest_hits_lock_python": round(float(np.median(total_us - st.sum(axis=1))), 1),
                }
                fs, es = _stats(lat_f), _stats(lat_e)
                e64, f64 = round(nb / be, 1), round(nb / bf, 1)
                row = {
                    "nprobe": nprobe,
                    "candidates": cand,
                    "recall@10_engine": _recall10(e_found, gt),
                    "recall@10_faiss": _recall10(f_found, gt),
                    "queries_same_top10_ids": sum(
                        list(e) == list(f) for e, f in zip(e_found, f_found, strict=True)
                    ),
                    "engine_batch1": es,
                    "engine_batch1_stage_p50_us": stage_p50,
                    "faiss_batch1": fs,
                    f"engine_batch{batch}_qps": e64,
                    f"faiss_batch{batch}_qps": f64,
                    "ratio_batch1_qps": round(es["qps"] / fs["qps"], 3),
                    "ratio_batch1_qps_at_p50": round(es["qps_at_p50"] / fs["qps_at_p50"], 3),
                    f"ratio_batch{batch}_qps": round(e64 / f64, 3),
                    f"engine_batch{batch}_over_batch1": round(e64 / es["qps"], 2),
                    f"faiss_batch{batch}_over_batch1": round(f64 / fs["qps"], 2),
                    "loadavg_after": os.getloadavg(),
                }
                rows.append(row)
                print("vs-faiss", row, flush=True)
        eng.close(final_snapshot=False)
        return {
            "faiss_alone": "IndexRefine(base=the engine's IVF-PQ object, refine=IndexScalarQuantizer fp16), "
            "k_factor = candidates / 10, IndexRefineSearchParameters(base_index_params nprobe)",
            "engine": "ShardEngine.search in-process (index = the same IVF-PQ object, entry id = row), "
            "one entry per item, k=10",
            "timing": "paired: each batch-1 query / each batch of 64 timed on FAISS then on the engine",
            "latency_queries": latency_queries,
            "batch": batch,
            "omp_threads": faiss.omp_get_max_threads(),
            "threads_note": "the same OpenMP setting for both sides (one process); at batch 1 FAISS's "
            "IVF search and IndexRefine's refine loop run on the calling thread (n=1), the engine scores "
            "on the calling thread too; at batch 64 both use omp_threads (the engine's re-scoring splits "
            "queries over that many threads)",
            "faiss_params": "IndexRefineSearchParameters built once per (nprobe, candidates) and reused",
            "setup_s": round(setup_s, 1),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "sweep": rows,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
