"""Routing policies: one shared battery over every registered policy, then each policy's defining identities."""

from __future__ import annotations

import pytest
import torch

from ddmbench.sampling.policies import REGISTRY, RoutingContext, make_policy, parse_policy

K = 4
B = 64
# Every label form, with k = K variants; the battery covers every name in the registry (test below).
LABELS = ["full", "uniform", "oracle", "top-1", "top-2", f"top-{K}", "sample-1", "sample-2", f"sample-{K}",
          "threshold-0.05", "threshold-0", "threshold-1", "nucleus-p0.9-T0.5", "nucleus-p1-T1", "nucleus-p0.5-T2",
          "tempered-0.5", "tempered-1", "tempered-4", "posterior", "posterior-top-1", f"posterior-top-{K}"]


def router_probs(seed: int = 0, b: int = B, k: int = K) -> torch.Tensor:
    """(b, k) softmax probabilities with awkward rows: ties, near one-hot, and exact zeros (underflow)."""
    g = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(b, k, generator=g)
    logits[0] = 0.0                                   # exact ties
    logits[1] = torch.tensor([30.0, -30.0, 0.0, 1.0])[:k]
    logits[2] = torch.tensor([100.0, -100.0, -100.0, -100.0])[:k]  # exp underflows: exact zeros in float32
    logits[3, :2] = 5.0                               # a tie at the top
    return torch.softmax(logits, dim=1)


def seeds(n: int, base: int = 100) -> torch.Tensor:
    return torch.arange(base, base + n, dtype=torch.int64)


def context(b: int = B, base: int = 100, t: float = 0.5) -> RoutingContext:
    cluster = torch.arange(b) % K
    return RoutingContext(t=torch.full((b,), t), seed=seeds(b, base), cluster=cluster)


def weights(label: str, p: torch.Tensor, ctx: RoutingContext | None = None) -> torch.Tensor:
    return parse_policy(label).weights(p, ctx if ctx is not None else context(len(p)))


# ----------------------------------------------------------------------------------------------
# the shared battery: every policy label through the same checks
# ----------------------------------------------------------------------------------------------

def test_battery_covers_the_registry() -> None:
    names = {parse_policy(label).name for label in LABELS}
    assert names == set(REGISTRY) - {"monolith"}


@pytest.mark.parametrize("label", LABELS)
class TestEveryPolicy:
    def test_shape_dtype_nonnegative_rows_sum_to_one(self, label: str) -> None:
        p = router_probs()
        w = weights(label, p)
        assert w.shape == p.shape and w.dtype == p.dtype
        assert torch.isfinite(w).all()
        assert (w >= 0).all()
        torch.testing.assert_close(w.sum(dim=1), torch.ones(B), rtol=0, atol=1e-6)

    def test_pure_and_replayable(self, label: str) -> None:
        p = router_probs()
        w1 = weights(label, p, context())
        w2 = weights(label, p, context())  # a fresh context with the same seeds and times
        assert torch.equal(w1, w2)
        assert torch.equal(p, router_probs())  # p is not modified in place

    def test_rows_do_not_depend_on_the_batch(self, label: str) -> None:
        p = router_probs()
        full_batch = weights(label, p, context())
        rows = slice(5, 12)
        sub = RoutingContext(t=torch.full((7,), 0.5), seed=seeds(B)[rows], cluster=(torch.arange(B) % K)[rows])
        assert torch.equal(weights(label, p[rows], sub), full_batch[rows])

    def test_label_round_trips(self, label: str) -> None:
        spec = parse_policy(label)
        assert spec.label == label
        assert parse_policy(spec.label) == spec

    def test_check_accepts_k_equal_K(self, label: str) -> None:
        parse_policy(label).check(K)


# ----------------------------------------------------------------------------------------------
# identities
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("label", [f"top-{K}", "threshold-0", "nucleus-p1-T1", f"sample-{K}"])
def test_degenerate_sparse_policies_equal_full(label: str) -> None:
    p = router_probs(seed=7)
    full = weights("full", p)
    w = weights(label, p)
    if label.startswith("nucleus"):  # tempered in float64 then cast back: equal to rounding
        torch.testing.assert_close(w, full, rtol=1e-6, atol=1e-7)
    else:
        assert torch.equal(w, full)


def test_full_is_p() -> None:
    p = router_probs()
    torch.testing.assert_close(weights("full", p), p, rtol=1e-6, atol=1e-7)


def test_uniform_ignores_p() -> None:
    assert torch.equal(weights("uniform", router_probs(1)), torch.full((B, K), 1.0 / K))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_top_k_keeps_the_k_largest(k: int) -> None:
    p = router_probs(seed=3)[4:]  # rows without ties or exact zeros
    w = weights(f"top-{k}", p)
    kept = w > 0
    assert (kept.sum(1) == k).all()
    smallest_kept = torch.where(kept, p, torch.inf).min(1).values
    largest_dropped = torch.where(kept, -torch.inf, p).max(1).values
    assert (smallest_kept >= largest_dropped).all()
    torch.testing.assert_close(w, torch.where(kept, p, 0) / torch.where(kept, p, 0).sum(1, keepdim=True))


@pytest.mark.parametrize("tau", [0.05, 0.2, 0.5, 0.99])
def test_threshold_keeps_p_above_tau_and_the_top_1(tau: float) -> None:
    p = router_probs(seed=4)
    kept = weights(f"threshold-{tau:g}", p) > 0
    expected = (p >= tau) & (p > 0)
    expected[torch.arange(B), p.argmax(1)] = True
    assert torch.equal(kept, expected)


def test_threshold_boundary_is_inclusive() -> None:
    p = torch.tensor([[0.5, 0.25, 0.25, 0.0]])  # exactly representable: p == tau for two experts
    assert (weights("threshold-0.25", p) > 0).tolist() == [[True, True, True, False]]
    assert (weights("threshold-0.3", p) > 0).tolist() == [[True, False, False, False]]


def test_nucleus_stops_as_soon_as_the_mass_is_reached() -> None:
    p = torch.tensor([[0.5, 0.25, 0.125, 0.125]])  # exactly representable cumulative masses
    assert (weights("nucleus-p0.75-T1", p) > 0).tolist() == [[True, True, False, False]]
    kept = weights("nucleus-p0.76-T1", p) > 0  # one of the tied 0.125s joins
    assert kept[0, :2].all() and int(kept.sum()) == 3
    assert (weights("nucleus-p0.5-T1", p) > 0).tolist() == [[True, False, False, False]]


@pytest.mark.parametrize(("mass", "temp"), [(0.5, 1.0), (0.9, 0.5), (0.9, 2.0), (0.3, 1.0)])
def test_nucleus_keeps_smallest_set_reaching_the_mass(mass: float, temp: float) -> None:
    p = router_probs(seed=5)[4:]
    w = weights(f"nucleus-p{mass:g}-T{temp:g}", p)
    q = p.double() ** (1.0 / temp)
    q = q / q.sum(1, keepdim=True)
    kept = w > 0
    kept_mass = torch.where(kept, q, 0).sum(1)
    assert (kept_mass >= mass - 1e-9).all()
    # dropping the smallest kept expert would fall below the mass
    smallest = torch.where(kept, q, torch.inf).min(1).values
    assert ((kept_mass - smallest < mass) | (kept.sum(1) == 1)).all()
    # weights are the tempered probabilities renormalised over the kept set
    ref = torch.where(kept, q, 0)
    torch.testing.assert_close(w.double(), ref / ref.sum(1, keepdim=True), rtol=1e-5, atol=1e-7)


def test_nucleus_low_temperature_is_top_1() -> None:
    p = router_probs(seed=6)[4:]
    assert torch.equal(weights("nucleus-p0.9-T0.01", p), weights("top-1", p))


def test_oracle_is_one_hot_on_the_drawn_cluster() -> None:
    p = router_probs()
    ctx = context()
    w = weights("oracle", p, ctx)
    assert torch.equal(w, torch.nn.functional.one_hot(ctx.cluster, K).float())
    with pytest.raises(ValueError, match="ctx.cluster"):
        weights("oracle", p, RoutingContext(t=ctx.t))


def test_sample_k_replays_from_its_seeds_and_varies_with_seed() -> None:
    p = torch.full((B, K), 1.0 / K)
    a = weights("sample-2", p, context(base=100))
    b = weights("sample-2", p, context(base=100))
    c = weights("sample-2", p, context(base=999))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert ((a > 0).sum(1) == 2).all()


def test_sample_k_draws_are_keyed_by_the_clock_cell_of_t() -> None:
    """Within one cell of the routing clock every evaluation sees the same draw, however many came before;
    another cell draws afresh; a time on a cell's upper edge belongs to that cell, t = 1 to the last one."""
    p = torch.full((B, K), 1.0 / K)
    clock = 10                                       # cells (c/10, (c+1)/10]
    def at(t: float) -> torch.Tensor:
        return weights("sample-1", p, RoutingContext(t=torch.full((B,), t), seed=seeds(B), clock=clock))
    assert torch.equal(at(0.55), at(0.6)) and torch.equal(at(0.51), at(0.6))      # one cell (0.5, 0.6]
    assert torch.equal(at(1.0), at(0.95))                                          # t = 1: last cell
    assert torch.equal(at(0.0), at(0.05))                                          # t = 0: first cell
    assert not torch.equal(at(0.6), at(0.61)) and not torch.equal(at(0.5), at(0.55))  # neighbouring cells
    # float32 grid times that round just above an edge stay on it
    assert float(torch.tensor(0.3, dtype=torch.float32)) > 0.3
    assert torch.equal(at(float(torch.tensor(0.3, dtype=torch.float32))), at(0.25))
    # repeated calls do not advance anything
    assert all(torch.equal(at(0.33), at(0.33)) for _ in range(3))


def test_sample_1_draws_follow_p() -> None:
    n = 4000
    probs = torch.tensor([0.6, 0.25, 0.1, 0.05])
    p = probs.expand(n, K).clone()
    w = weights("sample-1", p, RoutingContext(t=torch.zeros(n), seed=seeds(n, base=5)))
    freq = (w > 0).float().mean(0)
    torch.testing.assert_close(freq, probs, rtol=0, atol=0.03)


def test_sample_k_never_picks_zero_probability_experts_when_avoidable() -> None:
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0]]).expand(200, K).clone()
    w = weights("sample-2", p, context(200))
    assert ((w[:, :2] > 0).all()) and (w[:, 2:] == 0).all()


def test_sample_k_needs_seeds() -> None:
    with pytest.raises(ValueError, match="ctx.seed"):
        weights("sample-1", router_probs(), RoutingContext(t=torch.zeros(B)))


def test_monolith_has_no_weights() -> None:
    spec = parse_policy("monolith")
    assert not spec.uses_experts and not spec.uses_router
    with pytest.raises(ValueError, match="monolith"):
        spec.weights(router_probs(), context())


@pytest.mark.parametrize(("label", "router"), [("full", True), ("top-2", True), ("sample-1", True),
                                               ("threshold-0.1", True), ("nucleus-p0.9-T1", True),
                                               ("uniform", False), ("oracle", False)])
def test_uses_router(label: str, router: bool) -> None:
    spec = parse_policy(label)
    assert spec.uses_experts and spec.uses_router is router


# ----------------------------------------------------------------------------------------------
# labels
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("given", "canonical"), [("top-02", "top-2"), (" full ", "full"),
                                                  ("threshold-0.050", "threshold-0.05"),
                                                  ("nucleus-p0.90-T0.5", "nucleus-p0.9-T0.5"),
                                                  ("threshold-1e-3", "threshold-0.001")])
def test_labels_canonicalise(given: str, canonical: str) -> None:
    assert parse_policy(given).label == canonical


@pytest.mark.parametrize("label", ["", "bogus", "Full", "top", "top-", "top-k", "top-1.5", "top_2", "sample",
                                   "threshold", "threshold-x", "nucleus-p0.9", "nucleus-T0.5", "nucleus-0.9-0.5"])
def test_malformed_labels_list_valid_forms(label: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_policy(label)
    message = str(info.value)
    assert "valid forms" in message
    for form in ("full", "top-<k>", "sample-<k>", "threshold-<tau>", "nucleus-p<mass>-T<temperature>", "oracle"):
        assert form in message


@pytest.mark.parametrize(("label", "needle"), [("top-0", "positive integer"), ("sample-0", "positive integer"),
                                               ("threshold-1.5", "tau must be in [0, 1]"),
                                               ("nucleus-p0-T1", "p must be in (0, 1]"),
                                               ("nucleus-p1.5-T1", "p must be in (0, 1]"),
                                               ("nucleus-p0.9-T0", "temperature must be > 0")])
def test_out_of_range_parameters(label: str, needle: str) -> None:
    with pytest.raises(ValueError, match="policy") as info:
        parse_policy(label)
    assert needle in str(info.value)


def test_make_policy_matches_labels() -> None:
    assert make_policy("top", k=2) == parse_policy("top-2")
    assert make_policy("nucleus", p_mass=0.9, temperature=0.5) == parse_policy("nucleus-p0.9-T0.5")
    with pytest.raises(ValueError, match="valid policies"):
        make_policy("topk", k=2)
    with pytest.raises(ValueError, match="needs tau"):
        make_policy("threshold")


def test_check_rejects_k_above_K() -> None:
    with pytest.raises(ValueError, match=r"k <= number of experts \(4\)"):
        parse_policy("sample-5").check(K)


# ----------------------------------------------------------------------------------------------
# the decomposition policies
# ----------------------------------------------------------------------------------------------

def test_tempered_one_is_full() -> None:
    p = router_probs(seed=8)
    torch.testing.assert_close(weights("tempered-1", p), weights("full", p), rtol=1e-6, atol=1e-7)


def test_tempered_is_softmax_of_logits_over_t() -> None:
    logits = 2.0 * torch.randn(B, K, generator=torch.Generator().manual_seed(9))
    for temp in (0.3, 2.5):
        w = weights(f"tempered-{temp:g}", torch.softmax(logits, 1))
        torch.testing.assert_close(w, torch.softmax(logits / temp, 1), rtol=1e-5, atol=1e-6)


def test_tempered_walks_from_top_1_to_uniform_over_the_support() -> None:
    p = router_probs(seed=10)[4:]  # rows without ties or exact zeros
    assert torch.equal((weights("tempered-0.001", p) > 0.999), weights("top-1", p) > 0)
    torch.testing.assert_close(weights("tempered-1e6", p), torch.full_like(p, 1.0 / K), rtol=0, atol=1e-4)
    top = [float(weights(f"tempered-{temp:g}", p).max(1).values.mean()) for temp in (0.1, 0.5, 1, 2, 8)]
    assert top == sorted(top, reverse=True)  # the top expert's weight falls as T grows: a continuous path


def test_tempered_keeps_zero_probability_experts_at_zero() -> None:
    p = torch.tensor([[0.7, 0.3, 0.0, 0.0]])
    w = weights("tempered-100", p)
    assert w[0, 2:].tolist() == [0.0, 0.0] and w[0, 0] > w[0, 1] > 0


@pytest.mark.parametrize(("label", "same_as"), [("posterior", "full"), ("posterior-top-2", "top-2")])
def test_posterior_policies_weight_p_like_their_router_twins(label: str, same_as: str) -> None:
    # the weights are those of full / top-k; what differs is p: the field's router is p* (uses_posterior)
    p = router_probs(seed=11)
    assert torch.equal(weights(label, p), weights(same_as, p))
    spec = parse_policy(label)
    assert spec.uses_posterior and spec.uses_router and not parse_policy(same_as).uses_posterior


def test_decomposition_labels_parse_and_validate() -> None:
    assert make_policy("tempered", temperature=0.5) == parse_policy("tempered-0.5")
    assert make_policy("posterior-top", k=2) == parse_policy("posterior-top-2")
    with pytest.raises(ValueError, match="policy 'tempered': temperature must be > 0"):
        parse_policy("tempered-0")
    with pytest.raises(ValueError, match="positive integer"):
        parse_policy("posterior-top-0")
    with pytest.raises(ValueError, match="valid forms.*tempered-<temperature>, posterior, posterior-top-<k>"):
        parse_policy("tempered")
    with pytest.raises(ValueError, match=r"k <= number of experts \(4\)"):
        parse_policy("posterior-top-5").check(K)


def test_a_registered_policy_reaches_the_parser_the_cli_and_the_docs_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding a policy is one record plus its function: the parser, the CLI's options and the docs' table all
    derive from the registry, and the table in docs/sampling.md is the registry's."""
    from pathlib import Path

    from ddmbench.sampling import policies

    docs = (Path(__file__).resolve().parents[1] / "docs" / "sampling.md").read_text()
    assert policies.policy_table() in docs

    def bottom_k(p: torch.Tensor, ctx: RoutingContext, *, k: int) -> torch.Tensor:
        return policies.top_k(-p + 1.0, ctx, k=k)
    toy = policies.PolicyDef("bottom", bottom_k, "bottom-{k}", ("k",), weights="keep the k smallest p (a toy)")
    monkeypatch.setitem(policies.REGISTRY, "bottom", toy)
    spec = parse_policy("bottom-2")
    assert (spec.name, spec.params, spec.label) == ("bottom", {"k": 2.0}, "bottom-2")
    assert make_policy("bottom", k=2) == spec and spec.weights(router_probs(), context()).shape == (B, K)
    assert "| `bottom-<k>` | keep the k smallest p (a toy) |" in policies.policy_table()
    assert "bottom-<k>" in policies.label_forms()
    import sys

    cli_app = sys.modules["ddmbench.cli.app"] if "ddmbench.cli.app" in sys.modules else None
    if cli_app is None:
        import ddmbench.cli  # noqa: F401  (registers the commands)
        cli_app = sys.modules["ddmbench.cli.app"]
    option = cli_app._param_option("k")                       # the option --k of every policy command
    assert "bottom" in option.help and option.default == "--k"
    from ddmbench.config import parse_config
    cfg = parse_config({"cluster": {"k": 4}})
    assert cli_app.policy_option(cfg, "bottom", 2, None, None, None) == spec       # --policy bottom --k 2
