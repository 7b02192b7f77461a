"""Plain ``nn.Module`` networks and their presets (UNet and DiT velocity nets, router, classifier).

Images are (B, C, H, W) in [-1, 1] with (C, H, W) the dataset's image shape (1x28x28 for MNIST and
Fashion-MNIST, 3x32x32 for CIFAR-10); t is (B,) in [0, 1]. Every network records the shape it was built
for as ``image_shape`` (a plain attribute, not part of the state dict); the builders take it from the
prepared dataset or a checkpoint's metadata."""

from __future__ import annotations

import math

import torch
from torch import nn

from ddmbench.data.shapes import MNIST_SHAPE, ImageShape


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of t (B,) in [0, 1] -> (B, dim) (as in DiT / ADM, on 1000 * t)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class TimeEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.dim))  # (B, dim)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the time embedding added in between."""

    def __init__(self, c_in: int, c_out: int, t_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(8, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb = nn.Linear(t_dim, c_out)
        self.norm2 = nn.GroupNorm(min(8, c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))  # (B, c_out, H, W)
        h = h + self.temb(temb)[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """A two-level UNet velocity network: (x_t (B, C, H, W), t (B,)) -> v (B, C, H, W).

    Two stride-2 downsamplings: 28x28 -> 14 -> 7, 32x32 -> 16 -> 8 (odd sizes are upsampled back to the
    skip's size)."""

    def __init__(self, channels: int = 32, t_dim: int = 64, image_shape: ImageShape = MNIST_SHAPE) -> None:
        super().__init__()
        c, in_channels = channels, image_shape[0]
        self.image_shape = tuple(image_shape)
        self.temb = TimeEmbed(t_dim)
        self.inc = nn.Conv2d(in_channels, c, 3, padding=1)
        self.down1 = ResBlock(c, c, t_dim)                        # H x W
        self.pool1 = nn.Conv2d(c, c, 3, stride=2, padding=1)      # -> H/2 x W/2
        self.down2 = ResBlock(c, 2 * c, t_dim)
        self.pool2 = nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1)  # -> H/4 x W/4
        self.mid = ResBlock(2 * c, 2 * c, t_dim)
        self.up2 = ResBlock(4 * c, 2 * c, t_dim)                  # H/2 x W/2, with skip
        self.up1 = ResBlock(3 * c, c, t_dim)                      # H x W, with skip
        self.out = nn.Sequential(nn.GroupNorm(min(8, c), c), nn.SiLU(), nn.Conv2d(c, in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.temb(t)                                    # (B, t_dim)
        h1 = self.down1(self.inc(x), temb)                     # (B, c, H, W)
        h2 = self.down2(self.pool1(h1), temb)                  # (B, 2c, H/2, W/2)
        h = self.mid(self.pool2(h2), temb)                     # (B, 2c, H/4, W/4)
        h = nn.functional.interpolate(h, size=h2.shape[-2:], mode="nearest")
        h = self.up2(torch.cat([h, h2], dim=1), temb)          # (B, 2c, H/2, W/2)
        h = nn.functional.interpolate(h, size=h1.shape[-2:], mode="nearest")
        h = self.up1(torch.cat([h, h1], dim=1), temb)          # (B, c, H, W)
        return self.out(h)                                     # (B, C, H, W)


class Router(nn.Module):
    """Noisy-input cluster classifier: (x_t (B, C, H, W), t (B,)) -> logits (B, K).

    It downsamples at once so that it costs a small fraction of an expert (the router runs at every step
    for every policy that uses it, so its cost is the floor under Top-1's)."""

    def __init__(self, num_experts: int, channels: int = 16, t_dim: int = 32,
                 image_shape: ImageShape = MNIST_SHAPE) -> None:
        super().__init__()
        c = channels
        self.image_shape = tuple(image_shape)
        self.temb = TimeEmbed(t_dim)
        self.inc = nn.Conv2d(image_shape[0], c, 3, stride=2, padding=1)  # -> H/2 x W/2
        self.block1 = ResBlock(c, c, t_dim)
        self.pool = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)      # -> H/4 x W/4 (pooled to 1x1 by the head)
        self.block2 = ResBlock(2 * c, 2 * c, t_dim)
        self.head = nn.Sequential(nn.GroupNorm(8, 2 * c), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(2 * c, num_experts))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.temb(t)                                  # (B, t_dim)
        h = self.block1(self.inc(x), temb)                   # (B, c, H/2, W/2)
        h = self.block2(self.pool(h), temb)                  # (B, 2c, H/4, W/4)
        return self.head(h)                                  # (B, K)


class Classifier(nn.Module):
    """Digit classifier whose penultimate layer is the FID/KID feature space.

    ``features(x)`` maps (B, C, H, W) in [-1, 1] to (B, num_features); ``forward`` gives (B, classes) logits.
    H and W must be multiples of 4 (two 2x2 max-pools feed a linear layer over the (H/4)x(W/4) map).
    ``feature_scale`` (a buffer set after training) makes the features' mean per-dimension variance 1 on the
    training set, so FID and KID come out in comparable units rather than in the arbitrary ReLU scale.
    """

    def __init__(self, num_classes: int = 10, channels: int = 32, num_features: int = 128,
                 image_shape: ImageShape = MNIST_SHAPE) -> None:
        super().__init__()
        c, (in_channels, h, w) = channels, image_shape
        if h % 4 or w % 4:
            raise ValueError(f"the classifier needs an image size divisible by 4, not {h}x{w}")
        self.num_features = num_features
        self.image_shape = tuple(image_shape)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),                                                     # H/2 x W/2
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),                                                     # H/4 x W/4 (7x7 for 28x28)
            nn.Flatten(), nn.Linear(2 * c * (h // 4) * (w // 4), num_features), nn.ReLU(),
        )
        self.head = nn.Linear(num_features, num_classes)
        self.register_buffer("feature_scale", torch.ones(()))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * self.feature_scale  # (B, num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # (B, classes)

    @torch.no_grad()
    def calibrate_feature_scale(self, x: torch.Tensor) -> float:
        """Set ``feature_scale`` so features of x (N, C, H, W) have mean per-dimension variance 1."""
        feats = torch.cat([self.body(chunk) for chunk in x.split(1000)])
        self.feature_scale.fill_(float(feats.var(dim=0).mean().clamp_min(1e-12).rsqrt()))
        return float(self.feature_scale)


# ----------------------------------------------------------------------------------------------
# DiT: Peebles & Xie, "Scalable Diffusion Models with Transformers" (arXiv 2212.09748), following the
# structure of facebookresearch/DiT models.py (adaLN-Zero blocks, fixed 2-D sin-cos positions, zero-init
# final layer), conditioned on t only (no class label) and predicting the velocity (no learned sigma).
# ----------------------------------------------------------------------------------------------

def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, T, D) scaled and shifted per sample by (B, D) vectors."""
    return x * (1 + scale[:, None]) + shift[:, None]


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding -> (grid*grid, dim), half the channels per axis (as in MAE/DiT)."""
    def one_axis(d: int, pos: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10_000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2))
        out = pos.double().reshape(-1)[:, None] * omega[None]        # (M, d/2)
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # (M, d)
    coords = torch.arange(grid, dtype=torch.float64)
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    return torch.cat([one_axis(dim // 2, gy), one_axis(dim // 2, gx)], dim=1).float()


class Attention(nn.Module):
    """Multi-head self-attention over tokens (B, T, D) with one qkv projection, as timm's (used by DiT)."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, T, d/H)
        # explicit softmax(q k^T / sqrt(d)) v rather than the fused kernel: torch's FLOP counter does not
        # count the CPU fused attention, and the cost table must (T is only 49 or 196 here)
        attn = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(dim=-1)               # (B, H, T, T)
        out = attn @ v                                                                             # (B, H, T, d/H)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))                                     # (B, T, D)


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero: the conditioning c (B, D) regresses shift, scale and a
    gate for both the attention and the MLP branch; the gate starts at zero, so the block starts as identity."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(hidden, int(hidden * mlp_ratio)), nn.GELU(approximate="tanh"),
                                 nn.Linear(int(hidden * mlp_ratio), hidden))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        h = modulate(self.norm1(x), shift_msa, scale_msa)                      # (B, T, D)
        x = x + gate_msa[:, None] * self.attn(h)
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a linear map of each token to its patch's pixels (zero-initialised)."""

    def __init__(self, hidden: int, patch: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, patch * patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, T, p*p*C)


class DiT(nn.Module):
    """Patchified transformer velocity network: (x_t (B, C, H, W), t (B,)) -> v (B, C, H, W).

    Images are square (H = W) and H must be a multiple of ``patch``; tokens T = (H/p)(W/p) (patch 4: 7x7 at
    28x28, 8x8 at 32x32). At initialisation every adaLN-Zero gate and the final linear layer are zero, so
    the output is exactly zero (DiT's initialisation).
    """

    def __init__(self, patch: int = 4, hidden: int = 128, depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0,
                 image_shape: ImageShape = MNIST_SHAPE, freq_dim: int = 256) -> None:
        super().__init__()
        in_channels, image_size, width = image_shape
        if image_size != width:
            raise ValueError(f"DiT needs square images, not {image_size}x{width}")
        self.image_shape = tuple(image_shape)
        if image_size % patch or hidden % heads:
            raise ValueError(f"DiT patch {patch} must divide the image size {image_size} and heads {heads} "
                             f"the width {hidden}")
        self.patch, self.in_channels, self.grid = patch, in_channels, image_size // patch
        self.freq_dim = freq_dim
        self.x_embedder = nn.Conv2d(in_channels, hidden, patch, stride=patch)
        self.t_embedder = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.register_buffer("pos_embed", sincos_pos_embed(hidden, self.grid)[None], persistent=False)
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden, patch, in_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation: Xavier linears, patch embedding as a linear, N(0, 0.02) t-MLP, zeros for
        every adaLN modulation and the final linear layer (adaLN-Zero)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.t_embedder[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder[2].weight, std=0.02)
        for layer in [*self.blocks, self.final_layer]:
            nn.init.zeros_(layer.adaLN_modulation[-1].weight)
            nn.init.zeros_(layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, p*p*C) -> (B, C, H, W)."""
        b, p, g, c = x.shape[0], self.patch, self.grid, self.in_channels
        x = x.reshape(b, g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(b, c, g * p, g * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, T, D)
        c = self.t_embedder(timestep_embedding(t, self.freq_dim))             # (B, D)
        for block in self.blocks:
            h = block(h, c)                                                   # (B, T, D)
        return self.unpatchify(self.final_layer(h, c))                        # (B, C, H, W)


UNET_PRESETS: dict[str, dict[str, int]] = {
    "unet-xs": {"channels": 16, "t_dim": 32},
    "unet-s": {"channels": 32, "t_dim": 64},
    "unet-m": {"channels": 64, "t_dim": 128},
}


ROUTER_PRESETS: dict[str, dict[str, int]] = {"router-s": {"channels": 16, "t_dim": 32}}
CLASSIFIER_PRESETS: dict[str, dict[str, int]] = {"classifier-xs": {"channels": 16, "num_features": 64},
                                                  "classifier-s": {"channels": 32, "num_features": 128}}


def _preset(presets: dict[str, dict[str, int]], name: str) -> dict[str, int]:
    if name not in presets:
        raise ValueError(f"unknown network preset '{name}'; known: {', '.join(presets)}")
    return presets[name]


DIT_PRESETS: dict[str, dict[str, int]] = {
    "dit-xs": {"patch": 4, "hidden": 96, "depth": 4, "heads": 4},    # 49 tokens
    "dit-s": {"patch": 2, "hidden": 128, "depth": 6, "heads": 4},    # 196 tokens
}
VELOCITY_PRESETS: dict[str, tuple[type[nn.Module], dict[str, int]]] = {
    **{name: (UNet, kw) for name, kw in UNET_PRESETS.items()},
    **{name: (DiT, kw) for name, kw in DIT_PRESETS.items()},
}


def build_velocity_net(preset: str, image_shape: ImageShape = MNIST_SHAPE) -> nn.Module:
    """A velocity network (x_t (B, C, H, W), t (B,)) -> v (B, C, H, W) by preset name (UNet or DiT), for
    images of ``image_shape`` (C, H, W)."""
    if preset not in VELOCITY_PRESETS:
        raise ValueError(f"unknown network preset '{preset}'; known: {', '.join(VELOCITY_PRESETS)}")
    cls, kw = VELOCITY_PRESETS[preset]
    return cls(**kw, image_shape=tuple(image_shape))


def build_router(preset: str, num_experts: int, image_shape: ImageShape = MNIST_SHAPE) -> Router:
    """A router (x_t (B, C, H, W), t (B,)) -> logits (B, num_experts) for images of ``image_shape``."""
    return Router(num_experts, **_preset(ROUTER_PRESETS, preset), image_shape=tuple(image_shape))


def build_classifier(preset: str, num_classes: int = 10, image_shape: ImageShape = MNIST_SHAPE) -> Classifier:
    """The evaluator classifier (B, C, H, W) -> (B, num_classes) logits for images of ``image_shape``."""
    return Classifier(num_classes, **_preset(CLASSIFIER_PRESETS, preset), image_shape=tuple(image_shape))

