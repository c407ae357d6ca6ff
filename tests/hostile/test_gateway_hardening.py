"""Gateway hardening (issue 12 items 3 and 10): the admin port needs a token (or an explicit,
logged insecure flag on loopback) and every Switch/Rollback is logged; filters are size-bounded;
the Bearer scheme is case-insensitive; failed shard / Triton calls leave one structured log line
each, without query content."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.hostile.conftest import API_TOKEN, BUS, auth, still_serving
from visual_search import contract as C
from visual_search.gateway.admin import AdminClient
from visual_search.gateway.process import GatewayProcess
from visual_search.launcher import Stack
from visual_search.shard import auth as shard_auth
from visual_search.supervise import free_port
from visual_search.v1 import search_pb2, search_pb2_grpc, shard_pb2, shard_pb2_grpc

ADMIN_TOKEN = "hostile-admin-token"


def _env_without_admin_token() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "VSEARCH_ADMIN_TOKEN"}


def _gateway_cmd(stack: Stack, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "visual_search.cli", "gateway", "--shards", stack.shard_spec(),
        "--model-version", stack.model_version, "--port", str(free_port()), *extra,
    ]  # fmt: skip


def test_admin_port_without_a_token_refuses_to_start(stack: Stack) -> None:
    r = subprocess.run(
        _gateway_cmd(stack, "--admin-port", str(free_port())),
        env=_env_without_admin_token(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2 and "refusing to start" in r.stdout and "--admin-token" in r.stdout
    r = subprocess.run(
        _gateway_cmd(stack, "--admin-port", str(free_port()), "--insecure-admin", "--admin-host", "0.0.0.0"),
        env=_env_without_admin_token(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2 and "only allowed on a loopback" in r.stdout


def test_insecure_admin_on_loopback_starts_and_warns(stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    gw = GatewayProcess(
        stack.shard_spec(), model_version=stack.model_version, log_path=tmp_path / "gw.log",
        extra_args=["--admin-port", str(port), "--insecure-admin"], env={"VSEARCH_ADMIN_TOKEN": ""},
    )  # fmt: skip
    with gw, AdminClient(f"127.0.0.1:{port}", token=None, timeout=10) as adm:
        assert adm.generations().current.model_version == stack.model_version
    lines = [json.loads(x) for x in gw.log_text().splitlines() if x.startswith("{")]
    assert any(x["level"] == "warning" and "INSECURE" in x["msg"] for x in lines)


def test_switch_and_rollback_are_logged_without_secrets(stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    gw = GatewayProcess(
        stack.shard_spec(), model_version=stack.model_version, log_path=tmp_path / "gw.log",
        extra_args=["--admin-port", str(port)], env={"VSEARCH_ADMIN_TOKEN": ADMIN_TOKEN},
    )  # fmt: skip
    with gw:
        with AdminClient(f"127.0.0.1:{port}", token="wrong-token", timeout=10) as adm:
            with pytest.raises(grpc.RpcError) as e:
                adm.rollback()
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with AdminClient(f"127.0.0.1:{port}", token=ADMIN_TOKEN, timeout=30) as adm:
            with pytest.raises(grpc.RpcError) as e:
                adm.rollback()  # nothing to roll back to
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            with pytest.raises(grpc.RpcError) as e:
                adm.switch("127.0.0.1:1")  # one shard, the live map has two
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    text = gw.log_text()
    lines = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
    refused = [x for x in lines if x["msg"] == "admin call refused"]
    assert refused and refused[0]["method"].endswith("/Rollback") and refused[0]["peer"]
    audit = {x["admin_call"]: x for x in lines if "admin_call" in x}
    assert audit["Rollback"]["outcome"] == "FAILED_PRECONDITION" and audit["Rollback"]["peer"]
    assert audit["Switch"]["outcome"] == "INVALID_ARGUMENT" and audit["Switch"]["shards"] == "127.0.0.1:1"
    assert ADMIN_TOKEN not in text and "wrong-token" not in text


def _vector_query(filter_value: str) -> search_pb2.QueryRequest:
    v = np.zeros(C.EMBEDDING_DIM, np.float32)
    v[0] = 1.0
    flt = shard_pb2.Filter(clauses=[shard_pb2.FilterClause(field="category", equals=filter_value)])
    return search_pb2.QueryRequest(
        k=3, filter=flt, vector=search_pb2.VectorQuery(vector_f16=v.astype("<f2").tobytes())
    )


def test_huge_filter_is_refused_before_fan_out(
    stack: Stack, gateway: search_pb2_grpc.VisualSearchStub
) -> None:
    q = _vector_query("x" * (C.MAX_FILTER_BYTES + 1))
    q.vector.model_version = stack.model_version
    with pytest.raises(grpc.RpcError) as e:
        gateway.Search(q, metadata=auth(), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "filter is" in e.value.details()
    assert str(C.MAX_FILTER_BYTES) in e.value.details()
    # the shards enforce the same limit for direct (authenticated) callers
    sq = shard_pb2.SearchRequest(
        queries=[shard_pb2.QueryVector(vector_f16=q.vector.vector_f16)], k=3, filter=q.filter,
        model_version=stack.model_version,
    )  # fmt: skip
    with shard_auth.channel(stack.shards[0].address) as ch, pytest.raises(grpc.RpcError) as e:
        shard_pb2_grpc.SearchShardStub(ch).Search(sq, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "filter is" in e.value.details()
    ok = _vector_query("street")
    ok.vector.model_version = stack.model_version
    assert gateway.Search(ok, metadata=auth(), timeout=30).results
    still_serving(gateway)


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (f"Bearer {API_TOKEN}", grpc.StatusCode.OK),
        (f"bearer {API_TOKEN}", grpc.StatusCode.OK),
        (f"BEARER {API_TOKEN}", grpc.StatusCode.OK),
        (f"Basic {API_TOKEN}", grpc.StatusCode.UNAUTHENTICATED),
        (f"Bearer {API_TOKEN}x", grpc.StatusCode.UNAUTHENTICATED),
        (API_TOKEN, grpc.StatusCode.UNAUTHENTICATED),
    ],
)
def test_bearer_scheme_is_case_insensitive(
    gateway: search_pb2_grpc.VisualSearchStub, header: str, code: grpc.StatusCode
) -> None:
    q = search_pb2.QueryRequest(k=2, item_id="bus")
    try:
        gateway.Search(q, metadata=[("authorization", header)], timeout=30)
        got = grpc.StatusCode.OK
    except grpc.RpcError as e:
        got = e.code()
        assert API_TOKEN not in (e.details() or "")
    assert got == code


def test_failed_shard_and_triton_calls_are_logged_without_query_content(stack: Stack, tmp_path: Path) -> None:
    """A gateway whose second shard and Triton are down: one JSON line per failed call."""
    dead = f"127.0.0.1:{free_port()}"
    gw = GatewayProcess(
        f"{stack.shards[0].address};{dead}", model_version=stack.model_version, triton_url=dead,
        log_path=tmp_path / "gw.log",
    )  # fmt: skip
    secret = "category-value-that-must-not-be-logged"
    with gw, grpc.insecure_channel(gw.address) as ch:
        stub = search_pb2_grpc.VisualSearchStub(ch)
        q = _vector_query(secret)
        q.vector.model_version = stack.model_version
        resp = stub.Search(q, timeout=30)
        assert resp.partial and list(resp.missing_shards) == [1]
        with pytest.raises(grpc.RpcError) as e:
            stub.Search(search_pb2.QueryRequest(k=2, image=search_pb2.ImageQuery(image=BUS)), timeout=30)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    text = gw.log_text()
    lines = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
    shard_fail = [x for x in lines if x.get("event") == "shard_call_failed"]
    assert shard_fail and shard_fail[0]["shard"] == 1 and shard_fail[0]["replica"] == dead
    assert shard_fail[0]["method"] == "Search" and shard_fail[0]["code"] in (
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
    )
    triton_fail = [x for x in lines if x.get("event") == "triton_call_failed"]
    assert triton_fail and triton_fail[0]["model"]
    assert secret not in text
