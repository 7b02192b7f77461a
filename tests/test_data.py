"""Dataset sources and SHA-256 verification on synthetic idx files; the `prepare` stage's outputs."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import N_TEST, N_TRAIN, Project, make_images, write_checksums

from ddmbench.data import datasets as data
from ddmbench.errors import DataError
from ddmbench.pipeline import prepare


def _flip_byte(path: Path, offset: int = -1) -> None:
    blob = bytearray(path.read_bytes())
    blob[offset] ^= 0xFF
    path.write_bytes(bytes(blob))


def test_synthetic_files_parse_like_mnist(project: Project) -> None:
    tensors = data.load_mnist_tensors(project.root / "data")
    train_x, train_y = make_images(N_TRAIN, seed=1)
    assert tensors["train_x"].dtype == torch.uint8 and tensors["train_x"].shape == (N_TRAIN, 1, 28, 28)
    assert np.array_equal(tensors["train_x"].numpy(), train_x[:, None])
    assert np.array_equal(tensors["train_y"].numpy(), train_y)
    assert tensors["test_x"].shape == (N_TEST, 1, 28, 28) and tensors["test_y"].dtype == torch.int64


@pytest.mark.parametrize("name", data.MNIST_FILES)
def test_tampered_byte_is_named(project: Project, name: str) -> None:
    _flip_byte(project.raw_dir / name, offset=20)
    cfg = project.config()
    with pytest.raises(DataError) as info:
        prepare.run(cfg, project.paths)
    message = str(info.value)
    assert name in message and "SHA-256 mismatch" in message and "\n" not in message
    assert not project.paths.dataset.exists() and not project.paths.manifest.exists()


def test_truncated_file_is_named(project: Project) -> None:
    path = project.raw_dir / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: SHA-256 mismatch"):
        prepare.run(project.config(), project.paths)


def test_truncated_file_with_matching_checksum_is_a_data_error(project: Project) -> None:
    """Even if the checksum list was regenerated from a broken file, parsing fails as a DataError, not a crash."""
    path = project.raw_dir / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    write_checksums(project.raw_dir, project.root / "data" / "mnist.sha256")
    with pytest.raises(DataError, match="cannot parse the MNIST files"):
        prepare.run(project.config(), project.paths)


def test_missing_file_is_named(project: Project) -> None:
    (project.raw_dir / "train-labels-idx1-ubyte").unlink()
    sums = data.read_checksums(project.root / "data" / "mnist.sha256")
    with pytest.raises(DataError, match="train-labels-idx1-ubyte is missing"):
        data.verify_files(project.raw_dir, sums)


def test_local_only_without_files_fails_clearly(project: Project) -> None:
    for name in data.MNIST_FILES:
        (project.raw_dir / name).unlink()
    with pytest.raises(DataError) as info:
        prepare.run(project.config(), project.paths)
    message = str(info.value)
    assert "could not obtain MNIST" in message and "no local files" in message
    assert str(project.raw_dir) in message and "data.sources" in message


def test_local_only_with_partial_files_fails_clearly(project: Project) -> None:
    (project.raw_dir / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="could not obtain MNIST"):
        prepare.run(project.config(), project.paths)


def test_prepare_writes_tensors_and_manifest(project: Project) -> None:
    cfg = project.config()
    manifest = prepare.run(cfg, project.paths)
    on_disk = json.loads(project.paths.manifest.read_text())
    assert on_disk == manifest
    assert manifest["source"] == "local" and manifest["dataset"] == "mnist"
    assert manifest["n_train"] == N_TRAIN and manifest["n_test"] == N_TEST and manifest["image_shape"] == [1, 28, 28]
    for name in data.MNIST_FILES:
        raw = (project.raw_dir / name).read_bytes()
        assert manifest["files"][name] == {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}
    blob = data.load_prepared(project.paths.dataset)
    assert blob["train_x"].shape == (N_TRAIN, 1, 28, 28) and blob["train_x"].dtype == torch.uint8
    assert blob["test_y"].shape == (N_TEST,) and blob["test_y"].dtype == torch.int64
    assert np.array_equal(blob["train_x"].numpy(), make_images(N_TRAIN, seed=1)[0][:, None])


def test_prepare_honours_limits(project: Project) -> None:
    project.update(data={"train_limit": 50, "test_limit": 7})
    manifest = prepare.run(project.config(), project.paths)
    assert manifest["n_train"] == 50 and manifest["n_test"] == 7
    blob = data.load_prepared(project.paths.dataset)
    assert len(blob["train_x"]) == len(blob["train_y"]) == 50 and len(blob["test_x"]) == 7


def test_prepare_is_idempotent(project: Project) -> None:
    cfg = project.config()
    first = prepare.run(cfg, project.paths), data.load_prepared(project.paths.dataset)
    second = prepare.run(cfg, project.paths), data.load_prepared(project.paths.dataset)
    assert first[0] == second[0]
    assert all(torch.equal(first[1][key], second[1][key]) for key in ("train_x", "train_y", "test_x", "test_y"))


def test_checksum_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        data.read_checksums(tmp_path / "none.sha256")
    partial = tmp_path / "partial.sha256"
    partial.write_text(f"{'0' * 64}  train-images-idx3-ubyte\n")
    with pytest.raises(DataError, match="no entry for train-labels-idx1-ubyte"):
        data.read_checksums(partial)


def test_checksum_file_accepts_binary_marker_and_case(tmp_path: Path) -> None:
    lines = [f"{'AB' * 32} *{name}" for name in data.MNIST_FILES]
    (tmp_path / "sums").write_text("\n".join(lines) + "\n")
    sums = data.read_checksums(tmp_path / "sums")
    assert sums == {name: "ab" * 32 for name in data.MNIST_FILES}


def test_shipped_checksums_cover_mnist() -> None:
    sums = data.read_checksums(None)
    assert set(sums) == set(data.MNIST_FILES) and all(len(v) == 64 for v in sums.values())


def test_load_prepared_rejects_wrong_content(tmp_path: Path) -> None:
    from ddmbench.io import save_tensors

    path = tmp_path / "dataset.pt"
    save_tensors(path, {"train_x": torch.zeros(3, 1, 28, 28, dtype=torch.uint8), "train_y": torch.zeros(2)})
    with pytest.raises(DataError, match="no tensor 'test_x'"):
        data.load_prepared(path)
    save_tensors(path, {"train_x": torch.zeros(3, 1, 28, 28), "train_y": torch.zeros(2),
                        "test_x": torch.zeros(1, 1, 28, 28), "test_y": torch.zeros(1)})
    with pytest.raises(DataError, match="differ in length"):
        data.load_prepared(path)
    # the (N, H, W) images of an older ddmbench, or train and test images of different shapes
    for train_x, test_x in ((torch.zeros(2, 28, 28), torch.zeros(1, 28, 28)),
                            (torch.zeros(2, 1, 28, 28), torch.zeros(1, 3, 32, 32))):
        save_tensors(path, {"train_x": train_x, "train_y": torch.zeros(2), "test_x": test_x, "test_y": torch.zeros(1)})
        with pytest.raises(DataError, match=r"holds no \(N, C, H, W\) images.*re-run `ddmbench prepare`"):
            data.load_prepared(path)


def test_model_space_round_trip() -> None:
    for shape in ((1, 28, 28), (3, 32, 32)):
        images = torch.arange(256, dtype=torch.uint8).repeat(40)[: 3 * math.prod(shape)].reshape(3, *shape)
        x = data.to_model_space(images)
        assert x.shape == (3, *shape) and float(x.min()) == -1.0 and float(x.max()) == 1.0
        assert torch.equal(data.to_uint8(x), images)
        assert data.shape_of_images(images) == shape
    assert torch.equal(data.to_uint8(torch.full((1, 1, 28, 28), 5.0)), torch.full((1, 1, 28, 28), 255, dtype=torch.uint8))
