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
class Param:
    """A policy parameter: the keyword its function takes, its CLI option (whose name errors use), how a label form
    spells it, whether it is an integer, and its range (``ok`` with the phrase an error gives)."""

    name: str
    option: str
    form: str
    integer: bool
    ok: Callable[[float], bool]
    must: str


PARAMS: dict[str, Param] = {p.name: p for p in (
    Param("k", "--k", "k", True, lambda v: v >= 1 and v == int(v), "a positive integer"),
    Param("tau", "--tau", "tau", False, lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    Param("p_mass", "--p", "mass", False, lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    Param("temperature", "--temperature", "temperature", False, lambda v: v > 0.0, "> 0"),
)}


@dataclass(frozen=True)
class PolicyDef:
    """One routing policy: its function (None: the monolith, which has no experts), its label with ``{param}``
    fields (its only spelling), its parameters (keys of :data:`PARAMS`), what the field must give it, and the line
    the docs' policy table shows. Adding a policy is one record in :data:`REGISTRY` plus its function."""

    name: str
    fn: Policy | None
    label: str
    params: tuple[str, ...] = ()
    uses_router: bool = True
    uses_posterior: bool = False
    weights: str = ""

    def pattern(self) -> re.Pattern[str]:
        """The regex of the label, one group per parameter."""
        out, last = "", 0
        for m in re.finditer(r"\{(\w+)\}", self.label):
            out += re.escape(self.label[last:m.start()]) + (r"(\d+)" if PARAMS[m[1]].integer else _NUM)
            last = m.end()
        return re.compile(out + re.escape(self.label[last:]))

    def form(self) -> str:
        """The label as the docs and errors spell it: ``top-<k>``."""
        return re.sub(r"\{(\w+)\}", lambda m: f"<{PARAMS[m[1]].form}>", self.label)


_NUM = r"(\d+(?:\.\d*)?(?:e[+-]?\d+)?)"
REGISTRY: dict[str, PolicyDef] = {d.name: d for d in (
    PolicyDef("monolith", None, "monolith", uses_router=False, weights="the dense baseline model (no experts)"),
    PolicyDef("oracle", oracle, "oracle", uses_router=False,
              weights="one-hot on the cluster the sample was drawn for (cluster sizes as prior)"),
    PolicyDef("full", full, "full", weights="w = p (router-weighted ensemble of all experts)"),
    PolicyDef("uniform", uniform, "uniform", uses_router=False, weights="w = 1/K"),
    PolicyDef("top", top_k, "top-{k}", ("k",), weights="keep the k largest p, renormalise"),
    PolicyDef("sample", sample_k, "sample-{k}", ("k",),
              weights="draw k experts from p without replacement (seeded), renormalise"),
    PolicyDef("threshold", threshold, "threshold-{tau}", ("tau",),
              weights="keep p ≥ τ (at least the top-1), renormalise"),
    PolicyDef("nucleus", nucleus, "nucleus-p{p_mass}-T{temperature}", ("p_mass", "temperature"),
              weights="temperature T on p, keep the smallest set with mass ≥ p"),
    PolicyDef("tempered", tempered, "tempered-{temperature}", ("temperature",),
              weights="full with the router's logits divided by T: T → 0 is top-1, T = 1 is full"),
    PolicyDef("posterior", full, "posterior", uses_posterior=True,
              weights="the real experts routed by the exact cluster posterior p* of the training set instead of "
                      "the router"),
    PolicyDef("posterior-top", top_k, "posterior-top-{k}", ("k",), uses_posterior=True, weights="top-k of p*"),
)}


def policy_table() -> str:
    """The docs' table of policies (docs/sampling.md), one row per record of :data:`REGISTRY`."""
    return "\n".join(["| label | weights |", "|---|---|",
                      *(f"| `{d.form()}` | {d.weights} |" for d in REGISTRY.values())])


def label_forms() -> str:
    return ", ".join(d.form() for d in REGISTRY.values())


@dataclass(frozen=True)
class PolicySpec:
    """A named routing policy with its parameters; ``label`` is its only spelling."""

    name: str
    params: dict[str, float] = field(default_factory=dict)

    @property
    def definition(self) -> PolicyDef:
        return REGISTRY[self.name]

    @property
    def label(self) -> str:
        return self.definition.label.format(**{k: int(v) if PARAMS[k].integer else _num(v)
                                              for k, v in self.params.items()})

    @property
    def uses_experts(self) -> bool:
        return self.definition.fn is not None

    @property
    def uses_posterior(self) -> bool:
        """The decomposition policies route by the exact cluster posterior p* (``ddmbench.analysis.posterior``)
        in place of the trained router: whoever builds the field must give it the posterior router."""
        return self.definition.uses_posterior

    @property
    def uses_router(self) -> bool:
        return self.definition.uses_router

    def weights(self, p: torch.Tensor, ctx: RoutingContext) -> torch.Tensor:
        """(B, K) router probabilities -> (B, K) expert weights, rows summing to 1."""
        fn = self.definition.fn
        if fn is None:
            raise ValueError(f"the {self.name} policy has no expert weights")
        kwargs = {k: (int(v) if PARAMS[k].integer else v) for k, v in self.params.items()}
        return fn(p, ctx, **kwargs)

    def check(self, num_experts: int) -> None:
        """Raise ValueError if the policy cannot run with ``num_experts`` experts."""
        k = self.params.get("k")
        if k is not None and k > num_experts:
            raise ValueError(f"policy '{self.label}' needs k <= number of experts ({num_experts}); "
                             f"use k between 1 and {num_experts}")


def _num(x: float) -> str:
    return f"{x:g}"


def parse_policy(label: str) -> PolicySpec:
    """Parse a policy label (``top-2``, ``nucleus-p0.9-T0.5``); ValueError names the valid forms."""
    label = str(label).strip()
    for d in REGISTRY.values():
        m = d.pattern().fullmatch(label)
        if m:
            return make_policy(d.name, **{key: float(v) for key, v in zip(d.params, m.groups())})
    raise ValueError(f"unknown policy '{label}'; valid forms: {label_forms()}")


def make_policy(name: str, **params: float | None) -> PolicySpec:
    """Build and validate a policy from its name and parameters (CLI: ``--policy nucleus --p 0.9``)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown policy '{name}'; valid policies: {', '.join(REGISTRY)}")
    need = REGISTRY[name].params
    missing = [k for k in need if params.get(k) is None]
    if missing:
        raise ValueError(f"policy '{name}' needs {', '.join(missing)}")
    unexpected = [k for k, v in params.items() if k not in need and v is not None]
    if unexpected:
        takes = ", ".join(need) if need else "no parameters"
        raise ValueError(f"policy '{name}' does not take {', '.join(unexpected)} (it takes {takes})")
    values = {k: float(params[k]) for k in need}  # type: ignore[arg-type]
    for key, value in values.items():
        if not PARAMS[key].ok(value):
            raise ValueError(f"policy '{name}': {PARAMS[key].option[2:]} must be {PARAMS[key].must}, got {value:g}")
    return PolicySpec(name, values)
