"""Metrics JSON -> Markdown tables and sample-grid figures (pure formatting, no training or sampling)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.utils import make_grid

from ddmbench.io import atomic_path


def fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


POLICY_TABLE_HEADERS = ("policy", "FID ↓", "KID ↓", "expert evals/img", "router evals/img", "GFLOPs/img", "time (s)", "img/s",
                        "confidence", "class H")


def policy_rows(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    """results: label -> evaluate metrics (with its ``cost`` block)."""
    rows = []
    for label, m in results.items():
        c = m["cost"]
        rows.append([label, fmt(m["fid"]), f"{m['kid']:.4f} ± {m['kid_std']:.4f}",
                     fmt(c["expert_evals_per_image"], 1), fmt(c["router_evals_per_image"], 1),
                     fmt(c["gflops_per_image"], 3),
                     fmt(c["wall_time_s"], 1), fmt(c["images_per_s"], 1), fmt(m["confidence"], 3),
                     fmt(m["class_entropy"], 3)])
    return rows


def save_grid(images: torch.Tensor, path: Path, n: int = 64) -> None:
    """uint8 images (N, 28, 28) -> an 8-column PNG grid of the first n, written atomically."""
    grid = make_grid(images[:n].unsqueeze(1), nrow=8, padding=2, pad_value=255)  # (3, H, W) uint8
    with atomic_path(path) as tmp:
        Image.fromarray(grid[0].numpy()).save(tmp, format="PNG")
