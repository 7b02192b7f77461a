"""A report as a list of blocks rendered twice: Markdown (reports/report.md) and self-contained HTML.

Blocks are headings, paragraphs, tables and images; the HTML embeds every image as a data URI and the
tables as plain <table>s, so reports/report.html opens anywhere with nothing beside it.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
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
        return "–" if x != x else f"{x:.{digits}f}"
    return str(x)


def fmt_ci(point: float | None, ci: Sequence[float] | None, digits: int = 2) -> str:
    """'12.34 [11.00, 13.50]' (or the point alone when there is no interval)."""
    if ci is None or point is None:
        return fmt(point, digits)
    return f"{fmt(point, digits)} [{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


@dataclass
class Document:
    """Ordered report blocks: ("h", level, text), ("p", text), ("table", headers, rows), ("img", path, alt)."""

    title: str
    blocks: list[tuple[Any, ...]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.blocks.append(("table", list(headers), [list(r) for r in rows]))

    def image(self, path: Path, alt: str) -> None:
        self.blocks.append(("img", path, alt))

    def markdown(self, base: Path) -> str:
        """Markdown with image links relative to ``base`` (the report's folder)."""
        out = [f"# {self.title}"]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out.append("#" * block[1] + " " + block[2])
            elif kind == "p":
                out.append(block[1])
            elif kind == "table":
                out.append(markdown_table(block[1], block[2]))
            else:
                out.append(f"![{block[2]}]({block[1].relative_to(base).as_posix()})")
        return "\n\n".join(out) + "\n"

    def html(self) -> str:
        """One self-contained HTML page (images inlined as base64 PNG)."""
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                body.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
            elif kind == "p":
                body.append(f"<p>{html.escape(block[1])}</p>")
            elif kind == "table":
                head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
                rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in block[2])
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            else:
                data = base64.b64encode(block[1].read_bytes()).decode("ascii")
                body.append(f'<figure><img alt="{html.escape(block[2])}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{html.escape(block[2])}</figcaption></figure>")
        style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}"
                 "table{border-collapse:collapse;margin:1em 0;font-size:.9em}"
                 "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
                 "th:first-child,td:first-child{text-align:left}thead{background:#f3f3f3}"
                 "figure{display:inline-block;margin:.5em}img{max-width:100%}")
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(self.title)}</title>"
                f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def save_grid(images: torch.Tensor, path: Path, n: int = 64) -> None:
    """uint8 images (N, C, H, W), C = 1 (gray) or 3 (RGB) -> an 8-column PNG grid of the first n (an 8-bit
    gray PNG for C = 1, RGB for C = 3), written atomically."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"sample grids need (N, 1 or 3, H, W) images, not {tuple(images.shape)}")
    grid = make_grid(images[:n], nrow=8, padding=2, pad_value=255)  # (3, H', W') uint8 (gray is repeated)
    pixels = grid[0].numpy() if images.shape[1] == 1 else grid.permute(1, 2, 0).contiguous().numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
