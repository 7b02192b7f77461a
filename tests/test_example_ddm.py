"""examples/mixed_ddm: a DDM trained with diffusers and a plain loop (no ddmbench code) loads and samples in ddmbench.

Fast: every recipe's training example, read through the convention its ddm.yaml entry declares, is the harness's
state and velocity (so the manifest says what the training did); the user's router class is imported from its
``module:factory`` name, and is a one-line error when its module is not on the path; bad options are one-line
errors. Slow: the script trains on synthetic MNIST idx files (never skipped), the folder loads as a mixed DDM
(ε + velocity experts, K router outputs, the DDPM-covered time range), one sampling call gives finite images,
and declaring the ε expert as a velocity expert changes the trajectory.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import N_TRAIN, write_mnist

from ddmbench.ddm.conventions import VariancePreserving, to_velocity
from ddmbench.ddm.folder import load_ddm
from ddmbench.ddm.manifest import ExpertEntry, Manifest
from ddmbench.ddm.networks import load_network
from ddmbench.errors import ConfigError
from ddmbench.sampling.field import RoutedField
from ddmbench.sampling.policies import parse_policy
from ddmbench.sampling.sampler import generate

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mixed_ddm"
K = 3


def _train_module():
    spec = importlib.util.spec_from_file_location("mixed_ddm_train", EXAMPLE / "train.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train = _train_module()


# ---------------------------------------------------------------------------------------------------- fast


@pytest.mark.parametrize("index", range(len(train.RECIPES)))
def test_each_recipe_trains_what_its_manifest_entry_declares(index: int) -> None:
    recipe = train.RECIPES[index]()
    entry = ExpertEntry.model_validate({"path": f"expert_{index}", **recipe.entry()})
    spec = entry.spec(Path("."))
    gen = torch.Generator().manual_seed(index)
    x0, eps = torch.rand(16, *train.IMAGE_SHAPE, generator=gen) * 2 - 1, torch.randn(16, *train.IMAGE_SHAPE, generator=gen)
    x, timestep, target = recipe.example(x0, eps, gen)
    # x = a·x₀ + b·ε per image (least squares, exact here); the harness's state with that SNR is at t = b / (a + b)
    basis = torch.stack([x0.flatten(1), eps.flatten(1)], dim=2).double()
    a, b = torch.linalg.lstsq(basis, x.flatten(1).double().unsqueeze(2)).solution.squeeze(2).unbind(1)
    t = (b / (a + b)).float()
    seen = spec.convention.at(t)
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    assert torch.allclose(seen.timestep, timestep.float(), atol=1e-2)
    assert torch.allclose(seen.state(x_t), x, atol=1e-4)
    assert torch.allclose(to_velocity(target, spec.prediction, x, seen, spec.convention), eps - x0, atol=1e-3)


def test_the_recipes_mix_predictions_and_share_the_ddpm_range() -> None:
    entries = [{"path": f"expert_{i}", **train.RECIPES[i % len(train.RECIPES)]().entry()} for i in range(K)]
    manifest = Manifest.model_validate({"image_shape": list(train.IMAGE_SHAPE), "experts": entries,
                                        "router": {"path": "router", "convention": train.ROUTER_CONVENTION}})
    assert [e.prediction for e in manifest.experts] == ["epsilon", "velocity", "velocity"]
    assert manifest.experts[0].spec(Path(".")).covers() == VariancePreserving.from_betas().covers()


def test_the_router_class_is_imported_from_its_module_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    config = {**train.ROUTER, "num_experts": K}
    folder = tmp_path / "router"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != EXAMPLE])
    monkeypatch.delitem(sys.modules, "router", raising=False)
    with pytest.raises(ConfigError, match=r"'router:build' cannot be imported") as err:
        load_network(folder)
    assert "\n" not in str(err.value)
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import router

    save_file(router.build(config).state_dict(), str(folder / "diffusion_pytorch_model.safetensors"))
    net, _, _ = load_network(folder)
    assert net(torch.zeros(2, *train.IMAGE_SHAPE), torch.tensor([0.1, 0.9])).shape == (2, K)


@pytest.mark.parametrize(("args", "message"), [
    (["--data-root", "no-such-folder"], "holds no MNIST/raw folder"),
    (["--k", "1"], "--k must be at least 2"),
    (["--steps", "0"], "--steps must be at least 1"),
])
def test_bad_options_are_one_line_errors(args: list[str], message: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        train.main(["--out", str(tmp_path / "ddm"), *args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err.splitlines()[-1] and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------- slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's DDM trained for a few steps on synthetic MNIST idx files in torchvision's layout."""
    root = tmp_path_factory.mktemp("example")
    write_mnist(root / "data")
    train.main(["--data-root", str(root / "data"), "--out", str(root / "ddm"), "--k", str(K), "--steps", "6",
                "--batch-size", "4", "--seed", "0"])
    return root / "ddm"


@pytest.fixture
def router_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE))       # as PYTHONPATH=examples/mixed_ddm does for a user


def _sample(folder: Path, t_range: tuple[float, float] | None = None) -> torch.Tensor:
    ddm = load_ddm(folder)
    field = RoutedField(ddm.experts, ddm.router, parse_policy("full"), image_shape=ddm.image_shape)
    return generate(field, seeds=range(6), nfe_steps=4, solver="euler", batch_size=6,
                    t_range=t_range or ddm.time_range).images


@pytest.mark.slow
def test_the_trained_folder_loads_as_a_mixed_ddm(trained: Path, router_importable: None) -> None:
    ddm = load_ddm(trained)
    assert [e.spec.prediction for e in ddm.experts] == ["epsilon", "velocity", "velocity"]
    assert ddm.num_experts == K and ddm.router(torch.zeros(1, 1, 28, 28), torch.tensor([0.5])).shape == (1, K)
    assert ddm.time_range == pytest.approx((0.0099, 0.9937), abs=1e-4) and ddm.image_shape == (1, 28, 28)
    clusters = json.loads((trained / "clusters.json").read_text())
    assert {k: clusters[k] for k in ("dataset", "split", "train_limit")} == {"dataset": "mnist", "split": "train",
                                                                           "train_limit": 0}
    assert len(clusters["indices"]) == K and sorted(sum(clusters["indices"], [])) == list(range(N_TRAIN))
    assert not list(trained.parent.glob(".*partial"))


@pytest.mark.slow
def test_one_sampling_call_gives_finite_images(trained: Path, router_importable: None) -> None:
    images = _sample(trained)
    assert images.shape == (6, 1, 28, 28) and torch.isfinite(images).all()
    assert torch.equal(images, _sample(trained))


@pytest.mark.slow
def test_declaring_the_epsilon_expert_as_velocity_changes_the_trajectory(trained: Path, tmp_path: Path,
                                                                          router_importable: None) -> None:
    wrong = Path(shutil.copytree(trained, tmp_path / "wrong"))
    manifest = yaml.safe_load((wrong / "ddm.yaml").read_text())
    manifest["experts"][0].update(prediction="velocity", convention={"kind": "flow", "timestep_scale": 1000})
    (wrong / "ddm.yaml").write_text(yaml.safe_dump(manifest))
    t_range = load_ddm(trained).time_range
    assert load_ddm(wrong).time_range == (0.0, 1.0)
    right, misread = _sample(trained), _sample(wrong, t_range)
    assert (right - misread).abs().max() > 1e-2
