"""What every benchmark command writes: the machine it ran on and the JSON file of its results."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def hardware() -> dict[str, Any]:
    """CPU model, cores, platform and the load average when called (the 2 cores may be shared)."""
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "",
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "gpu": None,
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }


def latency_stats(lat_s: list[float], percentiles: tuple[int, ...] = (50, 95, 99)) -> dict[str, Any]:
    """Count, the given percentiles and the max of latencies given in seconds, in ms."""
    import numpy as np

    a = np.asarray(lat_s) * 1e3
    return {
        "queries": len(lat_s),
        **{f"p{p}_ms": round(float(np.percentile(a, p)), 2) for p in percentiles},
        "max_ms": round(float(a.max()), 2),
    }


def write_report(out: dict[str, Any], path: Path, show: str | None = None, indent: int = 2) -> int:
    """Write `out` as JSON to `path`, print its `show` part and where it went; exit status 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    if show is not None:
        print(json.dumps(out[show], indent=indent))
    print(f"wrote {path}")
    return 0
