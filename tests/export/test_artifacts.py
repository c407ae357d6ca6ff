"""Committed model artifacts: integrity, contract, behaviour on real photos (serving venv, no torch)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from visual_search import contract as C
from visual_search import models as M
from visual_search import preprocess as P
from visual_search.eval.dataset import DEV_SETS

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
SHARED_DATA = REPO.parent / "shared" / "data"
NAMES = ("detector_fp32", "detector_int8", "encoder_fp32", "encoder_int8")
COCO_PERSON, COCO_BUS = 0, 5


@pytest.fixture(scope="module")
def manifest() -> dict:
    return M.load_manifest()


def _session(name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(M.artifact_path(name)), providers=["CPUExecutionProvider"])


def _photos() -> list[np.ndarray]:
    imgs = [P.decode_image((DATA / n).read_bytes()) for n in ("bus.jpg", "zidane.jpg")]
    for name in DEV_SETS:  # a few dev-set photos when present
        paths = sorted((SHARED_DATA / name).glob("images/*/*.jpg"))[:3]
        imgs += [P.decode_image(p.read_bytes()) for p in paths]
    return imgs


def test_manifest_sha256_and_size_match_files(manifest: dict) -> None:
    assert set(NAMES) <= set(manifest["artifacts"])
    for name, entry in manifest["artifacts"].items():
        path = M.artifacts_dir() / entry["file"]
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
        assert len(data) == entry["bytes"], name
    # every artifact is in git: 80 MiB bounds the clone (the 2560 x 1024 float32 projection is 10 MiB
    # in each encoder; INT8 keeps the head in float)
    assert sum(e["bytes"] for e in manifest["artifacts"].values()) < 80 * 2**20


@pytest.mark.parametrize("name", NAMES)
def test_onnx_metadata_matches_manifest_and_contract(name: str, manifest: dict) -> None:
    sess = _session(name)
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta == manifest["artifacts"][name]["metadata"]
    for key in ("model_name", "model_version", "source_weights_sha256", "export_date", "opset",
                "input_normalisation", "calibration_set_sha256", "precision"):
        assert meta.get(key), key
    assert meta["opset"] == "17" and meta["precision"] == name.split("_")[1]
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert isinstance(inp.shape[0], str) and isinstance(out.shape[0], str)  # dynamic batch
    if name.startswith("detector"):
        assert (inp.name, out.name) == (C.DETECTOR_INPUT_NAME, C.DETECTOR_OUTPUT_NAME)
        assert inp.type == out.type == "tensor(float)"
        assert inp.shape[1:] == [3, C.DETECTOR_INPUT_SIZE, C.DETECTOR_INPUT_SIZE]
        assert out.shape[1] == 4 + C.DETECTOR_NUM_CLASSES
    else:
        assert (inp.name, out.name) == (C.ENCODER_INPUT_NAME, C.ENCODER_OUTPUT_NAME)
        assert (inp.type, out.type) == ("tensor(float)", "tensor(float16)")
        assert inp.shape[1:] == [3, C.ENCODER_INPUT_SIZE, C.ENCODER_INPUT_SIZE]
        assert out.shape[1] == C.EMBEDDING_DIM
        assert meta["embedding_model_version"] == meta["model_version"] == M.model_version(meta["precision"])


def test_query_detector_is_the_same_weights_at_the_query_side(manifest: dict) -> None:
    """detector_query_fp32: the detector's weights exported at contract.QUERY_DETECTOR_INPUT_SIZE."""
    sess = _session("detector_query_fp32")
    meta = sess.get_modelmeta().custom_metadata_map
    full = manifest["artifacts"]["detector_fp32"]["metadata"]
    assert meta == manifest["artifacts"]["detector_query_fp32"]["metadata"]
    assert meta["source_weights_sha256"] == full["source_weights_sha256"]
    assert meta["input_size"] == str(C.QUERY_DETECTOR_INPUT_SIZE) and meta["precision"] == "fp32"
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.shape[1:] == [3, C.QUERY_DETECTOR_INPUT_SIZE, C.QUERY_DETECTOR_INPUT_SIZE]
    assert out.shape[1] == 4 + C.DETECTOR_NUM_CLASSES
    assert C.QUERY_DETECTOR_INPUT_SIZE % 32 == 0 and C.QUERY_DETECTOR_INPUT_SIZE <= C.DETECTOR_INPUT_SIZE


def test_model_versions(manifest: dict) -> None:
    v32, v8 = M.model_version("fp32"), M.model_version("int8")
    # pca / upca = (uncentred) PCA projection, sslh = self-supervised trained head (export/head.py),
    # pb- = each backbone's descriptor L2-normalised on its own; the embedding size is in the tag
    assert v32.startswith("mnv2l0-") and v8 == v32 + "-int8"  # MobileNetV2 + EfficientNet-Lite0
    assert any(f"-{tag}{C.EMBEDDING_DIM}-" in v32 for tag in ("pca", "sslh", "pb-upca", "pb-sslh"))
    assert M.model_version() == M.model_version(M.default_precision())
    assert manifest["encoder_model_version"] == {"fp32": v32, "int8": v8}


@pytest.fixture(scope="module")
def embeddings() -> dict[str, np.ndarray]:
    x = np.stack([P.encoder_input(img) for img in _photos()])
    return {p: _session(f"encoder_{p}").run(None, {C.ENCODER_INPUT_NAME: x})[0] for p in ("fp32", "int8")}


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_encoder_unit_norm_float16(precision: str, embeddings: dict[str, np.ndarray]) -> None:
    e = embeddings[precision]
    assert e.dtype == np.float16 and e.shape[1] == C.EMBEDDING_DIM
    norms = np.linalg.norm(e.astype(np.float32), axis=1)
    assert np.abs(norms - 1).max() < C.NORM_TOLERANCE


def test_encoder_int8_close_to_fp32(embeddings: dict[str, np.ndarray]) -> None:
    a, b = (embeddings[p].astype(np.float32) for p in ("fp32", "int8"))
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.mean() >= 0.97 and cos.min() >= 0.9, cos


def test_encoder_batch_invariant() -> None:
    x = np.stack([P.encoder_input(img) for img in _photos()[:2]])
    sess = _session("encoder_fp32")
    both = sess.run(None, {C.ENCODER_INPUT_NAME: x})[0].astype(np.float32)
    one = sess.run(None, {C.ENCODER_INPUT_NAME: x[1:]})[0].astype(np.float32)
    assert np.abs(both[1] - one[0]).max() < 2e-3


def _top_detections(out: np.ndarray, conf: float = 0.5) -> list[tuple[int, float, np.ndarray]]:
    """Greedy class-aware NMS (IoU 0.45): enough to count objects in a test photo."""
    scores = out[4:]
    cls, score = scores.argmax(0), scores.max(0)
    keep = np.argsort(-score)[: int((score > conf).sum())]
    found: list[tuple[int, float, np.ndarray]] = []
    for i in keep:
        cx, cy, w, h = out[:4, i]
        box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        if all(c != cls[i] or _iou(box, b) < 0.45 for c, _, b in found):
            found.append((int(cls[i]), float(score[i]), box))
    return found


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_detector_finds_bus_and_people(precision: str) -> None:
    x, _ = P.letterbox(P.decode_image((DATA / "bus.jpg").read_bytes()))
    out = _session(f"detector_{precision}").run(None, {C.DETECTOR_INPUT_NAME: x[None]})[0][0]
    classes = [c for c, _, _ in _top_detections(out)]
    assert classes.count(COCO_BUS) == 1 and classes.count(COCO_PERSON) >= 3, classes


@pytest.mark.slow
def test_export_parity_in_export_venv() -> None:
    py = REPO / ".venv-export" / "bin" / "python"
    if not py.exists():
        pytest.skip("needs .venv-export (bash scripts/install_export.sh) with torch/ultralytics")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    r = subprocess.run([str(py), "-m", "export.parity"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert json.loads((REPO / "benchmarks" / "export_parity.json").read_text())["pass"]
