"""The standard feature spaces beside the evaluator classifier's: Inception-v3 (FID proper) and DINOv2 ViT-L/14
(FD-DINOv2, Stein et al. 2023), each a network that maps uint8 images (N, C, H, W) to features (N, d).

- ``inception``: torch-fidelity's ``FeatureExtractorInceptionV3`` with the 2015-12-05 weights, its 2048-d pool
  features; it resizes to 299 (TensorFlow-1 bilinear) and scales uint8 to [-1, 1] itself.
- ``dinov2``: dgm-eval's protocol on a timm ViT (``vit_large_patch14_dinov2``, built without weights at 224
  and loaded from a local file): bicubic resize to 224 of [0, 1] images, ImageNet mean/std, the CLS token after
  the final norm (1024-d). dgm-eval resizes PIL images; here the tensor is resized (torchvision's bicubic with
  antialias, clipped to [0, 1]), so features agree closely, not bit for bit. The checkpoint's 37x37 position
  embedding is resampled to 16x16 once, by the rule DINOv2's own ``interpolate_pos_encoding`` applies at every
  224-pixel forward (bicubic, scale (16 + 0.1)/37, no antialias).

Grayscale images are repeated to 3 channels. Weights files are verified by SHA-256 before they are read
(ddmbench/evaluation/weights_files.py). The classifier space is not FID: its distance is named apart.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ddmbench.errors import ArtifactError, first_line
from ddmbench.evaluation.weights_files import read_verified

SPACES = ("classifier", "inception", "dinov2")
# metric name and estimand label of the Fréchet distance in each space (classifier: the evaluator's features)
METRIC = {"classifier": "fid", "inception": "fid_inception", "dinov2": "fd_dinov2"}
LABEL = {"classifier": "FID", "inception": "FID", "dinov2": "FD_DINOv2"}
DINOV2_ARCHS = ("vit_large_patch14_dinov2", "vit_base_patch14_dinov2", "vit_small_patch14_dinov2")
DINOV2_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def rgb_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 1 or 3, H, W) -> uint8 (N, 3, H, W): grayscale repeated to 3 channels."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 (N, 1 or 3, H, W) images, got {images.dtype} {tuple(images.shape)}")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class InceptionFeatures(nn.Module):
    """uint8 (N, 3, H, W) -> (N, 2048) Inception-v3 pool features (torch-fidelity)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)[0]


class DinoV2Features(nn.Module):
    """uint8 (N, 3, H, W) -> (N, d) DINOv2 CLS features (dgm-eval's preprocessing)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        x = F.interpolate(x, size=(DINOV2_SIZE, DINOV2_SIZE), mode="bicubic", align_corners=False, antialias=True)
        return self.net((x.clamp(0.0, 1.0) - self.mean) / self.std)


def load_inception(path: Path, sha256: str) -> InceptionFeatures:
    """torch-fidelity's Inception-v3 from a local file whose SHA-256 must be ``sha256`` (checked first)."""
    data = read_verified(path, "inception", sha256)
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    try:  # torch-fidelity torch.loads what it is given: the verified bytes, never the path again
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                          feature_extractor_weights_path=io.BytesIO(data))
    except Exception as exc:  # a file let through by an overridden digest may hold anything
        raise ArtifactError(f"{path} is no Inception-v3 state dict of torch-fidelity ({first_line(exc, 120)}); "
                            "use its weights-inception-2015-12-05 file") from exc
    return InceptionFeatures(net).eval()


def hub_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, 1 + M*M, D) position embedding (class token first) -> (1, 1 + grid*grid, D), resampled as DINOv2's
    ``interpolate_pos_encoding`` does for a grid x grid input (bicubic, scale (grid + 0.1)/M, no antialias)."""
    m = math.isqrt(pos.shape[1] - 1)
    if m == grid:
        return pos
    patch = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2).float()
    scale = (grid + 0.1) / m
    patch = F.interpolate(patch, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    return torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos.dtype)], dim=1)


def _state_dict(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (by suffix) or of a torch file read with ``weights_only=True``."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load

            return load(data)
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ArtifactError(f"{path} cannot be read as weights ({first_line(exc, 120)}); use a .safetensors file or "
                            "a torch state dict") from exc
    if not isinstance(state, dict):
        raise ArtifactError(f"{path} holds no state dict; use Meta's dinov2_*_pretrain.pth or timm's safetensors")
    return state


def load_dinov2(path: Path, sha256: str, arch: str = "vit_large_patch14_dinov2") -> DinoV2Features:
    """A timm DINOv2 ViT (``arch``, 224 pixels, no head) with the weights of a local file whose SHA-256 must be
    ``sha256``: Meta's ``dinov2_*_pretrain.pth`` or timm's safetensors, never unpickled beyond tensors."""
    if arch not in DINOV2_ARCHS:
        raise ValueError(f"unknown DINOv2 architecture {arch!r}; use one of {', '.join(DINOV2_ARCHS)}")
    path = Path(path)
    state = _state_dict(path, read_verified(path, "dinov2", sha256))
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    net = timm.create_model(arch, pretrained=False, img_size=DINOV2_SIZE, num_classes=0)
    try:
        if isinstance(state.get("pos_embed"), torch.Tensor):
            state["pos_embed"] = hub_pos_embed(state["pos_embed"], DINOV2_SIZE // 14)
        net.load_state_dict(checkpoint_filter_fn(state, net), strict=True)
    except Exception as exc:
        raise ArtifactError(f"{path} is no {arch} state dict ({first_line(exc, 120)}); use the DINOv2 weights of "
                            "that architecture") from exc
    return DinoV2Features(net).eval()


@torch.no_grad()
def space_features(net: nn.Module, images: torch.Tensor, *, batch: int = 100,
                   device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 (N, C, H, W) images -> float32 (N, d) features of ``net`` (eval mode, no grad), on the CPU."""
    net = net.eval().to(device)
    return torch.cat([net(rgb_uint8(chunk).to(device)).float().cpu() for chunk in images.split(batch)])
