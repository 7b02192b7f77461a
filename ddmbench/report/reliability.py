"""The router's reliability diagram: accuracy against confidence per bin, one line per t, before and after
temperature scaling (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ddmbench.io import atomic_path  # noqa: E402


def reliability_diagram(rows: Sequence[dict[str, Any]], path: Path, temperature: float) -> None:
    """rows: the `router-calibration` rows (``t``, and ``router`` / ``calibrated`` each with ``reliability`` bins
    holding ``confidence``, ``accuracy`` and ``count``); empty bins are skipped."""
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 4.4), sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, key, title in ((axes[0], "router", "router (T = 1)"),
                           (axes[1], "calibrated", f"temperature-scaled (T = {temperature:.3g})")):
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="calibrated")
        for i, row in enumerate(rows):
            bins = [b for b in row[key]["reliability"] if b["count"]]
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", ms=3,
                    color=cmap(i / max(1, len(rows) - 1)), label=f"t = {row['t']:g} (ECE {row[key]['ece']:.3f})")
        ax.set_title(title)
        ax.set_xlabel("confidence (top-1 probability, 15 bins)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("accuracy against the cluster labels")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
