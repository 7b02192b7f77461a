"""KID: the squared MMD between two feature sets under the cubic polynomial kernel (Binkowski et al. 2018).

``kid_unbiased`` statistics here are the full-set U-statistic: every distinct generated pair, every distinct
real pair and every generated-real pair. torchmetrics' KernelInceptionDistance computes the same U-statistic
on ``subsets`` random subsets of ``subset_size`` rows of each set and reports their mean and std: the same
expectation (the population MMD^2), more variance, and identical to the full-set value when there is one
subset holding every row of two equal-size sets (tests/test_metrics.py). ``kid`` keeps that subset average
for continuity; the intervals and contrasts use the full-set statistic.
"""

from __future__ import annotations

import torch

from ddmbench.evaluation.features import Precomputed
from ddmbench.evaluation.fid import group_ids


def poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KID's kernel k(a, b) = (a.b / d + 1)^3 (torchmetrics' defaults): (M, d), (N, d) -> (M, N)."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def kid_subsets(real: torch.Tensor, fake: torch.Tensor, *, subset_size: int, subsets: int,
                seed: int) -> tuple[float, float]:
    """torchmetrics' KID (mean, std over ``subsets`` random subsets) of (M, d) and (N, d) features; the subsets
    are drawn with torch.randperm from ``seed``; ``subset_size`` is capped at the smaller set."""
    from torchmetrics.image.kid import KernelInceptionDistance

    metric = KernelInceptionDistance(feature=Precomputed(real.shape[1]), subsets=subsets,
                                     subset_size=min(subset_size, len(real), len(fake)), normalize=True)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def block_sums(a: torch.Tensor, b: torch.Tensor, groups: int, *, same: bool, chunk: int = 2048) -> torch.Tensor:
    """(G, G) float64 sums of k(a_i, b_j) over rows i of group g of ``a`` and j of group h of ``b``; with
    ``same`` (a is b) the i = j terms are left out. Kernel blocks in the inputs' dtype, sums in float64."""
    ga, gb = group_ids(len(a), groups), group_ids(len(b), groups)
    out = torch.zeros(groups, groups, dtype=torch.float64)
    for start in range(0, len(a), chunk):
        k = poly_kernel(a[start:start + chunk], b).double()                        # (c, N)
        if same:
            rows = torch.arange(start, start + len(k))
            k[rows - start, rows] = 0.0
        by_col = torch.zeros(len(k), groups, dtype=torch.float64).index_add_(1, gb, k)  # (c, G)
        out.index_add_(0, ga[start:start + chunk], by_col)
    return out


def _leave_out(total: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, diag: torch.Tensor) -> torch.Tensor:
    """(G+1,) block-sum totals: the full sum, then the sum without group g's rows and columns."""
    return torch.cat([total[None], total - rows - cols + diag])


def _pairs(n: int, groups: int, other: int | None = None) -> torch.Tensor:
    """(G+1,) how many terms the sums of :func:`_leave_out` hold: distinct pairs, or pairs with another set."""
    size = torch.bincount(group_ids(n, groups), minlength=groups).double()
    kept = torch.cat([torch.tensor([float(n)]), n - size])
    if other is None:
        return kept * (kept - 1)
    size_o = torch.bincount(group_ids(other, groups), minlength=groups).double()
    return kept * torch.cat([torch.tensor([float(other)]), other - size_o])


class RealKernel:
    """The real set's kernel sums (full and leave-one-group-out), computed once and reused for every generated
    set scored against it: the (M x M) real-real kernel is the expensive part (chunked, never stored)."""

    def __init__(self, real: torch.Tensor, groups: int) -> None:
        """real: (M, d) features; groups: jackknife groups G (M >= G)."""
        self.real, self.groups = real, groups
        b = block_sums(real, real, groups, same=True)
        self.rr = _leave_out(b.sum(), b.sum(1), b.sum(0), b.diagonal()) / _pairs(len(real), groups)  # (G+1,)

    def leave_out(self, fake: torch.Tensor) -> torch.Tensor:
        """fake: (N, d) -> (G+1,) unbiased MMD^2 of the full sets, then with group g left out of both sets."""
        g, m, n = self.groups, len(self.real), len(fake)
        ff = block_sums(fake, fake, g, same=True)
        fr = block_sums(fake.to(self.real.dtype), self.real, g, same=False)
        mean_ff = _leave_out(ff.sum(), ff.sum(1), ff.sum(0), ff.diagonal()) / _pairs(n, g)
        mean_fr = _leave_out(fr.sum(), fr.sum(1), fr.sum(0), fr.diagonal()) / _pairs(n, g, m)
        return self.rr + mean_ff - 2 * mean_fr


def kid_unbiased(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Full-set unbiased MMD^2 (KID) of (M, d) and (N, d) features."""
    return float(RealKernel(real, 1).leave_out(fake)[0])
