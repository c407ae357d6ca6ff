"""One real stack (Triton + 1 shard + gateway on loopback) with a few real catalog photos indexed,
shared by the load and metrics-contract tests; skipped where Triton or the models are absent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from visual_search import contract as C
from visual_search.launcher import DEFAULT_MANIFEST, Stack, StackOptions
from visual_search.triton.server import DEFAULT_TRITON_HOME

ROOT = Path(__file__).resolve().parents[2]


def missing() -> str | None:
    if not (DEFAULT_TRITON_HOME / "bin" / "tritonserver").exists():
        return "tritonserver not installed (scripts/install_triton.sh)"
    if not (ROOT / C.ARTIFACTS_DIR / "encoder_fp32.onnx").exists():
        return "models not exported"
    if not DEFAULT_MANIFEST.exists():
        return f"{DEFAULT_MANIFEST} missing"
    return None


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if (why := missing()) is not None:
        pytest.skip(why)
    from visual_search.bench.load import index_catalog

    with Stack(StackOptions(tmp_path_factory.mktemp("load-stack"), shards=1)) as s:
        res = index_catalog(s.gateway.address, per_label=1)
        assert res["indexed"] == res["items"] > 0, res
        yield s
