"""`vsearch bench triton-grid` and the generator's tuning options: each grid point generates the
config it names, the baseline is the committed config, and the summary only calls a point better
at an equal-or-better p95. One short real-server run checks the measurement path end to end."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from tests.triton.conftest import model_paths
from visual_search.bench import triton_grid as G
from visual_search.cli import main as vsearch
from visual_search.triton import names as N
from visual_search.triton.repository import BATCHING, PYTHON_INSTANCES, Options, build_configs, render
from visual_search.triton.server import DEFAULT_TRITON_HOME

ONNX_MODELS = (N.DETECTOR, N.DETECTOR_QUERY, N.ENCODER)


def test_overrides_reach_every_onnx_model_and_nothing_else() -> None:
    c = build_configs(Options(ort_threads=2, onnx_instances=1, max_queue_delay_us=10000))
    for name in ONNX_MODELS:
        assert [g.count for g in c[name].instance_group] == [1]
        assert c[name].parameters["intra_op_threads"].string_value == "2"
        assert c[name].dynamic_batching.max_queue_delay_microseconds == 10000
    for name in (N.PREPROCESS_QUERY, N.POSTPROCESS, N.CROP):
        assert [g.count for g in c[name].instance_group] == [PYTHON_INSTANCES]
    py1 = build_configs(Options(python_instances=1))
    for name in (N.PREPROCESS, N.PREPROCESS_QUERY, N.POSTPROCESS, N.CROP, N.SPLIT):
        assert [g.count for g in py1[name].instance_group] == [1]
    assert py1[N.ENCODER].instance_group[0].count == BATCHING[("cpu", N.ENCODER)].instances
    off = build_configs(Options(batching=False, max_queue_delay_us=10000))
    assert not off[N.ENCODER].HasField("dynamic_batching")


def test_zero_delay_is_written_and_bad_tuning_is_refused() -> None:
    c = build_configs(Options(max_queue_delay_us=0))
    assert c[N.DETECTOR_QUERY].HasField("dynamic_batching")
    assert c[N.DETECTOR_QUERY].dynamic_batching.max_queue_delay_microseconds == 0
    bad_options = (
        Options(ort_threads=0), Options(onnx_instances=0), Options(max_queue_delay_us=-1),
        Options(python_instances=0),
    )  # fmt: skip
    for bad in bad_options:
        with pytest.raises(ValueError, match="bad tuning"):
            build_configs(bad)


def test_baseline_point_is_the_committed_config() -> None:
    committed = {k: render(v) for k, v in build_configs(Options()).items()}
    baseline = {k: render(v) for k, v in build_configs(G.POINTS[G.BASELINE].options("fp32")).items()}
    assert baseline == committed
    assert G.GRID[0].name == G.BASELINE and len(G.POINTS) == len(G.GRID)


@pytest.mark.parametrize("point", G.GRID, ids=lambda p: p.name)
def test_each_point_generates_what_it_reports(point: G.Point) -> None:
    eff = point.effective()
    c = build_configs(point.options("fp32"))
    for name in (N.DETECTOR_QUERY, N.ENCODER):
        cfg = c[name]
        assert cfg.instance_group[0].count == eff["onnx_instances"]
        assert cfg.parameters["intra_op_threads"].string_value == str(eff["ort_threads"])
        assert cfg.HasField("dynamic_batching") == eff["dynamic_batching"]
        if eff["dynamic_batching"]:
            assert cfg.dynamic_batching.max_queue_delay_microseconds == eff["max_queue_delay_us"]
    assert c[N.PREPROCESS_QUERY].instance_group[0].count == eff["python_instances"]


def test_generate_flags(tmp_path: Path) -> None:
    rc = vsearch(
        ["triton", "generate", "--configs-only", "--out", str(tmp_path), "--onnx-instances", "1",
         "--ort-threads", "2", "--max-queue-delay-us", "0"]
    )  # fmt: skip
    assert rc == 0
    text = (tmp_path / N.ENCODER / "config.pbtxt").read_text()
    assert "count: 1\n" in text and 'string_value: "2"' in text
    # proto3 omits a zero delay: batching stays on, with Triton's default delay of 0
    assert "dynamic_batching {" in text and "max_queue_delay_microseconds" not in text
    with pytest.raises(SystemExit):
        vsearch(["triton", "generate", "--configs-only", "--out", str(tmp_path), "--ort-threads", "0"])


def _row(point: str, ips: float, p95: float, run: str | None = None) -> dict[str, Any]:
    return {"point": point, "run": run or point, "model": "embed", "concurrency": 8,
            "images_per_s": ips, "p95_ms": p95}  # fmt: skip


def test_summary_wants_equal_or_better_p95() -> None:
    rows = [
        _row(G.BASELINE, 20.0, 100.0),
        _row(G.BASELINE, 22.0, 110.0, run="current#2"),  # baseline: 21/s, p95 105 ms
        _row("fast-but-slow-tail", 40.0, 200.0),
        _row("a-bit-better", 23.0, 108.0),  # within the 5 % p95 tolerance
        _row("clearly", 25.0, 90.0),
    ]
    s = G.summarize(rows, [G.BASELINE, "fast-but-slow-tail", "a-bit-better", "clearly"])["embed_c8"]
    assert s["baseline_images_per_s"] == 21.0 and s["baseline_p95_ms"] == 105.0
    assert s["baseline_drift"] == 0.1
    assert s["fastest"] == "fast-but-slow-tail"
    assert s["best_at_equal_or_better_p95"] == "clearly"
    assert s["best_vs_current"] == round(25 / 21, 3) and s["clearly_better"] is True
    rows.pop()
    s = G.summarize(rows, [G.BASELINE, "fast-but-slow-tail", "a-bit-better"])["embed_c8"]
    assert s["best_at_equal_or_better_p95"] == "a-bit-better" and s["clearly_better"] is False
    noisy = [_row(G.BASELINE, 20.0, 100.0), _row(G.BASELINE, 28.0, 100.0), _row("x", 30.0, 90.0)]
    s = G.summarize(noisy, [G.BASELINE, "x"])["embed_c8"]  # 1.25x, inside a 40 % baseline spread
    assert s["best_vs_current"] == 1.25 and s["clearly_better"] is False


@pytest.mark.integration  # starts a tritonserver (through G.run)
def test_short_real_run(tmp_path: Path) -> None:
    if not (DEFAULT_TRITON_HOME / "bin" / "tritonserver").exists():
        pytest.skip("tritonserver not installed: run scripts/install_triton.sh")
    if not all(p.exists() for p in model_paths()):
        pytest.skip("models not exported yet")
    args = argparse.Namespace(
        points=[], models=[N.EMBED], concurrency=[2], precision="fp32", seconds=0.5, images=4,
        base_port=0, baseline_runs=1, out=tmp_path / "grid.json",
    )  # fmt: skip
    report = G.run(args)
    (row,) = [r for r in report["results"] if "images_per_s" in r]
    assert row["requests"] > 0 and row["errors"] == 0 and row["p95_ms"] >= row["p50_ms"]
    assert row["server_cpu_s"] > 0  # the server's process group was found and charged
    (stats,) = [r for r in report["results"] if "executions_by_batch_size" in r]
    assert sum(stats["executions_by_batch_size"][N.ENCODER].values()) >= row["requests"] // 64
    assert report["summary"]["embed_c2"]["points"][G.BASELINE]["ratio"] == 1.0


def test_schedule_spreads_the_baseline_runs() -> None:
    labels = [label for _, label in G.make_schedule(["a", "b", "c", "d"], 3)]
    assert labels == ["current", "a", "b", "current#2", "c", "d", "current#3"]
    assert [p for p, _ in G.make_schedule(["a"], 1)] == ["current", "a"]
    assert [p for p, _ in G.make_schedule([], 2)] == ["current", "current"]
