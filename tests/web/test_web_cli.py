"""`vsearch web` is registered and serves the page and its health endpoint."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

from visual_search.testing import free_port


def test_vsearch_web_serves_the_page() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "visual_search.cli", "web", "--port", str(port), "--gateway", "127.0.0.1:1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    page = r.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        assert "<title>Visual search</title>" in page and 'id="file"' in page
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200
    finally:
        proc.terminate()
        proc.wait(10)
