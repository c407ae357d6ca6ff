"""Public names of the Triton ensembles and their tensors (what clients and the gateway call).

Internal model tensors (detector/encoder) use the ONNX names from visual_search.contract so the
GPU flavour can serve the same files with Triton's native onnxruntime backend.
"""

from __future__ import annotations

from typing import Final

# ensembles
DETECT: Final = "detect"
EMBED: Final = "embed"
DETECT_AND_EMBED: Final = "detect_and_embed"
# A default-box photo query in one round trip: detections + the embedding of the most salient box
# (the whole image when nothing is detected), chosen by preprocess.default_box_index.
DETECT_AND_EMBED_DEFAULT: Final = "detect_and_embed_default"
# The "max" photo query in one round trip: detections + TWO embeddings, the default box (row 0)
# and the whole image (row 1), run by the encoder as one batch; one row (the whole image) when
# nothing is detected. The gateway scores each item by max(score vs row 0, score vs row 1).
DETECT_AND_EMBED_DEFAULT_WHOLE: Final = "detect_and_embed_default_whole"

# composing models
PREPROCESS: Final = "preprocess"
DETECTOR: Final = "detector"
# Photo queries (detect, detect_and_embed_default[_whole]) run the detector at the smaller
# contract.QUERY_DETECTOR_INPUT_SIZE; indexing (detect_and_embed) keeps DETECTOR_INPUT_SIZE.
PREPROCESS_QUERY: Final = "preprocess_query"
DETECTOR_QUERY: Final = "detector_query"
POSTPROCESS: Final = "postprocess"
CROP: Final = "crop"
ENCODER: Final = "encoder"
SPLIT: Final = "split"

# tensors
IMAGE: Final = "IMAGE"  # BYTES [1]: encoded image file
BOX: Final = "BOX"  # FP32 [4]: optional caller-given x1,y1,x2,y2 in original pixels (embed)
# FP32 [N] detector confidences given to `crop` with BOXES: crop only the default (most salient) box
SCORES_FOR_DEFAULT: Final = "SCORES_FOR_DEFAULT"
# FP32 [N] the same, for detect_and_embed_default_whole: crop the default box, then the whole image
SCORES_FOR_DEFAULT_WHOLE: Final = "SCORES_FOR_DEFAULT_WHOLE"
IMAGE_RGB: Final = "IMAGE_RGB"  # UINT8 [H, W, 3]: decoded, EXIF-rotated (internal)
LETTERBOX: Final = "LETTERBOX"  # FP32 [1, 5]: scale, pad_x, pad_y, width, height (internal)
BOXES: Final = "BOXES"  # FP32 [N, 4]: x1,y1,x2,y2 in original image pixels
SCORES: Final = "SCORES"  # FP32 [N]
CLASSES: Final = "CLASSES"  # INT32 [N]: COCO class ids
PIXELS_ALL: Final = "PIXELS_ALL"  # internal: [N+1, 3, 224, 224] object crops then whole image
EMBEDDINGS_ALL: Final = "EMBEDDINGS_ALL"  # internal: [N+1, D]
EMBEDDING: Final = "EMBEDDING"  # FP16 [1, D]: the one embedding of `embed` / detect_and_embed_default
# (FP16 [M, D] in detect_and_embed_default_whole: default box then whole image; M = 1 when no box)
EMBEDDINGS: Final = "EMBEDDINGS"  # FP16 [N, D]: one per detected object
IMAGE_EMBEDDING: Final = "IMAGE_EMBEDDING"  # FP16 [1, D]: whole image

# model config parameter carrying the encoder's version (checked by the gateway)
ENCODER_VERSION_PARAM: Final = "encoder_version"
