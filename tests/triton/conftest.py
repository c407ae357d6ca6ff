"""One real tritonserver for the Triton tests (started once, ~2 s), on the real exported models.

Models: artifacts/models/{detector,encoder}_fp32.onnx, or VS_TRITON_DETECTOR / VS_TRITON_ENCODER.
Tests that need the server are skipped (with the reason) where the server or models are absent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from visual_search import contract as C
from visual_search.triton.client import TritonClient
from visual_search.triton.repository import Options
from visual_search.triton.server import DEFAULT_TRITON_HOME, TritonServer

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
SHARED_DATA = ROOT.parent / "shared" / "data"


def model_paths() -> tuple[Path, Path]:
    art = ROOT / C.ARTIFACTS_DIR
    det = Path(os.environ.get("VS_TRITON_DETECTOR", art / "detector_fp32.onnx"))
    enc = Path(os.environ.get("VS_TRITON_ENCODER", art / "encoder_fp32.onnx"))
    return det, enc


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    if not (DEFAULT_TRITON_HOME / "bin" / "tritonserver").exists():
        pytest.skip("tritonserver not installed: run scripts/install_triton.sh")
    det, enc = model_paths()
    for p in (det, enc):
        if not p.exists():
            pytest.skip(f"model {p} not exported yet")
    opts = Options(detector_path=det, encoder_path=enc)
    server = TritonServer(options=opts, run_dir=tmp_path_factory.mktemp("triton"))
    with server:
        yield server


@pytest.fixture(scope="session")
def client(triton_server: TritonServer) -> Iterator[TritonClient]:
    with TritonClient(triton_server.grpc_url) as c:
        yield c


@pytest.fixture(scope="session")
def bus() -> bytes:
    return (DATA / "bus.jpg").read_bytes()


@pytest.fixture(scope="session")
def zidane() -> bytes:
    return (DATA / "zidane.jpg").read_bytes()
