"""CIFAR-10's python batches (the files ``torchvision.datasets.CIFAR10`` reads) parsed into uint8 tensors.

Layout: ``<data.root>/cifar-10-batches-py/{data_batch_1..5, test_batch}``, each a pickled dict with
``data`` (N, 3072) uint8 (row-major R, G, B planes of 32x32) and ``labels`` (N ints in 0..9). The pickles
are read only after their MD5 matched torchvision's list, and with an unpickler that builds nothing but
numpy arrays, lists and plain values.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddmbench.data.shapes import CIFAR_SHAPE
from ddmbench.errors import DataError, first_line

FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
FILES = TRAIN_FILES + TEST_FILES
IMAGE_SHAPE = CIFAR_SHAPE
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}


class _ArraysOnly(pickle.Unpickler):
    """Refuses every global except the few numpy needs to rebuild an array."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def _field(batch: dict[Any, Any], key: str) -> Any:
    if key in batch:
        return batch[key]
    if key.encode() in batch:
        return batch[key.encode()]
    raise KeyError(f"no '{key}' entry")


def read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch file -> uint8 images (N, 3, 32, 32) and int64 labels (N,). DataError naming the file."""
    try:
        with open(path, "rb") as f:
            batch = _ArraysOnly(f, encoding="latin1").load()
        if not isinstance(batch, dict):
            raise TypeError("not a dict")
        pixels = np.asarray(_field(batch, "data"))
        labels = np.asarray(_field(batch, "labels"), dtype=np.int64)
        if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != int(np.prod(IMAGE_SHAPE)):
            raise ValueError(f"data is {pixels.dtype} {pixels.shape}, not uint8 (N, 3072)")
        if labels.shape != (len(pixels),) or (len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES))):
            raise ValueError("labels do not match the images or lie outside 0..9")
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"cannot parse {path} ({first_line(exc)}); delete it and re-run prepare") from exc
    images = torch.from_numpy(pixels.reshape(len(pixels), *IMAGE_SHAPE).copy())
    return images, torch.from_numpy(labels.copy())


def load_batches(folder: Path) -> dict[str, torch.Tensor]:
    """The five training batches and the test batch -> train_x/test_x uint8 (N, 3, 32, 32), *_y int64 (N,)."""
    out: dict[str, torch.Tensor] = {}
    for split, names in (("train", TRAIN_FILES), ("test", TEST_FILES)):
        parts = [read_batch(folder / name) for name in names]
        out[f"{split}_x"] = torch.cat([x for x, _ in parts])
        out[f"{split}_y"] = torch.cat([y for _, y in parts])
    return out


def torchvision_md5s() -> dict[str, str]:
    """{batch file: MD5} from the installed torchvision (``CIFAR10.train_list`` + ``test_list``)."""
    from torchvision.datasets import CIFAR10

    return {name: md5 for name, md5 in [*CIFAR10.train_list, *CIFAR10.test_list]}


def torchvision_archive_md5() -> str:
    """The MD5 of ``cifar-10-python.tar.gz`` from the installed torchvision (``CIFAR10.tgz_md5``)."""
    from torchvision.datasets import CIFAR10

    return str(CIFAR10.tgz_md5)
