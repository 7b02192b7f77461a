"""Stage `analyze`: one policy's trajectory analyses (stability, convergence, alignment, disagreement).

A traced pass over the first ``analysis.n`` sample seeds records routing, states, every expert's
prediction and the routing jumps; the local Lipschitz constant (top singular value of the combined field's
Jacobian) is computed at the solver grid's states; perturbed and re-discretised passes (the sampler called
again with the same seeds, hence the same routing draws) give amplification and convergence. Per-sample
disagreement of all N samples (recorded while sampling) is related to per-sample quality from the evaluate
stage. Scalars go to metrics/analyze/<label>.json, the per-t curves to plots/curves/<label>.json, the per-seed
values (for the paired contrasts) to outputs/analysis/<label>.pt. The analyses trace the field in float32
whatever ``sample.precision`` is (the samples themselves may be bf16).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ddmbench.analysis import alignment as align
from ddmbench.analysis.convergence import convergence
from ddmbench.analysis.disagreement import quality_relation, weighted_spread
from ddmbench.analysis.posterior import kl_divergence
from ddmbench.analysis.stability import CPU_LIPSCHITZ_ROWS, RoutingJump, amplification, lipschitz_along
from ddmbench.analysis.stats import summary
from ddmbench.config import Config, config_to_dict
from ddmbench.console import progress
from ddmbench.data.datasets import to_model_space
from ddmbench.errors import ArtifactError, NoClusters
from ddmbench.evaluation.features import class_probabilities
from ddmbench.evaluation.identity import check_same_evaluator, weights_sha256
from ddmbench.io import ensure_writable, load_tensors, save_tensors, write_json
from ddmbench.models.checkpoints import load_classifier
from ddmbench.pipeline.artifacts import load_clusters, oracle_clusters, sample_seeds, sampling_device
from ddmbench.pipeline.paths import Paths
from ddmbench.pipeline.posterior_field import build_policy_field, empirical_posterior
from ddmbench.pipeline.tracking import mirror
from ddmbench.sampling.observers import States
from ddmbench.sampling.policies import PolicySpec
from ddmbench.sampling.sampler import generate
from ddmbench.sampling.solvers import EVALS_PER_STEP
from ddmbench.sampling.traces import TraceRecorder


def _mean_over_samples(a: torch.Tensor) -> list[float | None]:
    """(M, S) -> (S,) nan-aware means (None where a column is all nan)."""
    a = a.double()
    valid = ~torch.isnan(a)
    means = torch.where(valid, a, 0).sum(0) / valid.sum(0).clamp_min(1)
    return [float(m) if ok else None for m, ok in zip(means, valid.any(0))]


def _nanmean(a: torch.Tensor) -> float | None:
    valid = a[~torch.isnan(a.double())]
    return float(valid.double().mean()) if valid.numel() else None


def lipschitz_rows(cfg: Config, device: torch.device | str) -> int:
    """Rows per Lipschitz power-iteration call: ``CPU_LIPSCHITZ_ROWS`` on the CPU (where the kept graphs must
    stay small), the sampling batch on an accelerator."""
    return CPU_LIPSCHITZ_ROWS if torch.device(device).type == "cpu" else cfg.sample.batch_size


def run(cfg: Config, paths: Paths, spec: PolicySpec) -> dict[str, Any]:
    a = cfg.analysis
    ensure_writable(paths.analysis_metrics(spec.label), paths.curves(spec.label), paths.analysis_values(spec.label))
    seeds = sample_seeds(cfg)[:a.n]
    device = sampling_device(cfg)
    # float32 whatever sample.precision says: bf16 rounding would enter the finite differences (measured: the
    # routing jump 3.4 -> 17-22, docs/speed.md), and every measure of the stage is taken at one precision
    fp32 = cfg.model_copy(update={"sample": cfg.sample.model_copy(update={"precision": "32-true"})})
    field = build_policy_field(fp32, paths, spec, device)
    try:
        clusters: dict[str, torch.Tensor] | str = load_clusters(paths)
    except NoClusters as exc:       # an imported DDM without a cluster manifest: no p*, so no alignment
        clusters = str(exc)
    cluster = oracle_clusters(cfg, paths, spec, seeds)
    routed = field.routed
    kw: dict[str, Any] = {"solver": cfg.sample.solver, "batch_size": cfg.sample.batch_size, "cluster": cluster,
                          "device": device}
    passes = 2 + len(a.eps) + a.ladder_rungs
    with progress(f"analyze {spec.label}", passes) as advance:
        # 1. the traced pass: routing, states, every expert's prediction, routing jumps
        recorder = TraceRecorder(field, a.n) if routed else None
        states, jump = States(), RoutingJump(field, a.jump_delta)
        observers = [states, jump, *([recorder] if recorder is not None else [])]
        base = generate(field, seeds, nfe_steps=cfg.sample.nfe_steps, observers=observers, **kw).images
        advance(1)
        # 2. local Lipschitz constant at the solver grid's states (not Heun's predictor states), routing held
        t_all, xs, ws = states.result()
        grid = list(range(0, len(t_all), EVALS_PER_STEP[cfg.sample.solver]))
        lip = lipschitz_along(field, xs[:, grid], t_all[grid], ws[:, grid], torch.tensor(seeds),
                              iterations=a.power_iterations, batch_size=lipschitz_rows(cfg, device), device=device)  # (n, G)
        del xs
        advance(1)
        # 3. amplification of initial-noise perturbations: the sampler again, same seeds, same routing draws
        amp = amplification(field, seeds, a.eps, nfe_steps=cfg.sample.nfe_steps, base=base, **kw)
        advance(len(a.eps))
        # 4. convergence against a much finer discretisation of the same routed field
        conv = convergence(field, seeds, nfe_steps=cfg.sample.nfe_steps, reference_factor=a.reference_factor,
                           rungs=a.ladder_rungs, at_nfe=base, **kw)
        advance(a.ladder_rungs)
    jump_t, jumps, switched = jump.result()                                 # (S,), (n, S), (n, S)
    lip_median, lip_p90 = torch.quantile(lip.double(), 0.5, dim=0), torch.quantile(lip.double(), 0.9, dim=0)  # (G,)
    on_grid = dict(zip(grid, range(len(grid))))
    curves: dict[str, list[Any]] = {
        "t": jump_t.tolist(),
        "lipschitz": [float(lip_median[on_grid[s]]) if s in on_grid else None for s in range(len(jump_t))],
        "lipschitz_p90": [float(lip_p90[on_grid[s]]) if s in on_grid else None for s in range(len(jump_t))],
        "routing_jump": _mean_over_samples(jumps),
    }
    metrics: dict[str, Any] = {
        "policy": spec.label, "n": a.n,
        "amplification": {f"eps_{e:g}": summary(r.numpy(), resamples=a.bootstrap, seed=cfg.seed) for e, r in amp.items()},
        "lipschitz": {**summary(lip.mean(1).numpy(), resamples=a.bootstrap, seed=cfg.seed),
                      "t": t_all[grid].tolist(), "median_by_t": lip_median.tolist(), "p90_by_t": lip_p90.tolist(),
                      "max_median_over_t": float(lip_median.max()), "iterations": a.power_iterations},
        "routing_jump": {**summary(jumps.mean(1).numpy(), resamples=a.bootstrap, seed=cfg.seed),
                         "switch_rate": float(switched.double().mean()), "delta": a.jump_delta},
        "convergence": {"steps": conv["steps"], "rms_error": conv["rms_error"],
                        "reference_steps": conv["reference_steps"], "order": conv["order"],
                        "error_at_nfe": summary(conv["error_at_nfe"].numpy(), resamples=a.bootstrap, seed=cfg.seed)},
    }
    if routed and recorder is not None:
        metrics["alignment"], metrics["disagreement"] = _routing_analyses(cfg, paths, spec, recorder.result(),
                                                                         clusters, curves)
    save_tensors(paths.analysis_values(spec.label), {
        "seeds": torch.tensor(list(seeds), dtype=torch.long),                   # (n,)
        "amplification": torch.stack([r.double() for r in amp.values()]),     # (len(eps), n)
        "eps": torch.tensor(list(amp), dtype=torch.float64),                   # (len(eps),)
        "error_at_nfe": conv["error_at_nfe"].double(),                         # (n,) RMS per pixel
        "lipschitz": lip.mean(1).double(),                                     # (n,) mean over the grid's states
        "routing_jump": jumps.mean(1).double(),                                # (n,) mean over the evaluations
    })
    write_json(paths.analysis_metrics(spec.label), metrics)
    write_json(paths.curves(spec.label), [dict(zip(curves, row)) for row in zip(*curves.values())])
    mirror(cfg, paths, f"analyze@{spec.label}", "analyze", {"analysis": config_to_dict(cfg)["analysis"],
           "policy": spec.label}, metrics, [paths.analysis_metrics(spec.label), paths.curves(spec.label),
                                            paths.analysis_values(spec.label)],
           tags={"policy": spec.label})
    return metrics


def _routing_analyses(cfg: Config, paths: Paths, spec: PolicySpec, trace: dict[str, torch.Tensor],
                      clusters: dict[str, torch.Tensor] | str, curves: dict[str, list[Any]]
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    idx = trace["probe_index"]
    p, w = trace["p"][idx], trace["w"][idx]                                 # (n, S, K)
    alignment = ({"skipped": clusters} if isinstance(clusters, str)
                 else _posterior_alignment(cfg, paths, spec, trace, p, w, curves))
    router_spread = weighted_spread(trace["probe_v_experts"], p)           # (n, S)
    policy_spread = weighted_spread(trace["probe_v_experts"], w)
    curves["disagreement_router"] = _mean_over_samples(router_spread)
    curves["disagreement_policy"] = _mean_over_samples(policy_spread)
    disagreement: dict[str, Any] = {"router_weighted": float(router_spread.mean()),
                                    "policy_weighted": float(policy_spread.mean())}
    disagreement.update(_quality_relation(cfg, paths, spec))
    return alignment, disagreement


# --- alignment against the exact posterior p* ---------------------------------------------------------------
def _posterior_alignment(cfg: Config, paths: Paths, spec: PolicySpec, trace: dict[str, torch.Tensor],
                         p: torch.Tensor, w: torch.Tensor, curves: dict[str, list[Any]]) -> dict[str, Any]:
    """p*(k | x_t) of the training set at every traced probe state (n, S, K), against the policy's weights w and
    the router's p (n, S, K): posterior weight sum_k w_k p*_k, hit rate (top-weighted expert = argmax p*),
    KL(p* || p_router) and the effective number of training points behind p*, as scalars and curves over t."""
    post = empirical_posterior(cfg, paths)
    x, t = trace["probe_x"], trace["t"]                                     # (n, S, C, H, W), (S,)
    n, steps = x.shape[:2]
    parts = [post(xb, tb) for xb, tb in zip(x.flatten(0, 1).split(256), t.repeat(n).split(256))]
    log_p_star = torch.cat([r.log_p for r in parts]).view(n, steps, -1)    # (n, S, K)
    n_eff = torch.cat([r.n_eff for r in parts]).view(n, steps)             # (n, S)
    p_star = log_p_star.exp()
    al = align.posterior_alignment(w, p_star)
    router = align.posterior_alignment(p, p_star)
    kl = kl_divergence(log_p_star.flatten(0, 1), p.double().clamp_min(1e-12).log().flatten(0, 1)).view(n, steps)
    curves["posterior_weight"] = _mean_over_samples(al["posterior_weight"])
    curves["hit_rate"] = _mean_over_samples(al["hit"])
    curves["kl_posterior_router"] = _mean_over_samples(kl) if spec.uses_router else [None] * steps
    curves["n_eff_median"] = [float(v) for v in n_eff.median(0).values]
    return {"posterior_weight": _nanmean(al["posterior_weight"]), "hit_rate": _nanmean(al["hit"]),
            "router_posterior_weight": _nanmean(router["posterior_weight"]) if spec.uses_router else None,
            "router_hit_rate": _nanmean(router["hit"]) if spec.uses_router else None,
            "kl_posterior_router": float(kl.mean()) if spec.uses_router else None,
            "n_eff_median": float(n_eff.median()), "posterior_train_images": len(post)}


def _quality_relation(cfg: Config, paths: Paths, spec: PolicySpec) -> dict[str, Any]:
    """Per-sample (all N) policy-weighted disagreement against per-sample quality from `evaluate`."""
    samples = load_tensors(paths.samples(spec.label), f"ddmbench sample --policy {spec.label}")
    quality = load_tensors(paths.quality(spec.label), f"ddmbench evaluate --policy {spec.label}")
    if "disagreement" not in samples:
        raise ArtifactError(f"{paths.samples(spec.label)} has no per-sample disagreement; "
                            f"re-run `ddmbench sample --policy {spec.label}`")
    if not torch.equal(quality["seeds"], samples["seeds"]):
        raise ArtifactError(f"{paths.quality(spec.label)} scores other samples than {paths.samples(spec.label)}; "
                            f"re-run `ddmbench evaluate --policy {spec.label}`")
    evaluator = load_classifier(paths.model("evaluator"))
    digest = check_same_evaluator({"outputs/evaluator.pt": weights_sha256(evaluator),
                                   str(paths.quality(spec.label).relative_to(paths.root)): quality.get("evaluator_sha256")})
    # the evaluator's predicted class (the class whose max-softmax is quality["confidence"]) stratifies
    predicted = class_probabilities(evaluator, to_model_space(samples["images"])).argmax(1)
    d = samples["disagreement"].double().numpy()
    relation = quality_relation(d, quality["confidence"].double().numpy(), quality["nn_distance"].double().numpy(),
                                predicted.numpy(), quantiles=cfg.analysis.quantiles)
    return {"per_sample_mean": float(np.mean(d)), **relation, "evaluator_sha256": digest}
