"""95% intervals and p-values for FID and KID by the grouped (delete-a-group) jackknife.

Rows of the generated set and of the real set are split into G interleaved groups; the statistic is
recomputed G times, each time with group g left out of *both* sets (theta_-g). Then (Efron & Stein 1981;
Efron & Tibshirani 1993, ch. 11):

- SE^2 = (G - 1)/G * sum_g (theta_-g - mean_g theta_-g)^2 covers the sampling noise of both sets;
- theta_jack = G theta - (G - 1) mean_g theta_-g removes a bias of the form a/N + b/M. For FID this is the
  extrapolation of FID to infinitely many samples along 1/N (Chong & Forsyth 2020, "FID_inf"): the line
  through FID at (N, M) and at (N, M)(G - 1)/G, read at 1/N = 0;
- intervals are estimate +- t_{G-1, 0.975} SE, p-values two-sided from the same t with G - 1 df.

Estimands, as every metrics file states them next to each interval:
- ``fid_ci95``: the expected plug-in FID at these sizes (N generated, M real) — what `fid` estimates;
- ``fid_inf_ci95``: FID_inf, the Fréchet distance between the Gaussians of the two feature *distributions*;
- ``kid_ci95``: KID, the population MMD^2 (the full-set U-statistic is unbiased, so it is its own centre).
Paired contrasts use FID_inf and KID, never FID at N: two generators with different diversity carry
different small-sample biases, as large as the effects being compared. tests/test_coverage.py measures the
coverage of every interval here on Gaussian features with known population values.
A grouped jackknife costs G + 1 evaluations of each statistic (vs hundreds for a bootstrap) and needs no
random stream: the groups are fixed by row order, so the same rows always give the same interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from scipy import stats

from ddmbench.evaluation.fid import RealGaussians
from ddmbench.evaluation.float_noise import tie_tolerance
from ddmbench.evaluation.kid import RealKernel

INTERVAL_METHOD = ("grouped jackknife: G groups of generated and real rows left out together, "
                   "estimate +- t(G-1) SE")
P_VALUE_METHOD = "grouped-jackknife t test, two-sided, G-1 df"


@dataclass(frozen=True)
class Jackknife:
    point: float      # the statistic on all rows
    corrected: float  # G point - (G - 1) mean of the leave-one-group-out values (bias a/N + b/M removed)
    se: float         # jackknife standard error of either
    df: int           # G - 1

    def interval(self, centre: float, level: float = 0.95) -> list[float]:
        half = float(stats.t.ppf((1 + level) / 2, self.df)) * self.se
        return [centre - half, centre + half]

    def p_value(self, centre: float) -> float:
        """Two-sided p-value of 'the estimand is 0' (1 when there is no variation and no difference)."""
        if self.se == 0:
            return 1.0 if centre == 0 else 0.0
        return float(2 * stats.t.sf(abs(centre) / self.se, self.df))


def jackknife(values: torch.Tensor) -> Jackknife:
    """values: (G+1,) the statistic on all rows, then with each group left out."""
    values = values.double()
    point, loo = float(values[0]), values[1:]
    g = len(loo)
    se = float(((g - 1) / g * (loo - loo.mean()).square().sum()).sqrt())
    return Jackknife(point, g * point - (g - 1) * float(loo.mean()), se, g - 1)


def verdict(interval: list[float] | tuple[float, float]) -> str:
    """'lower' / 'higher' when a 95% interval of a difference (a - b) excludes 0, else 'not separable'."""
    lo, hi = interval
    if hi < 0:
        return "lower"
    if lo > 0:
        return "higher"
    return "not separable"


class RealSet:
    """A real feature set prepared once for FID and KID with jackknife groups (means, covariances and their
    factors; the real-real kernel sums), then scored against any number of generated sets."""

    def __init__(self, real: torch.Tensor, groups: int) -> None:
        """real: (M, d) features, M >= groups >= 2."""
        if not 2 <= groups <= len(real):
            raise ValueError(f"jackknife groups must be in 2..{len(real)} (the real rows), got {groups}")
        self.groups, self.m = groups, len(real)
        self.gaussians = RealGaussians(real, groups)
        self.kernel = RealKernel(real, groups)

    def leave_out(self, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fake: (N, d), N >= groups -> FID and KID values (G+1,) each: all rows, then each group left out."""
        if len(fake) < self.groups:
            raise ValueError(f"{len(fake)} generated rows cannot fill {self.groups} jackknife groups; "
                             f"score at least {self.groups} samples or use fewer groups")
        return self.gaussians.leave_out(fake), self.kernel.leave_out(fake)


def quality_intervals(real: RealSet, fake: torch.Tensor, level: float = 0.95) -> dict[str, Any]:
    """FID at N, FID_inf and KID of one generated set (N, d), each with its 95% interval and estimand."""
    return intervals_from(*real.leave_out(fake), n=len(fake), m=real.m, level=level)


def intervals_from(fid_v: torch.Tensor, kid_v: torch.Tensor, *, n: int, m: int, level: float = 0.95
                   ) -> dict[str, Any]:
    """:func:`quality_intervals` from the (G+1,) leave-one-group-out FID and KID values of ``RealSet.leave_out``."""
    k, groups = jackknife(kid_v), len(fid_v) - 1
    return {
        **frechet_intervals(fid_v, n=n, m=m, level=level),
        "kid_unbiased": k.point, "kid_ci95": k.interval(k.point, level), "kid_se": k.se,
        "kid_estimand": "KID: population MMD^2 of the generated and real feature distributions, kernel "
                        "(x.y/d + 1)^3",
        "interval_method": INTERVAL_METHOD, "jackknife_groups": groups,
    }


def frechet_intervals(values: torch.Tensor, *, n: int, m: int, name: str = "fid", label: str = "FID",
                      level: float = 0.95) -> dict[str, Any]:
    """The Fréchet distance at N and its bias-corrected value (``<name>``, ``<name>_inf``), each with its 95%
    interval and estimand, from the (G+1,) leave-one-group-out values of ``RealGaussians.leave_out``. ``name``
    and ``label`` say the feature space (fid_inception / FID, fd_dinov2 / FD_DINOv2); the classifier's is fid."""
    f = jackknife(values)
    return {
        name: f.point, f"{name}_ci95": f.interval(f.point, level), f"{name}_se": f.se,
        f"{name}_estimand": f"{label} at N = {n} generated vs M = {m} real: the expected plug-in {label} at these "
                            "sizes",
        f"{name}_inf": f.corrected, f"{name}_inf_ci95": f.interval(f.corrected, level),
        f"{name}_bias_at_n": f.point - f.corrected,
        f"{name}_inf_estimand": f"{label}_inf: Fréchet distance between the Gaussians of the generated and the real "
                                "feature distributions (bias removed by the jackknife, linear in 1/N)",
    }


def paired_quality(real: RealSet, fake_a: torch.Tensor, fake_b: torch.Tensor, labels: tuple[str, str] = ("a", "b"),
                   level: float = 0.95) -> dict[str, dict[str, Any]]:
    """FID_inf(a) − FID_inf(b) and KID(a) − KID(b) of two row-aligned generated sets (N, d) (row i from the
    same seed), each with estimate, 95% interval, estimand, two-sided p-value and verdict, and the float drift
    allowance of the two values (``tie_tolerance``): a difference no larger is a tie.

    The same groups of seeds (and of real rows) are left out of both sets, so the jackknife sees the pairing.
    """
    if fake_a.shape != fake_b.shape:
        raise ValueError(f"paired quality needs row-aligned features, got {tuple(fake_a.shape)} and "
                         f"{tuple(fake_b.shape)}")
    return paired_from(real.leave_out(fake_a), real.leave_out(fake_b), n=len(fake_a), labels=labels, level=level)


def paired_from(values_a: tuple[torch.Tensor, torch.Tensor], values_b: tuple[torch.Tensor, torch.Tensor], *,
                n: int, labels: tuple[str, str] = ("a", "b"), level: float = 0.95) -> dict[str, dict[str, Any]]:
    """:func:`paired_quality` from each set's (FID, KID) leave-one-group-out values (same groups)."""
    (fid_a, kid_a), (fid_b, kid_b) = values_a, values_b
    a, b = labels
    out = {}
    for name, da, db, estimand in (
            ("fid", fid_a, fid_b, f"FID_inf({a}) − FID_inf({b}), the difference of the population Fréchet distances"),
            ("kid", kid_a, kid_b, f"KID({a}) − KID({b}), the difference of the population MMD^2 (unbiased)")):
        jk = jackknife(da - db)
        centre = jk.corrected if name == "fid" else jk.point
        interval = jk.interval(centre, level)
        out[name] = {"estimate": centre, "ci95": interval, "se": jk.se, "estimand": estimand,
                     "p_value": jk.p_value(centre), "p_value_method": P_VALUE_METHOD, "verdict": verdict(interval),
                     "plug_in_delta": jk.point, "n": n, "jackknife_groups": jk.df + 1,
                     "tie_tolerance": float(tie_tolerance(float(da.mean()), float(db.mean())))}
    return out
