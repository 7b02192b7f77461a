"""The standard feature spaces (Inception-v3, DINOv2): the weights' SHA-256 is checked before anything reads them,
the override admits another file, features have the right size, the Fréchet distance behaves in each space, and
the stages skip a space whose weights are absent with one line.

No real weights can be downloaded here: each test makes a randomly initialised network of the same architecture
and saves it in tmp_path. Inception runs at 75 pixels (its smallest input) in the fast tests; DINOv2 on
ViT-S/14 (``evaluate.dinov2_arch``), ViT-L/14 only in a slow test.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from unittest import mock

import pytest
import torch
from conftest import Project, make_project, save_untrained_models

from ddmbench.errors import ArtifactError
from ddmbench.evaluation.feature_spaces import load_dinov2, load_inception, rgb_uint8, space_features
from ddmbench.evaluation.fid import fid
from ddmbench.evaluation.weights_files import INCEPTION_FILE, INCEPTION_SHA256, default_weights

SMALL = "vit_small_patch14_dinov2"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def random_inception(path: Path) -> str:
    """A randomly initialised torch-fidelity Inception-v3 state dict at ``path`` (He-normal convolutions, so that
    images stay apart through 90 layers); its SHA-256."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.manual_seed(0)
    with mock.patch("torch_fidelity.feature_extractor_inceptionv3.torch.load", return_value={}), \
            mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict"):
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="none")
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)
    return sha256(path)


def random_dinov2(path: Path, arch: str = SMALL, meta: bool = False) -> str:
    """A random timm DINOv2 ViT at 518 pixels (as the real checkpoints), layer scales 1 (not 1e-5, which would
    leave the class token blind to the image), saved as safetensors or, with ``meta``, as Meta's .pth (with its
    mask_token); its SHA-256."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model(arch, pretrained=False, img_size=518, num_classes=0)
    state = {k: (torch.ones_like(v) if k.endswith(".gamma") else v).contiguous() for k, v in net.state_dict().items()}
    if meta:
        torch.save({**state, "mask_token": torch.zeros(1, state["cls_token"].shape[-1])}, path)
    else:
        save_file(state, str(path))
    return sha256(path)


def images(n: int, seed: int, channels: int = 1, shift: int = 0) -> torch.Tensor:
    """uint8 (n, channels, 28, 28) noise images, brighter by ``shift``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 200, (n, channels, 28, 28), generator=g)
    return (x + shift).clamp(0, 255).to(torch.uint8)


@pytest.fixture
def fast_inception(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    monkeypatch.setattr(FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", 75)


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("inception") / INCEPTION_FILE
    return path, random_inception(path)


@pytest.fixture(scope="module")
def dinov2_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vits14.safetensors"
    return path, random_dinov2(path)


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# ------------------------------------------------------------------------------------------------
# the digest, checked before anything is read
# ------------------------------------------------------------------------------------------------

class Payload:
    """Unpickling this touches a marker file: proof that a file was deserialised."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("space", ["inception", "dinov2"])
def test_a_file_with_another_digest_is_refused_before_anything_reads_it(space: str, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    path = tmp_path / ("weights.pth" if space == "dinov2" else INCEPTION_FILE)
    path.write_bytes(pickle.dumps(Payload(marker)))
    load = (lambda: load_inception(path, INCEPTION_SHA256)) if space == "inception" else \
        (lambda: load_dinov2(path, "0" * 64, SMALL))
    with mock.patch("torch.load", side_effect=AssertionError("torch.load called")) as spy, \
            pytest.raises(ArtifactError) as exc:
        load()
    assert not spy.called and not marker.exists()
    text = one_line(exc)
    expected = INCEPTION_SHA256 if space == "inception" else "0" * 64
    for part in (str(path), sha256(path), expected, default_weights(space), f"evaluate.weights_sha256.{space}"):
        assert part in text, (part, text)
    pickle.loads(path.read_bytes())
    assert marker.exists()                                  # the file was a live payload


def test_the_inception_digest_is_pinned_and_named_in_the_file_name() -> None:
    assert INCEPTION_SHA256 == "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
    assert INCEPTION_FILE == f"weights-inception-2015-12-05-{INCEPTION_SHA256[:8]}.pth"
    from ddmbench.config.sections import EvaluateConfig

    assert default_weights("inception") in EvaluateConfig.model_fields["inception_weights"].description


def test_a_missing_or_unreadable_path_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as exc:
        load_inception(tmp_path / "nowhere.pth", INCEPTION_SHA256)
    assert "nowhere.pth" in one_line(exc) and default_weights("inception") in one_line(exc)
    with pytest.raises(ArtifactError) as exc:
        load_dinov2(tmp_path, "0" * 64, SMALL)                           # a directory
    assert str(tmp_path) in one_line(exc)


@pytest.mark.slow
def test_a_file_let_through_by_the_override_must_still_be_the_architecture(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(ArtifactError) as exc:
        load_inception(path, sha256(path))
    assert "no Inception-v3 state dict" in one_line(exc)
    with pytest.raises(ArtifactError) as exc:
        load_dinov2(path, sha256(path), SMALL)
    assert f"no {SMALL} state dict" in one_line(exc)


# ------------------------------------------------------------------------------------------------
# features and distances in each space
# ------------------------------------------------------------------------------------------------

def test_grayscale_is_repeated_to_three_channels() -> None:
    gray = images(2, 0)
    rgb = rgb_uint8(gray)
    assert rgb.shape == (2, 3, 28, 28) and all(torch.equal(rgb[:, c], gray[:, 0]) for c in range(3))
    with pytest.raises(ValueError):
        rgb_uint8(gray.float())


@pytest.mark.slow
def test_inception_features_and_frechet_distance(inception_file: tuple[Path, str], fast_inception: None) -> None:
    path, digest = inception_file
    net = load_inception(path, digest)                                   # the override admits the random file
    real = space_features(net, images(8, 1))
    assert real.shape == (8, 2048) and real.dtype == torch.float32
    spread = float(real.var(0).sum())                                    # tr(S), the scale of the distances
    assert abs(fid(real, real)) < 1e-4 * spread
    assert fid(real, space_features(net, images(8, 1, shift=50))) > 0.1 * spread
    assert torch.allclose(space_features(net, images(2, 1)), space_features(net, rgb_uint8(images(2, 1))))


@pytest.mark.slow
@pytest.mark.parametrize("meta", [False, True], ids=["timm-safetensors", "meta-pth"])
def test_dinov2_features_and_frechet_distance(dinov2_file: tuple[Path, str], tmp_path: Path, meta: bool) -> None:
    path, digest = dinov2_file
    if meta:                                                             # Meta's key layout, read weights_only
        path = tmp_path / "dinov2_vits14_pretrain.pth"
        digest = random_dinov2(path, meta=True)
    net = load_dinov2(path, digest, SMALL)
    real = space_features(net, images(8, 1))
    assert real.shape == (8, 384)
    spread = float(real.var(0).sum())
    assert abs(fid(real, real)) < 1e-4 * spread
    assert fid(real, space_features(net, images(8, 1, shift=50))) > 0.1 * spread


def test_the_position_embedding_is_resampled_as_dinov2_does() -> None:
    from ddmbench.evaluation.feature_spaces import hub_pos_embed

    pos = torch.randn(1, 1 + 37 * 37, 8)
    out = hub_pos_embed(pos, 16)
    assert out.shape == (1, 1 + 16 * 16, 8) and torch.equal(out[:, 0], pos[:, 0])
    assert hub_pos_embed(out, 16) is out


@pytest.mark.slow
def test_vit_large_gives_1024_features(tmp_path: Path) -> None:
    path = tmp_path / "dinov2_vitl14.safetensors"
    digest = random_dinov2(path, arch="vit_large_patch14_dinov2")
    net = load_dinov2(path, digest)
    assert space_features(net, images(1, 0)).shape == (1, 1024)


@pytest.mark.slow
def test_inception_at_its_own_299_pixels_gives_2048_features(inception_file: tuple[Path, str]) -> None:
    path, digest = inception_file
    assert space_features(load_inception(path, digest), images(1, 0, channels=3)).shape == (1, 2048)


# ------------------------------------------------------------------------------------------------
# the stages
# ------------------------------------------------------------------------------------------------

def staged(project: Project) -> None:
    from ddmbench.pipeline import prepare

    cfg = project.config()
    prepare.run(cfg, project.paths)
    save_untrained_models(cfg, project.paths, evaluator=True)


def test_an_absent_weights_file_skips_the_space_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ddmbench.io import load_tensors
    from ddmbench.pipeline import features

    project = make_project(tmp_path / "repo", evaluate={"feature_spaces": ["classifier", "inception"]})
    staged(project)
    capsys.readouterr()
    features.run(project.config(), project.paths)
    lines = [line for line in capsys.readouterr().out.splitlines() if "inception" in line]
    assert len(lines) == 1 and "skipped" in lines[0] and default_weights("inception") in lines[0]
    assert "spaces" not in load_tensors(project.paths.real_features, "features")


def test_a_weights_path_that_is_a_folder_is_one_line(tmp_path: Path) -> None:
    from ddmbench.pipeline import features

    project = make_project(tmp_path / "repo", evaluate={"feature_spaces": ["classifier", "inception"],
                                                        "inception_weights": "data"})
    staged(project)
    with pytest.raises(ArtifactError) as exc:
        features.run(project.config(), project.paths)
    assert "evaluate.inception_weights: data is not a file" in one_line(exc)


@pytest.mark.slow
def test_evaluate_reports_fid_inception_and_leaves_the_classifier_metrics_unchanged(
        tmp_path: Path, inception_file: tuple[Path, str], fast_inception: None) -> None:
    from ddmbench.io import read_json
    from ddmbench.pipeline import cluster, evaluate, features, sample
    from ddmbench.sampling.policies import parse_policy

    project = make_project(tmp_path / "repo", policies=["full"], evaluate={"groups": 4})  # 5 eigh of 2048^2 each
    staged(project)
    cfg, paths = project.config(), project.paths
    cluster.run(cfg, paths)
    features.run(cfg, paths)
    sample.run(cfg, paths, parse_policy("full"))
    before = evaluate.run(cfg, paths, parse_policy("full"))
    before_file = paths.eval_metrics("full").read_bytes()

    src, digest = inception_file
    (project.root / "weights").mkdir()
    (project.root / default_weights("inception")).write_bytes(src.read_bytes())
    project.update(evaluate={"feature_spaces": ["classifier", "inception"], "weights_sha256": {"inception": digest}})
    cfg = project.config()
    features.run(cfg, paths)
    after = evaluate.run(cfg, paths, parse_policy("full"))
    assert {k: v for k, v in after.items() if k in before} == before          # the classifier numbers, bit for bit
    added = set(after) - set(before)
    assert {"fid_inception", "fid_inception_ci95", "fid_inception_inf", "fid_inception_inf_ci95", "fid_inception_se",
            "fid_inception_estimand", "feature_spaces"} <= added
    assert after["feature_spaces"]["inception"]["weights_sha256"] == digest
    assert after["fid_inception"] > 0 and read_json(paths.eval_metrics("full"), "evaluate") == after
    assert before_file != paths.eval_metrics("full").read_bytes()

    project.update(evaluate={"weights_sha256": {"inception": None}})        # back to the pinned digest: refused
    with pytest.raises(ArtifactError) as exc:
        features.run(project.config(), paths)
    assert INCEPTION_SHA256 in one_line(exc)
