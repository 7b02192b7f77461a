"""The held-out split of the test images for the router's calibration, and the temperature fitted on it.

Shared by `train-router` (with router.calibrate it fits T and stores it in the checkpoint) and `router-calibration`
(scores before and after T on the other, disjoint part of the split), so both see the same images."""

from __future__ import annotations

import torch

from ddmbench import streams
from ddmbench.analysis.calibration import fit_temperature
from ddmbench.config import Config
from ddmbench.errors import DataError
from ddmbench.sampling.flow import interpolate

BATCH = 500


def calibration_split(cfg: Config, n_test: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, score) index tensors into the test split: a seeded permutation, the first min(analysis.accuracy_n,
    n_test / 2) images scored, the next min(router.calibration_n, rest) used to fit the temperature."""
    perm = torch.randperm(n_test, generator=streams.offset_generator(cfg.seed, streams.TEMPERATURE_SPLIT))
    n_score = min(cfg.analysis.accuracy_n, n_test // 2)
    n_fit = min(cfg.router.calibration_n, n_test - n_score)
    if n_score < 2 or n_fit < 2:
        raise DataError(f"the test split has {n_test} images: too few to fit and score the router's calibration "
                        "(need at least 4); raise data.test_limit or use 0 (all)")
    return perm[n_score:n_score + n_fit], perm[:n_score]


@torch.no_grad()
def router_logits(router: torch.nn.Module, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Router logits (N, K) at x_t = (1 - t) x0 + t eps for x0, eps (N, C, H, W) and t (N,), in batches."""
    return torch.cat([router(interpolate(xb, eb, tb), tb).double()
                      for xb, eb, tb in zip(x0.split(BATCH), eps.split(BATCH), t.split(BATCH))])


def fit_router_temperature(cfg: Config, router: torch.nn.Module, test_x: torch.Tensor, test_labels: torch.Tensor
                           ) -> tuple[float, int]:
    """Fit T on the split's fit images (model space, (N, C, H, W)) noised at t ~ U(0, 1), the distribution the
    router is trained and used on; returns (T, number of fit images)."""
    fit, _ = calibration_split(cfg, len(test_x))
    g = streams.offset_generator(cfg.seed, streams.TEMPERATURE_FIT)
    x0 = test_x[fit]
    t = torch.rand(len(x0), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    return fit_temperature(router_logits(router, x0, t, eps), test_labels[fit]), len(fit)
