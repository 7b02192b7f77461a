"""Trained weights as plain tensors + metadata, written atomically and loaded with ``weights_only=True``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ddmbench.data.shapes import MNIST_SHAPE, ImageShape
from ddmbench.errors import ArtifactError, first_line
from ddmbench.io import load_tensors, save_tensors
from ddmbench.models import nets


def save_weights(path: Path, net: nn.Module, meta: dict[str, Any]) -> None:
    """meta holds plain values: kind, net preset, and what is needed to rebuild the network."""
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    save_tensors(path, {"state_dict": state, "meta": meta})


def read_checkpoint(path: Path, kind: str, what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state dict, metadata) of a ``kind`` checkpoint; ArtifactError naming ``what`` re-makes it otherwise."""
    blob = load_tensors(path, what)
    meta = blob.get("meta") if isinstance(blob, dict) else None
    if not isinstance(meta, dict) or meta.get("kind") != kind or "state_dict" not in blob:
        raise ArtifactError(f"{path} is not a {kind} checkpoint; re-run `{what}`")
    return blob["state_dict"], meta


def _restore(build: Callable[[], nn.Module], state: dict[str, Any], path: Path, what: str) -> nn.Module:
    """Build the network named by the metadata and load the weights; any mismatch is an ArtifactError."""
    try:
        net = build()
        net.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{path} does not match its network ({first_line(exc, 120)}); re-run `{what}`") from exc
    return net.eval().requires_grad_(False)


def _image_shape(meta: dict[str, Any], path: Path, what: str, expect: ImageShape | None) -> ImageShape:
    """The (C, H, W) the network was trained on (checkpoints without the key predate CIFAR-10: 1x28x28);
    ArtifactError if ``expect`` (the prepared dataset's shape, or that of the networks it is used with) differs."""
    raw = meta.get("image_shape", list(MNIST_SHAPE))
    if not isinstance(raw, (list, tuple)) or len(raw) != 3 or not all(isinstance(d, int) and d > 0 for d in raw):
        raise ArtifactError(f"{path} has a malformed image_shape {raw!r}; re-run `{what}`")
    shape = (raw[0], raw[1], raw[2])
    if expect is not None and shape != tuple(expect):
        raise ArtifactError(f"{path} was trained on {'x'.join(map(str, shape))} images, not on the "
                            f"{'x'.join(map(str, expect))} images of the prepared dataset and the other networks; "
                            f"re-run `{what}`")
    return shape


def load_velocity_net(path: Path, kind: str, what: str, expect: dict[str, Any] | None = None,
                      image_shape: ImageShape | None = None) -> nn.Module:
    """kind: 'expert' or 'monolith'; ``expect`` lists metadata the checkpoint must carry (e.g. num_experts);
    ``image_shape`` (C, H, W), if given, is the shape the network must have been trained on."""
    state, meta = read_checkpoint(path, kind, what)
    for key, value in (expect or {}).items():
        if meta.get(key) != value:
            raise ArtifactError(f"{path} was trained with {key}={meta.get(key)} but the config needs {value}; "
                                f"re-run `{what}`")
    shape = _image_shape(meta, path, what, image_shape)
    return _restore(lambda: nets.build_velocity_net(meta["net"], shape), state, path, what)


class TemperatureScaled(nn.Module):
    """A router whose logits are divided by a fitted temperature T (temperature scaling, Guo et al. 2017):
    (x (B, C, H, W), t (B,)) -> logits / T (B, K). ``head`` and ``image_shape`` are the wrapped router's."""

    def __init__(self, router: nets.Router, temperature: float) -> None:
        super().__init__()
        self.router = router
        self.temperature = float(temperature)
        self.image_shape = router.image_shape

    @property
    def head(self) -> nn.Module:
        return self.router.head

    def forward(self, x: Any, t: Any) -> Any:
        return self.router(x, t) / self.temperature


def router_temperature(meta: dict[str, Any], path: Path, what: str) -> float:
    """The temperature stored by `train-router` with router.calibrate (1 when none was fitted)."""
    temp = meta.get("temperature", 1.0)
    if not isinstance(temp, (int, float)) or not temp > 0:
        raise ArtifactError(f"{path} has a malformed temperature {temp!r}; re-run `{what}`")
    return float(temp)


def load_router(path: Path, what: str = "ddmbench train-router", image_shape: ImageShape | None = None,
                calibrated: bool = True) -> nets.Router | TemperatureScaled:
    """The trained router; with ``calibrated`` (the default) its logits are divided by the stored temperature,
    if `train-router` fitted one (router.calibrate), so every field routes by the calibrated probabilities."""
    state, meta = read_checkpoint(path, "router", what)
    shape = _image_shape(meta, path, what, image_shape)
    router = _restore(lambda: nets.build_router(meta["net"], int(meta["num_experts"]), shape), state, path, what)
    temp = router_temperature(meta, path, what)
    return TemperatureScaled(router, temp).eval() if calibrated and temp != 1.0 else router


def load_classifier(path: Path, what: str = "ddmbench train-evaluator",
                    image_shape: ImageShape | None = None) -> nets.Classifier:
    state, meta = read_checkpoint(path, "evaluator", what)
    shape = _image_shape(meta, path, what, image_shape)
    return _restore(lambda: nets.build_classifier(meta["net"], int(meta["num_classes"]), shape), state, path, what)
