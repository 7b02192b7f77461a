"""Load a DDM from a folder in Paris's layout (``ddm.yaml`` + one network folder per expert and the router), and
write a ddmbench-trained DDM in the same layout. One place: the manifest says what each network predicts and
under which convention, the network folders say what to build and hold the weights, and the result is a
:class:`DDM` whose experts and router the harness calls at its own time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddmbench.data.shapes import ImageShape
from ddmbench.ddm.conventions import Convention
from ddmbench.ddm.expert import Call, HarnessVelocity, shared_range
from ddmbench.ddm.manifest import MANIFEST, ExpertEntry, FlowConvention, Manifest, RouterEntry, read_manifest, write_manifest
from ddmbench.ddm.networks import load_network, save_network, sha256
from ddmbench.errors import ArtifactError

CLUSTERS = "clusters.json"


class RouterAtHarnessTime(nn.Module):
    """(x_t, t[, cond]) → logits (B, K) of a router trained under ``convention``: state rescaled, own timestep."""

    def __init__(self, model: Any, convention: Convention, call: Call) -> None:
        super().__init__()
        self.model, self.convention, self.call = model, convention, call
        self.image_shape = getattr(model, "image_shape", None)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        seen = self.convention.at(t)
        return self.call(self.model, seen.state(x_t), seen.timestep, cond)


@dataclass
class DDM:
    """Experts as harness velocity models (in routing order), the router at harness time (None: none shipped),
    the experts' input shape, the harness times every expert serves, and {file: path} of what was loaded."""

    experts: list[HarnessVelocity]
    router: RouterAtHarnessTime | None
    image_shape: ImageShape
    time_range: tuple[float, float]
    paths: dict[str, Path]
    manifest: Manifest

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @cached_property
    def files(self) -> dict[str, str]:
        """{file: SHA-256} of every file loaded, hashed on first use (a big DDM's weights take a while)."""
        return {name: sha256(path) for name, path in self.paths.items()}


def load_ddm(folder: Path) -> DDM:
    """The DDM in ``folder``; one-line errors name the file or key at fault. The router's K is read from its
    output on a probe batch and must equal the number of experts."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    files = {MANIFEST: folder / MANIFEST}
    experts = []
    for entry in manifest.experts:
        net, call, loaded = load_network(folder / entry.path)
        files.update({f"{entry.path}/{name}": d for name, d in loaded.items()})
        expert = HarnessVelocity(net, entry.spec(folder), call)
        expert.image_shape = manifest.image_shape
        experts.append(expert)
    router = None
    if manifest.router is not None:
        net, call, loaded = load_network(folder / manifest.router.path)
        files.update({f"{manifest.router.path}/{name}": d for name, d in loaded.items()})
        router = RouterAtHarnessTime(net, manifest.router.convention.build(folder), call)
        router.image_shape = manifest.image_shape
    time_range = shared_range([e.spec for e in experts])
    if router is not None:
        with torch.no_grad():
            t = torch.tensor([(time_range[0] + time_range[1]) / 2])
            k = router(torch.zeros(1, *manifest.image_shape), t).shape[-1]
        if k != len(experts):
            raise ArtifactError(f"{folder / manifest.router.path} scores {k} experts but {MANIFEST} lists "
                                f"{len(experts)}; list one expert per router output, in the router's order")
    if manifest.clusters is not None:
        files[manifest.clusters] = folder / manifest.clusters
    return DDM(experts, router, manifest.image_shape, time_range, files, manifest)


def export_ddm(dest: Path, experts: list[tuple[nn.Module, dict[str, Any]]], router: tuple[nn.Module, dict[str, Any]],
               image_shape: ImageShape, clusters: dict[str, Any] | None = None, dataset: str | None = None) -> None:
    """Write a ddmbench-trained DDM in Paris's layout: ``expert_k/`` and ``router/`` (config.json naming the
    ddmbench net + safetensors weights), a cluster manifest and ``ddm.yaml`` (velocity predictions under the
    harness's own rectified flow). ``experts``/``router``: (network, its ddmbench config)."""
    dest = Path(dest)
    entries = []
    for k, (net, config) in enumerate(experts):
        save_network(dest / f"expert_{k}", net, config)
        entries.append(ExpertEntry(path=f"expert_{k}"))
    save_network(dest / "router", *router)
    if clusters is not None:
        from ddmbench.io import write_text

        write_text(dest / CLUSTERS, json.dumps(clusters) + "\n")
    write_manifest(dest, Manifest(image_shape=tuple(image_shape), experts=entries,
                                  router=RouterEntry(path="router", convention=FlowConvention(kind="flow")),
                                  clusters=CLUSTERS if clusters is not None else None, dataset=dataset))


def ddmbench_config(role: str, net: str, image_shape: ImageShape, **extra: Any) -> dict[str, Any]:
    """The config.json of one of ddmbench's own nets in a DDM folder."""
    return {"_class_name": "ddmbench", "role": role, "net": net, "image_shape": list(image_shape), **extra}
