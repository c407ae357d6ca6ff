"""The light client package (clients/python, `vsearch-client`) installs into a clean virtual
environment on its own, without the serving stack, and talks to a real gateway over real shards.

The wheel is built with this interpreter's setuptools (seconds) and installed into a bare venv
(`python -m venv --without-pip`, no system site-packages) with this pip's `--python`; pip takes
grpcio and protobuf from the configured index. Everything in the venv runs with `-I` and without
PYTHONPATH, so nothing of this checkout leaks in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.conftest import MODEL, Cluster, cluster  # noqa: F401  (the `cluster` fixture)
from visual_search.gateway.process import GatewayProcess

REPO = Path(__file__).resolve().parents[2]
CLIENT_SRC = REPO / "clients" / "python"
SERVING_ONLY = ("faiss", "onnxruntime", "tritonclient", "numpy", "PIL", "visual_search")

# Runs inside the clean venv: argv[1] = JSON {address, model, vector, item}; prints JSON results.
PROBE = r"""
import asyncio, importlib, json, sys
args = json.loads(sys.argv[1])
importable = []
for name in args["serving_only"]:
    try:
        importlib.import_module(name)
        importable.append(name)
    except ImportError:
        pass
import vsearch_client
from vsearch_client import AsyncClient, Client, NotFound
from vsearch_client.v1 import search_pb2
plain = search_pb2.SearchOptions(no_business_rerank=True)
out = {"importable": importable, "client_file": vsearch_client.__file__}
with Client(args["address"], timeout=10, retries=0) as c:
    out["vector"] = [h.item_id for h in c.search(
        vector=args["vector"], model_version=args["model"], k=10, options=plain).hits]
    out["item"] = [h.item_id for h in c.search(item_id=args["item"], k=5, options=plain).hits]
    try:
        c.search(item_id="no-such-item", k=5)
    except NotFound as e:
        out["not_found"] = e.message

async def run_async():
    async with AsyncClient(args["address"], timeout=10, retries=0) as c:
        res = await c.search(item_id=args["item"], k=5, options=plain)
        return [h.item_id for h in res.hits]
out["async_item"] = asyncio.run(run_async())
print(json.dumps(out))
"""


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def _run_in(venv: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run a program of the client venv (`python`, `vsearch-client`) with a clean environment."""
    return subprocess.run(
        [str(venv / "bin" / argv[0]), *argv[1:]], capture_output=True, text=True, env=_clean_env(), timeout=60
    )


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare venv with only vsearch-client (and what pip resolves for it) installed."""
    if not (CLIENT_SRC / "vsearch_client" / "v1" / "search_pb2.py").exists():
        pytest.fail("client stubs missing: run scripts/gen_proto.sh (install.sh does)")
    root = tmp_path_factory.mktemp("client-venv")
    src = root / "src"
    shutil.copytree(CLIENT_SRC, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    run = dict(check=True, capture_output=True, text=True, env=_clean_env(), timeout=240)
    wheels = root / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, src],
        **run,  # type: ignore[arg-type]
    )
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], **run)  # type: ignore[arg-type]
    py = venv / "bin" / "python"
    (wheel,) = wheels.glob("vsearch_client-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "--python", py, "install", "-q", wheel], **run)  # type: ignore[arg-type]
    return venv


@pytest.fixture(scope="module")
def gateway(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:  # noqa: F811
    log = tmp_path_factory.mktemp("gw") / "gateway.log"
    with GatewayProcess(cluster.spec(), model_version=MODEL, log_path=log) as gw:
        yield gw


def test_client_package_installs_alone_and_searches_a_real_gateway(
    client_venv: Path, gateway: GatewayProcess, cluster: Cluster  # noqa: F811
) -> None:
    item = "item0042"
    q = cluster.vectors["item0007"]
    args = {
        "address": gateway.address,
        "model": MODEL,
        "vector": [float(x) for x in q],
        "item": item,
        "serving_only": list(SERVING_ONLY),
    }
    proc = _run_in(client_venv, "python", "-I", "-c", PROBE, json.dumps(args))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["importable"] == [], f"the client venv can import serving packages: {out['importable']}"
    assert Path(out["client_file"]).is_relative_to(client_venv)
    assert out["vector"] == cluster.exact_top(q, 10)
    expected_item = cluster.exact_top(cluster.vectors[item], 5, exclude=item)
    assert out["item"] == expected_item
    assert out["async_item"] == expected_item
    assert "no-such-item" in out["not_found"]

    # The console script: same query from the command line, JSON output.
    cli = _run_in(client_venv, "vsearch-client", "search", "--item", item, "-k", "5", "--json",
                  "--gateway", gateway.address)
    assert cli.returncode == 0, cli.stderr
    hits = json.loads(cli.stdout)["lists"][0]["hits"]
    assert len(hits) == 5 and item not in {h["item_id"] for h in hits}
    missing = _run_in(client_venv, "vsearch-client", "search", "--item", "no-such-item",
                      "--gateway", gateway.address)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr and "Traceback" not in missing.stderr
