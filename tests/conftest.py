# ruff: noqa: E402  (thread limits must be set before numpy and torch load)
"""Shared fixtures: a tiny ddmbench project (shrunk real config + synthetic MNIST idx files) per test.

The project is the real configuration shrunk to seconds: unet-xs experts, K = 2,
a few dozen optimizer steps, 32 samples with 3 solver steps. The data are synthetic idx files in
torchvision's layout (<root>/MNIST/raw) with a sha256sum-style checksum file, so
nothing is ever downloaded. MLflow is off unless a test is about tracking; those copy one migrated
template sqlite DB built once per test run (a fresh DB costs ~7 s to migrate).
"""

from __future__ import annotations

import os

# Tiny nets on a 2-core box: several OpenMP threads per process lose badly to barrier spinning as soon as
# another process competes for a core (measured: 2.4 s vs 0.05 s per unet-xs step). Set before numpy/torch load.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import copy
import hashlib
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from ddmbench.allocator import keep_freed_memory
from ddmbench.config import Config, config_to_dict, load_config, parse_config
from ddmbench.data.datasets import MNIST_FILES
from ddmbench.pipeline.paths import Paths

REPO_ROOT = Path(__file__).resolve().parents[1]
keep_freed_memory()   # as the `ddmbench` command does: the suite runs the same stages in-process
NUM_LABELS = 4        # synthetic "digits" 0..3, each a distinct pattern family
N_TRAIN = 240
N_TEST = 80


def pytest_configure(config: pytest.Config) -> None:
    # Lightning 2.6 on torch 2.14 warns on every fit; ddmbench.train.trainer filters it at import, but pytest
    # resets warning filters per test.
    config.addinivalue_line("filterwarnings", "ignore:.*LeafSpec.*")
    config.addinivalue_line("filterwarnings", "ignore:.*will save all extracted features in buffer.*")


# ----------------------------------------------------------------------------------------------
# synthetic MNIST
# ----------------------------------------------------------------------------------------------

def pattern(label: int, rng: np.random.Generator, jitter: int = 2, noise: int = 40) -> np.ndarray:
    """One 28x28 uint8 image of a label's pattern family, randomly shifted, on a noisy background."""
    img = rng.integers(0, noise + 1, size=(28, 28)).astype(np.int32)
    dy, dx = (rng.integers(-jitter, jitter + 1, size=2) if jitter else (0, 0))
    level = int(rng.integers(200, 256))
    if label == 0:      # horizontal bar
        img[6 + dy:11 + dy, 4:24] = level
    elif label == 1:    # vertical bar
        img[4:24, 12 + dx:17 + dx] = level
    elif label == 2:    # central square blob
        img[9 + dy:19 + dy, 9 + dx:19 + dx] = level
    elif label == 3:    # diagonal stripe
        for i in range(4, 24):
            j = i + dx
            img[i, max(0, j - 2):min(28, j + 3)] = level
    else:
        raise ValueError(label)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_images(n: int, seed: int, jitter: int = 2, noise: int = 40,
                num_labels: int = NUM_LABELS) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28) uint8 images and (n,) uint8 labels cycling through 0..num_labels-1."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % num_labels).astype(np.uint8)
    images = np.stack([pattern(int(y), rng, jitter, noise) for y in labels])
    return images, labels


def idx_images(images: np.ndarray) -> bytes:
    """idx3-ubyte: magic 0x00000803, then N, H, W as big-endian int32, then the pixels."""
    n, h, w = images.shape
    return struct.pack(">IIII", 0x00000803, n, h, w) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    """idx1-ubyte: magic 0x00000801, then N as big-endian int32, then the labels."""
    return struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes()


def write_checksums(raw: Path, dest: Path) -> dict[str, str]:
    sums = {name: hashlib.sha256((raw / name).read_bytes()).hexdigest() for name in MNIST_FILES}
    dest.write_text("".join(f"{digest}  {name}\n" for name, digest in sums.items()))
    return sums


def write_mnist(root: Path, n_train: int = N_TRAIN, n_test: int = N_TEST) -> dict[str, str]:
    """Write the four raw files under <root>/MNIST/raw and <root>/mnist.sha256; return {name: sha256}."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    train_x, train_y = make_images(n_train, seed=1)
    test_x, test_y = make_images(n_test, seed=2)
    (raw / "train-images-idx3-ubyte").write_bytes(idx_images(train_x))
    (raw / "train-labels-idx1-ubyte").write_bytes(idx_labels(train_y))
    (raw / "t10k-images-idx3-ubyte").write_bytes(idx_images(test_x))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(idx_labels(test_y))
    return write_checksums(raw, root / "mnist.sha256")


# ----------------------------------------------------------------------------------------------
# the tiny project
# ----------------------------------------------------------------------------------------------

def base_params() -> dict[str, Any]:
    """The real profile (params.yaml at the repo root) when there is one, else the validated defaults."""
    real = REPO_ROOT / "params.yaml"
    if real.exists():
        return yaml.safe_load(real.read_text()) or {}
    return config_to_dict(parse_config({}))


TINY: dict[str, Any] = {
    "seed": 0,
    "ddm": {"train": ["here"], "import": {}},
    "data": {"dataset": "mnist", "root": "data", "sources": ["local"], "checksums": "data/mnist.sha256",
             "train_limit": 0, "test_limit": 0},
    "cluster": {"k": 2, "pca_dim": 8, "n_init": 2, "max_iter": 100, "features": "pixel-pca", "method": "kmeans",
                "embedder": {"steps": 30, "batch_size": 32}},
    "experts": [0, 1],
    "expert": {"steps": 30, "batch_size": 16, "lr": 3e-3, "weight_decay": 0.0, "net": "unet-xs", "ema_decay": 0.999},
    "router": {"steps": 15, "batch_size": 32, "lr": 2e-3},
    "evaluator": {"steps": 15, "batch_size": 32, "lr": 2e-3},
    "monolith": {"steps": 20, "batch_size": 16, "lr": 3e-3, "net": "unet-xs", "ema_decay": 0.999},
    "trainer": {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "precision": "32-true", "log_every_n_steps": 5},
    "sample": {"n": 32, "nfe_steps": 3, "solver": "euler", "batch_size": 16},
    "policies": ["full", "top-1"],
    "evaluate": {"n_real": 40, "kid_subset_size": 10, "kid_subsets": 5, "groups": 8},
    "analysis": {"n": 8, "eps": [0.1, 1.0], "reference_factor": 2, "ladder_rungs": 2, "bootstrap": 100, "quantiles": 2},
    "tracking": {"enabled": False, "uri": None, "experiment": "ddmbench-tests"},
    "report": {"primary": [], "alpha": 0.05},  # tests that judge a policy declare it with its policies
    "posterior": {"n_train": 0, "chunk": 4096},
}


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass
class Project:
    """A repo root in tmp_path: params.yaml + data/MNIST/raw + data/mnist.sha256."""

    root: Path
    raw: dict[str, Any]

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def paths(self) -> Paths:
        return Paths(self.root)

    @property
    def raw_dir(self) -> Path:
        return self.root / "data" / "MNIST" / "raw"

    def update(self, **sections: Any) -> Path:
        """Deep-merge keyword sections into the params and rewrite params.yaml."""
        self.raw = deep_merge(self.raw, sections)
        self.params.write_text(yaml.safe_dump(self.raw, sort_keys=False))
        return self.params

    def config(self) -> Config:
        return load_config(self.params)


def make_project(root: Path, **overrides: Any) -> Project:
    root.mkdir(parents=True, exist_ok=True)
    write_mnist(root / "data")
    project = Project(root, deep_merge(base_params(), TINY))
    project.update(**overrides)
    return project


def make_dvc_project(root: Path, **overrides: Any) -> Project:
    """``make_project`` plus what DVC needs: the repo's dvc.yaml and .dvcignore, a copy of the ddmbench/ code
    (the stages' code deps; the code that runs is still the installed one) and ``dvc init --no-scm``."""
    from dvc.repo import Repo

    project = make_project(root, **overrides)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO_ROOT / name, root / name)
    shutil.copytree(REPO_ROOT / "ddmbench", root / "ddmbench", ignore=shutil.ignore_patterns("__pycache__"))
    Repo.init(str(root), no_scm=True).close()
    (root / ".dvc" / "config").write_text("[core]\n    no_scm = True\n    analytics = false\n")
    return project


def save_untrained_models(cfg: Config, paths: Paths, *, monolith: bool = False, evaluator: bool = False) -> None:
    """Untrained but well-formed checkpoints from torch seed 0, in this order: one unet-xs expert per
    ``cfg.experts``, the monolith (if asked), the router-s router, the classifier-s evaluator (if asked)."""
    import torch

    from ddmbench.models import nets
    from ddmbench.models.checkpoints import save_weights

    torch.manual_seed(0)
    for k in cfg.experts:
        save_weights(paths.expert(k), nets.build_velocity_net("unet-xs"),
                     {"kind": "expert", "net": "unet-xs", "k": k, "num_experts": cfg.cluster.k})
    if monolith:
        save_weights(paths.model("monolith"), nets.build_velocity_net("unet-xs"), {"kind": "monolith", "net": "unet-xs"})
    save_weights(paths.model("router"), nets.build_router("router-s", cfg.cluster.k),
                 {"kind": "router", "net": "router-s", "num_experts": cfg.cluster.k})
    if evaluator:
        save_weights(paths.model("evaluator"), nets.build_classifier("classifier-s", 10),
                     {"kind": "evaluator", "net": "classifier-s", "num_classes": 10})


def run_cli(root: Path, *args: str, columns: int = 200) -> Any:
    """Run the CLI in-process from the repo root ``root`` (outputs go under the cwd) with its params.yaml;
    return typer's Result (exit_code, output), whatever the exit code."""
    from typer.testing import CliRunner

    from ddmbench.cli import app

    old = Path.cwd()
    os.chdir(root)
    try:
        return CliRunner(env={"NO_COLOR": "1", "COLUMNS": str(columns)}).invoke(
            app, [*args, "--params", str(root / "params.yaml")])
    finally:
        os.chdir(old)


def invoke(root: Path, *args: str) -> str:
    """``run_cli`` that must succeed; returns the output."""
    result = run_cli(root, *args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A fresh tiny project (nothing run yet) with tracking disabled."""
    return make_project(tmp_path / "repo")


# ----------------------------------------------------------------------------------------------
# MLflow: one migrated template DB per test run, copied per test
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()  # creates and migrates the schema
    return db


@pytest.fixture
def tracking_uri(tmp_path: Path, mlflow_template: Path) -> str:
    db = tmp_path / "mlflow.db"
    shutil.copy(mlflow_template, db)
    return f"sqlite:///{db}"


@pytest.fixture(autouse=True)
def no_system_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read a distribution's dataset package installed on this machine (e.g. Debian's
    /usr/share/datasets/fashion-mnist): tests use synthetic files only; a test opts in with its own folder."""
    from dataclasses import replace

    from ddmbench.data.datasets import DATASETS

    for name, spec in list(DATASETS.items()):
        monkeypatch.setitem(DATASETS, name, replace(spec, system_dir=None))


# ----------------------------------------------------------------------------------------------
# a finished pipeline run and its baseline, for the regression gate's tests
# ----------------------------------------------------------------------------------------------

GATE_POLICIES = ["monolith", "full", "top-1", "threshold-0.3"]


@pytest.fixture(scope="session")
def gate_run(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The tiny project run through the stages the gate reads, from untrained models (torch seed 0): prepare,
    cluster, features, then sample, evaluate and analyze for every policy of GATE_POLICIES, contrast, and
    ``ddmbench baseline`` writing ``baseline.json`` from that run. Tests copy it before changing anything."""
    from ddmbench.pipeline import cluster, features, prepare

    project = make_project(tmp_path_factory.mktemp("gate") / "repo", policies=GATE_POLICIES)
    cfg, paths = project.config(), project.paths
    prepare.run(cfg, paths)
    cluster.run(cfg, paths)
    save_untrained_models(cfg, paths, monolith=True, evaluator=True)
    features.run(cfg, paths)
    for label in GATE_POLICIES:
        for stage in ("sample", "evaluate", "analyze"):
            invoke(project.root, stage, "--policy", label)
    invoke(project.root, "contrast")
    invoke(project.root, "baseline", "--why", "the test suite's run", "--current", str(paths.root / "metrics"),
           "--out", str(project.root / "baseline.json"))
    return project
