"""Fréchet distance between the Gaussians of two feature sets (Heusel et al. 2017, Eq. 6) — the one FID
implementation: the plug-in FID, and its leave-one-group-out values that the jackknife intervals need.

FID = ||mu_r - mu_f||^2 + tr(S_r) + tr(S_f) - 2 tr((S_r S_f)^{1/2}). torchmetrics takes the last trace from
the eigenvalues of S_r S_f; with S_r = L L^T they equal those of the symmetric PSD matrix L^T S_f L (similar
matrices), so each generated set costs one symmetric eigensolve once the real factor L is known. float64
throughout, unbiased covariances (n - 1) as in torchmetrics.
"""

from __future__ import annotations

import torch


def group_ids(n: int, groups: int) -> torch.Tensor:
    """(n,) group of each row, row i in group i mod groups. Rows are i.i.d. draws (one per seed), so a fixed,
    interleaved split needs no random stream; two row-aligned sets get the same split (paired jackknife)."""
    return torch.arange(n) % groups


def grouped_moments(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance of all rows and of all rows but one group.

    x: (n, d) -> mean (groups + 1, d), cov (groups + 1, d, d); index 0 is the full set, index 1 + g leaves
    out group g. Sums are taken around the full mean (shift invariance keeps float64 exact enough).
    """
    x = x.double()
    centre = x.mean(0)
    xc = x - centre
    k, rest = divmod(len(x), groups)
    body = xc[:k * groups].reshape(k, groups, -1).transpose(0, 1)                # (G, k, d): row i in group i % G
    s = body.sum(1)                                                               # (G, d)
    p = body.transpose(1, 2) @ body                                               # (G, d, d)
    tail = xc[k * groups:]                                                        # (rest, d): row j in group j
    s[:rest] += tail
    p[:rest] += tail[:, :, None] * tail[:, None, :]
    count = torch.full((groups,), float(k), dtype=torch.float64)
    count[:rest] += 1
    n = torch.cat([count.sum()[None], count.sum() - count])                        # (G+1,)
    sums = torch.cat([s.sum(0, keepdim=True), s.sum(0) - s])                       # (G+1, d)
    prods = torch.cat([p.sum(0, keepdim=True), p.sum(0) - p])                      # (G+1, d, d)
    mean = sums / n[:, None]
    cov = (prods - n[:, None, None] * mean[:, :, None] * mean[:, None, :]) / (n - 1)[:, None, None]
    return mean + centre, cov


def psd_factor(cov: torch.Tensor) -> torch.Tensor:
    """(..., d, d) PSD -> F with F F^T = cov: Cholesky where it succeeds, the symmetric square root where the
    covariance is singular (e.g. a ReLU feature that is always 0)."""
    chol, info = torch.linalg.cholesky_ex(cov)
    if bool((info == 0).all()):
        return chol
    evals, evecs = torch.linalg.eigh(cov)
    return (evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)) @ evecs.transpose(-2, -1)


def frechet(mean_r: torch.Tensor, cov_r: torch.Tensor, factor_r: torch.Tensor, mean_f: torch.Tensor,
            cov_f: torch.Tensor) -> torch.Tensor:
    """Fréchet distances of matching Gaussians: (B, d), (B, d, d), (B, d, d) factor of cov_r, (B, d),
    (B, d, d) -> (B,)."""
    m = factor_r.transpose(-2, -1) @ cov_f @ factor_r                  # (B, d, d) symmetric PSD
    # one eigvalsh per matrix: on the CPU torch's batched eigvalsh measured slower than this loop
    evals = torch.stack([torch.linalg.eigvalsh(x) for x in m])         # (B, d)
    tr_sqrt = evals.clamp_min(0).sqrt().sum(-1)                        # tr((S_r S_f)^{1/2})
    traces = torch.diagonal(cov_r, dim1=-2, dim2=-1).sum(-1) + torch.diagonal(cov_f, dim1=-2, dim2=-1).sum(-1)
    return (mean_f - mean_r).square().sum(-1) + traces - 2 * tr_sqrt


class RealGaussians:
    """The real set's mean, covariance and covariance factor, full and leave-one-group-out, computed once and
    reused for every generated set (every policy) scored against it."""

    def __init__(self, real: torch.Tensor, groups: int) -> None:
        """real: (M, d) features; groups: jackknife groups G (M >= G)."""
        self.groups = groups
        self.mean, self.cov = grouped_moments(real, groups)             # (G+1, d), (G+1, d, d)
        self.factor = psd_factor(self.cov)

    def leave_out(self, fake: torch.Tensor) -> torch.Tensor:
        """fake: (N, d) -> (G+1,) FID of the full sets, then with group g left out of both sets."""
        mean_f, cov_f = grouped_moments(fake, self.groups)
        return frechet(self.mean, self.cov, self.factor, mean_f, cov_f)


def mean_cov(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, d) -> float64 mean (d,) and unbiased covariance (d, d)."""
    x = x.double()
    xc = x - x.mean(0)
    return x.mean(0), xc.T @ xc / (len(x) - 1)


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Plug-in FID between two feature sets (M, d) and (N, d); equals torchmetrics' FrechetInceptionDistance
    on the same features (tests/test_metrics.py)."""
    (mean_r, cov_r), (mean_f, cov_f) = mean_cov(real), mean_cov(fake)
    return float(frechet(mean_r[None], cov_r[None], psd_factor(cov_r)[None], mean_f[None], cov_f[None])[0])
