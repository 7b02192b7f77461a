"""The mechanism ablation's figure: ``policy − full`` against K, one line per clustering, each point the mean
over the cell's training seeds with its Student-t 95% interval, each seed's own estimate a small dot beside it
(matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ddmbench.io import atomic_path  # noqa: E402


def ablation_figure(cells: Sequence[dict[str, Any]], path: Path) -> None:
    """cells: :func:`ddmbench.tools.ablations.grid` entries (clustering, k, mean, ci95 or None, r). Cells with
    R < 3 are drawn without an interval; the dotted line is 0 (no difference from full)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    clusterings = list(dict.fromkeys(c["clustering"] for c in cells))
    for i, name in enumerate(clusterings):
        line = sorted((c for c in cells if c["clustering"] == name), key=lambda c: c["k"])
        ks = [c["k"] + 0.06 * (i - (len(clusterings) - 1) / 2) * c["k"] for c in line]  # dodge the bars
        means = [c["mean"] for c in line]
        lower = [c["mean"] - c["ci95"][0] if c["ci95"] else 0.0 for c in line]
        upper = [c["ci95"][1] - c["mean"] if c["ci95"] else 0.0 for c in line]
        bars = ax.errorbar(ks, means, yerr=[lower, upper], marker="o", capsize=3,
                           label=f"{name} (R = {', '.join(str(c['r']) for c in line)})")
        seeds = [(k * 1.03, s["estimate"]) for k, c in zip(ks, line) for s in c.get("per_seed", [])]
        if seeds:
            ax.scatter(*zip(*seeds), s=10, alpha=0.6, color=bars.lines[0].get_color(), zorder=3)
    ax.axhline(0.0, color="grey", lw=1, ls=":")
    ax.set_xscale("log", base=2)
    all_k = sorted({c["k"] for c in cells})
    ax.set_xticks(all_k, [str(k) for k in all_k])
    c0 = cells[0]
    ax.set_xlabel("experts K")
    ax.set_ylabel(f"{c0['policy']} − full, {c0['metric']} (paired; < 0: {c0['policy']} better)")
    ax.set_title("mean over training seeds, 95% t-interval; dots: each seed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
