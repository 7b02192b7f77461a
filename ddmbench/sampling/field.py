"""Velocity fields the solvers integrate: a single model, or a router + experts + policy (a DDM).

A field is a callable ``(x (B, C, H, W), t (B,), ctx) -> v (B, C, H, W)`` that holds no state which changes
while sampling (k-diffusion's model + ``extra_args``): ``ctx`` (:class:`SampleContext`) carries what each
row needs besides its state (its sample seed, the oracle's drawn cluster), and the sampler binds it for a
batch, so the solvers keep their ``field(x, t)`` signature. ``route`` returns the whole evaluation as a
:class:`Routing` record (p, w, v and the per-expert dispatch); counting, tracing and the disagreement
spread are observers of those records (``ddmbench.sampling.observers``), never counters inside a field.

``RoutedField`` evaluates each expert only on the rows whose weight for it is nonzero (sparse dispatch).
Both fields call a model on at most ``chunk_rows`` rows at a time. On the CPU a small UNet runs faster on
64-row chunks than on a 256-row batch (its activations stay in cache), and the allocator then sees a few
fixed block sizes instead of every dispatch size, which keeps peak resident memory flat over many batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ddmbench.data.shapes import MNIST_SHAPE, ImageShape, image_shape_of
from ddmbench.sampling.policies import DEFAULT_ROUTING_CLOCK, PolicySpec, RoutingContext

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DEFAULT_CHUNK_ROWS = 64


@dataclass(frozen=True)
class SampleContext:
    """Per-row data fixed for a whole trajectory. seed: (B,) int64 sample seeds (key the routing draws);
    cluster: (B,) long cluster each sample was drawn for (oracle), or None."""

    seed: torch.Tensor
    cluster: torch.Tensor | None = None

    @staticmethod
    def of(seeds: Sequence[int], cluster: torch.Tensor | None = None) -> SampleContext:
        return SampleContext(torch.tensor([int(s) for s in seeds], dtype=torch.int64), cluster)


@dataclass(frozen=True)
class Routing:
    """One field evaluation. x, v: (B, C, H, W) state and combined velocity; t: (B,); p: (B, K) router
    probabilities (None for a single model); w: (B, K) expert weights; dispatch: (j, rows (R,), v_j (R, C, H, W))
    for every expert j that ran; router_rows: rows the router evaluated."""

    x: torch.Tensor
    t: torch.Tensor
    ctx: SampleContext | None
    p: torch.Tensor | None
    w: torch.Tensor
    v: torch.Tensor
    dispatch: tuple[tuple[int, torch.Tensor, torch.Tensor], ...]
    router_rows: int


def evaluate_in_chunks(model: Model, x: torch.Tensor, t: torch.Tensor, chunk_rows: int) -> torch.Tensor:
    """model(x, t) computed on row chunks of at most ``chunk_rows`` (0 = all rows at once); same shape out."""
    if chunk_rows <= 0 or x.shape[0] <= chunk_rows:
        return model(x, t)
    return torch.cat([model(x[i:i + chunk_rows], t[i:i + chunk_rows]) for i in range(0, x.shape[0], chunk_rows)])


def dispatch(experts: Sequence[Model], x: torch.Tensor, t: torch.Tensor, w: torch.Tensor, chunk_rows: int
             ) -> tuple[torch.Tensor, tuple[tuple[int, torch.Tensor, torch.Tensor], ...]]:
    """Sparse dispatch: (sum_j w_j expert_j(x, t), the (j, rows, v_j) of every expert that ran) for weights w (B, K)
    and states x (B, ...) of any rank. Expert j runs only on the rows whose weight for it is nonzero (all rows:
    on x itself); out of place, so the sum is differentiable in x."""
    v = torch.zeros_like(x)
    shape = (-1, *([1] * (x.dim() - 1)))
    ran = []
    for j, expert in enumerate(experts):
        rows = (w[:, j] != 0).nonzero().flatten()                                # rows routed to expert j
        if rows.numel() == 0:
            continue
        if rows.numel() == x.shape[0]:
            v_j = evaluate_in_chunks(expert, x, t, chunk_rows)
            v = v + w[:, j].view(shape).to(x.dtype) * v_j
        else:
            v_j = evaluate_in_chunks(expert, x[rows], t[rows], chunk_rows)       # (R, ...)
            v = v.index_add(0, rows, w[rows, j].view(shape).to(x.dtype) * v_j)
        ran.append((j, rows, v_j))
    return v, tuple(ran)


class ModelField:
    """One velocity model as a field (the monolith, or a single expert): a one-expert routing record.

    ``image_shape`` (C, H, W) of the states it integrates: given, or the one the model was built for.
    ``time_range``: the times the model serves (the sampler's grid stays inside it)."""

    num_experts = 1
    routed = False          # no router: one model, weight 1
    router = None
    time_range: tuple[float, float] = (0.0, 1.0)

    def __init__(self, model: Model, chunk_rows: int = DEFAULT_CHUNK_ROWS, image_shape: ImageShape | None = None
                 ) -> None:
        self.model = model
        self.image_shape: ImageShape = tuple(image_shape) if image_shape else image_shape_of(model)  # type: ignore[assignment]
        self.chunk_rows = chunk_rows

    @property
    def experts(self) -> list[Model]:
        return [self.model]

    def combine(self, x: torch.Tensor, t: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        """The model's velocity (B, C, H, W); differentiable in x (for torch.func)."""
        return evaluate_in_chunks(self.model, x, t, self.chunk_rows)

    @torch.no_grad()
    def route(self, x: torch.Tensor, t: torch.Tensor, ctx: SampleContext | None = None) -> Routing:
        v = self.combine(x, t)
        w = torch.ones(x.shape[0], 1, device=x.device)
        return Routing(x, t, ctx, None, w, v, ((0, torch.arange(x.shape[0], device=x.device), v),), 0)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, ctx: SampleContext | None = None) -> torch.Tensor:
        return self.combine(x, t)


class RoutedField:
    """DDM velocity: v(x, t) = sum_j w_j(x, t) * expert_j(x, t), w = policy(softmax(router(x, t)), ctx).

    experts: K velocity models. router: (x, t) -> logits (B, K), or None for policies that ignore it.
    clock: cells of the routing clock (``ddmbench.streams``): a policy's random draws are constant over a cell.
    ``image_shape`` (C, H, W): given, or the one the experts were built for (they and the router must agree).
    ``time_range``: the times every expert serves (an imported DDM's shared range; the sampler's grid stays inside).
    Everything here is fixed at construction; an evaluation's whole story is the :class:`Routing` it returns.
    """

    routed = True

    def __init__(self, experts: Sequence[Model], router: Model | None, policy: PolicySpec,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS, image_shape: ImageShape | None = None,
                 clock: int = DEFAULT_ROUTING_CLOCK, time_range: tuple[float, float] = (0.0, 1.0)) -> None:
        if policy.uses_router and router is None:
            raise ValueError(f"policy '{policy.label}' needs a router")
        if clock < 1:
            raise ValueError(f"the routing clock needs at least one cell, got {clock}")
        models = [*experts, *([router] if router is not None else [])]
        shapes = {image_shape_of(m) for m in models if getattr(m, "image_shape", None) is not None}
        if image_shape is None and len(shapes) > 1:
            raise ValueError(f"the experts and the router were built for different image shapes {sorted(shapes)}")
        self.image_shape: ImageShape = (tuple(image_shape) if image_shape  # type: ignore[assignment]
                                        else shapes.pop() if shapes else MNIST_SHAPE)
        self.experts = list(experts)
        self.chunk_rows = chunk_rows
        self.router = router
        self.policy = policy
        self.clock = clock
        self.time_range = time_range

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def probabilities(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Router probabilities (B, K); uniform when the policy does not use the router."""
        k = len(self.experts)
        if not self.policy.uses_router:
            return torch.full((x.shape[0], k), 1.0 / k, device=x.device)
        return torch.softmax(evaluate_in_chunks(self.router, x, t, self.chunk_rows).float(), dim=1)

    def weights(self, p: torch.Tensor, t: torch.Tensor, ctx: SampleContext | None) -> torch.Tensor:
        """(B, K) expert weights of the policy at router probabilities p (B, K), times t (B,)."""
        routing = RoutingContext(t=t, seed=None if ctx is None else ctx.seed,
                                 cluster=None if ctx is None else ctx.cluster, clock=self.clock)
        return self.policy.weights(p, routing)

    def combine(self, x: torch.Tensor, t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """sum_j w_j expert_j(x, t) for given weights w (B, K) (differentiable in x, so torch.func can take its
        Jacobian with the routing held fixed). Expert j runs only on the rows that weight it, as in sampling:
        a sparse policy's Jacobian then costs what its sampling step costs, not K experts on every row."""
        return dispatch(self.experts, x, t, w, self.chunk_rows)[0]

    @torch.no_grad()
    def expert_predictions(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(K, B, C, H, W) every expert's velocity at (x, t)."""
        return torch.stack([evaluate_in_chunks(expert, x, t, self.chunk_rows) for expert in self.experts])

    @torch.no_grad()
    def route(self, x: torch.Tensor, t: torch.Tensor, ctx: SampleContext | None = None) -> Routing:
        p = self.probabilities(x, t)                                             # (B, K)
        w = self.weights(p, t, ctx)                                              # (B, K)
        v, ran = dispatch(self.experts, x, t, w, self.chunk_rows)
        return Routing(x, t, ctx, p, w, v, ran, x.shape[0] if self.policy.uses_router else 0)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, ctx: SampleContext | None = None) -> torch.Tensor:
        return self.route(x, t, ctx).v
