"""Which feature space a quality number lives in: the evaluator is identified by the SHA-256 of its weights,
and numbers measured with different evaluators are never compared (docs/design.md, "Measurements")."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from ddmbench.errors import ArtifactError


def weights_sha256(net: nn.Module | dict[str, torch.Tensor]) -> str:
    """SHA-256 over the state dict: each tensor's name, dtype, shape and bytes, in name order. It depends on the
    weights only, not on how a checkpoint file was pickled."""
    state = net.state_dict() if isinstance(net, nn.Module) else net
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_same_evaluator(digests: dict[str, str | None]) -> str:
    """The one evaluator digest that every source (a file name -> the digest it records) was measured with.

    ArtifactError naming both digests and their files when two differ, or naming a file that records none
    (measured before digests were recorded); re-measuring with the current evaluator is the fix.
    """
    if not digests:
        raise ValueError("check_same_evaluator needs at least one source")
    missing = [src for src, d in digests.items() if not d]
    if missing:
        raise ArtifactError(f"{missing[0]} records no evaluator digest (evaluator_sha256); re-run the stage that "
                            "wrote it so every quality number names its feature space")
    first_src, first = next(iter(digests.items()))
    for src, digest in digests.items():
        if digest != first:
            raise ArtifactError(f"quality measured with different evaluators: {first_src} has {first} and {src} has "
                                f"{digest}; re-run the stale one with the current evaluator before comparing")
    return str(first)
