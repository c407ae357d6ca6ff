"""`vsearch web` is registered and serves the page and its health endpoint."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

from visual_search.supervise import CommandProcess, free_port, http_ok


def test_vsearch_web_serves_the_page(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "visual_search.cli", "web", "--port", str(port), "--gateway", "127.0.0.1:1"]
    with CommandProcess(argv, tmp_path / "web.log", ready=lambda: http_ok(f"{url}/healthz")):
        with urllib.request.urlopen(f"{url}/", timeout=5) as r:
            page = r.read().decode()
        assert "<title>Visual search</title>" in page and 'id="file"' in page
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:
            assert r.status == 200
