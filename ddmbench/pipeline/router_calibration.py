"""Stage `router-calibration`: the router against its own training target, by t.

Held-out test images (the score part of ``calibration_split``) are noised to every t of analysis.accuracy_t.
Per t, against the images' cluster labels: the router's accuracy, NLL, Brier and ECE before and after
temperature scaling (T fitted on the disjoint fit part), and the same scores of the exact posterior p* (the
Bayes-optimal router: the ceiling a router could reach). Against p* at the same states: KL(p* || p_router)
before and after T. Next to p*: the effective number of training points behind it (1 / sum w^2), how far p*
computed on two disjoint halves of the training set agree (split-half identifiability), and, when p* sums over
a subset (posterior.n_train), the total variation that costs against the full training set.
Writes metrics/router_calibration.json (the report draws the reliability diagram from its bins).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ddmbench import streams
from ddmbench.analysis.calibration import calibration
from ddmbench.analysis.posterior import EmpiricalPosterior, PosteriorResult, compare_by_t, kl_divergence
from ddmbench.config import Config, config_to_dict
from ddmbench.data.datasets import load_prepared, shape_of_images, to_model_space
from ddmbench.errors import NoClusters
from ddmbench.io import ensure_writable, write_json
from ddmbench.models.checkpoints import TemperatureScaled, load_router
from ddmbench.pipeline.artifacts import load_clusters, skipped
from ddmbench.pipeline.fields import imported_field
from ddmbench.pipeline.paths import Paths
from ddmbench.pipeline.posterior_field import empirical_posterior
from ddmbench.pipeline.router_temperature import calibration_split, fit_router_temperature, router_logits
from ddmbench.pipeline.tracking import mirror
from ddmbench.sampling.flow import interpolate

SUBSET_CHECK_N = 64     # states per t on which a subset's p* is compared with the full training set's
STATE_BATCH = 256       # states per p* call (memory: STATE_BATCH x posterior.chunk float64)
P_FLOOR = 1e-12         # p* floor for its NLL only: p* is exactly 0 for far clusters at small t
DEFINITIONS = {
    "ece": "top-label ECE, 15 equal-width confidence bins over [0, 1] (Guo et al. 2017; torchmetrics, l1)",
    "brier": "multi-class Brier score: mean over images of sum_k (p_k - 1[y = k])^2, in [0, 2]",
    "nll": "mean -log p_y in nats (p* floored at 1e-12 for its own NLL)",
    "kl": "KL(p* || p_router) in nats, mean over the scored states (noised held-out test images, not sampling states)",
    "n_eff": "1 / sum_i w_i^2, w_i the normalised weight of training image i in p*(. | x_t)",
    "split_half": "p* on two disjoint random halves of the training set: mean total variation, argmax agreement",
    "subset": "p* on the posterior.n_train subset vs the full training set: mean TV, argmax agreement",
}


def _posterior(post: EmpiricalPosterior, x_t: torch.Tensor, t: torch.Tensor) -> PosteriorResult:
    parts = [post(xb, tb) for xb, tb in zip(x_t.split(STATE_BATCH), t.split(STATE_BATCH))]
    return PosteriorResult(torch.cat([r.log_p for r in parts]), torch.cat([r.n_eff for r in parts]))


def _row(t_val: float, logits: torch.Tensor, temperature: float, labels: torch.Tensor, p_star: PosteriorResult,
         halves: tuple[torch.Tensor, torch.Tensor], t: torch.Tensor, subset_check: dict[str, Any] | None
         ) -> dict[str, Any]:
    log_router = torch.log_softmax(logits, 1)
    log_cal = torch.log_softmax(logits / temperature, 1)
    n_eff = p_star.n_eff
    split = compare_by_t(*halves, t)[0]
    posterior_scores = calibration(p_star.log_p.clamp_min(torch.log(torch.tensor(P_FLOOR)).item()), labels)
    return {
        "t": t_val, "router": calibration(logits, labels), "calibrated": calibration(logits / temperature, labels),
        "posterior": {k: v for k, v in posterior_scores.items() if k != "reliability"},
        "kl_posterior_router": float(kl_divergence(p_star.log_p, log_router).mean()),
        "kl_posterior_calibrated": float(kl_divergence(p_star.log_p, log_cal).mean()),
        "router_agrees_with_posterior": float((logits.argmax(1) == p_star.log_p.argmax(1)).double().mean()),
        "n_eff": {"median": float(n_eff.median()), "mean": float(n_eff.mean()),
                  "q10": float(n_eff.quantile(0.1)), "q90": float(n_eff.quantile(0.9))},
        "split_half": {"tv": split["tv"], "argmax_agreement": split["argmax_agreement"]},
        "subset": subset_check,
    }


@torch.no_grad()
def run(cfg: Config, paths: Paths) -> dict[str, Any]:
    ensure_writable(paths.router_calibration)
    ds = load_prepared(paths.dataset)
    try:
        clusters = load_clusters(paths, ds)
    except NoClusters as exc:
        return skipped(cfg, paths, paths.router_calibration, "router-calibration", str(exc))
    shape = shape_of_images(ds["test_x"])
    if cfg.ddm.folder is not None:   # an imported router, as shipped (a temperature it carries is part of it)
        router, applied = imported_field(cfg, paths, cfg.policy("full"), torch.device("cpu"), shape).router, 1.0
    else:
        router = load_router(paths.model("router"), image_shape=shape, calibrated=False)
        stored = load_router(paths.model("router"), image_shape=shape)
        applied = stored.temperature if isinstance(stored, TemperatureScaled) else 1.0
    test_x, labels = to_model_space(ds["test_x"]), clusters["test_assignments"].long()
    fitted, fit_n = fit_router_temperature(cfg, router, test_x, labels)
    _, score = calibration_split(cfg, len(test_x))
    x0, y = test_x[score], labels[score]
    full = empirical_posterior(cfg, paths, subset=False)
    post = full.subset(cfg.posterior.n_train, cfg.seed + streams.POSTERIOR_SUBSET)
    half_a, half_b = full.halves(cfg.seed + streams.POSTERIOR_HALVES)
    g = streams.offset_generator(cfg.seed, streams.CALIBRATION_SCORE)
    rows, seconds = [], 0.0
    for t_val in cfg.analysis.accuracy_t:
        t = torch.full((len(x0),), float(t_val))
        eps = torch.randn(x0.shape, generator=g)
        logits = router_logits(router, x0, t, eps)                                   # (n, K)
        x_t = interpolate(x0, eps, t)                                                # (n, C, H, W)
        start = time.perf_counter()
        p_star = _posterior(post, x_t, t)
        seconds += time.perf_counter() - start
        halves = (_posterior(half_a, x_t, t).log_p, _posterior(half_b, x_t, t).log_p)
        subset_check = None
        if post is not full:
            m = min(SUBSET_CHECK_N, len(x0))
            ref = _posterior(full, x_t[:m], t[:m]).log_p
            subset_check = {**compare_by_t(p_star.log_p[:m], ref, t[:m])[0], "n_train": len(post)}
        rows.append(_row(float(t_val), logits, fitted, y, p_star, halves, t, subset_check))
    data: dict[str, Any] = {
        "n": len(x0), "k": cfg.cluster.k, "t": [float(t) for t in cfg.analysis.accuracy_t], "seed": cfg.seed,
        "temperature": {"fitted": fitted, "fit_n": fit_n, "applied": applied, "calibrate": cfg.router.calibrate},
        "posterior_train_images": len(post), "full_train_images": len(full),
        "cost": {"distance_evals": len(x0) * len(cfg.analysis.accuracy_t) * len(post), "posterior_seconds": seconds},
        "definitions": DEFINITIONS, "rows": rows,
    }
    write_json(paths.router_calibration, data)
    flat = {f"t{r['t']:g}/{key}_{name}": r[key][name] for r in rows for key in ("router", "calibrated", "posterior")
            for name in ("accuracy", "nll", "brier", "ece")}
    flat.update({f"t{r['t']:g}/kl_posterior_router": r["kl_posterior_router"] for r in rows})
    mirror(cfg, paths, "router-calibration", "router-calibration",
           {"analysis": config_to_dict(cfg)["analysis"], "posterior": config_to_dict(cfg)["posterior"],
            "seed": cfg.seed}, {"temperature": fitted, **flat}, [paths.router_calibration])
    return data
