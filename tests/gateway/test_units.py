"""Unit tests: merge, hedging, re-rank, pHash, config, client filter parsing."""

from __future__ import annotations

import asyncio
import io
import time

import numpy as np
import pytest
from PIL import Image

from visual_search.client import InvalidArgument, parse_filters
from visual_search.gateway.config import ShardMap
from visual_search.gateway.hedging import AllAttemptsFailed, LatencyWindow, hedged
from visual_search.gateway.merge import Candidate, fuse_max, merge_topk
from visual_search.gateway.phash import hamming, phash
from visual_search.gateway.rerank import RerankParams, collapse_duplicates, rerank
from visual_search.v1 import shard_pb2


def hit(item: str, score: float, vec: np.ndarray | None = None, **md: object) -> shard_pb2.SearchHit:
    h = shard_pb2.SearchHit(item_id=item, score=score, metadata=shard_pb2.ItemMetadata(**md))  # type: ignore[arg-type]
    if vec is not None:
        h.vector_f16 = np.asarray(vec, np.float32).astype("<f2").tobytes()
    return h


def unit(seed: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


# ---- merge -------------------------------------------------------------------------------------
def test_merge_is_global_topk_with_deterministic_ties() -> None:
    s0 = [hit("a", 0.9), hit("c", 0.5)]
    s1 = [hit("b", 0.7), hit("d", 0.5)]
    out = merge_topk([(0, s0), (1, s1)], 3)
    assert [c.item_id for c in out] == ["a", "b", "c"]  # c and d tie: item id decides
    assert [c.shard_id for c in out] == [0, 1, 0]
    assert [c.item_id for c in merge_topk([(1, s1), (0, s0)], 3)] == ["a", "b", "c"]


def test_merge_keeps_best_hit_of_an_item_seen_twice() -> None:
    out = merge_topk([(0, [hit("a", 0.4)]), (1, [hit("a", 0.8), hit("b", 0.5)])], 10)
    assert [(c.item_id, c.score) for c in out] == [("a", pytest.approx(0.8)), ("b", pytest.approx(0.5))]


def _hit_at(item: str, score: float, entry_id: int, box: tuple[float, ...] = ()) -> shard_pb2.SearchHit:
    h = hit(item, score)
    h.entry_id = entry_id
    h.box.extend(box)
    return h


def test_fuse_max_keeps_each_items_best_query_and_its_hit() -> None:
    """The "max" query: per item the higher of its two scores wins, with that hit's entry and box;
    an item found by the second (whole-image) query only is kept."""
    box_q = [_hit_at("a", 0.9, 11, (1, 2, 3, 4)), _hit_at("b", 0.5, 21, (5, 6, 7, 8))]
    whole_q = [_hit_at("b", 0.8, 20), _hit_at("c", 0.6, 30), _hit_at("a", 0.7, 10)]
    fused = fuse_max([merge_topk([(0, box_q)], 10), merge_topk([(1, whole_q)], 10)])
    got = [(c.item_id, round(c.score, 6), c.entry_id, c.box, c.shard_id) for c in fused]
    assert got == [("a", 0.9, 11, (1.0, 2.0, 3.0, 4.0), 0), ("b", 0.8, 20, (), 1), ("c", 0.6, 30, (), 1)]
    assert all(c.rank_score == c.score for c in fused)  # re-rank starts from the fused score
    # ties: the first query's hit stays, and the order is deterministic
    first, second = Candidate.from_hit(_hit_at("x", 0.5, 1), 0), Candidate.from_hit(_hit_at("x", 0.5, 2), 1)
    tie = fuse_max([[first], [second]])
    assert [(c.item_id, c.entry_id) for c in tie] == [("x", 1)]


def test_fuse_max_of_per_query_topk_is_the_exact_topk_of_max() -> None:
    """Real vectors, brute force: fusing each query's top k (items scored by their best entry, as a
    shard returns them) gives exactly the top k of max(score vs q1, score vs q2)."""
    rng = np.random.default_rng(7)
    dim, n_items = 16, 300
    entries = {f"item{i:03d}": rng.standard_normal((int(rng.integers(1, 5)), dim)) for i in range(n_items)}
    entries = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in entries.items()}
    for trial in range(5):
        q1, q2 = unit(100 + trial, dim), unit(200 + trial, dim)

        def top(q: np.ndarray, k: int) -> list[shard_pb2.SearchHit]:
            best = {i: (float((e @ q).max()), int((e @ q).argmax())) for i, e in entries.items()}
            ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))[:k]
            return [_hit_at(i, s, j) for i, (s, j) in ranked]

        for k in (1, 10, 50):
            fused = fuse_max([merge_topk([(0, top(q1, k))], k), merge_topk([(0, top(q2, k))], k)])[:k]
            exact = sorted(
                ((i, max(float((e @ q1).max()), float((e @ q2).max()))) for i, e in entries.items()),
                key=lambda kv: (-kv[1], kv[0]),
            )[:k]
            assert [c.item_id for c in fused] == [i for i, _ in exact], (trial, k)
            np.testing.assert_allclose([c.score for c in fused], [s for _, s in exact], rtol=1e-6)
            if k == 50:  # both queries contribute: neither list alone is the answer
                only1 = {h.item_id for h in top(q1, k)}
                only2 = {h.item_id for h in top(q2, k)}
                assert {c.item_id for c in fused} - only1 and {c.item_id for c in fused} - only2


# ---- hedging -----------------------------------------------------------------------------------
def _attempt(delay: float, value: str, log: list[str], fail: BaseException | None = None):  # noqa: ANN202
    async def run() -> str:
        log.append(f"start {value}")
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            log.append(f"cancel {value}")
            raise
        if fail is not None:
            raise fail
        return value

    return run


def test_fast_primary_sends_no_hedge() -> None:
    log: list[str] = []
    out = asyncio.run(hedged([_attempt(0.001, "a", log), _attempt(0.001, "b", log)], delay=0.05))
    assert (out.value, out.hedges_sent, out.hedge_won) == ("a", 0, False)
    assert log == ["start a"]


def test_slow_primary_is_hedged_and_the_hedge_wins() -> None:
    log: list[str] = []
    t0 = time.monotonic()
    out = asyncio.run(hedged([_attempt(1.0, "slow", log), _attempt(0.01, "fast", log)], delay=0.02))
    assert (out.value, out.winner, out.hedges_sent, out.hedge_won) == ("fast", 1, 1, True)
    assert time.monotonic() - t0 < 0.5
    assert "cancel slow" in log  # the loser is cancelled


def test_failed_replica_fails_over_immediately_without_counting_a_hedge() -> None:
    log: list[str] = []
    t0 = time.monotonic()
    out = asyncio.run(
        hedged([_attempt(0.0, "a", log, RuntimeError("down")), _attempt(0.0, "b", log)], delay=10.0)
    )
    assert (out.value, out.hedges_sent, out.hedge_won) == ("b", 0, False)
    assert len(out.errors) == 1 and time.monotonic() - t0 < 1.0


def test_non_retryable_error_is_raised_at_once() -> None:
    log: list[str] = []
    with pytest.raises(ValueError, match="bad request"):
        asyncio.run(
            hedged(
                [_attempt(0.0, "a", log, ValueError("bad request")), _attempt(0.0, "b", log)],
                delay=10.0,
                retryable=lambda e: not isinstance(e, ValueError),
            )
        )
    assert log == ["start a"]


def test_all_replicas_failing_raises_with_every_error() -> None:
    log: list[str] = []
    with pytest.raises(AllAttemptsFailed) as ei:
        asyncio.run(
            hedged([_attempt(0, "a", log, RuntimeError("x")), _attempt(0, "b", log, RuntimeError("y"))], 1)
        )
    assert len(ei.value.errors) == 2


def test_hedge_delay_is_recent_p95_when_enough_samples() -> None:
    w = LatencyWindow(min_samples=20)
    assert w.hedge_delay(0.02, 0.005, 0.2) == 0.02  # default until samples exist
    for i in range(100):
        w.add(0.001 * (i + 1))  # 1..100 ms
    assert w.hedge_delay(0.02, 0.005, 0.2) == pytest.approx(0.096, abs=0.002)
    assert w.hedge_delay(0.02, 0.005, 0.05) == 0.05  # bounded
    assert w.hedge_delay(0.02, 0.005, 0.2, adaptive=False) == 0.02


def test_shard_budget_is_a_little_above_recent_p99_within_bounds() -> None:
    w = LatencyWindow(min_samples=20)
    assert w.budget(1.5, 0.1, 1.0) == 1.0  # the cap until samples exist
    for i in range(100):
        w.add(0.001 * (i + 1))  # 1..100 ms: p99 = 100 ms
    assert w.budget(1.5, 0.1, 1.0) == pytest.approx(0.15)
    assert w.budget(1.5, 0.2, 1.0) == 0.2  # floor
    assert w.budget(1.5, 0.1, 0.12) == 0.12  # cap


# ---- re-rank -----------------------------------------------------------------------------------
def cand(item: str, score: float, vec: np.ndarray | None = None, **md: object) -> Candidate:
    return Candidate.from_hit(hit(item, score, vec, **md), 0)


def test_business_boosts_reorder_near_ties_only() -> None:
    cs = [cand("a", 0.80), cand("b", 0.79, available=True, region="eu"), cand("c", 0.50, available=True)]
    out = rerank(
        cs, 3, RerankParams(boost_available=0.02, boost_region=0.02, user_region="eu", collapse=False)
    )
    assert [c.item_id for c in out] == ["b", "a", "c"]
    assert out[0].score == pytest.approx(0.79, abs=1e-6)  # exact score is kept
    assert out[0].rank_score == pytest.approx(0.83, abs=1e-6)
    plain = rerank([cand("a", 0.80), cand("b", 0.79, available=True)], 2, RerankParams(business=False))
    assert [c.item_id for c in plain] == ["a", "b"]


def test_near_duplicates_collapse_into_the_best() -> None:
    v = unit(1)
    w = v + 0.05 * unit(2)
    w /= np.linalg.norm(w)
    other = unit(3)
    assert float(v @ w) > 0.95 and abs(float(v @ other)) < 0.95
    out = collapse_duplicates([cand("a", 0.9, v), cand("a2", 0.89, w), cand("b", 0.5, other)], 0.95)
    assert [c.item_id for c in out] == ["a", "b"]
    assert out[0].duplicates == ["a2"]
    kept = rerank([cand("a", 0.9, v), cand("a2", 0.89, w)], 5, RerankParams(collapse=False))
    assert len(kept) == 2


def test_exact_copy_by_phash_comes_first() -> None:
    cs = [cand("best", 0.95, phash=0x0F0F), cand("copy", 0.90, phash=0xFFFF_0000_0000_0F0F), cand("far", 0.5)]
    q = 0xFFFF_0000_0000_0F0E  # one bit from "copy"
    out = rerank(cs, 3, RerankParams(query_phash=q, phash_max_distance=4))
    assert [c.item_id for c in out] == ["copy", "best", "far"]
    assert out[0].exact_match and not out[1].exact_match


def test_rerank_cuts_to_k() -> None:
    assert len(rerank([cand(str(i), 1 - i / 100) for i in range(50)], 7, RerankParams())) == 7


# ---- pHash -------------------------------------------------------------------------------------
def _photo(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 8, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((320, 240), Image.Resampling.BICUBIC))


def _jpeg_roundtrip(rgb: np.ndarray, quality: int, size: tuple[int, int] | None = None) -> np.ndarray:
    img = Image.fromarray(rgb)
    if size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def test_phash_is_stable_under_reencoding_and_resizing_and_separates_photos() -> None:
    a = _photo(1)
    h = phash(a)
    assert 0 < h < 2**64
    assert phash(a) == h
    assert hamming(h, phash(_jpeg_roundtrip(a, 60, (160, 120)))) <= 4
    assert hamming(h, phash(_photo(2))) > 12


def test_phash_of_a_real_photo_and_its_copy(tmp_path: object) -> None:
    from pathlib import Path

    bus = np.asarray(Image.open(Path(__file__).parents[1] / "data" / "bus.jpg").convert("RGB"))
    zidane = np.asarray(Image.open(Path(__file__).parents[1] / "data" / "zidane.jpg").convert("RGB"))
    assert hamming(phash(bus), phash(_jpeg_roundtrip(bus, 50, (405, 540)))) <= 4
    assert hamming(phash(bus), phash(zidane)) > 12


# ---- config / client ---------------------------------------------------------------------------
def test_shard_map_parses_spec_and_json(tmp_path: object) -> None:
    from pathlib import Path

    m = ShardMap.parse("127.0.0.1:1,127.0.0.1:2; h:3")
    assert m.shards == (("127.0.0.1:1", "127.0.0.1:2"), ("h:3",)) and m.num_shards == 2
    assert ShardMap.parse(m.to_spec()) == m
    p = Path(str(tmp_path)) / "shards.json"
    p.write_text('{"shards": [["a:1"], ["b:2", "c:3"]]}')
    assert ShardMap.parse(str(p)).shards == (("a:1",), ("b:2", "c:3"))
    for bad in ("", "nohostport", "a:1;;b:x"):
        with pytest.raises(ValueError):
            ShardMap.parse(bad)


def test_filter_parsing() -> None:
    f = parse_filters(["category=milk", "region=eu|us", "available=true", "price=1..5", "attr.brand=x"])
    c = f.clauses
    assert c[0].equals == "milk" and list(c[1].in_set.values) == ["eu", "us"]
    assert c[2].bool_equals is True and (c[3].range.min, c[3].range.max) == (1.0, 5.0)
    assert c[4].field == "attr.brand"
    assert not parse_filters(["price=..5"]).clauses[0].range.HasField("min")
    for bad in (["category"], ["price=cheap"], ["available=maybe"]):
        with pytest.raises(InvalidArgument):
            parse_filters(bad)


def _rpc_error(code: object, details: str) -> object:
    import grpc

    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)  # type: ignore[arg-type]


def test_get_surfaces_a_shard_refusal_as_shard_call_error() -> None:
    """A non-retryable shard answer to Get (e.g. INVALID_ARGUMENT) keeps its code, like Search."""
    import grpc

    from visual_search.gateway.config import GatewayConfig
    from visual_search.gateway.fanout import ShardCallError, ShardFanout
    from visual_search.gateway.metrics import GatewayMetrics

    class RefusingStub:
        async def Get(self, req: object, timeout: float) -> object:
            raise _rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad item id")

    async def go() -> None:
        fan = ShardFanout(GatewayConfig(shard_map=ShardMap.parse("127.0.0.1:1")), GatewayMetrics())
        fan.shards[0].stubs = [RefusingStub()]  # type: ignore[list-item]
        try:
            with pytest.raises(ShardCallError) as ei:
                await fan.get("item-1", time.monotonic() + 1.0)
            assert ei.value.code == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            await fan.close()

    asyncio.run(go())


def test_api_method_does_not_count_an_unexpected_error_as_ok() -> None:
    from visual_search.gateway.metrics import GatewayMetrics
    from visual_search.gateway.service import api_method

    class Svc:
        metrics = GatewayMetrics()

        @api_method("Boom")
        async def Boom(self, request: object, context: object) -> None:
            raise RuntimeError("a bug")

    svc = Svc()
    with pytest.raises(RuntimeError):
        asyncio.run(svc.Boom(None, None))  # type: ignore[arg-type]
    reg = svc.metrics.registry
    ok = reg.get_sample_value("vsearch_gateway_requests_total", {"method": "Boom", "code": "OK"})
    unknown = reg.get_sample_value("vsearch_gateway_requests_total", {"method": "Boom", "code": "UNKNOWN"})
    assert not ok and unknown == 1.0


def test_cancelled_search_cancels_its_shard_calls() -> None:
    """A caller that goes away (the handler is cancelled) must not leave shard calls running."""
    from visual_search.gateway.config import GatewayConfig
    from visual_search.gateway.fanout import ShardFanout
    from visual_search.gateway.metrics import GatewayMetrics

    cancelled: list[bool] = []

    class SlowStub:
        async def Search(self, req: object, timeout: float) -> object:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
            raise AssertionError("not cancelled")

    async def go() -> None:
        cfg = GatewayConfig(shard_map=ShardMap.parse("127.0.0.1:1;127.0.0.1:2"), hedge_adaptive=False)
        fan = ShardFanout(cfg, GatewayMetrics())
        for rs in fan.shards:
            rs.stubs = [SlowStub()]  # type: ignore[list-item]
        try:
            call = asyncio.ensure_future(fan.search(shard_pb2.SearchRequest(k=1), time.monotonic() + 30))
            await asyncio.sleep(0.05)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await asyncio.sleep(0.05)
            assert cancelled == [True, True]
        finally:
            await fan.close()

    asyncio.run(go())


def test_shard_map_of_long_cluster_dns_names_is_a_map_not_a_file() -> None:
    """Real StatefulSet DNS names make the spec longer than a file name may be (ENAMETOOLONG)."""
    from visual_search.gateway.config import ShardMap

    spec = ";".join(
        ",".join(f"vs-visual-search-shard-{i}-{r}.vs-visual-search-shard-{i}.search.svc.cluster.local:50061"
                 for r in range(2))
        for i in range(2)
    )
    assert len(spec) > 255 and ShardMap.parse(spec).num_shards == 2
