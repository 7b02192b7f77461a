"""CIFAR-10: synthetic pickled batches in torchvision's layout (<root>/cifar-10-batches-py), verified against
torchvision's MD5 list (monkeypatched to the synthetic files' MD5s) and a sha256sum list, parsed into uint8
(N, 3, 32, 32); the tarball source; and the networks, cost, sampling and grids on 3x32x32 images."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Project, invoke, make_dvc_project, make_images
from PIL import Image

from ddmbench.config import parse_config
from ddmbench.data import cifar
from ddmbench.data import datasets as data
from ddmbench.data.shapes import CIFAR_SHAPE, MNIST_SHAPE
from ddmbench.errors import ArtifactError, ConfigError, DataError
from ddmbench.evaluation.cost import flops_per_image
from ddmbench.io import load_tensors, read_json, save_tensors
from ddmbench.models import nets
from ddmbench.models.checkpoints import load_classifier, load_router, load_velocity_net, save_weights
from ddmbench.pipeline import evaluate, prepare
from ddmbench.report.document import save_grid
from ddmbench.sampling.field import ModelField, RoutedField
from ddmbench.sampling.policies import parse_policy
from ddmbench.sampling.sampler import generate, noise_for

PER_BATCH = 48       # images per synthetic batch: 5 x 48 = 240 training images, 48 test images


def cifar_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, 32, 32) uint8 images with structure (the conftest patterns, padded and tinted per channel) and
    (n,) labels in 0..9."""
    gray, labels = make_images(n, seed=seed)                                  # (n, 28, 28), labels 0..3
    padded = np.pad(gray, ((0, 0), (2, 2), (2, 2)))                           # (n, 32, 32)
    tint = np.array([1.0, 0.6, 0.3])[:, None, None]
    images = (padded[:, None].astype(np.float64) * tint[None]).astype(np.uint8)
    return images, (labels.astype(np.int64) + 3 * (np.arange(n) % 2)) % 10


def batch_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """One batch file as CIFAR-10 ships it: a pickled dict with bytes keys, data (N, 3072) uint8, labels list."""
    batch = {b"batch_label": b"synthetic", b"labels": [int(y) for y in labels],
             b"data": images.reshape(len(images), -1), b"filenames": [b"x.png"] * len(images)}
    return pickle.dumps(batch, protocol=2)


def write_cifar(root: Path, per_batch: int = PER_BATCH) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The six batch files under <root>/cifar-10-batches-py and <root>/cifar10.sha256; {name: (images, labels)}."""
    folder = root / cifar.FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    content = {name: cifar_images(per_batch, seed=100 + i) for i, name in enumerate(cifar.FILES)}
    for name, (x, y) in content.items():
        (folder / name).write_bytes(batch_bytes(x, y))
    (root / "cifar10.sha256").write_text("".join(f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}\n"
                                                 for n in cifar.FILES))
    return content


def md5s_of(folder: Path, names: tuple[str, ...]) -> dict[str, str]:
    return {n: hashlib.md5((folder / n).read_bytes()).hexdigest() for n in names}


@pytest.fixture
def cifar_project(project: Project, monkeypatch: pytest.MonkeyPatch) -> tuple[Project, dict]:
    """The tiny project switched to cifar10 with synthetic batches; torchvision's MD5 list = their MD5s."""
    content = write_cifar(project.root / "data")
    md5s = md5s_of(project.root / "data" / cifar.FOLDER, cifar.FILES)   # of the intact files
    monkeypatch.setattr(cifar, "torchvision_md5s", lambda: md5s)
    project.update(data={"dataset": "cifar10", "checksums": "data/cifar10.sha256"})
    return project, content


# ----------------------------------------------------------------------------------------------
# prepare
# ----------------------------------------------------------------------------------------------

def test_prepare_parses_cifar_batches(cifar_project: tuple[Project, dict]) -> None:
    project, content = cifar_project
    manifest = prepare.run(project.config(), project.paths)
    assert manifest["dataset"] == "cifar10" and manifest["source"] == "local"
    assert manifest["image_shape"] == [3, 32, 32] and manifest["classes"][0] == "airplane"
    assert manifest["n_train"] == 5 * PER_BATCH and manifest["n_test"] == PER_BATCH
    assert set(manifest["files"]) == set(cifar.FILES)
    blob = data.load_prepared(project.paths.dataset)
    assert blob["train_x"].dtype == torch.uint8 and blob["train_x"].shape == (5 * PER_BATCH, 3, 32, 32)
    expected = np.concatenate([content[n][0] for n in cifar.TRAIN_FILES])
    assert np.array_equal(blob["train_x"].numpy(), expected)
    assert np.array_equal(blob["test_x"].numpy(), content["test_batch"][0])
    assert blob["test_y"].dtype == torch.int64 and blob["test_y"].tolist() == content["test_batch"][1].tolist()


@pytest.mark.parametrize("checksums", ["data/cifar10.sha256", None])
def test_a_corrupted_batch_is_named_and_nothing_is_written(cifar_project: tuple[Project, dict],
                                                          checksums: str | None) -> None:
    project, _ = cifar_project
    project.update(data={"checksums": checksums})
    path = project.root / "data" / cifar.FOLDER / "data_batch_3"
    blob = bytearray(path.read_bytes())
    blob[-40] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError) as info:
        prepare.run(project.config(), project.paths)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert ("SHA-256 mismatch" if checksums else "MD5 mismatch against torchvision's list") in message
    assert not project.paths.dataset.exists() and not project.paths.manifest.exists()


def test_torchvision_md5_list_alone_verifies_the_batches(cifar_project: tuple[Project, dict],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    project, _ = cifar_project
    project.update(data={"checksums": None})           # no SHA-256 list: torchvision's MD5s are the check
    assert data.read_checksums(None, "cifar10") == {}  # the shipped file only explains that
    assert prepare.run(project.config(), project.paths)["n_test"] == PER_BATCH
    folder = project.root / "data" / cifar.FOLDER
    wrong = {**md5s_of(folder, cifar.FILES), "test_batch": "0" * 32}
    monkeypatch.setattr(cifar, "torchvision_md5s", lambda: wrong)
    with pytest.raises(DataError, match=r"cifar-10-batches-py/test_batch: MD5 mismatch against torchvision's list"):
        prepare.run(project.config(), project.paths)


def test_the_real_torchvision_list_is_used_by_default() -> None:
    from torchvision.datasets import CIFAR10

    assert cifar.torchvision_md5s() == dict(CIFAR10.train_list + CIFAR10.test_list)
    assert set(cifar.torchvision_md5s()) == set(cifar.FILES)


def test_a_user_list_must_cover_every_batch(cifar_project: tuple[Project, dict]) -> None:
    project, _ = cifar_project
    sums = project.root / "data" / "cifar10.sha256"
    sums.write_text("".join(line + "\n" for line in sums.read_text().splitlines() if "test_batch" not in line))
    with pytest.raises(DataError, match="no entry for test_batch"):
        prepare.run(project.config(), project.paths)


def _tarball(root: Path, folder: Path) -> Path:
    path = root / cifar.ARCHIVE
    with tarfile.open(path, "w:gz") as tar:
        for name in cifar.FILES:
            tar.add(folder / name, arcname=f"{cifar.FOLDER}/{name}")
    return path


def test_the_tarball_under_the_root_is_verified_and_extracted(cifar_project: tuple[Project, dict],
                                                              monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    project, content = cifar_project
    folder = project.root / "data" / cifar.FOLDER
    md5s = md5s_of(folder, cifar.FILES)
    monkeypatch.setattr(cifar, "torchvision_md5s", lambda: md5s)
    stash = tmp_path / "stash"
    folder.rename(stash)
    archive = _tarball(project.root / "data", stash)
    monkeypatch.setattr(cifar, "torchvision_archive_md5", lambda: "f" * 32)
    project.update(data={"sources": ["local"]})
    with pytest.raises(DataError, match=f"{archive}: MD5 mismatch.*place the extracted cifar-10-batches-py folder"):
        prepare.run(project.config(), project.paths)
    assert not any(p.is_file() for p in folder.rglob("*"))     # nothing extracted from a bad archive
    monkeypatch.setattr(cifar, "torchvision_archive_md5", lambda: hashlib.md5(archive.read_bytes()).hexdigest())
    manifest = prepare.run(project.config(), project.paths)
    assert manifest["source"] == "local" and manifest["n_train"] == 5 * PER_BATCH
    assert np.array_equal(data.load_prepared(project.paths.dataset)["test_x"].numpy(), content["test_batch"][0])
    assert all((folder / n).exists() for n in cifar.FILES) and not any(p.name.startswith(".staging") for p in folder.iterdir())


def test_no_data_and_no_network_is_one_clear_line(cifar_project: tuple[Project, dict], monkeypatch: pytest.MonkeyPatch
                                                  ) -> None:
    project, _ = cifar_project
    for name in cifar.FILES:
        (project.root / "data" / cifar.FOLDER / name).unlink()

    def offline(dest: Path, timeout_s: float, **_: object) -> None:
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(data, "fetch_torchvision", offline)
    project.update(data={"sources": ["local", "torchvision"]})
    with pytest.raises(DataError) as info:
        prepare.run(project.config(), project.paths)
    message = str(info.value)
    assert message.startswith("could not obtain CIFAR10 (torchvision: <urlopen error") and "\n" not in message
    assert f"place the extracted cifar-10-batches-py folder or cifar-10-python.tar.gz under {project.root / 'data'}" \
        in message


def test_a_pickle_that_builds_other_objects_is_refused(cifar_project: tuple[Project, dict],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    project, _ = cifar_project
    folder = project.root / "data" / cifar.FOLDER

    class Payload:
        def __reduce__(self) -> tuple:
            return (os.getcwd, ())

    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": Payload(), b"labels": []}))
    project.update(data={"checksums": None})
    monkeypatch.setattr(cifar, "torchvision_md5s", lambda: md5s_of(folder, cifar.FILES))
    with pytest.raises(DataError, match=r"cannot parse .*data_batch_2 \(unexpected object posix.getcwd\)"):
        prepare.run(project.config(), project.paths)


def test_unknown_dataset_lists_the_choices() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"data": {"dataset": "cifar100"}})
    assert str(info.value) == ("params.yaml: data.dataset: Input should be 'mnist', 'fashion-mnist' or 'cifar10' "
                               "(got 'cifar100')")


# ----------------------------------------------------------------------------------------------
# networks, cost, sampling, grids on 3x32x32
# ----------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("preset", list(nets.VELOCITY_PRESETS))
def test_velocity_nets_on_cifar_shape(preset: str) -> None:
    net = nets.build_velocity_net(preset, CIFAR_SHAPE)
    x, t = torch.randn(2, *CIFAR_SHAPE), torch.rand(2)
    assert net(x, t).shape == (2, 3, 32, 32) and net.image_shape == CIFAR_SHAPE
    assert flops_per_image(net) > flops_per_image(nets.build_velocity_net(preset)) > 0   # more pixels, more FLOPs
    assert flops_per_image(net) == flops_per_image(net, image_shape=CIFAR_SHAPE)


def test_dit_patch_grid_on_cifar() -> None:
    assert nets.build_velocity_net("dit-xs", CIFAR_SHAPE).pos_embed.shape[1] == 8 * 8     # patch 4 -> 8x8 tokens
    assert nets.build_velocity_net("dit-s", CIFAR_SHAPE).pos_embed.shape[1] == 16 * 16


def test_router_and_classifier_on_cifar_shape() -> None:
    x, t = torch.randn(5, *CIFAR_SHAPE), torch.rand(5)
    assert nets.build_router("router-s", 8, CIFAR_SHAPE)(x, t).shape == (5, 8)
    clf = nets.build_classifier("classifier-s", 10, CIFAR_SHAPE)
    assert clf(x).shape == (5, 10) and clf.features(x).shape == (5, clf.num_features)
    with pytest.raises(ValueError, match="divisible by 4"):
        nets.build_classifier("classifier-s", 10, (3, 30, 30))


def _weights_digest(net: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in net.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def test_mnist_nets_are_the_networks_of_before() -> None:
    # names, shapes and initial weights (seed 0) of the 1x28x28 networks, digested on the code before the image
    # shape became a parameter: MNIST runs build exactly the same networks from the same RNG draws
    before = {"unet-xs": "2dbaca8853fc3522", "dit-xs": "59261f8878e52ec3", "router-s": "86ca3e45e704958e",
              "classifier-s": "03b6ec4bccef2872"}
    builds = {"unet-xs": lambda: nets.build_velocity_net("unet-xs", MNIST_SHAPE),
              "dit-xs": lambda: nets.build_velocity_net("dit-xs", MNIST_SHAPE),
              "router-s": lambda: nets.build_router("router-s", 4, MNIST_SHAPE),
              "classifier-s": lambda: nets.build_classifier("classifier-s", 10, MNIST_SHAPE)}
    for name, build in builds.items():
        torch.manual_seed(0)
        assert _weights_digest(build()) == before[name], name
    assert nets.build_classifier("classifier-s").body[-2].in_features == 64 * 7 * 7


def test_sampling_takes_the_noise_shape_from_the_networks() -> None:
    torch.manual_seed(0)
    experts = [nets.build_velocity_net("unet-xs", CIFAR_SHAPE).eval() for _ in range(2)]
    router = nets.build_router("router-s", 2, CIFAR_SHAPE).eval()
    field = RoutedField(experts, router, parse_policy("top-1"))
    assert field.image_shape == CIFAR_SHAPE
    out = generate(field, [0, 1, 2], nfe_steps=2, solver="euler", batch_size=2)
    assert out.images.shape == (3, 3, 32, 32) and torch.isfinite(out.images).all()
    single = generate(ModelField(experts[0]), [0], nfe_steps=1, solver="euler", batch_size=1)
    assert single.images.shape == (1, 3, 32, 32)
    assert torch.equal(noise_for([7], CIFAR_SHAPE)[0], torch.randn(CIFAR_SHAPE, generator=torch.Generator().manual_seed(7)))
    with pytest.raises(ValueError, match="different image shapes"):
        RoutedField([experts[0], nets.build_velocity_net("unet-xs")], None, parse_policy("uniform"))


def test_checkpoints_record_and_check_the_image_shape(tmp_path: Path) -> None:
    path = tmp_path / "expert.pt"
    save_weights(path, nets.build_velocity_net("unet-xs", CIFAR_SHAPE),
                 {"kind": "expert", "net": "unet-xs", "image_shape": list(CIFAR_SHAPE)})
    assert load_velocity_net(path, "expert", "x").image_shape == CIFAR_SHAPE
    with pytest.raises(ArtifactError, match=r"trained on 3x32x32 images, not on the 1x28x28 images of the prepared "
                                            r"dataset and the other networks; re-run `ddmbench train-expert`"):
        load_velocity_net(path, "expert", "ddmbench train-expert", image_shape=MNIST_SHAPE)
    legacy = tmp_path / "legacy.pt"  # written before the shape was recorded: 1x28x28
    save_weights(legacy, nets.build_velocity_net("unet-xs"), {"kind": "expert", "net": "unet-xs"})
    assert load_velocity_net(legacy, "expert", "x").image_shape == MNIST_SHAPE
    save_weights(path, nets.build_router("router-s", 3, CIFAR_SHAPE),
                 {"kind": "router", "net": "router-s", "num_experts": 3, "image_shape": [3, 32, 32]})
    assert load_router(path).image_shape == CIFAR_SHAPE
    save_weights(path, nets.build_classifier("classifier-s", 10, CIFAR_SHAPE),
                 {"kind": "evaluator", "net": "classifier-s", "num_classes": 10, "image_shape": [3, 32, 32]})
    assert load_classifier(path, image_shape=CIFAR_SHAPE).image_shape == CIFAR_SHAPE


def test_sampling_refuses_experts_trained_on_different_shapes(project: Project) -> None:
    from ddmbench.pipeline.fields import build_field

    cfg, paths = project.config(), project.paths
    for k, shape in enumerate((CIFAR_SHAPE, MNIST_SHAPE)):
        save_weights(paths.expert(k), nets.build_velocity_net("unet-xs", shape),
                     {"kind": "expert", "net": "unet-xs", "k": k, "num_experts": 2, "image_shape": list(shape)})
    with pytest.raises(ArtifactError, match=r"expert-1.pt was trained on 1x28x28 images, not on the 3x32x32"):
        build_field(cfg, paths, cfg.policy("uniform"), torch.device("cpu"))
    save_weights(paths.expert(1), nets.build_velocity_net("unet-xs", CIFAR_SHAPE),
                 {"kind": "expert", "net": "unet-xs", "k": 1, "num_experts": 2, "image_shape": list(CIFAR_SHAPE)})
    assert build_field(cfg, paths, cfg.policy("uniform"), torch.device("cpu")).image_shape == CIFAR_SHAPE


def test_sample_files_are_checked_against_the_dataset_shape(tmp_path: Path) -> None:
    good = {"images": torch.zeros(4, 3, 32, 32, dtype=torch.uint8), "seeds": torch.arange(4)}
    assert data.check_sample_images(good, tmp_path / "s.pt", "w", CIFAR_SHAPE).shape == (4, 3, 32, 32)
    with pytest.raises(ArtifactError, match=r"s.pt holds no uint8 \(N, 1x28x28\) images of the prepared dataset "
                                            r"\(got 3x32x32\); re-run `w`"):
        data.check_sample_images(good, tmp_path / "s.pt", "w", MNIST_SHAPE)
    with pytest.raises(ArtifactError, match="no seed per image"):
        data.check_sample_images({"images": good["images"]}, tmp_path / "s.pt", "w")


def test_grids_are_rgb_for_three_channels_and_gray_for_one(tmp_path: Path) -> None:
    rgb = torch.zeros(10, 3, 32, 32, dtype=torch.uint8)
    rgb[:, 0] = 255                                                     # pure red images
    save_grid(rgb, tmp_path / "rgb.png")
    with Image.open(tmp_path / "rgb.png") as img:
        assert img.mode == "RGB" and img.size == (8 * 34 + 2, 2 * 34 + 2)
        assert img.getpixel((5, 5)) == (255, 0, 0)
    save_grid(torch.full((3, 1, 28, 28), 7, dtype=torch.uint8), tmp_path / "gray.png")
    with Image.open(tmp_path / "gray.png") as img:
        assert img.mode == "L" and img.getpixel((5, 5)) == 7


# ----------------------------------------------------------------------------------------------
# end to end: prepare -> cluster -> train -> sample -> evaluate -> analyses on synthetic CIFAR-10
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    project = make_dvc_project(tmp_path_factory.mktemp("cifar-e2e") / "repo")
    write_cifar(project.root / "data")
    project.update(data={"dataset": "cifar10", "checksums": "data/cifar10.sha256"})
    folder = project.root / "data" / cifar.FOLDER
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cifar, "torchvision_md5s", lambda: md5s_of(folder, cifar.FILES))
        invoke(project.root, "run", "--policy", "full")
        invoke(project.root, "analyze", "--policy", "full")
        invoke(project.root, "expert-accuracy")
    yield project


@pytest.mark.slow
def test_cifar_pipeline_end_to_end(cifar_run: Project) -> None:
    paths = cifar_run.paths
    samples = load_tensors(paths.samples("full"), "sample")
    assert samples["images"].shape == (32, 3, 32, 32) and samples["images"].dtype == torch.uint8
    assert samples["images"].float().std() > 0
    meta = load_tensors(paths.expert(0), "x")["meta"]
    assert meta["image_shape"] == [3, 32, 32]
    cost = read_json(paths.sample_metrics("full"), "sample")
    assert cost["expert_gflops_per_eval"] == pytest.approx(
        flops_per_image(nets.build_velocity_net("unet-xs", CIFAR_SHAPE)) / 1e9)
    m = read_json(paths.eval_metrics("full"), "evaluate")
    assert m["n_fake"] == 32 and all(np.isfinite(m[k]) for k in ("fid", "kid", "precision", "recall", "confidence"))
    analysis = read_json(paths.analysis_metrics("full"), "analyze")
    assert np.isfinite(analysis["amplification"]["eps_0.1"]["mean"]) and analysis["alignment"]["hit_rate"] is not None
    assert read_json(paths.expert_accuracy, "expert-accuracy")["n"] > 0


@pytest.mark.slow
def test_cifar_evaluate_refuses_samples_of_another_shape(cifar_run: Project, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    shutil.copytree(cifar_run.root, root)
    project = Project(root, cifar_run.raw)
    path = project.paths.samples("full")
    save_tensors(path, {**load_tensors(path, "x"), "images": torch.zeros(32, 1, 28, 28, dtype=torch.uint8)})
    cfg = project.config()
    with pytest.raises(ArtifactError, match=r"holds no uint8 \(N, 3x32x32\) images of the prepared dataset "
                                            r"\(got 1x28x28\); re-run `ddmbench sample --policy full`"):
        evaluate.run(cfg, project.paths, cfg.policy("full"))


def test_bench_nets_follow_the_dataset_shape() -> None:
    from ddmbench.tools import bench, bench_train

    experts, router, monolith = bench.build_models(2, "unet-xs", image_shape=CIFAR_SHAPE)
    assert router.proj.shape == (3 * 32 * 32, 2) and monolith.image_shape == CIFAR_SHAPE
    out = generate(bench.make_field("top-1", experts, router, monolith), [0, 1], nfe_steps=1, solver="euler",
                   batch_size=2)
    assert out.images.shape == (2, 3, 32, 32)
    assert bench_train.bench_data(4, image_shape=CIFAR_SHAPE).shape == (4, 3, 32, 32)


@pytest.mark.parametrize("command", ["bench", "bench-train"])
def test_bench_dataset_option_lists_the_choices(command: str) -> None:
    from typer.testing import CliRunner

    from ddmbench.cli import app

    result = CliRunner(env={"NO_COLOR": "1", "COLUMNS": "200"}).invoke(app, [command, "--dataset", "cifar100"])
    assert result.exit_code == 2
    assert "--dataset: unknown dataset 'cifar100'; choose one of mnist, fashion-mnist, cifar10" in result.output
