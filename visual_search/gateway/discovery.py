"""Which model version a gateway serves at start-up (the flag, else Triton, else the shards).

Its own module so that generations.py (which builds generations) and server.py (which starts
them) both depend on it, and not on each other.
"""

from __future__ import annotations

import asyncio
import logging
import time

from visual_search.gateway.config import GatewayConfig
from visual_search.gateway.embedder import Embedder
from visual_search.gateway.fanout import ShardFanout

log = logging.getLogger(__name__)


async def _discover_once(cfg: GatewayConfig, embedder: Embedder | None, fanout: ShardFanout) -> str:
    if embedder is not None:
        return await embedder.model_version()  # raises while Triton is unreachable
    loop = asyncio.get_running_loop()
    for st in await fanout.stats(loop.time() + 5.0):
        if st is not None and st.model_version:
            return st.model_version
    return ""


async def discover_model_version(
    cfg: GatewayConfig, embedder: Embedder | None, fanout: ShardFanout, wait_s: float | None = None
) -> str:
    """The served model version: the flag, else Triton's encoder version (with Triton configured
    it is the only truth), else the shards'. Waits up to `wait_s` (cfg.version_wait_s) for Triton
    to load its models / the shards to start, as on Kubernetes every pod starts at once."""
    if cfg.model_version:
        return cfg.model_version
    wait_s = cfg.version_wait_s if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    last_log = 0.0
    while True:
        why = "no version reported"
        try:
            v = await _discover_once(cfg, embedder, fanout)
            if v:
                return v
        except Exception as exc:
            why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        if time.monotonic() > deadline:
            src = f"Triton at {cfg.triton_url}" if embedder is not None else "the shards"
            raise RuntimeError(f"cannot tell the model version: {src} gave none within {wait_s:.0f}s ({why})")
        if time.monotonic() - last_log > 10:
            log.info("waiting for the model version (%s)", why)
            last_log = time.monotonic()
        await asyncio.sleep(1.0)
