"""Stage `sample`: N samples under one routing policy with one ODE solver; images and cost counters saved."""

from __future__ import annotations

from typing import Any

import torch

from ddmbench.checkpoints import load_router, load_velocity_net
from ddmbench.config import Config, config_to_dict
from ddmbench.console import progress
from ddmbench.cost import flops_per_image, gflops_per_image
from ddmbench.data import to_uint8
from ddmbench.errors import ArtifactError, ConfigError
from ddmbench.field import ModelField, RoutedField
from ddmbench.io import ensure_writable, save_tensors, write_json
from ddmbench.paths import Paths
from ddmbench.policies import PolicySpec
from ddmbench.sampling import draw_clusters, generate
from ddmbench.shapes import ImageShape, image_shape_of
from ddmbench.stages.cluster import load_clusters
from ddmbench.traces import TraceRecorder
from ddmbench.tracking import mirror


def sample_seeds(cfg: Config) -> list[int]:
    """The same seeds for every policy, so policies are compared image for image."""
    base = cfg.seed * 1_000_000
    return list(range(base, base + cfg.sample.n))


def build_field(cfg: Config, paths: Paths, spec: PolicySpec, device: torch.device,
                image_shape: ImageShape | None = None) -> ModelField | RoutedField:
    """The policy's field from the trained checkpoints. Every network must have been trained on one image
    shape (C, H, W): ``image_shape`` if given (the prepared dataset's), else that of the first expert; the
    field's noise has that shape."""
    if not spec.uses_experts:
        return ModelField(load_velocity_net(paths.model("monolith"), "monolith", "ddmbench train-monolith",
                                            image_shape=image_shape).to(device), cfg.sample.chunk_rows)
    experts: list[torch.nn.Module] = []
    for k in range(cfg.cluster.k):
        net = load_velocity_net(paths.expert(k), "expert", f"ddmbench train-expert --expert {k}",
                                expect={"k": k, "num_experts": cfg.cluster.k}, image_shape=image_shape)
        image_shape = image_shape_of(net)
        experts.append(net.to(device))
    router = load_router(paths.model("router"), image_shape=image_shape).to(device) if spec.uses_router else None
    if router is not None and router.head[-1].out_features != cfg.cluster.k:
        raise ArtifactError(f"{paths.model('router')} routes to {router.head[-1].out_features} experts but "
                            f"cluster.k={cfg.cluster.k}; re-run `ddmbench train-router`")
    return RoutedField(experts, router, spec, cfg.sample.chunk_rows)


def sampling_device(cfg: Config) -> torch.device:
    if cfg.sample.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("params.yaml: sample.device is 'cuda' but no CUDA device is available; use 'cpu'")
    return torch.device(cfg.sample.device)


def run(cfg: Config, paths: Paths, spec: PolicySpec) -> dict[str, Any]:
    ensure_writable(paths.samples(spec.label), paths.sample_metrics(spec.label))
    seeds = sample_seeds(cfg)
    device = sampling_device(cfg)
    field = build_field(cfg, paths, spec, device)
    cluster = None
    if spec.name == "oracle":
        sizes = load_clusters(paths)["sizes"]
        if len(sizes) != cfg.cluster.k:
            raise ArtifactError(f"{paths.clusters} has {len(sizes)} clusters but cluster.k={cfg.cluster.k}; "
                                "re-run `ddmbench cluster`")
        cluster = draw_clusters(seeds, sizes.double())
    recorder = TraceRecorder() if cfg.sample.trace and isinstance(field, RoutedField) else None
    with progress(f"sample {spec.label}", len(seeds)) as advance:
        result = generate(field, seeds, nfe_steps=cfg.sample.nfe_steps, solver=cfg.sample.solver,
                          batch_size=cfg.sample.batch_size, cluster=cluster, recorder=recorder,
                          probe_n=cfg.sample.probe_n, progress=advance, device=device)
    n = len(seeds)
    models = field.experts if isinstance(field, RoutedField) else [field.model]
    model_flops = flops_per_image(models[0])  # experts share one architecture
    router_flops = flops_per_image(field.router) if isinstance(field, RoutedField) and field.router is not None else 0.0
    images = to_uint8(result.images)
    save_tensors(paths.samples(spec.label), {
        "images": images, "seeds": torch.tensor(seeds),
        "cluster": cluster if cluster is not None else torch.full((n,), -1, dtype=torch.long),
        **({"trace": recorder.result()} if recorder is not None else {}),
        **({"disagreement": result.disagreement} if result.disagreement is not None else {}),
    })
    metrics = {
        "policy": spec.label, "n": n, "solver": cfg.sample.solver, "nfe_steps": cfg.sample.nfe_steps,
        "nfe_per_sample": result.nfe_per_sample,
        "expert_evals_per_image": sum(result.expert_evals) / n,
        "expert_evals_by_expert": result.expert_evals,
        "router_evals_per_image": result.router_evals / n,
        "gflops_per_image": gflops_per_image(sum(result.expert_evals) / n, model_flops, result.router_evals / n,
                                             router_flops),
        "expert_gflops_per_eval": model_flops / 1e9, "router_gflops_per_eval": router_flops / 1e9,
        "wall_time_s": result.seconds, "images_per_s": n / result.seconds,
    }
    write_json(paths.sample_metrics(spec.label), metrics)
    mirror(cfg, paths, f"sample@{spec.label}", "sample", {"sample": config_to_dict(cfg)["sample"],
           "policy": spec.label, **{f"policy_{k}": v for k, v in spec.params.items()}}, metrics,
           [paths.sample_metrics(spec.label)], tags={"policy": spec.label})
    return metrics
