"""`vsearch bench shard`: IVF-PQ + exact re-scoring vs exact brute force, in one run.

Data: N x 256 L2-normalised vectors from a mixture of many Gaussians (clustered like real
embeddings; `--data gauss`), or the harder two-level mixture of issue 13 (`--data mixture2`: 100
super-centres, 10,000 cluster centres unit(s + 0.7 g/sqrt(d)), points unit(c + 1.25 g/sqrt(d)));
queries from the same mixture (not in the data). The engine-vs-FAISS part (shard_vs_faiss.py)
puts FAISS's IndexRefine on the same trained IVF-PQ next to the shard engine. Measures recall@10/@100 against
faiss IndexFlatIP for an nprobe x rescore_k sweep (rescore_k=0: PQ scores only), queries/s at
batch 1 and 64 with p50/p99, build times, index RAM and disk bytes per vector, and batch-1
latency through a real shard process over gRPC. Writes JSON under benchmarks/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from visual_search.shard.config import IndexConfig

_MIB = 1024 * 1024


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("shard", help="shard ANN benchmark (recall, q/s, bytes/vector, gRPC latency)")
    p.add_argument("--n", type=int, default=1_000_000, help="catalog vectors")
    p.add_argument("--queries", type=int, default=500, help="queries for recall")
    p.add_argument(
        "--data",
        choices=("gauss", "mixture2"),
        default="gauss",
        help="gauss: one-level mixture (--clusters, --spread); mixture2: issue 13's two-level mixture",
    )
    p.add_argument("--clusters", type=int, default=10_000, help="Gaussian components")
    p.add_argument("--spread", type=float, default=0.5, help="within-cluster std relative to centre norm")
    p.add_argument("--train-points", type=int, default=200_000)
    p.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--rescore-k", type=int, nargs="+", default=[0, 100, 300, 1000])
    p.add_argument("--variants", nargs="+", default=["PCA256,PQ32", "PQ32", "PQ32x4fs"],
                   help="first-stage variants: PQ32, PQ32x4fs, optionally prefixed 'PCA<d>,' (the shard's "
                   "default for vectors wider than IndexConfig.pca_dim)")
    p.add_argument("--latency-queries", type=int, default=300, help="batch-1 queries timed per config")
    p.add_argument("--flat-queries", type=int, default=20, help="batch-1 queries timed on exact flat")
    p.add_argument("--threads", type=int, default=2, help="FAISS OpenMP threads")
    p.add_argument("--no-grpc", action="store_true", help="skip the gRPC service part")
    p.add_argument(
        "--only",
        choices=("all", "grpc", "engine"),
        default="all",
        help="grpc: only the gRPC part (no flat baseline, no sweeps; first variant's index); "
        "engine: only exact ground truth + first variant + engine vs FAISS IndexRefine",
    )
    p.add_argument(
        "--compare-nprobe", type=int, nargs="+", default=[16, 32, 64], help="engine vs FAISS: nprobe values"
    )
    p.add_argument(
        "--compare-candidates",
        type=int,
        nargs="+",
        default=[100, 300, 1000],
        help="engine vs FAISS: candidates re-scored (FAISS k_factor = candidates/10)",
    )
    p.add_argument("--no-compare", action="store_true", help="skip engine vs FAISS IndexRefine")
    p.add_argument(
        "--cache-dir",
        default="",
        help="with --only grpc: keep the trained index and the imported shard data dir here and reuse "
        "them on the next run (same --n/--seed/--clusters/--spread/--train-points); with --only engine: "
        "keep the trained+filled first variant and the exact ground truth (same arguments)",
    )
    p.add_argument(
        "--shard-args",
        default="",
        help="extra `vsearch shard` flags for the gRPC part, e.g. '--blas-threads 0 --faiss-threads 0' "
        "(after the defaults '--faiss-threads 1 ...', so they win)",
    )
    p.add_argument(
        "--paced-qps",
        type=float,
        default=20.0,
        help="also time CPU per search at this open-loop rate (idle BLAS workers spin between queries)",
    )
    p.add_argument("--label", default="", help="with --only grpc: store this run under runs[label] in --out")
    p.add_argument("--out", default="", help="JSON path (default benchmarks/shard_<n>.json)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def variant_config(variant: str, train_points: int) -> IndexConfig:
    """IndexConfig of a first-stage variant name: "PQ32", "PQ32x4fs", with an optional "PCA<d>,"
    prefix (the PCA pre-transform, IndexConfig.pca_dim; without it: none)."""
    pca = int(variant.split(",")[0][3:]) if variant.startswith("PCA") else 0
    return IndexConfig(pq_bits=4 if variant.endswith("x4fs") else 8, max_train_points=train_points,
                       use_gpu=False, pca_dim=pca)


def clustered(n: int, dim: int, clusters: int, spread: float, rng: Any) -> Any:
    import numpy as np

    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    for a in range(0, n, 100_000):
        b = min(n, a + 100_000)
        x = centres[rng.integers(0, clusters, b - a)]
        x += (spread / np.sqrt(dim)) * rng.standard_normal((b - a, dim)).astype(np.float32)
        out[a:b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def make_data(args: argparse.Namespace, dim: int) -> tuple[Any, Any]:
    """(catalog, queries): queries are fresh points of the same mixture (not in the catalog)."""
    import numpy as np

    if args.data == "mixture2":
        from visual_search.bench.shard_vs_faiss import mixture2, mixture2_centres

        rng = np.random.default_rng(args.seed)
        centres = mixture2_centres(dim, rng)
        return mixture2(args.n, centres, rng), mixture2(
            args.queries, centres, np.random.default_rng(args.seed + 1)
        )
    rng = np.random.default_rng(args.seed)
    xb = clustered(args.n, dim, args.clusters, args.spread, rng)
    xq = clustered(args.queries, dim, args.clusters, args.spread, np.random.default_rng(args.seed))
    if args.queries:  # same centres (same seed), points past the catalog's
        full = clustered(
            args.n + args.queries, dim, args.clusters, args.spread, np.random.default_rng(args.seed)
        )
        xq = full[args.n :]
    return xb, xq


def _pcts(lat_s: list[float]) -> dict[str, float]:
    import numpy as np

    a = np.asarray(lat_s) * 1000
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "mean_ms": round(float(a.mean()), 3),
        "qps": round(1000 / float(a.mean()), 1),
    }


def _recall(found: Any, truth: Any, k: int) -> float:
    hits = sum(len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth, strict=True))
    return round(hits / (k * len(truth)), 4)


def _rescore(vec16: Any, q: Any, cand: Any, k: int) -> Any:
    """Exact re-score of candidate rows from the float16 store (what the shard does)."""
    import numpy as np

    cand = cand[cand >= 0]
    s = np.asarray(vec16[cand], dtype=np.float32) @ q
    top = np.argpartition(-s, min(k, len(s)) - 1)[:k] if len(s) > k else np.arange(len(s))
    return cand[top[np.argsort(-s[top])]]


def _hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
    }
    try:
        cpu = Path("/proc/cpuinfo").read_text().splitlines()
        info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in cpu if ln.startswith("model name")), "")
        mem = Path("/proc/meminfo").read_text().splitlines()
        info["mem_total_kb"] = next((int(ln.split()[1]) for ln in mem if ln.startswith("MemTotal")), 0)
    except OSError:
        pass
    return info


def run(args: argparse.Namespace) -> int:  # noqa: C901 - a linear script
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import faiss
    import numpy as np

    from visual_search import contract
    from visual_search.shard.index import AnnIndex, choose_nlist

    faiss.omp_set_num_threads(args.threads)
    dim = contract.EMBEDDING_DIM
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    result: dict[str, Any] = {
        "benchmark": "shard",
        "arguments": vars(args).copy(),
        "hardware": _hardware(),
        "faiss": faiss.__version__,
        "numpy": np.__version__,
    }
    result["arguments"].pop("func", None)
    xb, xq = make_data(args, dim)
    print(f"data {args.n}x{dim} in {time.time() - t0:.1f}s", flush=True)
    if args.only == "grpc":
        return _run_grpc_only(args, result, xb, xq, t0)
    engine_only = args.only == "engine"
    vec16 = None if engine_only else xb.astype(np.float16)

    # ---- exact baseline -----------------------------------------------------------------------
    cache = Path(args.cache_dir) if args.cache_dir and engine_only else None
    key = (
        f"{args.n}-{args.seed}-{args.data}-{args.clusters}-{args.spread}-{args.queries}-"
        f"{args.train_points}-{args.variants[0]}"
    )
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    flat = faiss.IndexFlatIP(dim)
    flat.add(xb)
    t = time.time()
    if cache is not None and (cache / f"gt-{key}.npy").exists():
        gt = np.load(cache / f"gt-{key}.npy")
        result["gt_from_cache"] = True
    else:
        _, gt = flat.search(xq, 100)
        if cache is not None:
            np.save(cache / f"gt-{key}.npy", gt)
    flat_batch_s = time.time() - t
    lat = []
    for q in xq[: 0 if engine_only else args.flat_queries]:
        t = time.perf_counter()
        flat.search(q[None, :], 10)
        lat.append(time.perf_counter() - t)
    result["flat"] = {
        "batch1": _pcts(lat) if lat else None,
        "batch_all": {"queries": len(xq), "qps": round(len(xq) / flat_batch_s, 1)},
        "ram_bytes_per_vector": dim * 4,
    }
    flat_qps1 = result["flat"]["batch1"]["qps"] if lat else 0.0
    print("flat", result["flat"], flush=True)
    del flat

    nlist = choose_nlist(args.n)
    result["nlist"] = nlist
    result["variants"] = {}
    best_index = None
    for variant in args.variants[:1] if engine_only else args.variants:
        cfg = variant_config(variant, args.train_points)
        cached = cache / f"ivf-{key}.faiss" if cache is not None else None
        if cached is not None and cached.exists():  # --cache-dir with --only engine: train + add once
            meta = json.loads(cached.with_suffix(".json").read_text())
            ann = AnnIndex.deserialize(cached.read_bytes(), meta["index"], use_gpu=False)
            train_s, add_s = meta["train_s"], meta["add_s"]
            result["index_from_cache"] = str(cached)
        else:
            t = time.time()
            ann = AnnIndex.train_ivfpq(dim, xb, cfg, rng=np.random.default_rng(args.seed))
            train_s = time.time() - t
            t = time.time()
            ids = np.arange(args.n, dtype=np.int64)
            for a in range(0, args.n, 100_000):
                ann.add(ids[a : a + 100_000], xb[a : a + 100_000])
            add_s = time.time() - t
            if cached is not None:
                cached.write_bytes(ann.serialize())
                meta = {"index": ann.description, "train_s": train_s, "add_s": add_s}
                cached.with_suffix(".json").write_text(json.dumps(meta))
        ser = len(ann.serialize())
        v: dict[str, Any] = {
            "index": ann.description,
            "train_s": round(train_s, 1),
            "add_s": round(add_s, 1),
            "train_points": min(args.n, args.train_points),
            "ram_bytes_per_vector": round(ann.memory_bytes() / args.n, 2),
            "serialized_bytes_per_vector": round(ser / args.n, 2),
            "sweep": [],
        }
        print(variant, {k: v[k] for k in v if k != "sweep"}, flush=True)
        for nprobe in [] if engine_only else args.nprobe:
            fetch = max(max(args.rescore_k), 100)
            _, cand = ann.search(xq, fetch, nprobe)
            for rk in args.rescore_k:
                if rk == 0:
                    found = cand[:, :100]
                else:
                    found = np.stack(
                        [
                            np.pad(
                                r := _rescore(vec16, q, c[:rk], 100), (0, 100 - len(r)), constant_values=-1
                            )
                            for q, c in zip(xq, cand, strict=True)
                        ]
                    )
                row: dict[str, Any] = {
                    "nprobe": nprobe,
                    "rescore_k": rk,
                    "recall@10": _recall(found, gt, 10),
                    "recall@100": _recall(found, gt, 100) if rk == 0 or rk >= 100 else None,
                }
                lat = []
                for q in xq[: args.latency_queries]:
                    tq = time.perf_counter()
                    _, c = ann.search(q[None, :], max(rk, 10), nprobe)
                    if rk:
                        _rescore(vec16, q, c[0], 10)
                    lat.append(time.perf_counter() - tq)
                row["batch1"] = _pcts(lat)
                row["batch1_speedup_vs_flat"] = (
                    round(row["batch1"]["qps"] / flat_qps1, 1) if flat_qps1 else None
                )
                nb = (min(len(xq), 640) // 64) * 64
                tq = time.perf_counter()
                for a in range(0, nb, 64):
                    _, c = ann.search(xq[a : a + 64], max(rk, 10), nprobe)
                    if rk:
                        for q, cc in zip(xq[a : a + 64], c, strict=True):
                            _rescore(vec16, q, cc, 10)
                row["batch64_qps"] = round(nb / (time.perf_counter() - tq), 1) if nb else None
                v["sweep"].append(row)
                print(variant, row, flush=True)
        result["variants"][variant] = v
        if variant == args.variants[0] and not args.no_compare:
            from visual_search.bench.shard_vs_faiss import compare

            # Before the gRPC part, which re-ids this index with hashed entry ids.
            result["engine_vs_faiss"] = {
                "index": ann.description,
                **compare(
                    xb,
                    xq,
                    gt[:, :10],
                    ann,
                    args.compare_nprobe,
                    args.compare_candidates,
                    args.latency_queries,
                ),
            }
        if variant == args.variants[0]:
            best_index = ann
        else:
            del ann

    # ---- through the gRPC service ---------------------------------------------------------------
    if not args.no_grpc and not engine_only and best_index is not None:
        result["grpc"] = _grpc_part(args, xb, xq, best_index, rng)
    result["targets"] = _targets(result)
    result["total_s"] = round(time.time() - t0, 1)
    out = Path(args.out or f"benchmarks/shard_{args.n // 1000}k.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}", flush=True)
    return 0


def _targets(r: dict[str, Any]) -> dict[str, Any]:
    """Best sweep point per variant with recall@10 >= 0.95 (with re-scoring), vs the 100x target."""
    out: dict[str, Any] = {}
    for name, v in r["variants"].items():
        ok = [s for s in v["sweep"] if s["rescore_k"] and s["recall@10"] >= 0.95]
        best = max(ok, key=lambda s: s["batch1"]["qps"]) if ok else None
        out[name] = {
            "best_config_recall10_ge_0.95": best
            and {k: best[k] for k in ("nprobe", "rescore_k", "recall@10")},
            "batch1_speedup_vs_flat": best and best["batch1_speedup_vs_flat"],
            "meets_100x": bool(best and best["batch1_speedup_vs_flat"] >= 100),
            "ram_bytes_per_vector": v["ram_bytes_per_vector"],
            "meets_48B": v["ram_bytes_per_vector"] <= 48,
        }
    if "engine_vs_faiss" in r:
        sweep = r["engine_vs_faiss"]["sweep"]
        out["engine_vs_faiss"] = {
            "min_ratio_batch1_qps": min(x["ratio_batch1_qps"] for x in sweep),
            "min_engine_batch64_over_batch1": min(x["engine_batch64_over_batch1"] for x in sweep),
            "meets_ratio_1": all(x["ratio_batch1_qps"] >= 1.0 for x in sweep),
            "meets_batch64_3x": all(x["engine_batch64_over_batch1"] >= 3.0 for x in sweep),
        }
    if "grpc" in r:
        g = r["grpc"]["batch1"]
        out["grpc"] = {
            "p50_ms": g["p50_ms"],
            "p99_ms": g["p99_ms"],
            "meets_p50_3ms": g["p50_ms"] <= 3,
            "meets_p99_15ms": g["p99_ms"] <= 15,
        }
    return out


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all threads (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run_grpc_only(args: argparse.Namespace, result: dict[str, Any], xb: Any, xq: Any, t0: float) -> int:
    """The gRPC part alone, reusing a cached index and shard data dir when --cache-dir has them."""
    import faiss
    import numpy as np

    from visual_search import contract
    from visual_search.shard.index import AnnIndex

    variant = args.variants[0]
    cache = Path(args.cache_dir) if args.cache_dir else None
    key = f"{args.n}-{args.seed}-{args.clusters}-{args.spread}-{args.train_points}-{variant}"
    data_dir = cache / f"data-{key}" if cache else None
    ann = None
    if data_dir is None or not (data_dir / "snapshots").is_dir():
        cfg = variant_config(variant, args.train_points)
        t = time.time()
        ann = AnnIndex.train_ivfpq(contract.EMBEDDING_DIM, xb, cfg, rng=np.random.default_rng(args.seed))
        result["train_s"] = round(time.time() - t, 1)
        print(f"trained {ann.description} in {result['train_s']}s", flush=True)
    else:
        print(f"reusing shard data dir {data_dir}", flush=True)
    result["faiss_threads_bench"] = faiss.omp_get_max_threads()
    result["grpc"] = _grpc_part(args, xb, xq, ann, np.random.default_rng(args.seed), data_dir)
    result["targets"] = {"grpc": _targets({"variants": {}, "grpc": result["grpc"]})["grpc"]}
    result["total_s"] = round(time.time() - t0, 1)
    out = Path(args.out or f"benchmarks/shard_{args.n // 1000}k_grpc.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.label:
        doc = json.loads(out.read_text()) if out.exists() else {}
        doc.setdefault("benchmark", "shard-grpc")
        doc.setdefault("runs", {})[args.label] = result
        out.write_text(json.dumps(doc, indent=1))
    else:
        out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}", json.dumps(result["grpc"]), flush=True)
    return 0


def _grpc_part(
    args: argparse.Namespace, xb: Any, xq: Any, ann: Any, rng: Any, data_dir: Path | None = None
) -> dict[str, Any]:
    import numpy as np

    from visual_search.shard.process import ShardProcess
    from visual_search.v1 import shard_pb2 as pb

    model = "bench-model"
    tmp = Path(tempfile.mkdtemp(prefix="vsearch-shard-bench-"))
    data = data_dir or tmp / "data"
    try:
        t = time.time()
        if ann is not None:
            _import(args, xb, ann, data, model)
        snap_dir = max((data / "snapshots").glob("snap-*"))
        disk = sum(p.stat().st_size for p in snap_dir.iterdir())
        import_s = time.time() - t
        print(f"grpc: imported in {import_s:.1f}s, snapshot {disk / _MIB:.0f} MiB", flush=True)
        load_before = os.getloadavg()
        with ShardProcess(
            data,
            model_version=model,
            startup_timeout=900,
            log_path=tmp / "shard.log",
            extra_args=["--faiss-threads", "1", "--snapshot-interval", "100000", "--log-level", "WARNING"]
            + shlex.split(args.shard_args),
        ) as shard:
            assert shard.proc is not None
            pid = shard.proc.pid
            stub = shard.stub()
            reqs = [
                pb.SearchRequest(
                    queries=[pb.QueryVector(vector_f16=q.astype("<f2").tobytes())], k=10, model_version=model
                )
                for q in xq
            ]
            for r in reqs[:20]:
                stub.Search(r, timeout=10)  # warm-up
            lat, server_us = [], []
            n = max(args.latency_queries, 300)
            cpu0, wall0 = _cpu_s(pid), time.perf_counter()
            for i in range(n):
                t = time.perf_counter()
                resp = stub.Search(reqs[i % len(reqs)], timeout=10)
                lat.append(time.perf_counter() - t)
                server_us.append(resp.ann_us + resp.rescore_us + resp.filter_us)
            cpu_per_search_ms = (_cpu_s(pid) - cpu0) / n * 1000
            wall_per_search_ms = (time.perf_counter() - wall0) / n * 1000
            stats = stub.Stats(pb.StatsRequest(), timeout=10)
            flt = pb.Filter(clauses=[pb.FilterClause(field="category", equals="c3")])
            lat_f = []
            cpu0 = _cpu_s(pid)
            for i in range(100):
                r = pb.SearchRequest(
                    queries=reqs[i % len(reqs)].queries, k=10, model_version=model, filter=flt
                )
                t = time.perf_counter()
                resp = stub.Search(r, timeout=10)
                lat_f.append(time.perf_counter() - t)
                if len(resp.results[0].hits) != 10:
                    raise RuntimeError("filtered search returned fewer than k")
            cpu_per_filtered_ms = (_cpu_s(pid) - cpu0) / 100 * 1000
            # Idle baseline, then open-loop searches at --paced-qps: between sparse queries idle
            # worker threads busy-wait, which a back-to-back loop hides.
            time.sleep(0.5)
            cpu0, t_idle = _cpu_s(pid), time.perf_counter()
            time.sleep(3.0)
            idle_ms_per_s = (_cpu_s(pid) - cpu0) / (time.perf_counter() - t_idle) * 1000
            n_paced = 100
            gap = 1.0 / args.paced_qps
            cpu0, t_paced = _cpu_s(pid), time.perf_counter()
            for i in range(n_paced):
                stub.Search(reqs[i % len(reqs)], timeout=10)
                time.sleep(max(0.0, t_paced + (i + 1) * gap - time.perf_counter()))
            paced_s = time.perf_counter() - t_paced
            paced_cpu_ms = ((_cpu_s(pid) - cpu0) * 1000 - idle_ms_per_s * paced_s) / n_paced
        return {
            "index": stats.index_type,
            "entries": stats.entries,
            "nprobe": 32,
            "rescore_k": 1000,
            "batch1": _pcts(lat),
            "server_stage_us_p50": float(np.percentile(server_us, 50)),
            "shard_cpu_ms_per_search": round(cpu_per_search_ms, 3),
            "wall_ms_per_search": round(wall_per_search_ms, 3),
            "searches_timed": n,
            "batch1_filter_10pct": _pcts(lat_f),
            "shard_cpu_ms_per_filtered_search": round(cpu_per_filtered_ms, 3),
            "shard_idle_cpu_ms_per_s": round(idle_ms_per_s, 3),
            "paced_qps": args.paced_qps,
            "shard_cpu_ms_per_search_paced": round(paced_cpu_ms, 3),
            "index_bytes_per_vector": round(stats.index_bytes / args.n, 2),
            "disk_bytes_per_vector": round(disk / args.n, 1),
            "import_s": round(import_s, 1),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _import(args: argparse.Namespace, xb: Any, ann: Any, data: Path, model: str) -> None:
    """Bulk-import the catalog (entry ids from item ids) with `ann` re-ided to those entry ids."""
    import numpy as np

    from visual_search import contract, ids
    from visual_search.shard.engine import EngineConfig, ShardEngine
    from visual_search.shard.index import IndexConfig
    from visual_search.v1 import shard_pb2 as pb

    entry_ids = np.asarray([ids.entry_id(f"item-{i}", 0) for i in range(args.n)], dtype=np.int64)
    cats = [pb.ItemMetadata(category=f"c{i}", price=float(i), available=True, region="eu") for i in range(10)]
    no_box: tuple[float, ...] = ()
    records = [(f"item-{i}", cats[i % 10], [int(entry_ids[i])], [no_box]) for i in range(args.n)]
    # Reuse the trained index: re-id it with the entry ids (same codes, other ids).
    ann.index.reset()
    for a in range(0, args.n, 100_000):
        ann.add(entry_ids[a : a + 100_000], xb[a : a + 100_000])
    eng = ShardEngine(
        data,
        shard_id=0,
        model_version=model,
        dim=contract.EMBEDDING_DIM,
        config=EngineConfig(index=IndexConfig(use_gpu=False)),
    )
    eng.bulk_import(records, xb.astype(np.float16), index=ann)
    eng.close(final_snapshot=False)
