"""Stage `sample`: N samples under one routing policy with one ODE solver; images and cost counters saved."""

from __future__ import annotations

from typing import Any

import torch

from ddmbench.config import Config, config_to_dict
from ddmbench.console import progress
from ddmbench.data.datasets import to_uint8
from ddmbench.evaluation.cost import flops_per_image, gflops_per_image
from ddmbench.io import ensure_writable, save_tensors, write_json
from ddmbench.pipeline.artifacts import oracle_clusters, sample_seeds, sampling_device
from ddmbench.pipeline.paths import Paths
from ddmbench.pipeline.posterior_field import build_policy_field
from ddmbench.pipeline.tracking import mirror
from ddmbench.sampling.policies import PolicySpec
from ddmbench.sampling.sampler import generate
from ddmbench.sampling.traces import TraceRecorder


def run(cfg: Config, paths: Paths, spec: PolicySpec) -> dict[str, Any]:
    ensure_writable(paths.samples(spec.label), paths.sample_metrics(spec.label))
    seeds = sample_seeds(cfg)
    device = sampling_device(cfg)
    field = build_policy_field(cfg, paths, spec, device)
    cluster = oracle_clusters(cfg, paths, spec, seeds)
    recorder = TraceRecorder(field, cfg.sample.probe_n) if cfg.sample.trace and field.routed else None
    with progress(f"sample {spec.label}", len(seeds)) as advance:
        result = generate(field, seeds, nfe_steps=cfg.sample.nfe_steps, solver=cfg.sample.solver,
                          batch_size=cfg.sample.batch_size, cluster=cluster,
                          observers=[recorder] if recorder is not None else [], progress=advance, device=device)
    n = len(seeds)
    expert_flops = [flops_per_image(e, image_shape=field.image_shape) for e in field.experts]  # each its own
    router_flops = flops_per_image(field.router) if field.router is not None else 0.0
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
        "gflops_per_image": gflops_per_image(result.expert_evals, expert_flops, result.router_evals, router_flops,
                                             images=n),
        "expert_gflops_per_eval": max(expert_flops) / 1e9,   # the costliest expert's
        "expert_gflops_per_eval_by_expert": [f / 1e9 for f in expert_flops],
        "router_gflops_per_eval": router_flops / 1e9,
        "wall_time_s": result.seconds, "images_per_s": n / result.seconds,
    }
    write_json(paths.sample_metrics(spec.label), metrics)
    mirror(cfg, paths, f"sample@{spec.label}", "sample", {"sample": config_to_dict(cfg)["sample"],
           "policy": spec.label, **{f"policy_{k}": v for k, v in spec.params.items()}}, metrics,
           [paths.sample_metrics(spec.label)], tags={"policy": spec.label})
    return metrics
