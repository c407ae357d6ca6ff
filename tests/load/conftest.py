"""One real stack (Triton + 1 shard + gateway on loopback) with a few real catalog photos indexed,
shared by the load and metrics-contract tests; skipped where Triton or the models are absent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from visual_search.launcher import Stack, StackOptions, stack_missing

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if (why := stack_missing()) is not None:
        pytest.skip(why)
    from visual_search.bench.load import index_catalog

    with Stack(StackOptions(tmp_path_factory.mktemp("load-stack"), shards=1)) as s:
        res = index_catalog(s.gateway.address, per_label=1)
        assert res["indexed"] == res["items"] > 0, res
        yield s
