"""Shard-internal authentication (issue 12 item 2): a shard port reached directly, bypassing the
gateway, refuses every SearchShard call without the shard token - writes, reads and the replication
calls - with UNAUTHENTICATED, and nothing changes; with the token (scheme in any case) it works.
A shard will not start without a token unless told --insecure-no-auth on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.hostile.conftest import SEEDED, auth, still_serving
from visual_search import contract, ids
from visual_search.launcher import Stack
from visual_search.shard import auth as shard_auth
from visual_search.shard.process import ShardProcess
from visual_search.supervise import free_port
from visual_search.v1 import search_pb2_grpc, shard_pb2, shard_pb2_grpc


def _owner(stack: Stack, item_id: str) -> str:
    return stack.shards[ids.shard_for(item_id, stack.opts.shards)].address


def _calls(stub: shard_pb2_grpc.SearchShardStub, model: str) -> dict[str, Callable[..., Any]]:
    vec = b"\x00\x3c" + b"\x00\x00" * (contract.EMBEDDING_DIM - 1)  # float16 [1, 0, 0, ...]
    item = shard_pb2.Item(
        item_id="intruder", entries=[shard_pb2.Entry(entry_id=ids.entry_id("intruder", 0), vector_f16=vec)]
    )
    return {
        "Delete": lambda md: stub.Delete(
            shard_pb2.DeleteRequest(item_ids=list(SEEDED)), metadata=md, timeout=10
        ),
        "Upsert": lambda md: stub.Upsert(
            shard_pb2.UpsertRequest(items=[item], model_version=model), metadata=md, timeout=10
        ),
        "UpdateMetadata": lambda md: stub.UpdateMetadata(
            shard_pb2.UpdateMetadataRequest(
                patches=[shard_pb2.MetadataPatch(item_id="bus", category="hacked")]
            ),
            metadata=md,
            timeout=10,
        ),
        "Search": lambda md: stub.Search(
            shard_pb2.SearchRequest(
                queries=[shard_pb2.QueryVector(vector_f16=vec)], k=3, model_version=model
            ),
            metadata=md,
            timeout=10,
        ),
        "Get": lambda md: stub.Get(shard_pb2.GetRequest(item_ids=list(SEEDED)), metadata=md, timeout=10),
        "Stats": lambda md: stub.Stats(shard_pb2.StatsRequest(), metadata=md, timeout=10),
        "Rebuild": lambda md: stub.Rebuild(shard_pb2.RebuildRequest(), metadata=md, timeout=10),
        "Snapshot": lambda md: stub.Snapshot(shard_pb2.SnapshotRequest(), metadata=md, timeout=10),
        "ReplicaStatus": lambda md: stub.ReplicaStatus(
            shard_pb2.ReplicaStatusRequest(), metadata=md, timeout=10
        ),
        "Sync": lambda md: list(stub.Sync(shard_pb2.SyncRequest(), metadata=md, timeout=10)),
        "Repair": lambda md: stub.Repair(shard_pb2.RepairRequest(), metadata=md, timeout=10),
        "UpsertStream": lambda md: stub.UpsertStream(
            iter([shard_pb2.UpsertRequest(items=[item], model_version=model)]), metadata=md, timeout=10
        ),
    }


BAD_CREDENTIALS = {
    "none": [],
    "wrong token": [("authorization", "Bearer not-the-shard-token")],
    "public API token": auth(),  # the gateway's token is not the shards'
    "basic scheme": [("authorization", "Basic c2hhcmQ6dG9rZW4=")],
}


@pytest.mark.parametrize("who", sorted(BAD_CREDENTIALS))
def test_direct_shard_calls_without_the_token_are_refused(
    stack: Stack, gateway: search_pb2_grpc.VisualSearchStub, who: str
) -> None:
    addr = _owner(stack, "bus")
    with grpc.insecure_channel(addr) as ch:
        calls = _calls(shard_pb2_grpc.SearchShardStub(ch), stack.model_version)
        for name, call in calls.items():
            with pytest.raises(grpc.RpcError) as e:
                call(BAD_CREDENTIALS[who])
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
            assert e.value.details().startswith("shard: "), (name, e.value.details())
        # health stays open for probes
        st = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert st.status == health_pb2.HealthCheckResponse.SERVING
    # nothing was deleted, patched or added
    with shard_auth.channel(addr) as ch:
        got = shard_pb2_grpc.SearchShardStub(ch).Get(
            shard_pb2.GetRequest(item_ids=["bus", "intruder"]), timeout=10
        )
    assert [i.item_id for i in got.items] == ["bus"] and got.items[0].metadata.category == "street"
    still_serving(gateway)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_with_the_token_the_shard_answers(stack: Stack, scheme: str) -> None:
    token = shard_auth.load_token()
    assert token
    addr = _owner(stack, "bus")
    with grpc.insecure_channel(addr) as ch:
        calls = _calls(shard_pb2_grpc.SearchShardStub(ch), stack.model_version)
        md = [("authorization", f"{scheme} {token}")]
        assert calls["Stats"](md).model_version == stack.model_version
        assert "bus" in [i.item_id for i in calls["Get"](md).items]
        assert calls["Search"](md).results


def _shard_cmd(tmp: Path, port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "visual_search.cli",
        "shard",
        "--data-dir",
        str(tmp / f"d{port}"),
        "--port",
        str(port),
        "--shard-id",
        "0",
        "--model-version",
        "m",
        *extra,
    ]


def _env_without_token() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in (shard_auth.TOKEN_ENV, shard_auth.TOKEN_FILE_ENV)}


def test_shard_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    r = subprocess.run(
        _shard_cmd(tmp_path, free_port()),
        env=_env_without_token(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "refusing to start" in r.stderr and "no shard token" in r.stderr
    # --insecure-no-auth is only for a loopback bind
    r = subprocess.run(
        _shard_cmd(tmp_path, free_port(), "--insecure-no-auth", "--host", "0.0.0.0"),
        env=_env_without_token(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "only allowed on a loopback" in r.stderr
    # an empty token file is refused too
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    r = subprocess.run(
        _shard_cmd(tmp_path, free_port(), "--token-file", str(empty)),
        env=_env_without_token(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "is empty" in r.stderr


def test_insecure_shard_on_loopback_starts_and_says_so(tmp_path: Path) -> None:
    shard = ShardProcess(tmp_path / "insecure", extra_args=["--insecure-no-auth"])
    saved = os.environ.pop(shard_auth.TOKEN_ENV, None)
    try:
        shard.start()
        with grpc.insecure_channel(shard.address) as ch:
            assert (
                shard_pb2_grpc.SearchShardStub(ch).Stats(shard_pb2.StatsRequest(), timeout=10).model_version
            )
    finally:
        shard.stop()
        if saved is not None:
            os.environ[shard_auth.TOKEN_ENV] = saved
    assert '"level": "warning"' in shard.log_text() and "INSECURE" in shard.log_text()


def test_token_file_is_used(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("file-token-123\n")
    path.chmod(0o600)
    shard = ShardProcess(tmp_path / "filetok", extra_args=["--token-file", str(path)])
    shard.token = "file-token-123"
    with shard:
        assert shard.stub().Stats(shard_pb2.StatsRequest(), timeout=10).model_version
        with grpc.insecure_channel(shard.address) as ch, pytest.raises(grpc.RpcError) as e:
            shard_pb2_grpc.SearchShardStub(ch).Stats(
                shard_pb2.StatsRequest(), metadata=[("authorization", f"Bearer {shard_auth.load_token()}")]
            )
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
