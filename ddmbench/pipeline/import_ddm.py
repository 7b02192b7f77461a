"""Stage `import-ddm`: a DDM trained elsewhere, in place of the training stages.

Reads the folder that ``ddm.import`` names (``ddm.yaml`` + one network folder per expert and the router), loads
every network once to check it (shapes, the router's K against the experts and ``cluster.k``, the time range the
analyses ask for), and records what it read: the manifest's declarations and the SHA-256 of every file
(``outputs/ddm/imported.json``, ``metrics/import.json``, MLflow). The DDM's cluster manifest, when it brings one,
becomes the clusters file the oracle, p* and the per-cluster analyses read; without one, that file says so and
those analyses are skipped with the reason, never faked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ddmbench.cluster import partition as clustering
from ddmbench.config import Config, config_to_dict
from ddmbench.console import console
from ddmbench.data.datasets import load_prepared, shape_of_images
from ddmbench.ddm.folder import DDM, load_ddm
from ddmbench.errors import ArtifactError, ConfigError
from ddmbench.io import ensure_writable, save_tensors, write_json
from ddmbench.pipeline.paths import Paths
from ddmbench.pipeline.tracking import mirror

NO_CLUSTERS = "absent"


def check_against_profile(cfg: Config, ddm: DDM, has_clusters: bool, image_shape: tuple[int, ...]) -> None:
    """What the profile asks of the DDM, each mismatch one line naming the key."""
    folder = cfg.ddm.folder
    if ddm.num_experts != cfg.cluster.k:
        raise ConfigError(f"params.yaml: cluster.k={cfg.cluster.k} but {folder} has {ddm.num_experts} experts; "
                          f"set cluster.k: {ddm.num_experts}")
    if tuple(ddm.image_shape) != tuple(image_shape):
        raise ConfigError(f"{folder}: its experts take images of shape {tuple(ddm.image_shape)} but data.dataset="
                          f"{cfg.data.dataset} has {tuple(image_shape)}; pick the dataset the DDM was trained on")
    if ddm.manifest.dataset is not None and ddm.manifest.dataset != cfg.data.dataset:
        raise ConfigError(f"params.yaml: data.dataset={cfg.data.dataset} but {folder}'s ddm.yaml says it was "
                          f"trained on {ddm.manifest.dataset}; set data.dataset: {ddm.manifest.dataset}")
    for label in cfg.policies:
        spec = cfg.policy(label)
        if spec.uses_router and ddm.router is None:
            raise ConfigError(f"params.yaml: policies: {label} needs a router and {folder} ships none; "
                              "remove it (uniform and oracle need no router)")
        if (spec.name == "oracle" or spec.uses_posterior) and not has_clusters:
            raise ConfigError(f"params.yaml: policies: {label} needs the DDM's cluster manifest (clusters: in "
                              f"{folder}/ddm.yaml) and {folder} has none; remove {label}")
    lo, hi = ddm.time_range
    outside = [t for t in cfg.analysis.accuracy_t if not lo <= t <= hi]
    if outside:
        raise ConfigError(f"params.yaml: analysis.accuracy_t {outside} lie outside the times every expert of "
                          f"{folder} serves, [{lo:.4g}, {hi:.4g}]; keep them inside")


def clusters_from_manifest(cfg: Config, folder: Path, name: str, ds: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The clusters file of a DDM's cluster manifest: each expert's training indices must partition the prepared
    training set. Test images get the cluster whose training images' mean is nearest in pixel-PCA space."""
    path = folder / name
    try:
        indices = json.loads(path.read_text())["indices"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path}: not a cluster manifest ({type(exc).__name__}); it holds "
                            '{"indices": [[training indices of expert 0], ...]}') from None
    n, k = len(ds["train_x"]), cfg.cluster.k
    if len(indices) != k:
        raise ArtifactError(f"{path} lists {len(indices)} clusters but the DDM has {k} experts")
    assignments = torch.full((n,), -1, dtype=torch.long)
    for j, members in enumerate(indices):
        idx = torch.as_tensor(members, dtype=torch.long)
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise ArtifactError(f"{path}: cluster {j} indexes image {int(idx.max())} but the prepared training set "
                                f"has {n}; set data.train_limit to the limit the DDM was trained with")
        assignments[idx] = j
    if (assignments < 0).any() or sum(len(m) for m in indices) != n:
        raise ArtifactError(f"{path}: the clusters do not partition the {n} prepared training images (each once); "
                            "set data.train_limit to the limit the DDM was trained with")
    c = clustering.given_partition(ds["train_x"].numpy(), assignments.numpy(), k, pca_dim=cfg.cluster.pca_dim,
                                   seed=cfg.seed)
    test = clustering.nearest_centroid(clustering.pixel_features(ds["test_x"].numpy()), c)
    return {"assignments": assignments, "test_assignments": torch.from_numpy(test),
            "centroids": torch.from_numpy(c.centroids), "pca_mean": torch.from_numpy(c.pca_mean),
            "pca_components": torch.from_numpy(c.pca_components),
            "sizes": torch.from_numpy(clustering.cluster_sizes(assignments.numpy(), k))}


def run(cfg: Config, paths: Paths) -> dict[str, Any]:
    if cfg.ddm.folder is None:
        raise ConfigError("params.yaml: ddm.import is empty, so the DDM is trained here; name a DDM folder as "
                          "ddm.import: {NAME: FOLDER} (with ddm.train: [] and experts: []) to import one")
    ensure_writable(paths.imported, paths.import_metrics, paths.clusters, paths.cluster_metrics)
    folder = (paths.root / cfg.ddm.folder).resolve()
    ds = load_prepared(paths.dataset)
    ddm = load_ddm(folder)
    has_clusters = ddm.manifest.clusters is not None
    check_against_profile(cfg, ddm, has_clusters, shape_of_images(ds["test_x"]))
    if has_clusters:
        clusters = clusters_from_manifest(cfg, folder, str(ddm.manifest.clusters), ds)
        sizes = clusters["sizes"].tolist()
        cluster_metrics: dict[str, Any] = {"k": cfg.cluster.k, "source": f"{cfg.ddm.folder}/{ddm.manifest.clusters}",
                                           "sizes": sizes, **clustering.size_stats(clusters["sizes"].numpy()),
                                           "purity": clustering.purity(clusters["assignments"].numpy(),
                                                                       ds["train_y"].numpy()),
                                           "nmi": clustering.nmi(clusters["assignments"].numpy(), ds["train_y"].numpy())}
    else:
        reason = f"{cfg.ddm.folder}/ddm.yaml names no cluster manifest (clusters:)"
        clusters, cluster_metrics = {NO_CLUSTERS: reason}, {"k": cfg.cluster.k, NO_CLUSTERS: reason}
    experts = [{"path": e.path, "prediction": e.prediction, "convention": e.convention.model_dump(mode="json"),
                **({"out_channels": e.out_channels} if e.out_channels is not None else {})}
               for e in ddm.manifest.experts]
    record = {"name": cfg.ddm.name, "folder": cfg.ddm.folder, "experts": experts,
              "router": None if ddm.manifest.router is None else ddm.manifest.router.model_dump(mode="json"),
              "image_shape": list(ddm.image_shape), "time_range": list(ddm.time_range),
              "clusters": ddm.manifest.clusters, "dataset": ddm.manifest.dataset, "sha256": ddm.files}
    metrics = {"name": cfg.ddm.name, "experts": ddm.num_experts, "time_range": list(ddm.time_range),
               "predictions": [e["prediction"] for e in experts], "files": len(ddm.files), "sha256": ddm.files,
               "parameters": [sum(p.numel() for p in e.parameters()) for e in ddm.experts],
               "router_parameters": 0 if ddm.router is None else sum(p.numel() for p in ddm.router.parameters())}
    save_tensors(paths.clusters, clusters)
    write_json(paths.cluster_metrics, cluster_metrics)
    write_json(paths.imported, record)
    write_json(paths.import_metrics, metrics)
    mirror(cfg, paths, f"import-ddm@{cfg.ddm.name}", "import-ddm",
           {"ddm": config_to_dict(cfg)["ddm"], **{f"sha256/{f}": d for f, d in ddm.files.items()}},
           {"experts": ddm.num_experts, "time_lo": ddm.time_range[0], "time_hi": ddm.time_range[1]},
           [paths.imported, paths.import_metrics], tags={"ddm": cfg.ddm.name})
    console.print(f"imported {cfg.ddm.name}: {ddm.num_experts} experts "
                  f"({', '.join(e['prediction'] for e in experts)}), t in [{ddm.time_range[0]:.4g}, "
                  f"{ddm.time_range[1]:.4g}], {len(ddm.files)} files hashed"
                  + ("" if has_clusters else "; no cluster manifest: oracle, p* and per-cluster analyses skipped"),
                  highlight=False)
    return metrics


def describe(folder: Path) -> dict[str, Any]:
    """`ddmbench import-ddm FOLDER` outside an import profile: load and check the DDM, print what it holds and
    the params that benchmark it."""
    from rich.table import Table

    ddm = load_ddm(folder)
    table = Table(title=f"DDM {folder}")
    for col in ("network", "predicts", "convention", "parameters"):
        table.add_column(col, justify="right" if col == "parameters" else "left")
    for entry, expert in zip(ddm.manifest.experts, ddm.experts):
        table.add_row(entry.path, entry.prediction, entry.convention.kind, f"{sum(p.numel() for p in expert.parameters()):,}")
    if ddm.router is not None and ddm.manifest.router is not None:
        table.add_row(ddm.manifest.router.path, "logits", ddm.manifest.router.convention.kind,
                      f"{sum(p.numel() for p in ddm.router.parameters()):,}")
    console.print(table)
    console.print(f"times every expert serves: [{ddm.time_range[0]:.4g}, {ddm.time_range[1]:.4g}]; "
                  f"cluster manifest: {ddm.manifest.clusters or 'none'}; {len(ddm.files)} files hashed (SHA-256)\n"
                  f"to benchmark it, set in params.yaml: ddm: {{train: [], import: {{NAME: {folder}}}}}, experts: [], "
                  f"cluster.k: {ddm.num_experts}; then `ddmbench repro`", highlight=False, soft_wrap=True)
    return {"experts": ddm.num_experts, "time_range": list(ddm.time_range), "sha256": ddm.files}
