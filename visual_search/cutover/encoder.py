"""A second real encoder without torch: the exported encoder with a re-projected output.

The derived graph appends `embedding' = L2(embedding @ Q)` (float32, back to float16) to the
exported encoder, where Q is an orthogonal 256x256 matrix drawn from a seed. Retrieval quality is
unchanged (a rotation keeps cosines), but its vectors live in another basis, exactly like a
re-fitted projection head: searching version A's shards with version B's vectors returns
nonsense. That is what a cutover must never do, so it is what the cutover tests use. Written,
with its own manifest.json and model version, to a directory of its own (never artifacts/models).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from visual_search import contract as C
from visual_search import models


def rotation(seed: int, dim: int = C.EMBEDDING_DIM) -> np.ndarray:
    """A reproducible orthogonal matrix (QR of a seeded Gaussian, signs fixed)."""
    a = np.random.default_rng(seed).standard_normal((dim, dim))
    q, r = np.linalg.qr(a)
    return (q * np.sign(np.diag(r))).astype(np.float32)


def derive_encoder(out_dir: str | Path, seed: int = 1, src: Path | None = None) -> tuple[Path, str]:
    """Write <out_dir>/encoder_fp32.onnx (+ manifest.json, detector linked); (path, model version)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    src = src or models.artifact_path("encoder", "fp32")
    base = models.artifact("encoder", "fp32")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    q = rotation(seed)
    qhash = hashlib.sha256(q.tobytes()).hexdigest()[:8]
    version = f"{base['model_version']}-rot{seed}-{qhash}"

    m = onnx.load(str(src))
    g = m.graph
    name = C.ENCODER_OUTPUT_NAME
    old = f"{name}_base"
    for node in g.node:  # rename the original output tensor; new nodes produce `embedding`
        node.output[:] = [old if o == name else o for o in node.output]
    g.initializer.extend([numpy_helper.from_array(q, "reproj_q"),
                          numpy_helper.from_array(np.array([1e-12], np.float32), "reproj_eps")])
    g.node.extend([
        helper.make_node("Cast", [old], ["reproj_f32"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["reproj_f32", "reproj_q"], ["reproj_rot"]),
        helper.make_node("ReduceL2", ["reproj_rot"], ["reproj_norm"], axes=[-1], keepdims=1),
        helper.make_node("Max", ["reproj_norm", "reproj_eps"], ["reproj_den"]),
        helper.make_node("Div", ["reproj_rot", "reproj_den"], ["reproj_unit"]),
        helper.make_node("Cast", ["reproj_unit"], [name], to=TensorProto.FLOAT16),
    ])
    meta = {p.key: p.value for p in m.metadata_props}
    meta.update({
        "model_version": version, "embedding_model_version": version,
        "projection": meta.get("projection", "") + f"; then orthogonal rotation (seed {seed}), L2",
        "derived_from": str(base["model_version"]),
    })
    del m.metadata_props[:]
    for k in sorted(meta):
        m.metadata_props.add(key=k, value=meta[k])
    onnx.checker.check_model(m)
    path = out / "encoder_fp32.onnx"
    onnx.save(m, str(path))

    det = models.artifact("detector", "fp32")
    det_dst = out / det["file"]
    if not det_dst.exists():
        shutil.copy2(models.artifact_path("detector", "fp32"), det_dst)
    entry = {**base, "file": path.name, "metadata": meta, "model_version": version,
             "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size}
    manifest = {"schema": 1, "default_precision": "fp32", "encoder_model_version": {"fp32": version},
                "artifacts": {"detector_fp32": det, "encoder_fp32": entry}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path, version
