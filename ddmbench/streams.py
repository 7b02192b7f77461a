"""Every random stream of ddmbench, named in one place (pure torch; imports nothing from ddmbench).

Two kinds of stream:

* **Seeded generators** (``torch.Generator().manual_seed(...)``): the initial noise, the amplification
  directions, training batches and training noise, held-out subsets. Their seed derivations are the ones
  the project has always used, so trained models and monolith / full / top-k samples stay bit-identical.
* **Keyed draws** (counter-based, like a keyed hash; Salmon et al. 2011, "Parallel random numbers: as easy
  as 1, 2, 3"): a draw is a pure function of (stream, sample seed, counter), computed by splitmix64 on
  int64 tensors for all rows at once. Routing randomness uses them with the counter = the cell of a
  *routing clock* over flow time, so a sample sees the same routing draws over the same time interval
  whatever the solver grid, in Heun's second evaluation, and in any replay (common random numbers).

Routing clock: [0, 1] is cut into ``clock`` equal cells; cell c covers (c/C, (c+1)/C], and t = 0 belongs
to cell 0 (so t = 1 is in the last cell, C − 1). The solver integrates from t = 1 down to 0, so an Euler
step that starts on a cell's upper edge uses the draw of the cell it integrates over; Heun's second
evaluation at t_next uses t_next's cell. A grid time within 10⁻⁴ of a cell width above an edge counts as
on the edge (float32 grid times such as 0.35 are stored as 0.3500000x).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# ---------------------------------------------------------------------------------------------------------
# keyed draws: splitmix64 (Steele, Lea & Flood 2014) on int64 tensors, wrapping arithmetic
# ---------------------------------------------------------------------------------------------------------


def _signed(c: int) -> int:
    """A 64-bit constant as the int64 with the same bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)

# Keys of the keyed streams (arbitrary distinct 64-bit constants).
ROUTING = 0x5EED_0F_0A          # routing draws (sample-k's Gumbel noise, any policy randomness), per clock cell
ORACLE_CLUSTER = 0x0AC1E_C1D    # the cluster the oracle samples each seed from
JUMP_DIRECTION = 0x1E_D1_2EC7   # directions of the routing-jump finite difference, per evaluation time
POWER_START = 0x90E2_57A27      # start vectors of the Lipschitz power iteration, per evaluation time

DEFAULT_ROUTING_CLOCK = 100
TIME_KEY_RESOLUTION = 2 ** 20   # time keys of the analysis streams: t rounded to 2^-20


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finaliser of x + golden (int64 tensor, any shape, bits as uint64) -> int64 of the same shape."""
    z = x + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def keyed_uniform(stream: int, seeds: torch.Tensor, counters: torch.Tensor, n: int) -> torch.Tensor:
    """(B, n) float64 uniforms in the open interval (0, 1): entry (i, j) is a pure function of
    (stream, seeds[i], counters[i], j). seeds, counters: (B,) integers."""
    seeds = torch.as_tensor(seeds, dtype=torch.int64).cpu()
    counters = torch.as_tensor(counters, dtype=torch.int64).cpu()
    key = splitmix64(splitmix64(torch.full_like(seeds, _signed(stream)) ^ seeds) ^ counters)   # (B,)
    bits = splitmix64(key[:, None] ^ torch.arange(n, dtype=torch.int64)[None])               # (B, n)
    return (_shr(bits, 11).double() + 0.5) * 2.0 ** -53                                      # top 53 bits


def keyed_normal(stream: int, seeds: torch.Tensor, counters: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """(B, *shape) float32 standard normals by Box–Muller on keyed uniforms (same purity as keyed_uniform)."""
    d = 1
    for s in shape:
        d *= int(s)
    u = keyed_uniform(stream, seeds, counters, 2 * ((d + 1) // 2)).view(len(seeds), 2, -1)    # (B, 2, ceil(d/2))
    radius = torch.sqrt(-2.0 * torch.log(u[:, 0]))
    z = torch.cat([radius * torch.cos(2 * torch.pi * u[:, 1]), radius * torch.sin(2 * torch.pi * u[:, 1])], dim=1)
    return z[:, :d].float().view(len(seeds), *shape)


def clock_cell(t: torch.Tensor, clock: int) -> torch.Tensor:
    """(B,) int64 routing-clock cell of each time t (B,) in [0, 1]: ceil(t C) − 1 clamped to [0, C − 1]."""
    if clock < 1:
        raise ValueError(f"the routing clock needs at least one cell, got {clock}")
    scaled = t.detach().to("cpu", torch.float64) * clock
    return (torch.ceil(scaled - 1e-4) - 1).clamp(0, clock - 1).long()


def time_key(t: torch.Tensor) -> torch.Tensor:
    """(B,) int64 key of each time t (B,) for the analysis streams: round(t · 2^20)."""
    return torch.round(t.detach().to("cpu", torch.float64) * TIME_KEY_RESOLUTION).long()


# ---------------------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------------------


def sample_seeds(seed: int, n: int) -> list[int]:
    """The seeds of a run's n samples: seed·10⁶ + i, the same for every policy (paired comparisons)."""
    base = seed * 1_000_000
    return list(range(base, base + n))


def initial_noise(seeds: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """(N, *shape) standard normal noise; row i from a generator seeded with seeds[i] (batch-independent)."""
    return torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def routing_uniform(seeds: torch.Tensor, t: torch.Tensor, clock: int, n: int) -> torch.Tensor:
    """(B, n) uniforms of the routing stream for rows with seeds (B,) at times t (B,): constant over a cell."""
    return keyed_uniform(ROUTING, seeds, clock_cell(t, clock), n)


def oracle_clusters(seeds: Sequence[int], prior: torch.Tensor) -> torch.Tensor:
    """(N,) long: the cluster each seed is sampled from, drawn from ``prior`` (K,) (unnormalised, e.g. sizes)
    by inverting its CDF at one keyed uniform per seed."""
    cdf = prior.double().cumsum(0)
    u = keyed_uniform(ORACLE_CLUSTER, torch.tensor([int(s) for s in seeds]), torch.zeros(len(seeds)), 1)[:, 0]
    return torch.searchsorted(cdf / cdf[-1], u, right=True).clamp_max(len(prior) - 1).long()


AMPLIFICATION_OFFSET = 0xD1_2EC7


def amplification_directions(seeds: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """(N, *shape) unit-norm directions of the initial-noise perturbation, row i from generator seeds[i] + offset."""
    u = torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s) + AMPLIFICATION_OFFSET))
                     for s in seeds])
    return u / u.flatten(1).norm(dim=1).view(-1, *([1] * len(shape)))


def unit_keyed_directions(stream: int, seeds: torch.Tensor, t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """(B, *shape) unit-norm directions keyed by (stream, seed, time_key(t)): the analysis probes' directions."""
    u = keyed_normal(stream, seeds, time_key(t), shape)
    return u / u.flatten(1).norm(dim=1).view(-1, *([1] * len(shape)))


# ---------------------------------------------------------------------------------------------------------
# training and held-out subsets (values unchanged: trained models stay bit-identical)
# ---------------------------------------------------------------------------------------------------------

MODEL_OFFSETS = {"evaluator": 0, "router": 1, "monolith": 2, "embedder": 3, "expert": 10}  # expert k: 10 + k
EXPERT_ACCURACY_SUBSET = 0xACC


def model_seed(seed: int, offset: int) -> int:
    """Seed of one trained model (weights init, batches, noise): seed·1000 + offset (see MODEL_OFFSETS)."""
    return seed * 1000 + offset


def step_seed(seed: int, step: int) -> int:
    """Seed of the training noise (t, eps) drawn at optimizer step ``step``: a function of (seed, step) only,
    so a resumed run draws what an uninterrupted one draws."""
    return (seed * 1_000_003 + step) % (2**63)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Generator of the training batches' permutation of epoch ``epoch``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def expert_accuracy_subset(seed: int) -> torch.Generator:
    """Generator of the held-out subset the per-expert accuracy is measured on."""
    return torch.Generator().manual_seed(seed + EXPERT_ACCURACY_SUBSET)


# ---------------------------------------------------------------------------------------------------------
# seeded generators of the measurements: offsets from the experiment seed (the values they always had)
# ---------------------------------------------------------------------------------------------------------

PR_REAL_SUBSET = 0x9E11       # precision/recall: a real subset as large as the generated set
POSTERIOR_SUBSET = 0xB05      # the fixed random subset of posterior.n_train training images
TEMPERATURE_SPLIT = 0xCA1     # router temperature scaling: which test images fit T and which are scored
TEMPERATURE_FIT = 0xCA2       # ... the fit images' t and noise
CALIBRATION_SCORE = 0xCA3     # router calibration: the scored images' t and noise
POSTERIOR_HALVES = 0xCA4      # the split of the training set into two disjoint halves (identifiability of p*)


def offset_generator(seed: int, offset: int = 0) -> torch.Generator:
    """Generator seeded with seed + offset. Offset 0 is a stage's own held-out draw from its seed: the real
    training subset of the FID floor (evaluate), held-out losses and accuracies of a trained model (its model
    seed), the evaluator's feature-scale calibration images. The KID subsets are drawn by torchmetrics from
    torch's global generator, forked and seeded with the experiment seed (evaluation/kid.py); bootstrap and
    permutation draws inside the library take their seed as an argument from the stage that calls them."""
    return torch.Generator().manual_seed(seed + offset)
