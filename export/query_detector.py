"""The query-side detector: the same YOLO weights exported at contract.QUERY_DETECTOR_INPUT_SIZE.

    python -m export.query_detector        (needs the export venv: scripts/install_export.sh)

Writes artifacts/models/detector_query_fp32.onnx (stamped like every artifact) and adds it to
manifest.json, keeping the manifest's other entries and serving precisions. FP32 only: the INT8
detector does not pass its gate (benchmarks/int8_gates.json).
"""

from __future__ import annotations

import json

from export import detector, manifest, metadata
from export.env import ARTIFACTS
from visual_search import contract as C

NAME = "detector_query_fp32"
FILE = f"{NAME}.onnx"


def build() -> dict[str, str]:
    dst = ARTIFACTS / FILE
    meta = detector.export_fp32(dst, size=C.QUERY_DETECTOR_INPUT_SIZE)
    meta.update(
        export_date=metadata.export_date(), opset=str(metadata.OPSET), precision="fp32",
        input_name=C.DETECTOR_INPUT_NAME, output_name=C.DETECTOR_OUTPUT_NAME,
        input_size=str(C.QUERY_DETECTOR_INPUT_SIZE), use="photo queries (catalog photos use detector_fp32)",
        model_version=f"yolo11n-coco-{meta['source_weights_sha256'][:8]}-q{C.QUERY_DETECTOR_INPUT_SIZE}",
    )
    metadata.stamp(dst, meta)
    return meta


def add_to_manifest() -> dict[str, object]:
    """Rewrite manifest.json with the query detector next to the artifacts it already lists."""
    current = json.loads((ARTIFACTS / "manifest.json").read_text())
    files = {k: v["file"] for k, v in current["artifacts"].items()}
    files[NAME] = FILE
    return manifest.write(ARTIFACTS, files, current.get("default_precision"))


def main() -> int:
    build()
    man = add_to_manifest()
    print(json.dumps(man["artifacts"][NAME]["metadata"].get("model_version")))  # type: ignore[index]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
