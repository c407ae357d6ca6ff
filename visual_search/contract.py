"""The one source of truth for the model/search contract.

Tensor names, shapes, dtypes, the embedding dimension, image limits and preprocessing
parameters live here. Export scripts, generated Triton configs, python-backend models, the
shards, the gateway and the evaluation import these values instead of repeating them; a test
checks that generated artifacts agree with this module.
"""

from __future__ import annotations

from typing import Final

# ---- embeddings ---------------------------------------------------------------------------
EMBEDDING_DIM: Final = 1024
EMBEDDING_DTYPE: Final = "float16"  # on the wire (bytes, little-endian) and in the re-score store
# Vectors whose L2 norm is farther than this from 1 are refused (callers must send normalised
# vectors); within it they are re-normalised. See visual_search/shard/validation.py.
NORM_TOLERANCE: Final = 0.01

# ---- images (boundary limits) ---------------------------------------------------------------
MAX_IMAGE_BYTES: Final = 20 * 1024 * 1024
MAX_IMAGE_PIXELS: Final = 40_000_000  # decompression-bomb guard (width * height)
MIN_IMAGE_SIDE: Final = 8
# Long side / short side at most this. Every resize is bounded by it: the whole-image encoder
# input scales the SHORT side to ENCODER_RESIZE, so a 400000x100 strip would become a
# 1024000x256 intermediate (~2.7 GB peak in Triton's crop step, issue 12). At 20:1 the largest
# intermediate is 5120x256x3 bytes. Checked from the header, before any pixel is decoded.
MAX_ASPECT_RATIO: Final = 20.0
# Boxes one image may carry into the crop step (each becomes a 3x224x224 float32 encoder input):
# the detector keeps at most DETECTOR_MAX_DETECTIONS; a direct Triton caller may send no more.
MAX_BOXES_PER_IMAGE: Final = 20

# ---- gateway health (grpc.health.v1 service names) -------------------------------------------
# "" and the VisualSearch service name: the gateway process serves (vector / item-id queries work
# while the shards do). The photo name is NOT_SERVING while Triton is unreachable: Detect, photo
# Search and IndexItems fail then, vector and item-id queries keep working.
HEALTH_PHOTO_QUERIES: Final = "visual_search.v1.VisualSearch/photo"
HEALTH_VECTOR_QUERIES: Final = "visual_search.v1.VisualSearch/vector"

# ---- search limits --------------------------------------------------------------------------
MAX_K: Final = 1000
MAX_RESCORE_K: Final = 10_000
MAX_NPROBE: Final = 65_536
MAX_QUERY_BATCH: Final = 1024
MAX_UPSERT_BATCH: Final = 10_000  # items per Upsert / ids per Delete / patches per UpdateMetadata
MAX_PHASH_DISTANCE: Final = 16  # hash-first exact lookup: largest Hamming distance a request may ask
MAX_PHASH_HITS: Final = 10  # hash-first exact lookup: items returned per query at most
# A request's whole filter (serialized Filter message: field names and every string value) at
# most this many bytes; the gateway fans a filter out to every shard, so it is bounded up front.
MAX_FILTER_BYTES: Final = 16 * 1024

# ---- preprocessing (used by visual_search/preprocess.py everywhere) ---------------------------
DETECTOR_INPUT_SIZE: Final = 640  # square letterbox side, pixels (indexing: every catalog object)
# Photo queries (Detect, default box, box_index) run the same weights at a smaller letterbox:
# 2.4x fewer detector FLOPs, default-box query mAP within 1 point of 640 on all three dev sets
# (benchmarks/detector_size.json). Catalog photos keep 640. A multiple of 32 (YOLO's stride).
QUERY_DETECTOR_INPUT_SIZE: Final = 416
LETTERBOX_PAD_VALUE: Final = 114  # grey padding, as the detector was trained
DETECTOR_CONF_THRESHOLD: Final = 0.25
DETECTOR_IOU_THRESHOLD: Final = 0.45
DETECTOR_MAX_DETECTIONS: Final = 20
ENCODER_INPUT_SIZE: Final = 224  # square crop fed to the encoder
ENCODER_RESIZE: Final = 256  # shorter side before the centre crop (whole images)
CROP_MARGIN: Final = 0.10  # object crops are widened by this fraction of the box side
IMAGENET_MEAN: Final = (0.485, 0.456, 0.406)
IMAGENET_STD: Final = (0.229, 0.224, 0.225)

# ---- model tensors (ONNX graphs; Triton configs are generated from these) --------------------
DETECTOR_INPUT_NAME: Final = "images"  # float32 [B, 3, 640, 640], RGB in [0, 1], letterboxed
DETECTOR_OUTPUT_NAME: Final = "output0"  # float32 [B, 4 + NUM_CLASSES, anchors]: cx,cy,w,h + scores
DETECTOR_NUM_CLASSES: Final = 80  # COCO
ENCODER_INPUT_NAME: Final = "pixels"  # float32 [B, 3, 224, 224], ImageNet-normalised
ENCODER_OUTPUT_NAME: Final = "embedding"  # float16 [B, EMBEDDING_DIM], L2-normalised
ARTIFACTS_DIR: Final = "artifacts/models"  # exported ONNX files + manifest.json (repo-relative)
