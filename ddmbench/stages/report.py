"""Stage `report`: reports/report.md (policy vs quality and cost) and a sample grid per policy."""

from __future__ import annotations

from typing import Any

import torch
from rich.table import Table

from ddmbench.config import Config
from ddmbench.console import console
from ddmbench.errors import ArtifactError
from ddmbench.io import ensure_writable, load_tensors, read_json, write_text
from ddmbench.paths import Paths
from ddmbench.report import POLICY_TABLE_HEADERS, fmt, markdown_table, policy_rows, save_grid
from ddmbench.tracking import mirror


def collect(cfg: Config, paths: Paths) -> dict[str, dict[str, Any]]:
    return {label: read_json(paths.eval_metrics(label), f"ddmbench evaluate --policy {label}") for label in cfg.policies}


def render(cfg: Config, paths: Paths, results: dict[str, dict[str, Any]]) -> str:
    cl = read_json(paths.cluster_metrics, "ddmbench cluster")
    router = read_json(paths.model_metrics("router"), "ddmbench train-router")
    evaluator = read_json(paths.model_metrics("evaluator"), "ddmbench train-evaluator")
    experts = [read_json(paths.expert_metrics(k), f"ddmbench train-expert --expert {k}") for k in cfg.experts]
    any_eval = next(iter(results.values()))
    setup = markdown_table(
        ("quantity", "value"),
        [["experts K", str(cfg.cluster.k)], ["cluster sizes", ", ".join(map(str, cl["sizes"]))],
         ["cluster purity / NMI vs digit labels", f"{cl['purity']:.3f} / {cl['nmi']:.3f}"],
         ["expert steps × batch", f"{cfg.expert.steps} × {cfg.expert.batch_size} ({cfg.expert.net})"],
         ["monolith steps × batch", f"{cfg.monolith_steps} × {cfg.monolith.batch_size} ({cfg.monolith.net})"],
         ["expert held-out loss", ", ".join(fmt(e["heldout_loss"], 4) for e in experts)],
         ["router held-out accuracy at t = 0 / 0.5 / 0.9",
          " / ".join(fmt(router["heldout"][f"acc_t{t}"], 3) for t in ("0", "0.5", "0.9"))],
         ["evaluator test accuracy", fmt(evaluator["test_acc"], 4)],
         ["samples per policy / real test images", f"{any_eval['n_fake']} / {any_eval['n_real']}"],
         ["solver, steps", f"{cfg.sample.solver}, {cfg.sample.nfe_steps}"],
         ["FID of real training images at this N (the estimator's floor)", fmt(any_eval["fid_reference_train"])]])
    grids = "\n".join(f"**{label}**\n\n![{label}](samples/{label}.png)\n" for label in results)
    return f"""# ddmbench report

## Setup

{setup}

## Table 1 — routing policy vs quality and cost

FID and KID are computed by torchmetrics in the feature space of the evaluator classifier (its
penultimate layer, scaled to unit mean variance per dimension on training images), against the test
split; ± is KID's standard deviation over subsets. Confidence is the evaluator's mean max-softmax on
the samples; class H is the entropy (nats, max ln 10 ≈ 2.303) of their predicted-class histogram.
Expert evaluations per image count every expert forward pass on one image over the whole trajectory
(sparse dispatch: an expert runs only on the rows that give it nonzero weight); the monolith counts
its own. GFLOPs per image are those evaluations times the FLOPs of one forward pass, measured with
`torch.utils.flop_counter`, plus the router's. Wall time is the sampling time of all samples here.

{markdown_table(POLICY_TABLE_HEADERS, policy_rows(results))}

## Samples (first 64 seeds; the same seeds for every policy)

{grids}
"""


def _sample_images(paths: Paths, label: str) -> torch.Tensor:
    """uint8 (N, 28, 28) images of one policy's samples file."""
    what = f"ddmbench sample --policy {label}"
    samples = load_tensors(paths.samples(label), what)
    images = samples.get("images") if isinstance(samples, dict) else None
    if not torch.is_tensor(images) or images.dim() != 3:
        raise ArtifactError(f"{paths.samples(label)} holds no (N, 28, 28) images; re-run `{what}`")
    return images


def run(cfg: Config, paths: Paths) -> dict[str, Any]:
    results = collect(cfg, paths)
    ensure_writable(paths.report_md, *(paths.sample_grid(label) for label in results))
    # read every input before writing anything, so a bad samples file leaves no partial report behind
    images = {label: _sample_images(paths, label) for label in results}
    for label, grid in images.items():
        save_grid(grid, paths.sample_grid(label))
    write_text(paths.report_md, render(cfg, paths, results))
    table = Table(title="routing policy vs quality and cost")
    for h in POLICY_TABLE_HEADERS:
        table.add_column(h, justify="right" if h != "policy" else "left")
    for row in policy_rows(results):
        table.add_row(*row)
    console.print(table)
    console.print(f"wrote {paths.report_md.relative_to(paths.root)}")
    mirror(cfg, paths, "report", "report", {"policies": ",".join(cfg.policies)},
           {label: {"fid": m["fid"], "kid": m["kid"]} for label, m in results.items()},
           [paths.report_md] + [paths.sample_grid(label) for label in results])
    return results
