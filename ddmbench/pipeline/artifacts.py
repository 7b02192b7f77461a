"""The upstream artefacts a stage reads: clusters, the sample seeds, the device.

Shared by several stages, so it lives here and no stage imports another."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ddmbench import streams
from ddmbench.config import Config
from ddmbench.errors import ArtifactError, ConfigError, NoClusters
from ddmbench.io import load_tensors
from ddmbench.pipeline.paths import Paths
from ddmbench.sampling.policies import PolicySpec
from ddmbench.sampling.sampler import draw_clusters


def load_clusters(paths: Paths, ds: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The clustering outputs; with ``ds`` (the prepared dataset) also check they were made from it.
    :class:`NoClusters` (with the reason) when the DDM was imported without a cluster manifest."""
    clusters = load_tensors(paths.clusters, "ddmbench cluster")
    if "absent" in clusters:
        raise NoClusters(str(clusters["absent"]))
    for key in ("assignments", "test_assignments", "centroids", "sizes"):
        if key not in clusters:
            raise ArtifactError(f"{paths.clusters} has no '{key}'; re-run `ddmbench cluster`")
    if ds is not None and (len(clusters["assignments"]) != len(ds["train_x"])
                           or len(clusters["test_assignments"]) != len(ds["test_x"])):
        raise ArtifactError(f"{paths.clusters} was made from another dataset.pt (sizes differ); "
                            "re-run `ddmbench cluster`")
    return clusters


def skipped(cfg: Config, paths: Paths, path: Path, stage: str, reason: str) -> dict[str, Any]:
    """The metrics file of an analysis the DDM cannot support (an imported DDM without a cluster manifest): the
    reason, for the report to print, instead of a number."""
    from ddmbench.console import console
    from ddmbench.io import write_json
    from ddmbench.pipeline.tracking import mirror

    data = {"skipped": reason}
    write_json(path, data)
    mirror(cfg, paths, stage, stage, {"seed": cfg.seed}, {}, [path])
    console.print(f"{stage} skipped: {reason}", highlight=False)
    return data


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


def sampling_device(cfg: Config) -> torch.device:
    if cfg.sample.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("params.yaml: sample.device is 'cuda' but no CUDA device is available; use 'cpu'")
    return torch.device(cfg.sample.device)
