"""`vsearch gateway` and `vsearch shard` with no tuning flags run exactly the config dataclasses'
defaults (the flags take their defaults from them; this catches a flag mapped to the wrong field)."""

from __future__ import annotations

import argparse
import os

import pytest

from visual_search.gateway import cli as gateway_cli
from visual_search.gateway.config import GatewayConfig
from visual_search.shard import cli as shard_cli
from visual_search.shard.config import EngineConfig, IndexConfig


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("VSEARCH_")]:
        monkeypatch.delenv(name)


def test_gateway_flags_default_to_gateway_config() -> None:
    p = argparse.ArgumentParser()
    gateway_cli.add_arguments(p)
    got = gateway_cli.config_from_args(p.parse_args(["--shards", "127.0.0.1:1;127.0.0.1:2"]))
    assert got == GatewayConfig(shard_map=got.shard_map)


def test_gateway_flags_reach_their_fields() -> None:
    p = argparse.ArgumentParser()
    gateway_cli.add_arguments(p)
    args = p.parse_args(["--shards", "127.0.0.1:1", "--hedge-delay-ms", "7", "--max-message-mb", "2",
                         "--write-quorum", "all"])
    got = gateway_cli.config_from_args(args)
    assert (got.hedge_delay_ms, got.max_message_bytes, got.write_quorum) == (7.0, 2 * 1024 * 1024, "all")


def test_gateway_query_strategy_from_flag_env_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    def parse(*argv: str) -> GatewayConfig:
        p = argparse.ArgumentParser()
        gateway_cli.add_arguments(p)
        return gateway_cli.config_from_args(p.parse_args(["--shards", "127.0.0.1:1", *argv]))

    assert parse().query_strategy == "max" == GatewayConfig.query_strategy
    assert parse("--query-strategy", "default-box").query_strategy == "default-box"
    assert parse("--two-call-default-box").query_strategy == "default-box"  # that path is box-only
    monkeypatch.setenv("VSEARCH_QUERY_STRATEGY", "default-box")
    assert parse().query_strategy == "default-box"
    assert parse("--query-strategy", "max").query_strategy == "max"  # the flag beats the env
    with pytest.raises(SystemExit):
        parse("--query-strategy", "min")
    with pytest.raises(ValueError, match="query strategy 'min'"):
        GatewayConfig(shard_map=parse().shard_map, query_strategy="min")


def test_shard_flags_default_to_engine_config() -> None:
    from visual_search.shard.server import config_from_args

    p = argparse.ArgumentParser()
    shard_cli.add_arguments(p)
    args = p.parse_args([])
    assert config_from_args(args) == EngineConfig()
    assert (args.nprobe, args.rescore_k) == (IndexConfig().default_nprobe, EngineConfig().default_rescore_k)
    tuned = config_from_args(p.parse_args(["--nprobe", "8", "--rescore-k", "50"]))
    assert (tuned.index.default_nprobe, tuned.default_rescore_k) == (8, 50)
