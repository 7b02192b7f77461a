"""The exact cluster posterior p* of the training set, and the field of a policy that routes by it.

The decomposition policies (``posterior``, ``posterior-top-<k>``; ``PolicySpec.uses_posterior``) run the real
experts with p* in place of the trained router. Every other policy gets ``build_field``'s field unchanged."""

from __future__ import annotations

import torch

from ddmbench import streams
from ddmbench.analysis.posterior import EmpiricalPosterior, PosteriorRouter
from ddmbench.config import Config
from ddmbench.data.datasets import load_prepared, to_model_space
from ddmbench.pipeline.artifacts import load_clusters
from ddmbench.pipeline.fields import build_field
from ddmbench.pipeline.paths import Paths
from ddmbench.sampling.field import ModelField, RoutedField
from ddmbench.sampling.policies import PolicySpec


def empirical_posterior(cfg: Config, paths: Paths, device: torch.device | str = "cpu",
                        subset: bool = True) -> EmpiricalPosterior:
    """p* over the prepared training images (model space) and their clusters; with ``subset``, over the fixed
    random subset of posterior.n_train images when that is > 0."""
    ds = load_prepared(paths.dataset)
    clusters = load_clusters(paths, ds)
    full = EmpiricalPosterior(to_model_space(ds["train_x"]).to(device), clusters["assignments"].to(device),
                              cfg.cluster.k, cfg.posterior.chunk)
    return full.subset(cfg.posterior.n_train, cfg.seed + streams.POSTERIOR_SUBSET) if subset else full


def build_policy_field(cfg: Config, paths: Paths, spec: PolicySpec, device: torch.device
                       ) -> ModelField | RoutedField:
    """``build_field``, with the trained router replaced by p* for the posterior* policies."""
    field = build_field(cfg, paths, spec, device)
    if not (spec.uses_posterior and field.routed):
        return field
    router = PosteriorRouter(empirical_posterior(cfg, paths, device), field.image_shape)
    return RoutedField(field.experts, router, spec, cfg.sample.chunk_rows, image_shape=field.image_shape,
                       clock=field.clock, time_range=field.time_range)
