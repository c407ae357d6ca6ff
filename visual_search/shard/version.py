"""Where a shard's model version stamp comes from (one version truth, issue 11).

In order: `--model-version` when given; else the stamp already in the data dir (the data was
embedded by that model, whatever Triton serves now - the gateway compares the two and refuses
to serve a mismatch); else the encoder version Triton reports (`--triton`), waited for while
Triton starts. Nothing else: a deployment never types a version string.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from visual_search.shard.engine import STAMP

log = logging.getLogger("visual_search.shard")


class NoModelVersion(RuntimeError):
    """No flag, no stamp in the data dir, no Triton to ask."""


def stamped_version(data_dir: str | Path) -> str | None:
    """The model version the data dir was created for, or None for a fresh dir."""
    path = Path(data_dir) / STAMP
    if not path.exists():
        return None
    version = json.loads(path.read_text()).get("model_version")
    return str(version) if version else None


def triton_version(url: str, timeout: float, poll: float = 2.0) -> str:
    """Triton's encoder version, retried until Triton answers (it may still be loading models)."""
    from visual_search.triton.client import TritonClient

    deadline = time.monotonic() + timeout
    last_log = 0.0
    while True:
        try:
            with TritonClient(url) as tc:
                version = tc.encoder_version()
            if version:
                return version
            why = "no encoder_version parameter in the embed model's config"
        except Exception as exc:  # not up yet, model not loaded, connection refused
            why = str(exc).splitlines()[0][:200]
        now = time.monotonic()
        if now > deadline:
            raise NoModelVersion(f"Triton at {url} gave no encoder version within {timeout:.0f}s: {why}")
        if now - last_log > 10:
            log.info("waiting for Triton's encoder version", extra={"triton": url, "why": why})
            last_log = now
        time.sleep(poll)


def resolve(model_version: str | None, data_dir: str | Path, triton: str | None, timeout: float) -> str:
    if model_version:
        return model_version
    stamped = stamped_version(data_dir)
    if stamped:
        return stamped
    if triton:
        return triton_version(triton, timeout)
    raise NoModelVersion(
        "no model version: pass --triton HOST:PORT (the stamp is Triton's encoder version), "
        "--model-version, or a --data-dir that is already stamped"
    )
