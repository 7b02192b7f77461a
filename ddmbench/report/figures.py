"""Report figures (matplotlib, Agg backend): FID against amplification, and per-t curves by policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

from ddmbench.io import atomic_path  # noqa: E402
from ddmbench.report.tables import Results, eps_value, headline_eps  # noqa: E402


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


# Marker x colour cycle: policies are told apart in the legend, so no label is drawn over the data.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


def style(i: int) -> dict[str, Any]:
    """The i-th policy's marker and colour (the same in every figure)."""
    return {"marker": MARKERS[i % len(MARKERS)], "color": plt.get_cmap("tab10")(i % 10)}


def fid_vs_amplification(results: Results, path: Path) -> None:
    """Write :func:`fid_vs_amplification_figure` as a PNG."""
    _save(fid_vs_amplification_figure(results), path)


def fid_vs_amplification_figure(results: Results) -> Any:
    """Each policy at (mean amplification, FID) with both 95% intervals: the dissociation at a glance.
    Policies are named in a legend beside the axes (labels on the points overlap when policies are close)."""
    key = headline_eps(results)
    fig, ax = plt.subplots(figsize=(7.6, 4.4))
    for i, (label, r) in enumerate(results.items()):
        amp, e = r["analyze"]["amplification"][key], r["evaluate"]
        x, y = amp["mean"], e["fid"]
        xerr = [[x - amp["mean_ci95"][0]], [amp["mean_ci95"][1] - x]]
        yerr = [[y - e["fid_ci95"][0]], [e["fid_ci95"][1] - y]] if e.get("fid_ci95") else None
        st = style(i)
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=st["marker"], color=st["color"], capsize=3, markersize=7,
                    alpha=0.9, label=label)
    ax.set_xlabel(f"mean amplification ‖Δx₀‖/‖Δz‖ at ε={eps_value(key)} (pixel L2 per unit noise L2)", fontsize=9)
    ax.set_ylabel("FD, evaluator classifier features (unitless)", fontsize=9)
    ax.set_title("quality vs stability per policy (95% intervals; lower left = better and more stable)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(title="policy", fontsize=8, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              borderaxespad=0, numpoints=1)
    return fig


def curves_over_t(curves: dict[str, list[dict[str, Any]]], field: str, ylabel: str, path: Path,
                  log: bool = False) -> bool:
    """One line per policy of ``field`` over t (1 = noise on the left); False (nothing written) if no policy has it."""
    fig, ax = plt.subplots(figsize=(7.6, 4.0))
    drawn = 0
    for i, (label, rows) in enumerate(curves.items()):
        pts = [(row["t"], row[field]) for row in rows if row.get(field) is not None]
        if pts:
            ax.plot(*zip(*pts), marker=style(i)["marker"], color=style(i)["color"], markersize=4, label=label)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return False
    ax.invert_xaxis()
    ax.set_xlabel("flow time t (1 = noise → 0 = data)", fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    if log:
        ax.set_yscale("log")
        # plain numbers (1.5, not 1.5×10⁰); minor ticks labelled only when the data span less than a decade
        plain = ticker.FuncFormatter(lambda v, _: f"{v:.3g}")
        ax.yaxis.set_major_formatter(plain)
        ys = [y for rows in curves.values() for row in rows if (y := row.get(field)) is not None and y > 0]
        ax.yaxis.set_minor_formatter(plain if ys and max(ys) < 10 * min(ys) else ticker.NullFormatter())
    ax.grid(alpha=0.3)
    ax.legend(title="policy", fontsize=8, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              borderaxespad=0)
    _save(fig, path)
    return True
