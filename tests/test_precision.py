"""`sample.precision: bf16-mixed`: experts and router under autocast with float32 outputs, refused on CPUs
without native bf16, and the field built from checkpoints wraps every network."""

from __future__ import annotations

import pytest
import torch

from ddmbench.config import parse_config
from ddmbench.errors import ConfigError
from ddmbench.models import nets
from ddmbench.models.precision import Autocast, at_precision


def test_autocast_keeps_the_signature_shape_and_float32_and_stays_near_fp32() -> None:
    torch.manual_seed(0)
    net = nets.build_velocity_net("unet-xs").eval()
    x, t = torch.randn(4, 1, 28, 28), torch.tensor([0.1, 0.4, 0.7, 0.95])
    wrapped = at_precision(net, "bf16-mixed")
    assert isinstance(wrapped, Autocast) and wrapped.image_shape == net.image_shape
    assert at_precision(net, "32-true") is net
    with torch.no_grad():
        exact, mixed = net(x, t), wrapped(x, t)
    assert mixed.dtype == torch.float32 and mixed.shape == exact.shape
    rel = (mixed - exact).norm() / exact.norm()
    assert 0 < rel < 0.05, rel   # bf16 has 8 mantissa bits: a visible but small difference, never identical
    assert list(wrapped.state_dict()) == [f"net.{k}" for k in net.state_dict()]


@pytest.mark.parametrize("build", [lambda: nets.build_velocity_net("unet-xs"), lambda: nets.build_velocity_net("dit-xs"),
                                   lambda: nets.build_router("router-s", 4)], ids=["unet-xs", "dit-xs", "router"])
def test_autocast_casts_the_weights_once_on_a_copy_and_equals_plain_autocast_bit_for_bit(build) -> None:
    torch.manual_seed(0)
    net = build().eval()
    for p in net.parameters():      # every layer non-zero (DiT's adaLN-Zero layers start at 0)
        torch.nn.init.normal_(p, std=0.1)
    x, t = torch.randn(8, 1, 28, 28), torch.rand(8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = net(x, t).float()
    wrapped = Autocast(net)
    with torch.no_grad():
        assert torch.equal(wrapped(x, t), plain)
    lowered = {name for name, m in net.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    for name, p in wrapped.net.named_parameters():
        assert p.dtype == (torch.bfloat16 if name.rsplit(".", 1)[0] in lowered else torch.float32), name
    assert all(p.dtype == torch.float32 for p in net.parameters())   # the caller's network is untouched


def test_sample_bf16_follows_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    from ddmbench import hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2"}))
    with pytest.raises(ConfigError, match=r"sample.*bf16.*avx512_bf16, amx_bf16.*32-true"):
        parse_config({"sample": {"precision": "bf16-mixed"}})
    assert parse_config({"sample": {"precision": "32-true"}}).sample.precision == "32-true"
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert parse_config({"sample": {"precision": "bf16-mixed"}}).sample.precision == "bf16-mixed"


@pytest.mark.slow
def test_bf16_field_wraps_every_network_and_samples_close_to_fp32(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from ddmbench import hardware
    from ddmbench.models.checkpoints import save_weights
    from ddmbench.pipeline.fields import build_field
    from ddmbench.pipeline.paths import Paths
    from ddmbench.sampling.policies import parse_policy
    from ddmbench.sampling.sampler import generate

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    paths = Paths(tmp_path)
    torch.manual_seed(0)
    for k in range(2):
        save_weights(paths.expert(k), nets.build_velocity_net("unet-xs"),
                     {"kind": "expert", "net": "unet-xs", "k": k, "num_experts": 2})
    save_weights(paths.model("router"), nets.build_router("router-s", 2), {"kind": "router", "net": "router-s",
                                                                          "num_experts": 2})
    images = {}
    for precision in ("32-true", "bf16-mixed"):
        cfg = parse_config({"cluster": {"k": 2}, "experts": [0, 1], "sample": {"precision": precision}})
        field = build_field(cfg, paths, parse_policy("full"), torch.device("cpu"))
        wrapped = [isinstance(m, Autocast) for m in (*field.experts, field.router)]
        assert all(wrapped) if precision == "bf16-mixed" else not any(wrapped)
        images[precision] = generate(field, [0, 1, 2], nfe_steps=3, solver="euler", batch_size=3).images
    assert images["bf16-mixed"].dtype == torch.float32
    assert not torch.equal(images["bf16-mixed"], images["32-true"])
    assert (images["bf16-mixed"] - images["32-true"]).abs().max() < 0.1


@pytest.mark.slow
def test_precision_check_pairs_bf16_with_fp32_and_writes_its_verdict(project, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the tiny project (trained evaluator, untrained experts): ΔFID/ΔKID intervals, the sampling half-widths
    and a verdict by the declared rule; nothing under outputs/samples or metrics is written."""
    import json

    from conftest import invoke, run_cli, save_untrained_models

    from ddmbench import hardware
    from ddmbench.pipeline import cluster, features, prepare, train_evaluator

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    cfg = project.config()
    for stage in (prepare, cluster, train_evaluator, features):
        stage.run(cfg, project.paths)
    save_untrained_models(cfg, project.paths)
    output = invoke(project.root, "precision-check", "--policy", "top-1", "--out", str(project.root / "p.json"))
    doc = json.loads((project.root / "p.json").read_text())
    [row] = doc["rows"]
    assert row["policy"] == "top-1" and row["n"] == cfg.sample.n
    inside = []
    for metric in ("fid", "kid"):
        lo, hi = row["delta"][metric]["ci95"]
        assert lo <= row["delta"][metric]["estimate"] <= hi and row["sampling_half_width"][metric] > 0
        inside.append(max(abs(lo), abs(hi)) <= row["sampling_half_width"][metric])
    assert row["inside_sampling_interval"] == all(inside)
    assert doc["adopt"] == (row["inside_sampling_interval"] and doc["speedup"] > 1) and 0 < row["pixels_differing"] < 1
    assert "bf16-mixed − fp32 sampling" in output and "bf16-mixed for sampling" in output
    assert not project.paths.samples("top-1").exists() and not (project.root / "metrics" / "evaluate").exists()
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2"}))
    refused = run_cli(project.root, "precision-check")
    assert refused.exit_code == 2 and "avx512_bf16" in refused.output and "Traceback" not in refused.output


@pytest.mark.slow
def test_analyze_traces_in_float32_when_the_profile_samples_in_bf16(project, monkeypatch: pytest.MonkeyPatch) -> None:
    """sample.precision: bf16-mixed makes bf16 samples, but the analyze stage traces in float32: its per-seed
    values are exactly the float32 profile's."""
    from conftest import save_untrained_models

    from ddmbench import hardware
    from ddmbench.io import load_tensors
    from ddmbench.pipeline import analyze, cluster, evaluate, features, prepare, sample
    from ddmbench.sampling.policies import parse_policy

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    project.update(policies=["full"])
    cfg, paths = project.config(), project.paths
    prepare.run(cfg, paths)
    cluster.run(cfg, paths)
    save_untrained_models(cfg, paths, evaluator=True)
    features.run(cfg, paths)
    values, images = {}, {}
    for precision in ("32-true", "bf16-mixed"):
        project.update(sample={"precision": precision})
        at = project.config()
        sample.run(at, paths, parse_policy("full"))
        evaluate.run(at, paths, parse_policy("full"))
        analyze.run(at, paths, parse_policy("full"))
        images[precision] = load_tensors(paths.samples("full"), "sample")["images"]
        values[precision] = load_tensors(paths.analysis_values("full"), "analyze")
    assert not torch.equal(images["bf16-mixed"], images["32-true"])          # the samples are bf16's
    assert values["bf16-mixed"].keys() == values["32-true"].keys()
    assert all(torch.equal(values["bf16-mixed"][k], values["32-true"][k]) for k in values["32-true"])
