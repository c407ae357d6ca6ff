"""In-process reference path: the same preprocessing and ONNX models as the Triton ensemble, run
directly with onnxruntime. Used by the skew test, export gates, evaluation and canaries, so a
difference between this and the served path is a serving bug, not a modelling choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from visual_search import contract as C
from visual_search import detection
from visual_search import preprocess as P


def make_session(
    path: str | Path, threads: int = 0, *, flush_denormals: bool = False, allow_spinning: bool = True
) -> ort.InferenceSession:
    """CPU onnxruntime session (0 threads = onnxruntime's default).

    flush_denormals makes INT8/FP32 timings fair, but it switches the calling thread's FPU to
    denormals-are-zero for the whole process, so only dedicated processes (Triton's python models,
    benchmarks) turn it on; allow_spinning=False stops idle worker threads burning a shared core.
    """
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if threads:
        so.inter_op_num_threads = 1
    if flush_denormals:
        so.add_session_config_entry("session.set_denormal_as_zero", "1")
    if not allow_spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


@dataclass
class ObjectEmbeddings:
    detections: detection.Detections
    object_vectors: np.ndarray  # float16 [N, EMBEDDING_DIM], one per detection
    whole_vector: np.ndarray  # float16 [EMBEDDING_DIM]


class ReferencePipeline:
    """detect / embed / detect_and_embed on decoded images (HxWx3 uint8 RGB)."""

    def __init__(
        self,
        detector_path: str | Path,
        encoder_path: str | Path,
        threads: int = 0,
        detector_size: int = C.DETECTOR_INPUT_SIZE,
        query_detector_path: str | Path | None = None,
    ) -> None:
        self.detector = make_session(detector_path, threads)
        self.encoder = make_session(encoder_path, threads)
        self.detector_size = detector_size  # letterbox side the detector ONNX was exported for
        # Photo queries use the query-side detector (contract.QUERY_DETECTOR_INPUT_SIZE), as Triton does.
        self.query_detector = make_session(query_detector_path, threads) if query_detector_path else None

    @staticmethod
    def _run_detector(session: ort.InferenceSession, img: np.ndarray, size: int) -> detection.Detections:
        x, lb = P.letterbox(img, size)
        (out,) = session.run([C.DETECTOR_OUTPUT_NAME], {C.DETECTOR_INPUT_NAME: x[None]})
        return detection.decode(out[0], lb)

    def detect(self, img: np.ndarray) -> detection.Detections:
        """Detections as indexing sees them (the catalog side)."""
        return self._run_detector(self.detector, img, self.detector_size)

    def detect_query(self, img: np.ndarray) -> detection.Detections:
        """Detections as a photo query sees them (Triton's `detect` / `detect_and_embed_default`)."""
        if self.query_detector is None:
            return self.detect(img)
        return self._run_detector(self.query_detector, img, C.QUERY_DETECTOR_INPUT_SIZE)

    def embed_default(self, img: np.ndarray) -> tuple[detection.Detections, np.ndarray]:
        """A default-box query: query-side detections + the embedding of the most salient box
        (the whole image when nothing is detected), exactly what detect_and_embed_default returns."""
        d = self.detect_query(img)
        return d, self.encode(P.default_input(img, d.boxes, d.scores))[0]

    def embed_default_whole(self, img: np.ndarray) -> tuple[detection.Detections, np.ndarray]:
        """The "max" query: query-side detections + float16 [M, D] (default box, whole image; the
        whole image alone when nothing is detected), what detect_and_embed_default_whole returns."""
        d = self.detect_query(img)
        return d, self.encode(P.default_whole_input(img, d.boxes, d.scores))

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """[B, 3, 224, 224] encoder inputs -> float16 [B, EMBEDDING_DIM]."""
        (out,) = self.encoder.run([C.ENCODER_OUTPUT_NAME], {C.ENCODER_INPUT_NAME: pixels})
        return np.asarray(out, np.float16)

    def embed(self, img: np.ndarray, box: np.ndarray | None = None) -> np.ndarray:
        """Whole image (box None) or one caller-given box -> float16 [EMBEDDING_DIM]."""
        if box is not None:
            return self.encode(P.object_input(img, P.validate_box(box, img.shape[1], img.shape[0]))[None])[0]
        return self.encode(P.encoder_input(img)[None])[0]

    def detect_and_embed(self, img: np.ndarray) -> ObjectEmbeddings:
        dets = self.detect(img)
        vecs = self.encode(P.encoder_batch(img, dets.boxes))
        return ObjectEmbeddings(dets, vecs[:-1], vecs[-1])
