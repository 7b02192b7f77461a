"""Stage `prepare`: fetch and verify the dataset (MNIST, Fashion-MNIST or CIFAR-10), write uint8 tensors
(images (N, C, H, W), labels) and a manifest that records the image shape (C, H, W)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddmbench.config import Config, config_to_dict
from ddmbench.data import datasets as data
from ddmbench.io import ensure_writable, save_tensors, write_json
from ddmbench.pipeline.paths import Paths
from ddmbench.pipeline.tracking import mirror


def _resolve(paths: Paths, p: str) -> Path:
    return Path(p) if Path(p).is_absolute() else paths.root / p


def run(cfg: Config, paths: Paths) -> dict[str, Any]:
    ensure_writable(paths.dataset, paths.manifest)
    root = _resolve(paths, cfg.data.root)
    spec = data.dataset_spec(cfg.data.dataset)
    checksums = data.read_checksums(_resolve(paths, cfg.data.checksums) if cfg.data.checksums else None, spec.name)
    source, digests = data.ensure_dataset(root, list(cfg.data.sources), checksums, cfg.data.download_timeout_s,
                                          spec.name)
    tensors = data.load_tensors_of(root, spec.name)
    for split, limit in (("train", cfg.data.train_limit), ("test", cfg.data.test_limit)):
        if limit:
            # clone: a slice is a view and torch.save would write the whole underlying storage
            tensors[f"{split}_x"] = tensors[f"{split}_x"][:limit].clone()
            tensors[f"{split}_y"] = tensors[f"{split}_y"][:limit].clone()
    save_tensors(paths.dataset, tensors)
    manifest = {
        "dataset": cfg.data.dataset, "source": source,
        "classes": list(spec.classes),
        "files": {name: {"sha256": digest, "bytes": (spec.raw_dir(root) / name).stat().st_size}
                  for name, digest in digests.items()},
        "n_train": len(tensors["train_x"]), "n_test": len(tensors["test_x"]),
        "image_shape": list(tensors["train_x"].shape[1:]),
    }
    write_json(paths.manifest, manifest)
    mirror(cfg, paths, "prepare", "prepare", {"data": config_to_dict(cfg)["data"]},
           {"n_train": manifest["n_train"], "n_test": manifest["n_test"]}, [paths.manifest])
    return manifest
