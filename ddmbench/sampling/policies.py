"""Routing policies: router probabilities ``p`` (B, K) at one step -> expert weights ``w`` (B, K).

Every policy is a pure function ``policy(p, ctx, **params) -> w`` whose rows are non-negative and
sum to 1. A policy sees neither the state ``x`` nor the experts. Its randomness is a pure function of
each row's seed and the routing-clock cell of t (``ddmbench.streams.routing_uniform``), never of how many
evaluations came before: a trajectory replays exactly, and the same time interval sees the same draws at
every NFE and in Heun's second evaluation. The inference strategies follow McAllister et al.,
"Decentralized Diffusion Models" (arXiv 2501.05450), Table 1.

A policy is spelled by its *label* everywhere (params.yaml, CLI, DVC stage names, folders, MLflow
run names, report rows): ``full``, ``uniform``, ``oracle``, ``monolith``, ``top-2``, ``sample-1``,
``threshold-0.05``, ``nucleus-p0.9-T0.5``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ddmbench.streams import DEFAULT_ROUTING_CLOCK, routing_uniform


@dataclass(frozen=True)
class RoutingContext:
    """What a policy may look at besides ``p``.

    t: (B,) flow time of the current state (1 = noise, 0 = data).
    seed: (B,) int64 sample seed of each row (keys the routing draws), or None for deterministic policies.
    cluster: (B,) long, the cluster each sample was drawn for (oracle), or None.
    clock: cells of the routing clock over [0, 1]; a draw is constant over one cell.
    """

    t: torch.Tensor
    seed: torch.Tensor | None = None
    cluster: torch.Tensor | None = None
    clock: int = DEFAULT_ROUTING_CLOCK

    def uniform(self, n: int) -> torch.Tensor:
        """(B, n) float64 routing uniforms in (0, 1) of each row at its time's clock cell."""
        if self.seed is None or len(self.seed) != len(self.t):
            raise ValueError("this policy draws at random and needs each row's sample seed in ctx.seed")
        return routing_uniform(self.seed, self.t, self.clock, n)


Policy = Callable[..., torch.Tensor]


def _renormalise(w: torch.Tensor) -> torch.Tensor:
    return w / w.sum(dim=1, keepdim=True)


def _keep(p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the weights outside ``mask`` (B, K) and renormalise the rest."""
    return _renormalise(torch.where(mask, p, torch.zeros_like(p)))


def full(p: torch.Tensor, ctx: RoutingContext) -> torch.Tensor:
    """Router-weighted ensemble of all experts: w = p."""
    return _renormalise(p)


def uniform(p: torch.Tensor, ctx: RoutingContext) -> torch.Tensor:
    """Equal weight 1/K on every expert, ignoring the router."""
    return torch.full_like(p, 1.0 / p.shape[1])


def top_k(p: torch.Tensor, ctx: RoutingContext, *, k: int) -> torch.Tensor:
    """Keep the k largest probabilities, renormalise."""
    idx = p.topk(min(k, p.shape[1]), dim=1).indices  # (B, k)
    mask = torch.zeros_like(p, dtype=torch.bool).scatter_(1, idx, True)
    return _keep(p, mask)


def sample_k(p: torch.Tensor, ctx: RoutingContext, *, k: int) -> torch.Tensor:
    """Draw k experts from p without replacement (Gumbel-top-k on the row's keyed routing uniforms), renormalise."""
    gumbel = -torch.log(-torch.log(ctx.uniform(p.shape[1])))  # (B, K), uniforms in (0, 1)
    scores = torch.log(p.double().clamp_min(1e-300)) + gumbel.to(p.device)
    scores = torch.where(p > 0, scores, torch.full_like(scores, -torch.inf))
    idx = scores.topk(min(k, p.shape[1]), dim=1).indices
    mask = torch.zeros_like(p, dtype=torch.bool).scatter_(1, idx, True)
    return _keep(p, mask)


def threshold(p: torch.Tensor, ctx: RoutingContext, *, tau: float) -> torch.Tensor:
    """Keep every expert with p >= tau (always at least the top-1), renormalise."""
    mask = p >= tau
    mask |= torch.zeros_like(mask).scatter_(1, p.argmax(dim=1, keepdim=True), True)
    return _keep(p, mask)


def nucleus(p: torch.Tensor, ctx: RoutingContext, *, p_mass: float, temperature: float) -> torch.Tensor:
    """Temperature T on p, then the smallest set of experts whose tempered mass reaches p_mass."""
    q = _renormalise(p.double().clamp_min(1e-300) ** (1.0 / temperature))  # (B, K)
    q_sorted, order = q.sort(dim=1, descending=True)
    mass_before = q_sorted.cumsum(dim=1) - q_sorted  # mass of the experts ranked above each one
    keep_sorted = mass_before < p_mass - 1e-12
    keep_sorted[:, 0] = True
    mask = torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)
    return _keep(q, mask).to(p.dtype)


def tempered(p: torch.Tensor, ctx: RoutingContext, *, temperature: float) -> torch.Tensor:
    """Full with the router's logits divided by T: w = softmax(log p / T) = p^(1/T) renormalised.

    T = 1 is full; T -> 0 is top-1 (ties split evenly); T -> inf is uniform over the experts with p > 0."""
    return torch.softmax(torch.log(p.double()) / temperature, dim=1).to(p.dtype)  # (B, K); log 0 = -inf -> 0


def oracle(p: torch.Tensor, ctx: RoutingContext) -> torch.Tensor:
    """One-hot on the cluster each sample was drawn for (ignores the router)."""
    if ctx.cluster is None:
        raise ValueError("oracle routing needs ctx.cluster")
    return torch.nn.functional.one_hot(ctx.cluster.to(p.device), p.shape[1]).to(p.dtype)


@dataclass(frozen=True)
class PolicySpec:
    """A named routing policy with its parameters; ``label`` is its only spelling."""

    name: str
    params: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.name in ("top", "sample"):
            return f"{self.name}-{int(self.params['k'])}"
        if self.name == "threshold":
            return f"threshold-{_num(self.params['tau'])}"
        if self.name == "nucleus":
            return f"nucleus-p{_num(self.params['p_mass'])}-T{_num(self.params['temperature'])}"
        if self.name == "posterior-top":
            return f"posterior-top-{int(self.params['k'])}"
        if self.name == "tempered":
            return f"tempered-{_num(self.params['temperature'])}"
        return self.name

    @property
    def uses_experts(self) -> bool:
        return self.name != "monolith"

    @property
    def uses_posterior(self) -> bool:
        """The decomposition policies route by the exact cluster posterior p* (``ddmbench.analysis.posterior``)
        in place of the trained router: whoever builds the field must give it the posterior router."""
        return self.name in ("posterior", "posterior-top")

    @property
    def uses_router(self) -> bool:
        return self.name not in ("monolith", "oracle", "uniform")

    def weights(self, p: torch.Tensor, ctx: RoutingContext) -> torch.Tensor:
        """(B, K) router probabilities -> (B, K) expert weights, rows summing to 1."""
        if not self.uses_experts:
            raise ValueError("the monolith policy has no expert weights")
        fn = POLICIES[self.name]
        kwargs = {k: (int(v) if k == "k" else v) for k, v in self.params.items()}
        return fn(p, ctx, **kwargs)

    def check(self, num_experts: int) -> None:
        """Raise ValueError if the policy cannot run with ``num_experts`` experts."""
        k = self.params.get("k")
        if k is not None and k > num_experts:
            raise ValueError(f"policy '{self.label}' needs k <= number of experts ({num_experts}); "
                             f"use k between 1 and {num_experts}")


def _num(x: float) -> str:
    return f"{x:g}"


POLICIES: dict[str, Policy | None] = {
    "monolith": None,  # the dense baseline: no experts, no router
    "oracle": oracle,
    "full": full,
    "uniform": uniform,
    "top": top_k,
    "sample": sample_k,
    "threshold": threshold,
    "nucleus": nucleus,
    "tempered": tempered,
    "posterior": full,         # w = p*: the field's router is the exact posterior (PolicySpec.uses_posterior)
    "posterior-top": top_k,    # top-k of p*
}

_NUM = r"(\d+(?:\.\d*)?(?:e[+-]?\d+)?)"
_PATTERNS: list[tuple[str, re.Pattern[str], tuple[str, ...]]] = [
    ("top", re.compile(r"top-(\d+)"), ("k",)),
    ("sample", re.compile(r"sample-(\d+)"), ("k",)),
    ("threshold", re.compile(rf"threshold-{_NUM}"), ("tau",)),
    ("nucleus", re.compile(rf"nucleus-p{_NUM}-T{_NUM}"), ("p_mass", "temperature")),
    ("posterior-top", re.compile(r"posterior-top-(\d+)"), ("k",)),
    ("tempered", re.compile(rf"tempered-{_NUM}"), ("temperature",)),
]
LABEL_FORMS = ("monolith, oracle, full, uniform, top-<k>, sample-<k>, threshold-<tau>, nucleus-p<mass>-T<temperature>, "
               "tempered-<temperature>, posterior, posterior-top-<k>")


def parse_policy(label: str) -> PolicySpec:
    """Parse a policy label (``top-2``, ``nucleus-p0.9-T0.5``); ValueError names the valid forms."""
    label = str(label).strip()
    if label in ("monolith", "oracle", "full", "uniform", "posterior"):
        return PolicySpec(label)
    for name, pattern, keys in _PATTERNS:
        m = pattern.fullmatch(label)
        if m:
            params = {key: float(v) for key, v in zip(keys, m.groups())}
            return make_policy(name, **params)
    raise ValueError(f"unknown policy '{label}'; valid forms: {LABEL_FORMS}")


def make_policy(name: str, **params: float) -> PolicySpec:
    """Build and validate a policy from its name and parameters (CLI: ``--policy nucleus --p 0.9``)."""
    required = {"top": ("k",), "sample": ("k",), "threshold": ("tau",), "nucleus": ("p_mass", "temperature"),
                "tempered": ("temperature",), "posterior-top": ("k",)}
    if name not in POLICIES:
        raise ValueError(f"unknown policy '{name}'; valid policies: {', '.join(POLICIES)}")
    need = required.get(name, ())
    missing = [k for k in need if params.get(k) is None]
    if missing:
        raise ValueError(f"policy '{name}' needs {', '.join(missing)}")
    unexpected = [k for k, v in params.items() if k not in need and v is not None]
    if unexpected:
        takes = ", ".join(need) if need else "no parameters"
        raise ValueError(f"policy '{name}' does not take {', '.join(unexpected)} (it takes {takes})")
    params = {k: float(v) for k, v in params.items() if k in need}
    if "k" in params and (params["k"] < 1 or params["k"] != int(params["k"])):
        raise ValueError(f"policy '{name}': k must be a positive integer, got {params['k']:g}")
    if "tau" in params and not 0.0 <= params["tau"] <= 1.0:
        raise ValueError(f"policy 'threshold': tau must be in [0, 1], got {params['tau']:g}")
    if "p_mass" in params and not 0.0 < params["p_mass"] <= 1.0:
        raise ValueError(f"policy 'nucleus': p must be in (0, 1], got {params['p_mass']:g}")
    if "temperature" in params and not params["temperature"] > 0.0:
        raise ValueError(f"policy '{name}': temperature must be > 0, got {params['temperature']:g}")
    return PolicySpec(name, params)
