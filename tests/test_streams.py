"""The random streams: keyed draws are pure functions of (stream, seed, counter), routing draws follow the
routing clock (common random numbers across step counts and Heun's evaluations), and the seeded streams keep
the values trained models and samples were made with."""

from __future__ import annotations

import pytest
import torch

from ddmbench import streams
from ddmbench.config import Config
from ddmbench.sampling.field import RoutedField, SampleContext
from ddmbench.sampling.policies import parse_policy
from ddmbench.sampling.sampler import generate
from ddmbench.sampling.traces import TraceRecorder

M64 = (1 << 64) - 1


def _splitmix64_reference(x: int) -> int:
    """Steele, Lea & Flood's splitmix64 finaliser on Python integers (the published constants)."""
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def test_splitmix64_on_int64_tensors_matches_the_reference() -> None:
    xs = [0, 1, -1, 12345678901234, 2**62, -(2**63), 2**63 - 1]
    out = streams.splitmix64(torch.tensor(xs, dtype=torch.int64))
    assert [int(o) & M64 for o in out] == [_splitmix64_reference(x & M64) for x in xs]


def test_keyed_uniforms_are_pure_row_independent_and_uniform() -> None:
    seeds, counters = torch.arange(5000), torch.full((5000,), 7)
    u = streams.keyed_uniform(1, seeds, counters, 4)
    assert u.shape == (5000, 4) and u.dtype == torch.float64
    assert float(u.min()) > 0 and float(u.max()) < 1
    assert torch.equal(u, streams.keyed_uniform(1, seeds, counters, 4))                    # pure
    assert torch.equal(u[100:110], streams.keyed_uniform(1, seeds[100:110], counters[100:110], 4))  # per row
    assert not torch.equal(u, streams.keyed_uniform(2, seeds, counters, 4))                # another stream
    assert not torch.equal(u, streams.keyed_uniform(1, seeds, counters + 1, 4))            # another counter
    torch.testing.assert_close(u.mean(0), torch.full((4,), 0.5, dtype=torch.float64), rtol=0, atol=0.015)
    assert abs(float(torch.corrcoef(u.T)[0, 1])) < 0.05
    z = streams.keyed_normal(3, seeds, counters, (2, 3))
    assert z.shape == (5000, 2, 3) and abs(float(z.mean())) < 0.03 and abs(float(z.std()) - 1) < 0.03


@pytest.mark.parametrize(("t", "cell"), [(1.0, 99), (0.995, 99), (0.99, 98), (0.5, 49), (0.505, 50), (0.0, 0),
                                         (0.004, 0), (0.01, 0), (0.0101, 1)])
def test_clock_cells_are_upper_closed(t: float, cell: int) -> None:
    assert int(streams.clock_cell(torch.tensor([t]), 100)[0]) == cell


def test_float32_grid_times_land_on_their_cells() -> None:
    """Grid times k/n stored in float32 fall in the cell (k/n - 1/C, k/n] whichever way they round."""
    for n in (5, 10, 20, 25, 50, 100):
        ts = torch.linspace(1.0, 0.0, n + 1)                                          # float32, as the sampler's
        exact = [max(0, round((n - i) * 100 / n) - 1) for i in range(n + 1)]
        assert streams.clock_cell(ts, 100).tolist() == exact


def test_seeded_streams_keep_their_values() -> None:
    """Training, the initial noise and the amplification directions must stay bit-identical."""
    assert streams.model_seed(3, 12) == 3012 and streams.step_seed(2, 5) == 2 * 1_000_003 + 5
    assert streams.sample_seeds(2, 3) == [2_000_000, 2_000_001, 2_000_002]
    assert torch.equal(streams.initial_noise([7], (1, 2, 2))[0],
                       torch.randn((1, 2, 2), generator=torch.Generator().manual_seed(7)))
    assert torch.equal(streams.epoch_generator(4, 1).get_state(), torch.Generator().manual_seed(4 * 1_000_003 + 1).get_state())
    u = torch.randn((1, 2, 2), generator=torch.Generator().manual_seed(7 + 0xD12EC7))
    assert torch.equal(streams.amplification_directions([7], (1, 2, 2))[0], u / u.norm())


class Flat:
    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 3)


def _sample_k(clock: int = 100) -> RoutedField:
    experts = [lambda x, t, a=a: a * x for a in (-1.0, 0.5, 2.0)]
    return RoutedField(experts, Flat(), parse_policy("sample-1"), image_shape=(1, 2, 2), clock=clock)


def _weights_by_time(nfe: int, solver: str) -> dict[float, torch.Tensor]:
    rec = TraceRecorder()
    generate(_sample_k(), list(range(40)), nfe_steps=nfe, solver=solver, batch_size=40, observers=[rec])
    tr = rec.result()
    return {round(float(t), 6): tr["w"][:, i] for i, t in enumerate(tr["t"])}


def test_routing_draws_are_common_across_step_counts_and_heun() -> None:
    """The same sample sees the same draw at the same time whatever the grid, and Heun's second evaluation at
    t_next uses t_next's draw (the next step's first evaluation sees the same)."""
    coarse, fine = _weights_by_time(10, "euler"), _weights_by_time(20, "euler")
    shared = [t for t in coarse if t in fine]
    assert len(shared) == 10
    assert all(torch.equal(coarse[t], fine[t]) for t in shared)
    assert not torch.equal(fine[1.0], fine[0.95])                       # a step later: another cell, another draw
    rec = TraceRecorder()
    generate(_sample_k(), list(range(40)), nfe_steps=10, solver="heun", batch_size=40, observers=[rec])
    w, t = rec.result()["w"], rec.result()["t"]
    for step in range(9):                                               # 2nd eval of step i == 1st eval of step i+1
        assert float(t[2 * step + 1]) == pytest.approx(float(t[2 * step + 2]))
        assert torch.equal(w[:, 2 * step + 1], w[:, 2 * step + 2])
    assert all(torch.equal(w[:, 2 * i], coarse[round(float(t[2 * i]), 6)]) for i in range(10))  # = Euler's draws


def test_a_field_replays_without_state() -> None:
    field = _sample_k()
    x, t, ctx = torch.randn(8, 1, 2, 2), torch.full((8,), 0.37), SampleContext.of(range(8))
    first = field.route(x, t, ctx)
    for _ in range(3):
        again = field.route(x, t, ctx)
        assert torch.equal(again.w, first.w) and torch.equal(again.v, first.v)
    assert not torch.equal(field.route(x, t, SampleContext.of(range(100, 108))).w, first.w)


def test_oracle_clusters_are_keyed_per_seed_and_follow_the_prior() -> None:
    prior = torch.tensor([6.0, 3.0, 1.0], dtype=torch.float64)
    drawn = streams.oracle_clusters(range(4000), prior)
    assert torch.equal(drawn[50:60], streams.oracle_clusters(range(50, 60), prior))
    freq = torch.bincount(drawn, minlength=3).double() / 4000
    torch.testing.assert_close(freq, prior / prior.sum(), rtol=0, atol=0.025)
    assert int(streams.oracle_clusters([1], torch.tensor([0.0, 1.0]))[0]) == 1   # empty clusters never drawn


def test_routing_clock_must_resolve_the_solver_grid() -> None:
    with pytest.raises(ValueError, match="routing_clock=10 is coarser"):
        Config.model_validate({"sample": {"nfe_steps": 20, "routing_clock": 10}})
    with pytest.raises(ValueError, match="at least one cell"):
        _sample_k(clock=0)
