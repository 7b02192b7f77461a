"""The upstream artefacts a stage reads: clusters, the trained field of a policy, the sample seeds, the device.

Shared by several stages, so it lives here and no stage imports another."""

from __future__ import annotations

import torch

from ddmbench import streams
from ddmbench.config import Config
from ddmbench.data.shapes import ImageShape, image_shape_of
from ddmbench.errors import ArtifactError, ConfigError
from ddmbench.io import load_tensors
from ddmbench.models.checkpoints import load_router, load_velocity_net
from ddmbench.models.precision import at_precision
from ddmbench.pipeline.paths import Paths
from ddmbench.sampling.field import ModelField, RoutedField
from ddmbench.sampling.policies import PolicySpec
from ddmbench.sampling.sampler import draw_clusters


def load_clusters(paths: Paths, ds: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The clustering outputs; with ``ds`` (the prepared dataset) also check they were made from it."""
    clusters = load_tensors(paths.clusters, "ddmbench cluster")
    for key in ("assignments", "test_assignments", "centroids", "sizes"):
        if key not in clusters:
            raise ArtifactError(f"{paths.clusters} has no '{key}'; re-run `ddmbench cluster`")
    if ds is not None and (len(clusters["assignments"]) != len(ds["train_x"])
                           or len(clusters["test_assignments"]) != len(ds["test_x"])):
        raise ArtifactError(f"{paths.clusters} was made from another dataset.pt (sizes differ); "
                            "re-run `ddmbench cluster`")
    return clusters


def sample_seeds(cfg: Config) -> list[int]:
    """The same seeds for every policy, so policies are compared image for image."""
    return streams.sample_seeds(cfg.seed, cfg.sample.n)


def oracle_clusters(cfg: Config, paths: Paths, spec: PolicySpec, seeds: list[int]) -> torch.Tensor | None:
    """(len(seeds),) the cluster each seed's sample is drawn from, in proportion to the cluster sizes, for the
    ``oracle`` policy; None for every other policy. The draw is keyed by the seeds, so every stage that
    re-samples the oracle (sample, analyze, precision-check) gets the same clusters."""
    if spec.name != "oracle":
        return None
    sizes = load_clusters(paths)["sizes"]
    if len(sizes) != cfg.cluster.k:
        raise ArtifactError(f"{paths.clusters} has {len(sizes)} clusters but cluster.k={cfg.cluster.k}; "
                            "re-run `ddmbench cluster`")
    return draw_clusters(seeds, sizes.double())


def build_field(cfg: Config, paths: Paths, spec: PolicySpec, device: torch.device,
                image_shape: ImageShape | None = None) -> ModelField | RoutedField:
    """The policy's field from the trained checkpoints. Every network must have been trained on one image
    shape (C, H, W): ``image_shape`` if given (the prepared dataset's), else that of the first expert; the
    field's noise has that shape."""
    precision = cfg.sample.precision
    if not spec.uses_experts:
        return ModelField(at_precision(load_velocity_net(paths.model("monolith"), "monolith", "ddmbench train-monolith",
                                                         image_shape=image_shape).to(device), precision),
                          cfg.sample.chunk_rows)
    experts: list[torch.nn.Module] = []
    for k in range(cfg.cluster.k):
        net = load_velocity_net(paths.expert(k), "expert", f"ddmbench train-expert --expert {k}",
                                expect={"k": k, "num_experts": cfg.cluster.k}, image_shape=image_shape)
        image_shape = image_shape_of(net)
        experts.append(at_precision(net.to(device), precision))
    router = load_router(paths.model("router"), image_shape=image_shape).to(device) if spec.uses_router else None
    if router is not None and router.head[-1].out_features != cfg.cluster.k:
        raise ArtifactError(f"{paths.model('router')} routes to {router.head[-1].out_features} experts but "
                            f"cluster.k={cfg.cluster.k}; re-run `ddmbench train-router`")
    router = at_precision(router, precision) if router is not None else None
    return RoutedField(experts, router, spec, cfg.sample.chunk_rows, clock=cfg.sample.routing_clock)


def sampling_device(cfg: Config) -> torch.device:
    if cfg.sample.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("params.yaml: sample.device is 'cuda' but no CUDA device is available; use 'cpu'")
    return torch.device(cfg.sample.device)
