"""`vsearch bench load` (also `load_tests/run.py`, `load_tests/run.sh`): locust load tests (R19).

Starts the local stack on loopback (launcher.Stack), indexes a few dozen real catalog photos
through the public API, then runs locust headless (load_tests/locustfile.py) for fixed durations:
profiles `search` (SearchUser), `ingest` (IngestUser) and `mixed` (both, 4:1), and a step mode that
raises the search user count (1, 2, 4, 8 ...) to find the highest sustained queries/s whose p95
stays within the latency budget. Around every run it takes deltas of Triton's statistics API
(per-model queue / compute time, batch size), the gateway's and shards' /metrics (per-stage
histograms) and per-process CPU time, so the summary names the bottleneck with numbers rather
than guesses. Writes benchmarks/load_*.json; locust CSV/HTML stay in the run dir (not committed).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO_ROOT / "load_tests" / "locustfile.py"
PROFILES: dict[str, list[str]] = {
    "search": ["SearchUser"],
    "ingest": ["IngestUser"],
    "mixed": ["SearchUser", "IngestUser"],  # weights 4:1 from the user classes
}
_CLK = os.sysconf("SC_CLK_TCK")


# ---- metric snapshots ---------------------------------------------------------------------------
def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def _hist_delta(
    before: dict[Any, float], after: dict[Any, float], name: str, group_by: str
) -> dict[str, dict[str, float]]:
    """Per label value of `group_by`: count, mean and interpolated p50/p95 (ms) over the run."""
    buckets: dict[str, list[tuple[float, float]]] = {}
    sums: dict[str, float] = {}
    for (sname, labels), v in after.items():
        lab = dict(labels)
        key = lab.get(group_by, "")
        d = v - before.get((sname, labels), 0.0)
        if sname == f"{name}_bucket":
            buckets.setdefault(key, []).append((float(lab["le"]), d))
        elif sname == f"{name}_sum":
            sums[key] = sums.get(key, 0.0) + d
    out: dict[str, dict[str, float]] = {}
    for key, bs in buckets.items():
        merged: dict[float, float] = {}
        for le, c in bs:  # several series (e.g. shards) share a key: add their buckets
            merged[le] = merged.get(le, 0.0) + c
        cum = sorted(merged.items())
        total = cum[-1][1] if cum else 0.0
        if total <= 0:
            continue
        out[key] = {
            "count": int(total),
            "mean_ms": round(sums.get(key, 0.0) / total * 1e3, 2),
            "p50_ms": round(_quantile(cum, 0.5) * 1e3, 2),
            "p95_ms": round(_quantile(cum, 0.95) * 1e3, 2),
        }
    return out


def _quantile(cum: list[tuple[float, float]], q: float) -> float:
    """histogram_quantile(): linear interpolation inside the bucket holding the rank."""
    total = cum[-1][1]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in cum:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / max(c - prev_c, 1e-12))
        prev_le, prev_c = le, c
    return prev_le


def _counter_delta(before: dict[Any, float], after: dict[Any, float], name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (sname, labels), v in after.items():
        if sname == name:
            key = ",".join(f"{k}={val}" for k, val in labels) or "all"
            d = v - before.get((sname, labels), 0.0)
            if d:
                out[key] = d
    return out


def _triton_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per model: requests, mean queue / compute / request time (ms), mean batch size."""

    def index(stats: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {m["name"]: m for m in stats.get("model_stats", [])}

    b, a = index(before), index(after)
    out: dict[str, dict[str, float]] = {}
    for name, m in a.items():
        mb = b.get(name, {})

        def d(path: str, key: str, m: dict[str, Any] = m, mb: dict[str, Any] = mb) -> float:
            now = float(m.get("inference_stats", {}).get(path, {}).get(key, 0))
            then = float(mb.get("inference_stats", {}).get(path, {}).get(key, 0))
            return now - then

        n = d("success", "count")
        if n <= 0:
            continue
        execs = float(m.get("execution_count", 0)) - float(mb.get("execution_count", 0))
        infers = float(m.get("inference_count", 0)) - float(mb.get("inference_count", 0))
        out[name] = {
            "requests": int(n),
            "request_ms": round(d("success", "ns") / n / 1e6, 2),
            "queue_ms": round(d("queue", "ns") / n / 1e6, 2),
            "compute_input_ms": round(d("compute_input", "ns") / n / 1e6, 2),
            "compute_infer_ms": round(d("compute_infer", "ns") / n / 1e6, 2),
            "compute_output_ms": round(d("compute_output", "ns") / n / 1e6, 2),
            "mean_batch": round(infers / execs, 2) if execs else 0.0,
        }
    return out


def _cpu_seconds(root_pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user+system) of each named process and all its descendants, e.g. Triton's
    python-backend stubs, which are separate processes."""
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(d.name)] = int(fields[1])
        ticks[int(d.name)] = int(fields[11]) + int(fields[12])
    out: dict[str, float] = {}
    for name, root in root_pids.items():
        total, todo = 0, [root]
        while todo:
            pid = todo.pop()
            total += ticks.get(pid, 0)
            todo += [c for c, p in parent.items() if p == pid]
        out[name] = out.get(name, 0.0) + total / _CLK
    return out


def _system_busy_seconds() -> float:
    """CPU seconds all processes on the host spent busy (from /proc/stat): the cores are shared,
    so the summary shows how much of the machine other jobs took during each run."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return (sum(f[:8]) - idle) / _CLK


@dataclass
class Probe:
    """Where to read counters from during a run."""

    triton_url: str
    gateway_metrics: str
    shard_metrics: list[str]
    pids: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        from visual_search.triton.client import TritonClient

        with TritonClient(self.triton_url) as tc:
            triton = tc.statistics()
        shards: dict[Any, float] = {}
        for url in self.shard_metrics:
            shards.update(_scrape(url))  # series differ by their `shard` label
        return {
            "t": time.monotonic(),
            "triton": triton,
            "gateway": _scrape(self.gateway_metrics),
            "shards": shards,
            "cpu": _cpu_seconds(self.pids),
            "host_busy": _system_busy_seconds(),
        }

    @staticmethod
    def breakdown(b: dict[str, Any], a: dict[str, Any], locust_pid_cpu: float = 0.0) -> dict[str, Any]:
        wall = a["t"] - b["t"]
        cpu = {k: round((a["cpu"].get(k, 0.0) - v) / wall, 3) for k, v in b["cpu"].items()}
        if locust_pid_cpu:
            cpu["locust"] = round(locust_pid_cpu / wall, 3)
        gw, sh = (b["gateway"], a["gateway"]), (b["shards"], a["shards"])
        host = (a["host_busy"] - b["host_busy"]) / wall
        return {
            "wall_s": round(wall, 1),
            "host_cores_busy": round(host, 2),  # everything on the host, other engineers' jobs included
            "other_cores_busy": round(max(0.0, host - sum(cpu.values())), 2),
            "cpu_cores_used": cpu,  # mean cores busy per component over the run (2 cores here)
            "triton_models": _triton_delta(b["triton"], a["triton"]),
            "gateway_stages": _hist_delta(*gw, "vsearch_gateway_stage_seconds", "stage"),
            "gateway_requests": _hist_delta(*gw, "vsearch_gateway_request_seconds", "method"),
            "gateway_shard_request": _hist_delta(*gw, "vsearch_gateway_shard_request_seconds", "shard"),
            "gateway_hedges": _counter_delta(*gw, "vsearch_gateway_hedges_total"),
            "gateway_partial_results": _counter_delta(*gw, "vsearch_gateway_partial_results_total"),
            "shard_search": _hist_delta(*sh, "vsearch_shard_search_seconds", "shard"),
            # whole RPC incl. protobuf in/out: the gap to shard_search is gRPC/serialisation cost
            "shard_rpc": _hist_delta(*sh, "vsearch_shard_rpc_seconds", "method"),
            "shard_stages": _hist_delta(*sh, "vsearch_shard_search_stage_seconds", "stage"),
            "shard_ingest_lag": _hist_delta(*sh, "vsearch_shard_ingest_lag_seconds", "shard"),
        }


def name_bottleneck(bd: dict[str, Any]) -> str:
    """One line naming where the time goes: the slowest gateway stage, the Triton step model with
    the most busy time (queue vs compute), and whether the cores are saturated."""
    from visual_search.triton import names as N

    parts = []
    stages = {k: v["mean_ms"] for k, v in bd["gateway_stages"].items()}
    if stages:
        top = max(stages, key=lambda k: stages[k])
        parts.append(
            f"gateway stage '{top}' {stages[top]:.1f} ms of {sum(stages.values()):.1f} ms summed stage "
            f"mean per query (" + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()) + ")"
        )
    ensembles = {N.DETECT, N.EMBED, N.DETECT_AND_EMBED}
    steps = {m: t for m, t in bd["triton_models"].items() if m not in ensembles}
    if steps:
        busy = {m: t["requests"] * t["request_ms"] for m, t in steps.items()}
        worst = max(busy, key=lambda m: busy[m])
        t = steps[worst]
        parts.append(
            f"Triton step with most time: '{worst}' queue {t['queue_ms']:.1f} ms + compute "
            f"{t['compute_infer_ms']:.1f} ms per request, mean batch {t['mean_batch']}"
        )
    cpu = bd["cpu_cores_used"]
    if cpu:
        used, cores = sum(cpu.values()), os.cpu_count() or 1
        host = bd.get("host_cores_busy", used)
        state = "host CPU-saturated" if host >= 0.9 * cores else "host not CPU-saturated"
        parts.append(
            f"stack+locust {used:.2f}/{cores} cores, host {host:.2f} ({state}): "
            + ", ".join(f"{k} {v:.2f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
        )
    return "; ".join(parts) or "nothing observed"


# ---- locust -------------------------------------------------------------------------------------
def run_locust(
    host: str, users: list[str], n: int, seconds: int, prefix: Path, extra_env: dict[str, str] | None = None
) -> tuple[dict[str, Any], float]:
    """One headless locust run; returns (aggregated + per-name stats, locust CPU seconds)."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "-u", str(n), "-r", str(n), "-t", f"{seconds}s", "--stop-timeout", "10",
        "--host", host, "--csv", str(prefix), "--html", f"{prefix}.html",
        "--loglevel", "WARNING", *users,
    ]
    env = {**os.environ, **(extra_env or {})}
    with open(f"{prefix}.log", "wb") as log:
        t0 = os.times()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=seconds + 120)
        t1 = os.times()
    if proc.returncode not in (0, 1):  # 1 = some requests failed (reported in the stats)
        raise RuntimeError(f"locust exited {proc.returncode}; see {prefix}.log")
    return parse_stats(Path(f"{prefix}_stats.csv")), (t1.children_user - t0.children_user) + (
        t1.children_system - t0.children_system
    )


def parse_stats(path: Path) -> dict[str, Any]:
    def row_stats(r: dict[str, str]) -> dict[str, float]:
        return {
            "requests": int(r["Request Count"]),
            "failures": int(r["Failure Count"]),
            "req_per_s": round(float(r["Requests/s"]), 2),
            "p50_ms": float(r["50%"] or "nan"),
            "p95_ms": float(r["95%"] or "nan"),
            "p99_ms": float(r["99%"] or "nan"),
            "mean_ms": round(float(r["Average Response Time"] or "nan"), 1),
        }

    with path.open() as f:
        rows = list(csv.DictReader(f))
    out: dict[str, Any] = {"by_name": {}}
    for r in rows:
        if r["Name"] == "Aggregated":
            out.update(row_stats(r))
        else:
            out["by_name"][r["Name"]] = row_stats(r)
    return out


# ---- the run ------------------------------------------------------------------------------------
def index_catalog(address: str, per_label: int) -> dict[str, Any]:
    from visual_search.client import Client, IndexItem
    from visual_search.launcher import DEFAULT_MANIFEST, _sample_catalog

    catalog, _ = _sample_catalog(DEFAULT_MANIFEST, per_label, 0, 0)
    t0 = time.monotonic()
    with Client(address, timeout=300) as c:
        items = (IndexItem(i, p.read_bytes(), category=lbl, price=1.0 + len(i) % 9) for i, p, lbl in catalog)
        results = list(c.index(items))
    ok = sum(r.ok for r in results)
    return {"items": len(catalog), "indexed": ok, "seconds": round(time.monotonic() - t0, 1)}


def hardware() -> dict[str, Any]:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
         if ln.startswith("model name")),
        platform.processor(),
    )
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kb = next(int(ln.split()[1]) for ln in meminfo if ln.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "gpu": shutil.which("nvidia-smi") is not None}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from visual_search.launcher import Stack, StackOptions

    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(args.run_dir or REPO_ROOT / "run" / "load" / stamp).resolve()
    profiles = [p for p in args.profiles.split(",") if p]
    steps = [int(s) for s in args.steps.split(",") if s]
    load_start = os.getloadavg()[0]
    opts = StackOptions(run_dir / "stack", shards=args.shards, precision=args.precision)
    summary: dict[str, Any] = {
        "benchmark": "load",
        "arguments": {k: v for k, v in vars(args).items() if k != "func"},
        "hardware": hardware(),
        "load_average_1m_at_start": round(load_start, 2),
        "run_dir": str(run_dir),
        "notes": (
            "locust runs on the same 2 shared cores as the stack (loopback only); its own CPU use is "
            "in cpu_cores_used.locust. Locust rounds response times above 100 ms to 10 ms."
        ),
    }
    t0 = time.monotonic()
    with Stack(opts) as stack:
        summary["stack_start_s"] = round(time.monotonic() - t0, 1)
        summary["model_version"] = stack.model_version
        topts = stack.triton_options()
        summary["precision"] = {
            "requested": args.precision,
            "encoder": topts.precision,
            "detector": Path(topts.detector_path).name if topts.detector_path else topts.precision,
        }
        summary["catalog"] = index_catalog(stack.gateway.address, args.per_label)
        pids = {"triton": stack.triton.proc.pid, "gateway": stack.gateway.proc.pid}
        for i, sp in enumerate(stack.shards):
            pids[f"shard{i}"] = sp.proc.pid
        probe = Probe(stack.triton.grpc_url, stack.gateway.metrics_url, stack.shard_metrics_urls(), pids)
        host = stack.gateway.address

        def one(name: str, users: list[str], n: int, seconds: int) -> dict[str, Any]:
            before = probe.snapshot()
            stats, locust_cpu = run_locust(host, users, n, seconds, run_dir / name)
            bd = probe.breakdown(before, probe.snapshot(), locust_cpu)
            res = {"users": n, "duration_s": seconds, **stats, "breakdown": bd,
                   "bottleneck": name_bottleneck(bd)}
            print(f"== {name}: {n} users, {stats['req_per_s']} req/s, p50 {stats['p50_ms']} "
                  f"p95 {stats['p95_ms']} p99 {stats['p99_ms']} ms, {stats['failures']} failures\n"
                  f"   {res['bottleneck']}", flush=True)
            return res

        def step_mode(prefix: str) -> dict[str, Any]:
            results = [
                one(f"{prefix}step_search_u{n}", PROFILES["search"], n, args.step_duration) for n in steps
            ]
            ok = [r for r in results if r["p95_ms"] <= args.p95_ms and r["failures"] == 0]
            best = max(ok, key=lambda r: r["req_per_s"]) if ok else None
            out = {
                "p95_budget_ms": args.p95_ms,
                "steps": results,
                "max_sustained_qps": best["req_per_s"] if best else 0.0,
                "at_users": best["users"] if best else 0,
                "bottleneck_at_max": best["bottleneck"] if best else "",
            }
            print(f"== {prefix or 'current'}: sustained {out['max_sustained_qps']} queries/s with p95 <= "
                  f"{args.p95_ms} ms (at {out['at_users']} users)", flush=True)
            return out

        summary["profiles"] = {p: one(p, PROFILES[p], args.users, args.duration) for p in profiles}
        if steps:
            summary["step"] = step_mode("")
        if steps and args.baseline:
            from visual_search.bench.e2e import baseline_stack

            with baseline_stack(stack, run_dir / "baseline") as (btriton, bgw):
                probe = Probe(btriton.grpc_url, bgw.metrics_url, stack.shard_metrics_urls(),
                              {**pids, "triton": btriton.proc.pid, "gateway": bgw.proc.pid})
                host = bgw.address
                summary["step_baseline_before_issue13"] = {
                    "what": "same shards; Triton serving photo queries with the 640 detector and a "
                            "gateway making two Triton calls per default-box query",
                    **step_mode("baseline_"),
                }
    summary["total_s"] = round(time.monotonic() - t0, 1)
    summary["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    return summary


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profiles", default="search,ingest,mixed", help="comma list of search,ingest,mixed")
    p.add_argument("--users", type=int, default=4, help="locust users per profile run")
    p.add_argument("--duration", type=int, default=45, help="seconds per profile run")
    p.add_argument("--steps", default="1,2,4,8", help="search user counts for the step mode ('' = none)")
    p.add_argument("--step-duration", type=int, default=30, help="seconds per step")
    p.add_argument("--p95-ms", type=float, default=250.0, help="latency budget for 'sustained' (R3)")
    p.add_argument("--per-label", type=int, default=3, help="catalog photos indexed per product")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "int8"))
    p.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the step mode against the pre-issue-13 query path (640 detector, two calls)",
    )
    p.add_argument("--run-dir", default="", help="locust CSV/HTML + stack logs (default run/load/<time>)")
    p.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "load_cpu.json"))


def cmd(args: argparse.Namespace) -> int:
    summary = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("load", help="locust load test on the local stack (profiles + step mode)")
    add_args(p)
    p.set_defaults(func=cmd)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(p)
    return cmd(p.parse_args(argv))
