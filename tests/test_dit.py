"""The DiT velocity network: shapes, adaLN-Zero initialisation, preset sizes, and that it trains."""

from __future__ import annotations

import pytest
import torch
from conftest import Project

from ddmbench.data.datasets import load_prepared, to_model_space
from ddmbench.evaluation.cost import flops_per_image
from ddmbench.models import nets
from ddmbench.models.checkpoints import load_velocity_net
from ddmbench.pipeline import cluster, prepare, train_expert
from ddmbench.sampling import flow


def dit_params(patch: int, hidden: int, depth: int, mlp: int = 4, freq: int = 256, c: int = 1) -> int:
    """Parameter count of DiT by hand, layer by layer."""
    embed = c * patch * patch * hidden + hidden                                  # patch embedding (conv)
    t_mlp = freq * hidden + hidden + hidden * hidden + hidden
    attn = 3 * hidden * hidden + 3 * hidden + hidden * hidden + hidden
    ffn = hidden * mlp * hidden + mlp * hidden + mlp * hidden * hidden + hidden
    ada = hidden * 6 * hidden + 6 * hidden
    final = hidden * patch * patch * c + patch * patch * c + hidden * 2 * hidden + 2 * hidden
    return embed + t_mlp + depth * (attn + ffn + ada) + final


@pytest.mark.parametrize("preset", list(nets.DIT_PRESETS))
def test_shapes_and_parameter_count(preset: str) -> None:
    net = nets.build_velocity_net(preset)
    assert isinstance(net, nets.DiT)
    kw = nets.DIT_PRESETS[preset]
    assert sum(p.numel() for p in net.parameters()) == dit_params(kw["patch"], kw["hidden"], kw["depth"])
    x, t = torch.randn(3, 1, 28, 28), torch.rand(3)
    assert net(x, t).shape == (3, 1, 28, 28)
    assert net.pos_embed.shape == (1, (28 // kw["patch"]) ** 2, kw["hidden"])


def test_preset_sizes_are_pinned() -> None:
    counts = {p: sum(q.numel() for q in nets.build_velocity_net(p).parameters()) for p in nets.DIT_PRESETS}
    assert counts == {"dit-xs": 725_104, "dit-s": 1_864_580}


def test_cost_counts_every_matmul_including_attention() -> None:
    # by hand for dit-xs (T = 49 tokens, D = 96, 4 blocks): linears, attention, patch embed, output, adaLN, t-MLP
    t, d, depth = 49, 96, 4
    blocks = depth * (2 * t * (d * 3 * d + d * d + 2 * d * 4 * d) + 2 * 2 * t * t * d)
    edges = 2 * t * 16 * d + 2 * t * d * 16
    ada = 2 * depth * d * 6 * d + 2 * d * 2 * d
    t_mlp = 2 * (256 * d + d * d)
    assert flops_per_image(nets.build_velocity_net("dit-xs")) == blocks + edges + ada + t_mlp == 47_887_872


def test_unpatchify_inverts_patchify() -> None:
    net = nets.DiT(patch=4, hidden=32, depth=1, heads=2)
    x = torch.randn(2, 1, 28, 28)
    tokens = x.unfold(2, 4, 4).unfold(3, 4, 4)                   # (B, C, 7, 7, p, p)
    tokens = tokens.permute(0, 2, 3, 4, 5, 1).reshape(2, 49, 16)  # row-major tokens, (p, q, c) per token
    assert torch.equal(net.unpatchify(tokens), x)


def test_adaln_zero_output_depends_only_on_the_final_layer() -> None:
    torch.manual_seed(0)
    net = nets.build_velocity_net("dit-xs").eval()
    x, t = torch.randn(4, 1, 28, 28), torch.rand(4)
    assert torch.count_nonzero(net(x, t)) == 0                   # zero-initialised final layer
    # every block starts as the identity: scrambling the attention and MLP weights changes nothing
    with torch.no_grad():
        for block in net.blocks:
            for p in [*block.attn.parameters(), *block.mlp.parameters()]:
                p.normal_()
        net.final_layer.linear.weight.normal_()
    h = net.x_embedder(x).flatten(2).transpose(1, 2) + net.pos_embed
    c = net.t_embedder(nets.timestep_embedding(t, net.freq_dim))
    ref = net.unpatchify(net.final_layer(h, c))
    assert torch.allclose(net(x, t), ref, atol=1e-6) and ref.abs().sum() > 0
    # the gradient of the initial loss reaches only the final linear layer's bias and weight
    fresh = nets.build_velocity_net("dit-xs")
    (fresh(x, t) - x).pow(2).sum().backward()
    with_grad = {n for n, p in fresh.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == {"final_layer.linear.weight", "final_layer.linear.bias"}


def test_patch_must_divide_the_image() -> None:
    with pytest.raises(ValueError, match="patch 5"):
        nets.DiT(patch=5)


@pytest.mark.slow
def test_a_few_steps_reduce_the_flow_loss(project: Project) -> None:
    cfg = project.config()
    prepare.run(cfg, project.paths)
    x = to_model_space(load_prepared(project.paths.dataset)["train_x"])
    torch.manual_seed(0)
    net = nets.build_velocity_net("dit-xs")
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)

    def loss(generator: torch.Generator) -> torch.Tensor:
        x_t, t, target = flow.sample_training_pair(x[:32], generator=generator)
        return (net(x_t, t) - target).pow(2).mean()

    with torch.no_grad():
        before = float(loss(torch.Generator().manual_seed(1)))
    g = torch.Generator().manual_seed(2)
    for _ in range(12):
        opt.zero_grad()
        loss(g).backward()
        opt.step()
    with torch.no_grad():
        after = float(loss(torch.Generator().manual_seed(1)))
    assert after < 0.8 * before


@pytest.mark.slow
def test_dit_expert_through_the_stage_round_trips(project: Project) -> None:
    project.update(expert={"net": "dit-xs", "steps": 10})
    cfg = project.config()
    prepare.run(cfg, project.paths)
    cluster.run(cfg, project.paths)
    metrics = train_expert.run(cfg, project.paths, 0)
    assert metrics is not None and metrics["params"] == 725_104
    net = load_velocity_net(project.paths.expert(0), "expert", "ddmbench train-expert")
    assert isinstance(net, nets.DiT)
    x, t = torch.randn(2, 1, 28, 28), torch.rand(2)
    assert net(x, t).shape == (2, 1, 28, 28) and net(x, t).abs().sum() > 0   # trained: no longer zero
