"""Trained weights as plain tensors + metadata, written atomically and loaded with ``weights_only=True``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ddmbench import nets
from ddmbench.errors import ArtifactError, first_line
from ddmbench.io import load_tensors, save_tensors


def save_weights(path: Path, net: nn.Module, meta: dict[str, Any]) -> None:
    """meta holds plain values: kind, net preset, and what is needed to rebuild the network."""
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    save_tensors(path, {"state_dict": state, "meta": meta})


def _load(path: Path, kind: str, what: str) -> tuple[dict[str, Any], dict[str, Any]]:
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


def load_velocity_net(path: Path, kind: str, what: str, expect: dict[str, Any] | None = None) -> nn.Module:
    """kind: 'expert' or 'monolith'; ``expect`` lists metadata the checkpoint must carry (e.g. num_experts)."""
    state, meta = _load(path, kind, what)
    for key, value in (expect or {}).items():
        if meta.get(key) != value:
            raise ArtifactError(f"{path} was trained with {key}={meta.get(key)} but the config needs {value}; "
                                f"re-run `{what}`")
    return _restore(lambda: nets.build_velocity_net(meta["net"]), state, path, what)


def load_router(path: Path, what: str = "ddmbench train-router") -> nets.Router:
    state, meta = _load(path, "router", what)
    return _restore(lambda: nets.build_router(meta["net"], int(meta["num_experts"])), state, path, what)


def load_classifier(path: Path, what: str = "ddmbench train-evaluator") -> nets.Classifier:
    state, meta = _load(path, "evaluator", what)
    return _restore(lambda: nets.build_classifier(meta["net"], int(meta["num_classes"])), state, path, what)
