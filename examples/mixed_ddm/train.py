"""Train a small Decentralized Diffusion Model on MNIST with diffusers and a plain PyTorch loop, and write it as a
DDM folder (one diffusers folder per expert, the router, ``clusters.json``, ``ddm.yaml``) that ddmbench loads.

Nothing here comes from ddmbench: this is "a DDM trained with another library". The training images are split
into K clusters (KMeans on the PCA of their pixels) and expert k is a diffusers ``UNet2DModel`` trained on cluster
k only, under recipe k mod 3, each a convention of its own (x₀ an image in [-1, 1], ε standard normal noise):

  0  DDPM ε-prediction: diffusers' ``DDPMScheduler`` (linear β from 1e-4 to 0.02, 1000 steps),
     x_n = √ᾱ_n·x₀ + √(1 − ᾱ_n)·ε at integer timesteps n, target ε.
  1  flow velocity as SD3 trains it: x_σ = (1 − σ)·x₀ + σ·ε (σ = 1 noise), the net fed σ × 1000, target ε − x₀.
  2  flow velocity with time reversed: x_τ = τ·x₀ + (1 − τ)·ε (τ = 1 data), fed τ × 1000, target x₀ − ε.

The flow experts take their time × 1000 because the UNet's sinusoidal time embedding is built for timesteps in
[0, 1000]. The router (``router.py``) is a CNN (x, t) → K logits trained by cross-entropy to name the cluster a
noised image came from, on the flow state x_t = (1 − t)·x₀ + t·ε at t ~ U(0, 1), fed t itself. ``ddm.yaml``
declares each of these conventions, so a loader can call every network at its own time.

    python examples/mixed_ddm/train.py --data-root data --out runs/mixed-ddm        # ~20 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_SHAPE = (1, 28, 28)
UNET = {"sample_size": 28, "in_channels": 1, "out_channels": 1, "block_out_channels": (16, 32),
        "layers_per_block": 1, "down_block_types": ("DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D"), "norm_num_groups": 8}
ROUTER = {"_class_name": "router:build", "in_channels": 1, "channels": [32, 64]}


# ---------------------------------------------------------------------------------------------------- recipes

Example = tuple[torch.Tensor, torch.Tensor, torch.Tensor]       # (the net's input, its timestep, the target)


class Recipe(Protocol):
    name: str

    def example(self, x0: torch.Tensor, eps: torch.Tensor, gen: torch.Generator) -> Example: ...

    def entry(self) -> dict[str, Any]: ...


class DDPMEpsilon:
    """ε-prediction on diffusers' DDPM schedule, at integer timesteps."""

    name = "DDPM ε-prediction"

    def __init__(self) -> None:
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")

    def example(self, x0: torch.Tensor, eps: torch.Tensor, gen: torch.Generator) -> Example:
        n = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(x0),), generator=gen)
        return self.scheduler.add_noise(x0, eps, n), n, eps

    def entry(self) -> dict[str, Any]:
        keys = ("beta_schedule", "beta_start", "beta_end", "num_train_timesteps")
        return {"prediction": "epsilon",
                "convention": {"kind": "variance-preserving", **{k: self.scheduler.config[k] for k in keys}}}


@dataclass(frozen=True)
class FlowVelocity:
    """Flow matching on x = (1 − σ)·x₀ + σ·ε; ``reversed``: the net's time is τ = 1 − σ and it predicts x₀ − ε."""

    reversed: bool = False
    scale: float = 1000.0

    @property
    def name(self) -> str:
        return "flow velocity, data at τ = 1" if self.reversed else "flow velocity, SD3-style"

    def example(self, x0: torch.Tensor, eps: torch.Tensor, gen: torch.Generator) -> Example:
        sigma = torch.rand(len(x0), generator=gen)
        s = sigma.view(-1, 1, 1, 1)
        x = (1 - s) * x0 + s * eps
        if self.reversed:
            return x, (1 - sigma) * self.scale, x0 - eps
        return x, sigma * self.scale, eps - x0

    def entry(self) -> dict[str, Any]:
        return {"prediction": "velocity",
                "convention": {"kind": "flow", "noise_at": 0 if self.reversed else 1, "timestep_scale": self.scale,
                               "velocity_sign": -1 if self.reversed else 1}}


RECIPES: tuple[Callable[[], Recipe], ...] = (DDPMEpsilon, FlowVelocity, lambda: FlowVelocity(reversed=True))
ROUTER_CONVENTION = {"kind": "flow", "noise_at": 1, "timestep_scale": 1.0}


# ---------------------------------------------------------------------------------------------------- data


def load_mnist(root: Path, limit: int) -> torch.Tensor:
    """The first ``limit`` (0: all) MNIST training images as (N, 1, 28, 28) floats in [-1, 1]."""
    from torchvision.datasets import MNIST

    try:
        images = MNIST(root=str(root), train=True, download=False).data
    except RuntimeError as exc:
        raise SystemExit(f"train.py: error: no MNIST under {root}/MNIST/raw ({exc}); pass --data-root") from None
    if limit:
        images = images[:limit]
    return images.unsqueeze(1).float() / 127.5 - 1


def cluster(images: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """(N,) cluster of each image: KMeans on the first 50 principal components of its pixels."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    pixels = images.flatten(1).numpy()
    reduced = PCA(n_components=min(50, *pixels.shape), random_state=seed).fit_transform(pixels)
    return torch.from_numpy(KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(reduced)).long()


# ---------------------------------------------------------------------------------------------------- training


def fit(net: nn.Module, loss_of: Callable[[], torch.Tensor], steps: int, what: str, lr: float = 2e-3) -> None:
    """A plain loop: AdamW with warmup and cosine decay; the net ends holding an EMA of its weights."""
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(opt, num_warmup_steps=min(100, steps // 10), num_training_steps=steps)
    ema = EMAModel(net.parameters(), decay=0.995)
    start, every, losses = time.monotonic(), max(1, steps // 10), []
    net.train()
    for step in range(1, steps + 1):
        loss = loss_of()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        ema.step(net.parameters())
        losses.append(loss.item())
        if step % every == 0 or step == steps:
            print(f"  {what}: step {step}/{steps}  loss {sum(losses) / len(losses):.4f}"
                  f"  ({time.monotonic() - start:.0f} s)", flush=True)
            losses.clear()
    ema.copy_to(net.parameters())
    net.eval()


def train_expert(images: torch.Tensor, recipe: Recipe, steps: int, batch: int, seed: int, what: str) -> nn.Module:
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(**UNET)
    gen = torch.Generator().manual_seed(seed)

    def loss_of() -> torch.Tensor:
        x0 = images[torch.randint(len(images), (batch,), generator=gen)]
        x, timestep, target = recipe.example(x0, torch.randn(x0.shape, generator=gen), gen)
        return F.mse_loss(unet(x, timestep).sample, target)

    fit(unet, loss_of, steps, what)
    return unet


def train_router(images: torch.Tensor, labels: torch.Tensor, k: int, steps: int, batch: int, seed: int) -> nn.Module:
    from router import build

    torch.manual_seed(seed)
    net = build({**ROUTER, "num_experts": k})
    gen = torch.Generator().manual_seed(seed)

    def loss_of() -> torch.Tensor:
        rows = torch.randint(len(images), (batch,), generator=gen)
        x0, t = images[rows], torch.rand(batch, generator=gen)
        x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=gen)
        return F.cross_entropy(net(x_t, t * ROUTER_CONVENTION["timestep_scale"]), labels[rows])

    fit(net, loss_of, steps, "router", lr=1e-3)
    return net


# ---------------------------------------------------------------------------------------------------- output


def write_ddm(dest: Path, experts: list[tuple[nn.Module, dict[str, Any]]], router: nn.Module, k: int,
              clusters: dict[str, Any], ddpm_scheduler: Any) -> None:
    """The DDM folder, written into a hidden partial folder and renamed: it appears whole or not at all."""
    import yaml
    from safetensors.torch import save_file

    partial = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    entries = []
    for i, (unet, entry) in enumerate(experts):
        unet.save_pretrained(partial / f"expert_{i}", safe_serialization=True)
        entries.append({"path": f"expert_{i}", **entry})
    ddpm_scheduler.save_pretrained(partial / "expert_0")     # diffusers' own record of the ε expert's schedule
    (partial / "router").mkdir()
    (partial / "router" / "config.json").write_text(json.dumps({**ROUTER, "num_experts": k}, indent=1) + "\n")
    save_file({n: p.detach().contiguous() for n, p in router.state_dict().items()},
              str(partial / "router" / "diffusion_pytorch_model.safetensors"))
    (partial / "clusters.json").write_text(json.dumps(clusters) + "\n")
    manifest = {"format": 1, "image_shape": list(IMAGE_SHAPE), "experts": entries,
                "router": {"path": "router", "convention": ROUTER_CONVENTION},
                "clusters": "clusters.json", "dataset": "mnist"}
    (partial / "ddm.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    if dest.exists():
        dest.rmdir()
    partial.rename(dest)


# ---------------------------------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="new folder to write the DDM into")
    p.add_argument("--data-root", type=Path, default=Path("data"), help="folder holding MNIST/raw (default: data)")
    p.add_argument("--k", type=int, default=3, help="number of clusters = experts (default: 3)")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps per expert and for the router (default: 2000)")
    p.add_argument("--batch-size", type=int, default=32, help="images per step (default: 32)")
    p.add_argument("--train-limit", type=int, default=0, help="use the first N training images (default: 0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the clustering, the initial weights and the draws")
    args = p.parse_args(argv)
    for name, low in (("k", 2), ("steps", 1), ("batch_size", 1), ("train_limit", 0)):
        if getattr(args, name) < low:
            p.error(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(args, name)}")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        p.error(f"--out {args.out} exists and is not an empty folder; name a new one")
    if not (args.data_root / "MNIST" / "raw").is_dir():
        p.error(f"--data-root {args.data_root} holds no MNIST/raw folder (torchvision's MNIST layout)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:                                          # router.py, also when main() is imported
        sys.path.insert(0, here)
    images = load_mnist(args.data_root, args.train_limit)
    if len(images) < 10 * args.k:
        raise SystemExit(f"train.py: error: {len(images)} training images are too few for {args.k} clusters")
    start = time.monotonic()
    labels = cluster(images, args.k, args.seed)
    sizes = [int((labels == i).sum()) for i in range(args.k)]
    print(f"clustered {len(images)} images into {args.k} clusters of {sizes}", flush=True)
    recipes = [RECIPES[i % len(RECIPES)]() for i in range(args.k)]
    experts = []
    for i, recipe in enumerate(recipes):
        what = f"expert {i + 1}/{args.k} ({recipe.name})"
        unet = train_expert(images[labels == i], recipe, args.steps, args.batch_size, args.seed + 1 + i, what)
        experts.append((unet, recipe.entry()))
    router = train_router(images, labels, args.k, args.steps, 2 * args.batch_size, args.seed + 1 + args.k)
    clusters = {"dataset": "mnist", "split": "train", "train_limit": args.train_limit,
                "indices": [(labels == i).nonzero().flatten().tolist() for i in range(args.k)]}
    write_ddm(args.out, experts, router, args.k, clusters, recipes[0].scheduler)
    print(f"wrote the DDM ({args.k} experts, router, clusters) to {args.out} in {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
