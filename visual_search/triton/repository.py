"""Generate a Triton model repository (CPU or GPU flavour) from visual_search.contract.

    vsearch triton generate --flavour cpu|gpu --precision fp32|int8 --out DIR
    (flags in visual_search/triton/cli.py; `python -m ensemble.generate` still works)

One source of truth, two flavours:
  cpu  detector/encoder are python-backend models running the ONNX files on onnxruntime (the
       tritonserver from the nvidia-pytriton wheel has only the python backend);
  gpu  detector/encoder use Triton's native `onnxruntime` (default) or `tensorrt` backend on
       KIND_GPU in the official container; every other model is the same python code.
Configs are built as ModelConfig protobufs (field names are checked) and written with
text_format, so regenerating is byte-identical. The python-backend models' code is
visual_search/triton/models/<model>/model.py (copied into each version directory). Weights are
symlinked (or copied) from artifacts/models at generation time; `--configs-only` writes just the
config.pbtxt files (what is committed under model_repository/cpu and model_repository/gpu).

Photo queries (`detect`, `detect_and_embed_default`, `detect_and_embed_default_whole`) run
`preprocess_query` -> `detector_query`:
the same detector weights exported at contract.QUERY_DETECTOR_INPUT_SIZE (416), measured in
benchmarks/detector_size.json; indexing (`detect_and_embed`, also all-objects queries) keeps 640.

Batching (the documented knobs; see BATCHING):
  detector  cpu: max batch 4, preferred 2/4, 2 ms queue delay, 2 instances x 1 onnxruntime
            thread. On these CPUs onnxruntime's per-image cost does not fall with batch size
            (measured), so small batches keep both instances busy instead of idling while one
            large batch runs. gpu: max batch 32, preferred 8/16/32, 2 instances (overlap copies
            and compute) - where batching pays.
  encoder   max batch 64 (cpu) / 128 (gpu): a detect_and_embed request is ONE encoder request of
            batch objects + 1 (<= DETECTOR_MAX_DETECTIONS + 1), grouped with other requests;
            preferred sizes (4/8/16 cpu, 32/64/128 gpu) keep typical batches short.
  python pre/post models run as 2 CPU instances (separate processes, so no shared GIL).
Options.ort_threads / onnx_instances / max_queue_delay_us / python_instances override these for
one generated repository (defaults = the committed configs); `vsearch bench triton-grid`
measures the alternatives against the committed CPU config (benchmarks/triton_grid.json).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from visual_search import contract as C
from visual_search.triton import names as N

REPO_ROOT = Path(__file__).resolve().parents[2]
# The python-backend models' code (each imports visual_search; nothing here imports them).
MODELS_SRC = Path(__file__).resolve().parent / "models"
PYTHON_MODELS = (N.PREPROCESS, N.PREPROCESS_QUERY, N.POSTPROCESS, N.CROP, N.SPLIT)
# Models that share another model's code (the config says what differs: input size, weights).
MODEL_SOURCE = {N.PREPROCESS_QUERY: N.PREPROCESS, N.DETECTOR_QUERY: N.DETECTOR}
ENSEMBLES = (
    N.DETECT, N.EMBED, N.DETECT_AND_EMBED, N.DETECT_AND_EMBED_DEFAULT, N.DETECT_AND_EMBED_DEFAULT_WHOLE,
)

DT = mc.DataType
FP32, FP16, U8, I32, STR = DT.TYPE_FP32, DT.TYPE_FP16, DT.TYPE_UINT8, DT.TYPE_INT32, DT.TYPE_STRING
S_DET = C.DETECTOR_INPUT_SIZE
S_ENC = C.ENCODER_INPUT_SIZE
D = C.EMBEDDING_DIM


@dataclass(frozen=True)
class Batching:
    """Dynamic batching settings for one model (max_batch_size stays even when batching is off)."""

    max_batch_size: int
    preferred: tuple[int, ...]
    max_queue_delay_us: int
    instances: int


BATCHING: dict[tuple[str, str], Batching] = {
    ("cpu", N.DETECTOR): Batching(4, (2, 4), 2000, 2),
    ("cpu", N.DETECTOR_QUERY): Batching(4, (2, 4), 2000, 2),
    ("cpu", N.ENCODER): Batching(64, (4, 8, 16), 2000, 2),
    ("gpu", N.DETECTOR): Batching(32, (8, 16, 32), 2000, 2),
    ("gpu", N.DETECTOR_QUERY): Batching(32, (8, 16, 32), 2000, 2),
    ("gpu", N.ENCODER): Batching(128, (32, 64, 128), 2000, 2),
}
PYTHON_INSTANCES = 2
ORT_THREADS = 1  # intra-op threads per onnxruntime session (cpu flavour): 2 instances x 1 thread


@dataclass(frozen=True)
class Options:
    flavour: str = "cpu"  # cpu | gpu
    precision: str = "fp32"  # fp32 | int8
    batching: bool = True  # False: no dynamic_batching blocks (the benchmark's baseline)
    gpu_backend: str = "onnxruntime"  # onnxruntime | tensorrt (gpu flavour only)
    detector_path: Path | None = None  # default: artifacts/models/detector_<precision>.onnx
    encoder_path: Path | None = None
    query_detector_path: Path | None = None  # default: artifacts/models/detector_query_fp32.onnx
    # Letterbox side of photo queries; must match query_detector_path's input. Benchmarks set
    # 640 + detector_fp32.onnx to serve the old query path as their baseline.
    query_detector_size: int = C.QUERY_DETECTOR_INPUT_SIZE
    copy_weights: bool = False
    # Tuning overrides for the ONNX models (detector, detector_query, encoder), measured by
    # `vsearch bench triton-grid`. The defaults are the committed configs: None keeps BATCHING's
    # value, so the generated model_repository/ files do not change.
    ort_threads: int = ORT_THREADS  # cpu flavour: onnxruntime intra-op threads per instance
    onnx_instances: int | None = None  # instance_group count
    max_queue_delay_us: int | None = None  # dynamic batcher delay (when batching is on)
    python_instances: int = PYTHON_INSTANCES  # pre/post python models (preprocess, crop, ...)

    def weights(self, model: str) -> Path:
        if model == N.DETECTOR_QUERY:  # FP32 only: the INT8 detector fails its gate
            return Path(self.query_detector_path or REPO_ROOT / C.ARTIFACTS_DIR / "detector_query_fp32.onnx")
        given = self.detector_path if model == N.DETECTOR else self.encoder_path
        if given is not None:
            return Path(given)
        return REPO_ROOT / C.ARTIFACTS_DIR / f"{model}_{self.precision}.onnx"


def encoder_version(opts: Options) -> str:
    """The encoder's model version from the manifest.json beside it (what the gateway checks).

    Falls back to a content hash of the ONNX file, then to "unknown", so a dev repository
    built from ad-hoc weights still reports something that changes when the weights change.
    """
    path = opts.weights(N.ENCODER)
    manifest = path.parent / "manifest.json"  # artifacts/models, or a derived encoder's own dir
    if manifest.exists():
        m = json.loads(manifest.read_text())
        for art in m.get("artifacts", {}).values():
            if art.get("file") == path.name and art.get("model_version"):
                return str(art["model_version"])
        by_precision = m.get("encoder_model_version", {})
        if isinstance(by_precision, dict) and by_precision.get(opts.precision):
            return str(by_precision[opts.precision])
    if path.exists():
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return "unknown"


def _t(name: str, dtype: int, dims: Sequence[int], optional: bool = False) -> mc.ModelInput:
    return mc.ModelInput(name=name, data_type=dtype, dims=list(dims), optional=optional)


def _o(name: str, dtype: int, dims: Sequence[int]) -> mc.ModelOutput:
    return mc.ModelOutput(name=name, data_type=dtype, dims=list(dims))


def _params(cfg: mc.ModelConfig, params: dict[str, str]) -> None:
    for k in sorted(params):
        cfg.parameters[k].string_value = params[k]


def _python(name: str, inputs: list[mc.ModelInput], outputs: list[mc.ModelOutput]) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=name, backend="python", max_batch_size=0, input=inputs, output=outputs)
    cfg.instance_group.add(count=PYTHON_INSTANCES, kind=mc.ModelInstanceGroup.KIND_CPU)
    return cfg


def _onnx_model(name: str, opts: Options, inp: mc.ModelInput, out: mc.ModelOutput) -> mc.ModelConfig:
    b = BATCHING[(opts.flavour, name)]
    instances = b.instances if opts.onnx_instances is None else opts.onnx_instances
    delay_us = b.max_queue_delay_us if opts.max_queue_delay_us is None else opts.max_queue_delay_us
    if instances < 1 or opts.ort_threads < 1 or delay_us < 0:
        raise ValueError(f"bad tuning: {instances} instances, {opts.ort_threads} threads, {delay_us} us")
    cfg = mc.ModelConfig(name=name, max_batch_size=b.max_batch_size, input=[inp], output=[out])
    if opts.flavour == "cpu":
        cfg.backend = "python"
        cfg.instance_group.add(count=instances, kind=mc.ModelInstanceGroup.KIND_CPU)
        _params(cfg, {"intra_op_threads": str(opts.ort_threads)})
    else:
        if opts.gpu_backend == "tensorrt":
            cfg.backend, cfg.platform, cfg.default_model_filename = "tensorrt", "tensorrt_plan", "model.plan"
        else:
            cfg.backend, cfg.platform, cfg.default_model_filename = (
                "onnxruntime",
                "onnxruntime_onnx",
                "model.onnx",
            )
        cfg.instance_group.add(count=instances, kind=mc.ModelInstanceGroup.KIND_GPU)
    if opts.batching:
        cfg.dynamic_batching.preferred_batch_size.extend(b.preferred)
        cfg.dynamic_batching.max_queue_delay_microseconds = delay_us
    return cfg


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> mc.ModelEnsembling.Step:
    s = mc.ModelEnsembling.Step(model_name=model, model_version=-1)
    for k in sorted(inputs):
        s.input_map[k] = inputs[k]
    for k in sorted(outputs):
        s.output_map[k] = outputs[k]
    return s


def _ensemble(
    name: str,
    inputs: list[mc.ModelInput],
    outputs: list[mc.ModelOutput],
    steps: list[mc.ModelEnsembling.Step],
) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=0, input=inputs, output=outputs)
    cfg.ensemble_scheduling.step.extend(steps)
    return cfg


def build_configs(opts: Options) -> dict[str, mc.ModelConfig]:
    """Every model's ModelConfig, keyed by model name."""
    if opts.flavour not in ("cpu", "gpu") or opts.precision not in ("fp32", "int8"):
        raise ValueError(f"bad flavour/precision {opts.flavour}/{opts.precision}")
    det_in, det_out = C.DETECTOR_INPUT_NAME, C.DETECTOR_OUTPUT_NAME
    S_QDET = opts.query_detector_size  # noqa: N806 - reads like the S_DET constant it sits beside
    enc_in, enc_out = C.ENCODER_INPUT_NAME, C.ENCODER_OUTPUT_NAME
    image = _t(N.IMAGE, STR, [1])
    boxes, scores, classes = _o(N.BOXES, FP32, [-1, 4]), _o(N.SCORES, FP32, [-1]), _o(N.CLASSES, I32, [-1])
    c: dict[str, mc.ModelConfig] = {}
    c[N.PREPROCESS] = _python(
        N.PREPROCESS,
        [image],
        [
            _o(det_in, FP32, [1, 3, S_DET, S_DET]),
            _o(N.LETTERBOX, FP32, [1, 5]),
            _o(N.IMAGE_RGB, U8, [-1, -1, 3]),
        ],
    )
    _params(c[N.PREPROCESS], {"input_size": str(S_DET)})
    c[N.PREPROCESS_QUERY] = _python(
        N.PREPROCESS_QUERY,
        [image],
        [
            _o(det_in, FP32, [1, 3, S_QDET, S_QDET]),
            _o(N.LETTERBOX, FP32, [1, 5]),
            _o(N.IMAGE_RGB, U8, [-1, -1, 3]),
        ],
    )
    _params(c[N.PREPROCESS_QUERY], {"input_size": str(S_QDET)})
    for name, side in ((N.DETECTOR, S_DET), (N.DETECTOR_QUERY, S_QDET)):
        c[name] = _onnx_model(
            name,
            opts,
            _t(det_in, FP32, [3, side, side]),
            _o(det_out, FP32, [4 + C.DETECTOR_NUM_CLASSES, -1]),
        )
    c[N.POSTPROCESS] = _python(
        N.POSTPROCESS,
        [_t(det_out, FP32, [-1, 4 + C.DETECTOR_NUM_CLASSES, -1]), _t(N.LETTERBOX, FP32, [-1, 5])],
        [boxes, scores, classes],
    )
    c[N.CROP] = _python(
        N.CROP,
        [
            _t(N.IMAGE, STR, [1], optional=True),
            _t(N.IMAGE_RGB, U8, [-1, -1, 3], optional=True),
            _t(N.BOXES, FP32, [-1, 4], optional=True),
            _t(N.SCORES_FOR_DEFAULT, FP32, [-1], optional=True),
            _t(N.SCORES_FOR_DEFAULT_WHOLE, FP32, [-1], optional=True),
            _t(N.BOX, FP32, [4], optional=True),
        ],
        [_o(N.PIXELS_ALL, FP32, [-1, 3, S_ENC, S_ENC])],
    )
    version = encoder_version(opts)
    c[N.ENCODER] = _onnx_model(N.ENCODER, opts, _t(enc_in, FP32, [3, S_ENC, S_ENC]), _o(enc_out, FP16, [D]))
    _params(
        c[N.ENCODER],
        {**_params_of(c[N.ENCODER]), N.ENCODER_VERSION_PARAM: version, "precision": opts.precision},
    )
    c[N.SPLIT] = _python(
        N.SPLIT,
        [_t(N.EMBEDDINGS_ALL, FP16, [-1, D])],
        [_o(N.EMBEDDINGS, FP16, [-1, D]), _o(N.IMAGE_EMBEDDING, FP16, [1, D])],
    )

    det = _step(N.DETECTOR, {det_in: "_det_input"}, {det_out: "_det_output"})
    post = _step(
        N.POSTPROCESS,
        {det_out: "_det_output", N.LETTERBOX: "_letterbox"},
        {N.BOXES: N.BOXES, N.SCORES: N.SCORES, N.CLASSES: N.CLASSES},
    )
    # Photo queries: the query-side letterbox (preprocess_query -> detector_query).
    pre_q = _step(
        N.PREPROCESS_QUERY,
        {N.IMAGE: N.IMAGE},
        {det_in: "_det_input", N.LETTERBOX: "_letterbox", N.IMAGE_RGB: "_rgb"},
    )
    det_q = _step(N.DETECTOR_QUERY, {det_in: "_det_input"}, {det_out: "_det_output"})
    pre_q_boxes = _step(
        N.PREPROCESS_QUERY, {N.IMAGE: N.IMAGE}, {det_in: "_det_input", N.LETTERBOX: "_letterbox"}
    )
    c[N.DETECT] = _ensemble(N.DETECT, [image], [boxes, scores, classes], [pre_q_boxes, det_q, post])

    c[N.EMBED] = _ensemble(
        N.EMBED,
        [image, _t(N.BOX, FP32, [4], optional=True)],
        [_o(N.EMBEDDING, FP16, [-1, D])],
        [
            _step(N.CROP, {N.IMAGE: N.IMAGE, N.BOX: N.BOX}, {N.PIXELS_ALL: "_pixels"}),
            _step(N.ENCODER, {enc_in: "_pixels"}, {enc_out: N.EMBEDDING}),
        ],
    )

    pre_rgb = _step(
        N.PREPROCESS,
        {N.IMAGE: N.IMAGE},
        {det_in: "_det_input", N.LETTERBOX: "_letterbox", N.IMAGE_RGB: "_rgb"},
    )
    c[N.DETECT_AND_EMBED] = _ensemble(
        N.DETECT_AND_EMBED,
        [image],
        [boxes, scores, classes, _o(N.EMBEDDINGS, FP16, [-1, D]), _o(N.IMAGE_EMBEDDING, FP16, [1, D])],
        [
            pre_rgb,
            det,
            post,
            _step(N.CROP, {N.IMAGE_RGB: "_rgb", N.BOXES: N.BOXES}, {N.PIXELS_ALL: "_pixels"}),
            _step(N.ENCODER, {enc_in: "_pixels"}, {enc_out: "_embeddings_all"}),
            _step(
                N.SPLIT,
                {N.EMBEDDINGS_ALL: "_embeddings_all"},
                {N.EMBEDDINGS: N.EMBEDDINGS, N.IMAGE_EMBEDDING: N.IMAGE_EMBEDDING},
            ),
        ],
    )
    # One-call photo queries (one decode inside Triton): detections, then ONE encoder request -
    # DETECT_AND_EMBED_DEFAULT: the most salient box only (batch 1); DETECT_AND_EMBED_DEFAULT_WHOLE
    # ("max" strategy): the default box and the whole image (batch 2). Both: the whole image alone
    # when nothing was detected.
    for name, scores_input in ((N.DETECT_AND_EMBED_DEFAULT, N.SCORES_FOR_DEFAULT),
                               (N.DETECT_AND_EMBED_DEFAULT_WHOLE, N.SCORES_FOR_DEFAULT_WHOLE)):
        c[name] = _ensemble(
            name,
            [image],
            [boxes, scores, classes, _o(N.EMBEDDING, FP16, [-1, D])],
            [
                pre_q,
                det_q,
                post,
                _step(N.CROP, {N.IMAGE_RGB: "_rgb", N.BOXES: N.BOXES, scores_input: N.SCORES},
                      {N.PIXELS_ALL: "_pixels"}),
                _step(N.ENCODER, {enc_in: "_pixels"}, {enc_out: N.EMBEDDING}),
            ],
        )
    # the gateway checks these
    for name in (N.EMBED, N.DETECT_AND_EMBED, N.DETECT_AND_EMBED_DEFAULT, N.DETECT_AND_EMBED_DEFAULT_WHOLE):
        _params(c[name], {N.ENCODER_VERSION_PARAM: version})
    if opts.python_instances < 1:
        raise ValueError(f"bad tuning: {opts.python_instances} python instances")
    for name in PYTHON_MODELS:
        c[name].instance_group[0].count = opts.python_instances
    return c


def _params_of(cfg: mc.ModelConfig) -> dict[str, str]:
    return {k: v.string_value for k, v in cfg.parameters.items()}


def render(cfg: mc.ModelConfig) -> str:
    """Deterministic config.pbtxt text."""
    return text_format.MessageToString(cfg)


def write_repository(opts: Options, out: Path, configs_only: bool = False) -> dict[str, mc.ModelConfig]:
    """Write (replace) a full repository at `out`; returns the configs written."""
    configs = build_configs(opts)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        if stale.is_dir() and stale.name not in configs:
            shutil.rmtree(stale)
    for name, cfg in configs.items():
        mdir = out / name
        mdir.mkdir(exist_ok=True)
        (mdir / "config.pbtxt").write_text(render(cfg))
        if configs_only:
            continue
        vdir = mdir / "1"
        if vdir.exists():
            shutil.rmtree(vdir)
        vdir.mkdir()
        if cfg.platform == "ensemble":
            continue
        if cfg.backend == "python":
            shutil.copy2(MODELS_SRC / MODEL_SOURCE.get(name, name) / "model.py", vdir / "model.py")
        trt = opts.flavour == "gpu" and opts.gpu_backend == "tensorrt"
        if name in (N.DETECTOR, N.DETECTOR_QUERY, N.ENCODER) and not trt:
            _place(opts.weights(name), vdir / "model.onnx", opts.copy_weights)
    return configs


def _place(src: Path, dst: Path, copy: bool) -> None:
    if not src.exists():
        raise FileNotFoundError(f"model weights {src} not found (export them, or pass --detector/--encoder)")
    if copy:
        shutil.copy2(src, dst)
    else:
        os.symlink(src.resolve(), dst)
