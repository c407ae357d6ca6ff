"""Serving generation shared by every gateway pod (issue 11, ask 4).

The generation a deployment serves lives in one small JSON document that every gateway pod
mounts (the chart's `<gateway>-generation` ConfigMap, at `--generation-source`):

    {"number": 3, "shards": "h:p,h:p;h:p", "triton_url": "h:p", "model_version": "...",
     "previous": {"number": 2, "shards": ..., "triton_url": ...}}

`vsearch cutover publish` writes it (after checking the new stack: every replica up, every stamp
equal to Triton's encoder version). Each pod polls the file every `--generation-poll` seconds; a
new `shards`/`triton_url` is switched to exactly like an admin Switch (built, version-checked,
then one reference swap, so a query never mixes generations), and the previous one is kept open
so switching back is instant. A pod that starts later (HPA scale-up, restart) starts on the
published generation. Propagation = the kubelet's ConfigMap refresh (about a minute by default)
+ the poll interval + building the generation; the serving number is exported as
`vsearch_gateway_serving_generation` so the spread across pods can be watched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from visual_search.gateway.config import GatewayConfig, ShardMap

log = logging.getLogger(__name__)


def read_spec(path: str | Path) -> dict[str, Any] | None:
    """The published generation, or None when the file is absent, empty or unreadable."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    if not text.strip():
        return None
    try:
        spec: dict[str, Any] = json.loads(text)
    except ValueError:
        log.error("generation source %s is not JSON; ignored", path)
        return None
    return spec if spec.get("shards") else None


def key_of(shards: str, triton_url: str | None) -> tuple[str, str]:
    return ShardMap.parse(shards).to_spec(), triton_url or ""


class GenerationWatcher:
    """Polls the generation source; switches (or rolls back) the router when it changes."""

    def __init__(self, path: str, router: Any, cfg: GatewayConfig, metrics: Any, poll_s: float = 1.0) -> None:
        self.path, self.router, self.cfg, self.metrics, self.poll_s = path, router, cfg, metrics, poll_s
        self.serving_number = -1
        self._failed_text: str | None = None
        self._task: asyncio.Task[None] | None = None

    def _key(self, gen: Any) -> tuple[str, str]:
        return gen.shard_map.to_spec(), gen.triton_url or ""

    async def check(self) -> bool:
        """Follow the file once; True when this call switched."""
        from visual_search.gateway.generations import build_generation

        spec = read_spec(self.path)
        if spec is None:
            return False
        number = int(spec.get("number", 0))
        want = key_of(spec["shards"], spec.get("triton_url") or self.cfg.triton_url)
        if want == self._key(self.router.current):
            self._set_number(number)
            return False
        text = json.dumps(spec, sort_keys=True)
        try:
            prev = self.router.previous
            if prev is not None and want == self._key(prev):
                await self.router.rollback()
            else:
                shard_map = ShardMap.parse(spec["shards"])
                if shard_map.num_shards != self.router.current.shard_map.num_shards:
                    raise ValueError(f"published shard map has {shard_map.num_shards} shards, the live one "
                                     f"{self.router.current.shard_map.num_shards}")

                async def build(n: int) -> Any:
                    return await build_generation(self.cfg, self.metrics, n, shard_map, want[1] or None)

                await self.router.switch(build)
        except Exception as exc:
            if text != self._failed_text:  # log once per published document, keep retrying quietly
                log.error("published generation %d not switched to (still serving generation %d): %s",
                          number, self.serving_number, exc)
                self._failed_text = text
            return False
        self._failed_text = None
        self._set_number(number)
        log.info("now serving published generation %d (model %s)", number, self.router.current.model_version)
        return True

    def _set_number(self, number: int) -> None:
        self.serving_number = number
        self.metrics.serving_generation.set(number)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.check()
            except Exception:
                log.exception("generation watch failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
