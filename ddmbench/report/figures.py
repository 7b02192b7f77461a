"""Report figures (matplotlib, Agg backend): FID against amplification, and per-t curves by policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ddmbench.io import atomic_path  # noqa: E402
from ddmbench.report.tables import Results, eps_value, headline_eps  # noqa: E402


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def fid_vs_amplification(results: Results, path: Path) -> None:
    """Each policy at (mean amplification, FID) with both 95% intervals: the dissociation at a glance."""
    key = headline_eps(results)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for label, r in results.items():
        amp, e = r["analyze"]["amplification"][key], r["evaluate"]
        x, y = amp["mean"], e["fid"]
        xerr = [[x - amp["mean_ci95"][0]], [amp["mean_ci95"][1] - x]]
        yerr = [[y - e["fid_ci95"][0]], [e["fid_ci95"][1] - y]] if e.get("fid_ci95") else None
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", capsize=3)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel(f"mean amplification ‖Δx₀‖/ε at ε={eps_value(key)} (less = more stable)")
    ax.set_ylabel("FID (lower = better)")
    ax.set_title("quality vs stability per routing policy")
    ax.grid(alpha=0.3)
    _save(fig, path)


def curves_over_t(curves: dict[str, list[dict[str, Any]]], field: str, ylabel: str, path: Path,
                  log: bool = False) -> bool:
    """One line per policy of ``field`` over t (1 = noise on the left); False (nothing written) if no policy has it."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    drawn = 0
    for label, rows in curves.items():
        pts = [(row["t"], row[field]) for row in rows if row.get(field) is not None]
        if pts:
            ax.plot(*zip(*pts), marker=".", label=label)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return False
    ax.invert_xaxis()
    ax.set_xlabel("t (1 = noise → 0 = data)")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, path)
    return True
