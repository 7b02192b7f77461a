"""The local weights files of the standard feature spaces, and their SHA-256 check.

Nothing here downloads: the user puts each file in ``weights/`` (or names another path). A file is read once,
its SHA-256 compared with the expected digest, and only those verified bytes are ever deserialised, so a file
that differs from the pinned one is refused before any unpickling (torch-fidelity reads Inception weights with
``torch.load(..., weights_only=False)``). The expected digest is the pinned one unless
``evaluate.weights_sha256.<space>`` names another.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ddmbench.errors import ArtifactError, ConfigError, first_line

WEIGHTS_DIR = "weights"
# torch-fidelity's conversion of the TensorFlow Inception-v3 graph of 2015-12-05 (the FID of Heusel et al. 2017);
# its file name carries the first 8 hex digits of this digest, as torch.hub's check_hash expects.
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
# Meta's DINOv2 backbone files (dinov2_<arch>14_pretrain.pth) per timm architecture. No digest is pinned: none
# is published beside them, so evaluate.weights_sha256.dinov2 must name the SHA-256 of the user's own file.
DINOV2_FILES = {
    "vit_large_patch14_dinov2": "dinov2_vitl14_pretrain.pth",
    "vit_base_patch14_dinov2": "dinov2_vitb14_pretrain.pth",
    "vit_small_patch14_dinov2": "dinov2_vits14_pretrain.pth",
}
PINNED_SHA256: dict[str, str | None] = {"inception": INCEPTION_SHA256, "dinov2": None}


def default_weights(space: str, arch: str = "vit_large_patch14_dinov2") -> str:
    """Where a space's weights file goes unless the profile names another path (relative to the project)."""
    name = INCEPTION_FILE if space == "inception" else DINOV2_FILES[arch]
    return f"{WEIGHTS_DIR}/{name}"


def expected_sha256(space: str, override: str | None) -> str:
    """The digest a space's weights file must have: ``override`` when given, else the pinned one; ConfigError
    when neither exists (DINOv2)."""
    digest = override or PINNED_SHA256[space]
    if digest is None:
        raise ConfigError(f"evaluate.weights_sha256.{space} is required: no digest of the {space} weights is pinned; "
                          f"set it to the SHA-256 of your local file (`sha256sum <file>`)")
    return digest


def read_verified(path: Path, space: str, expected: str) -> bytes:
    """The bytes of ``path`` once their SHA-256 equals ``expected``; one-line ArtifactError naming the file, the
    digest found, the expected one and where the real file goes otherwise. Nothing is deserialised here."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read the {space} weights ({exc.strerror or first_line(exc)}); put the "
                            f"file at {default_weights(space)} or set evaluate.{space}_weights") from exc
    found = hashlib.sha256(data).hexdigest()
    if found != expected.lower():
        pinned = PINNED_SHA256[space]
        which = "pinned" if pinned and expected.lower() == pinned else "expected (evaluate.weights_sha256)"
        raise ArtifactError(f"{path}: SHA-256 {found} is not the {which} {expected} of the {space} weights; refused "
                            f"unread: put the real file at {default_weights(space)} (or set "
                            f"evaluate.weights_sha256.{space} to accept another)")
    return data
