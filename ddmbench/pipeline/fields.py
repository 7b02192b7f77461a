"""The field of a policy from the project's DDM: the networks trained here (``outputs/ddm``), or the DDM folder
that `import-ddm` checked (``ddm.import``), wrapped so the harness calls every expert at its own time."""

from __future__ import annotations

import torch

from ddmbench.config import Config
from ddmbench.data.shapes import ImageShape, image_shape_of
from ddmbench.errors import ArtifactError
from ddmbench.models.checkpoints import load_router, load_velocity_net
from ddmbench.models.precision import at_precision
from ddmbench.pipeline.paths import Paths
from ddmbench.sampling.field import ModelField, RoutedField
from ddmbench.sampling.policies import PolicySpec


def build_field(cfg: Config, paths: Paths, spec: PolicySpec, device: torch.device,
                image_shape: ImageShape | None = None) -> ModelField | RoutedField:
    """The policy's field from the project's DDM: trained here, or imported (``ddm.import``). Every network must
    have been trained on one image shape (C, H, W): ``image_shape`` if given (the prepared dataset's), else that of
    the first expert; the field's noise has that shape."""
    if cfg.ddm.folder is not None:
        return imported_field(cfg, paths, spec, device, image_shape)
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


def imported_field(cfg: Config, paths: Paths, spec: PolicySpec, device: torch.device,
                   image_shape: ImageShape | None = None) -> RoutedField:
    """The field of the DDM that `import-ddm` checked: its experts as harness velocity models, its router at
    harness time, the grid inside the times every expert serves."""
    from ddmbench.ddm.folder import load_ddm

    if not paths.imported.exists():
        raise ArtifactError(f"{paths.imported} is missing; run `ddmbench import-ddm` first")
    ddm = load_ddm(paths.root / str(cfg.ddm.folder))
    if image_shape is not None and tuple(image_shape) != tuple(ddm.image_shape):
        raise ArtifactError(f"{cfg.ddm.folder}: its experts take {tuple(ddm.image_shape)} but the data are "
                            f"{tuple(image_shape)}; re-run `ddmbench import-ddm`")
    precision = cfg.sample.precision
    experts = [at_precision(e.to(device), precision) for e in ddm.experts]
    router = at_precision(ddm.router.to(device), precision) if spec.uses_router and ddm.router is not None else None
    return RoutedField(experts, router, spec, cfg.sample.chunk_rows, image_shape=ddm.image_shape,
                       clock=cfg.sample.routing_clock, time_range=ddm.time_range)
