"""DDM folders in Paris's layout: a ddmbench-trained DDM exported and loaded again samples bit-identical images;
diffusers networks load from config.json + safetensors; a bad folder is a one-line error naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import Project, invoke, run_cli

from ddmbench.ddm.folder import load_ddm
from ddmbench.ddm.manifest import read_manifest
from ddmbench.ddm.networks import load_network, save_network
from ddmbench.errors import ArtifactError, ConfigError
from ddmbench.pipeline.artifacts import sample_seeds
from ddmbench.pipeline.fields import build_field
from ddmbench.sampling.field import RoutedField
from ddmbench.sampling.policies import parse_policy
from ddmbench.sampling.sampler import generate

pytestmark = pytest.mark.slow   # the shared pipeline run (conftest gate_run)


@pytest.fixture
def exported(gate_run: Project, tmp_path: Path) -> tuple[Project, Path]:
    root = Path(shutil.copytree(gate_run.root, tmp_path / "repo"))
    invoke(root, "export-ddm", str(tmp_path / "ddm"))
    return Project(root, gate_run.raw), tmp_path / "ddm"


def test_layout_and_manifest(exported: tuple[Project, Path]) -> None:
    project, folder = exported
    k = project.config().cluster.k
    for name in [*(f"expert_{i}" for i in range(k)), "router"]:
        assert (folder / name / "config.json").is_file() and (folder / name / "diffusion_pytorch_model.safetensors").is_file()
    manifest = read_manifest(folder)
    assert [e.prediction for e in manifest.experts] == ["velocity"] * k and manifest.dataset == "mnist"
    clusters = json.loads((folder / "clusters.json").read_text())
    assignments = torch.load(project.paths.clusters, weights_only=True)["assignments"]
    assert sorted(i for rows in clusters["indices"] for i in rows) == list(range(len(assignments)))
    ddm = load_ddm(folder)
    assert ddm.num_experts == k and ddm.time_range == (0.0, 1.0) and ddm.image_shape == (1, 28, 28)
    assert set(ddm.files) >= {"ddm.yaml", "clusters.json", "router/config.json", "expert_0/diffusion_pytorch_model.safetensors"}
    assert all(len(d) == 64 for d in ddm.files.values())


@pytest.mark.parametrize("policy", ["full", "top-1"])
def test_an_exported_ddm_samples_bit_identical_images(exported: tuple[Project, Path], policy: str) -> None:
    project, folder = exported
    cfg, spec = project.config(), parse_policy(policy)
    seeds = sample_seeds(cfg)[:12]
    ddm = load_ddm(folder)
    imported = RoutedField(ddm.experts, ddm.router, spec, cfg.sample.chunk_rows, ddm.image_shape,
                           clock=cfg.sample.routing_clock)
    kw = {"nfe_steps": 3, "solver": "euler", "batch_size": 8}
    ours = generate(build_field(cfg, project.paths, spec, torch.device("cpu")), seeds, **kw)
    theirs = generate(imported, seeds, **kw)
    assert torch.equal(ours.images, theirs.images) and ours.expert_evals == theirs.expert_evals


def test_export_refuses_a_folder_that_is_not_empty(exported: tuple[Project, Path]) -> None:
    project, folder = exported
    result = run_cli(project.root, "export-ddm", str(folder))
    assert result.exit_code == 2 and "is not empty" in result.output and "Traceback" not in result.output


def test_a_diffusers_network_loads_from_its_folder(tmp_path: Path) -> None:
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    unet.save_pretrained(tmp_path / "expert_0", safe_serialization=True)
    net, call, files = load_network(tmp_path / "expert_0")
    x, s = torch.randn(2, 1, 28, 28), torch.tensor([3.0, 500.5])
    with torch.no_grad():
        assert torch.equal(call(net, x, s, None), unet.eval()(x, s).sample)
    assert set(files) == {"config.json", "diffusion_pytorch_model.safetensors"}


def test_bad_folders_are_one_line_errors_naming_the_file(exported: tuple[Project, Path], tmp_path: Path) -> None:
    _, folder = exported
    broken = Path(shutil.copytree(folder, tmp_path / "broken"))
    from safetensors.torch import load_file, save_file

    weights = broken / "expert_1" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    name = next(iter(state))
    save_file({**state, name: torch.zeros(3, 3)}, str(weights))
    with pytest.raises(ArtifactError, match=rf"expert_1/diffusion_pytorch_model.safetensors: tensor {name} has shape \(3, 3\)"):
        load_network(broken / "expert_1")
    save_file({k: v for k, v in state.items() if k != name}, str(weights))
    with pytest.raises(ArtifactError, match=rf"lacks tensor {name}"):
        load_network(broken / "expert_1")
    weights.unlink()
    torch.save(state, broken / "expert_1" / "diffusion_pytorch_model.bin")
    with pytest.raises(ArtifactError, match="no safetensors weights .*pickled weights are not loaded"):
        load_network(broken / "expert_1")
    manifest = yaml.safe_load((broken / "ddm.yaml").read_text())
    (broken / "ddm.yaml").write_text(yaml.safe_dump({**manifest, "experts": [{**manifest["experts"][0], "prediction": "score"}]}))
    with pytest.raises(ConfigError, match=r"ddm.yaml: experts.0.prediction: Input should be"):
        read_manifest(broken)
    (broken / "ddm.yaml").write_text(yaml.safe_dump({**manifest, "experts": manifest["experts"][:1]}))
    with pytest.raises(ArtifactError, match=r"router scores 2 experts but ddm.yaml lists 1"):
        load_ddm(broken)
    (broken / "ddm.yaml").unlink()
    with pytest.raises(ConfigError, match="ddm.yaml is missing"):
        load_ddm(broken)
    save_network(tmp_path / "odd", torch.nn.Linear(2, 2), {"_class_name": "NoSuchModel"})
    with pytest.raises(ConfigError, match="'NoSuchModel' is neither a diffusers model class"):
        load_network(tmp_path / "odd")
