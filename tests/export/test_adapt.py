"""`vsearch adapt` end to end on a tiny catalog (real photos, real torch training, real ONNX export)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from visual_search import contract as C
from visual_search import models as M
from visual_search import preprocess as P

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
SHARED_DATA = REPO.parent / "shared" / "data"
EXPORT_PY = REPO / ".venv-export" / "bin" / "python"


def _need_export_env() -> None:
    if not EXPORT_PY.exists():
        pytest.skip("needs .venv-export (bash scripts/install_export.sh) with torch")


def _tiny_manifest(root: Path) -> tuple[Path, list[Path]]:
    """6 catalog photos (2 per dev set) + 2 query rows, images relative to the manifest."""
    rows, photos = [], []
    for name in ("oxford_pets_dogs", "grocery_packages_dev", "clothing10_cc0"):
        with open(SHARED_DATA / name / "manifest.csv", newline="") as fh:
            src = list(csv.DictReader(fh))
        cat, qry = [r for r in src if r["split"] == "catalog"], [r for r in src if r["split"] == "query"]
        picked = cat[:2] + qry[:1]
        for r in picked[: 3 if name != "clothing10_cc0" else 2]:
            dst = root / "images" / name / Path(r["image"]).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(SHARED_DATA / name / r["image"], dst)
            rows.append({"image": str(dst.relative_to(root)), "label": r["label"], "split": r["split"]})
            if r["split"] == "catalog":
                photos.append(dst)
    m = root / "manifest.csv"
    with m.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return m, photos


def _vsearch(*args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "visual_search.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _embed(path: Path, photos: list[Path]) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.stack([P.encoder_input(P.decode_image(p.read_bytes())) for p in photos])
    return np.asarray(s.run(None, {C.ENCODER_INPUT_NAME: x})[0], np.float32)


class _Adapt:
    """`vsearch adapt ARGS` as a child process whose output lines are collected by a thread."""

    def __init__(self, *args: str) -> None:
        import threading

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "visual_search.cli", "adapt", *args], cwd=REPO,
            env={**os.environ, "OMP_NUM_THREADS": "2"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        self.lines: list[str] = []
        out = self.proc.stdout
        assert out is not None
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(out.readline, "")), daemon=True)
        self.reader.start()

    @property
    def text(self) -> str:
        return "".join(list(self.lines))

    def wait_for(self, marker: str, timeout: float = 900) -> str:
        import time

        deadline = time.monotonic() + timeout
        while marker not in self.text:
            assert time.monotonic() < deadline and self.proc.poll() is None, self.text[-4000:]
            time.sleep(1)
        return self.text

    def stop(self) -> str:
        """SIGTERM (what Ctrl-C / a service manager sends), wait, and return the whole output."""
        import signal

        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)
        self.reader.join(timeout=10)
        return self.text


@pytest.mark.slow
def test_adapt_tiny_catalog_exports_a_new_servable_model(tmp_path: Path) -> None:
    _need_export_env()
    manifest, photos = _tiny_manifest(tmp_path / "catalog")
    out = tmp_path / "adapted"
    r = _vsearch("adapt", "--manifest", str(manifest), "--out", str(out), "--steps", "3")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "vsearch cutover run" in r.stdout and "left" in r.stdout  # next step + progress/estimate

    man = json.loads((out / "manifest.json").read_text())
    rep = json.loads((out / "adapt.json").read_text())
    assert rep["photos"] == len(photos) == 6  # query rows are never used
    base = M.load_manifest()["encoder_model_version"]["fp32"]
    new = man["encoder_model_version"]
    assert new["fp32"] != base and new["int8"] == new["fp32"] + "-int8"
    assert man["default_precision"]["encoder"] == ("int8" if rep["int8_gate"]["pass"] else "fp32")
    for a in man["artifacts"].values():  # every file the manifest names is there, intact
        assert hashlib.sha256((out / a["file"]).read_bytes()).hexdigest() == a["sha256"]
    assert man["artifacts"]["encoder_fp32"]["metadata"]["adapted_from"] == base
    assert rep["extrapolation_10k_photos"]["estimate_s_all_10k_photos"] > 0

    # the adapted encoder keeps the contract (unit float16 vectors) but is a different embedding
    e_new = _embed(out / "encoder_fp32.onnx", photos)
    e_old = _embed(M.artifact_path("encoder", "fp32"), photos)
    assert np.allclose(np.linalg.norm(e_new, axis=1), 1.0, atol=1e-2)
    assert float(np.abs(e_new - e_old).max()) > 1e-3


@pytest.mark.slow
def test_adapt_rejects_a_manifest_with_missing_photos(tmp_path: Path) -> None:
    _need_export_env()
    m = tmp_path / "manifest.csv"
    m.write_text("image,label,split\nimages/nope.jpg,x,catalog\nimages/nope2.jpg,x,catalog\n")
    r = _vsearch("adapt", "--manifest", str(m), "--out", str(tmp_path / "o"), timeout=300)
    assert r.returncode != 0
    assert "missing" in r.stderr and "nope.jpg" in r.stderr


@pytest.mark.slow
def test_adapt_serve_goes_from_catalog_to_serving_the_adapted_model(tmp_path: Path) -> None:
    """One command: adapt, start Triton + shards + gateway with the adapted model, index the
    catalog, serve; a catalog photo then finds itself under the adapted model version."""
    import re

    from visual_search.client import Client

    _need_export_env()
    manifest, photos = _tiny_manifest(tmp_path / "catalog")
    out = tmp_path / "adapted"
    run = _Adapt("--manifest", str(manifest), "--out", str(out), "--steps", "3", "--skip-int8", "--serve",
                 "--serve-run-dir", str(tmp_path / "stack"), "--serve-shards", "1")
    try:
        text = run.wait_for("try: vsearch search")
        assert "left" in text and f"indexed {len(photos)} of {len(photos)} photos (0 failed)" in text, text
        gateway = re.search(r"^\s+gateway\s+(\S+)$", text, re.M)
        assert gateway, text
        version = json.loads((out / "manifest.json").read_text())["encoder_model_version"]["fp32"]
        with Client(gateway.group(1), timeout=60) as c:
            res = c.search(image=photos[0].read_bytes(), k=3)
        assert res.model_version == version != M.load_manifest()["encoder_model_version"]["fp32"]
        assert res.hits[0].exact_match and res.hits[0].item_id.endswith(photos[0].stem)
    finally:
        rest = run.stop()
    assert run.proc.returncode == 0 and "[serve] stopped" in rest, rest[-2000:]


@pytest.mark.slow
def test_adapt_cutover_moves_a_live_gateway_to_the_adapted_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One command against a live gateway: adapt, start the adapted Triton + new shards, re-embed
    the catalog, canary, switch; the live gateway then answers with the adapted version."""
    from visual_search.client import Client, IndexItem
    from visual_search.client_cli import iter_source
    from visual_search.eval import canary
    from visual_search.launcher import Stack, StackOptions
    from visual_search.supervise import free_port

    _need_export_env()
    manifest, photos = _tiny_manifest(tmp_path / "catalog")
    token, admin_port = "adapt-cutover-admin", free_port()
    monkeypatch.setenv("VSEARCH_ADMIN_TOKEN", token)
    with Stack(StackOptions(tmp_path / "live", shards=2, gateway_args=["--admin-port", str(admin_port)],
                            supervise=False)) as live:
        old = live.model_version
        with Client(live.gateway.address, timeout=120) as c:
            assert all(r.ok for r in c.index(IndexItem(i, p.read_bytes(), category=lab)
                                             for i, p, lab in iter_source(manifest)))
        ps, paths = canary.build_from_labels(manifest, 2, 5)
        canary.save_probes(ps, tmp_path / "probes.json", paths=paths)
        out = tmp_path / "adapted"
        run = _Adapt("--manifest", str(manifest), "--out", str(out), "--steps", "3", "--skip-int8",
                     "--cutover", "--admin", f"127.0.0.1:{admin_port}",
                     "--probes", str(tmp_path / "probes.json"),
                     "--min-recall", "0", "--gateway", live.gateway.address,
                     "--serve-run-dir", str(tmp_path / "new"))
        try:
            text = run.wait_for("the live gateway serves")
            new = json.loads((out / "manifest.json").read_text())["encoder_model_version"]["fp32"]
            with Client(live.gateway.address, timeout=60) as c:
                res = c.search(image=photos[1].read_bytes(), k=3)
            assert res.model_version == new != old
            assert res.hits[0].item_id.endswith(photos[1].stem)  # the catalog was re-embedded
            assert f"re-embedded {len(photos)} items" in text
        finally:
            rest = run.stop()
    assert run.proc.returncode == 0 and "[cutover] stopped" in rest, rest[-3000:]
