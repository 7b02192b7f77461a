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


def anchor(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens ('Table 1 — x' -> 'table-1--x')."""
    kept = "".join(c for c in text.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;line-height:1.45;"
         "color:#222}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}"
         "nav.toc{background:#f7f7f7;border:1px solid #e3e3e3;padding:.4em 1em;display:inline-block}"
         "nav.toc ol{margin:.3em 0;padding-left:1.4em}"
         "table{border-collapse:collapse;margin:1em 0;font-size:.88em}"
         "caption{caption-side:bottom;text-align:left;font-size:.85em;color:#555;padding-top:.3em}"
         "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}td span{white-space:nowrap}"
         ".scroll{overflow-x:auto}"
         "th:first-child,td:first-child{text-align:left}thead{background:#f3f3f3}"
         "table.headline td,table.headline th{font-size:1.05em}"
         "table.headline td:last-child,table.headline th:last-child{white-space:normal;text-align:left;"
         "min-width:18em}"
         "figure{display:inline-block;margin:.5em;vertical-align:top}img{max-width:100%}"
         "figcaption{font-size:.85em;color:#555;text-align:center}"
         ".row{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}"
         ".row figure img{width:300px;image-rendering:pixelated}")


@dataclass
class Document:
    """Ordered report blocks: ("h", level, text), ("p", text), ("table", headers, rows, caption, css class),
    ("img", path, alt), ("row", [(path, alt), ...]) — images side by side, ("toc",) — the contents."""

    title: str
    blocks: list[tuple[Any, ...]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]], caption: str = "",
              css: str = "") -> None:
        """A table; ``caption`` names where its numbers come from (e.g. 'Source: metrics/contrast.json')."""
        self.blocks.append(("table", list(headers), [list(r) for r in rows], caption, css))

    def image(self, path: Path, alt: str) -> None:
        self.blocks.append(("img", path, alt))

    def images(self, items: Sequence[tuple[Path, str]]) -> None:
        """Images side by side, each with its caption (e.g. the sample grids of the policies compared)."""
        self.blocks.append(("row", list(items)))

    def contents(self) -> None:
        """A table of contents of the level-2 headings, placed here."""
        self.blocks.append(("toc",))

    def named_tables(self) -> dict[str, str]:
        """{'<section anchor>.md': the section's table(s) in Markdown with captions}, e.g. for MLflow artefacts."""
        out: dict[str, str] = {}
        section = "table"
        for block in self.blocks:
            if block[0] == "h":
                section = anchor(block[2])
            elif block[0] == "table":
                caption = f"\n\n*{block[3]}*" if block[3] else ""
                text = f"# {section}\n\n" + markdown_table(block[1], block[2]) + caption
                name = f"{section}.md"
                out[name] = out[name] + "\n\n" + text if name in out else text
        return {name: text + "\n" for name, text in out.items()}

    def _sections(self) -> list[str]:
        return [b[2] for b in self.blocks if b[0] == "h" and b[1] == 2]

    def markdown(self, base: Path) -> str:
        """Markdown with image links relative to ``base`` (the report's folder)."""
        out = [f"# {self.title}"]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out.append("#" * block[1] + " " + block[2])
            elif kind == "p":
                out.append(block[1])
            elif kind == "toc":
                out.append("\n".join(f"{i}. [{t}](#{anchor(t)})" for i, t in enumerate(self._sections(), 1)))
            elif kind == "table":
                out.append(markdown_table(block[1], block[2]) + (f"\n\n*{block[3]}*" if block[3] else ""))
            elif kind == "row":
                out.append(" ".join(f"![{alt}]({path.relative_to(base).as_posix()} \"{alt}\")"
                                    for path, alt in block[1]))
            else:
                out.append(f"![{block[2]}]({block[1].relative_to(base).as_posix()})")
        return "\n\n".join(out) + "\n"

    def html(self) -> str:
        """One self-contained HTML page (images inlined as base64 PNG)."""
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                body.append(f'<h{block[1]} id="{anchor(block[2])}">{html.escape(block[2])}</h{block[1]}>')
            elif kind == "p":
                body.append(f"<p>{html.escape(block[1])}</p>")
            elif kind == "toc":
                items = "".join(f'<li><a href="#{anchor(t)}">{html.escape(t)}</a></li>' for t in self._sections())
                body.append(f'<nav class="toc"><strong>Contents</strong><ol>{items}</ol></nav>')
            elif kind == "table":
                head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
                rows = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>" for r in block[2])
                caption = f"<caption>{html.escape(block[3])}</caption>" if block[3] else ""
                css = f' class="{block[4]}"' if block[4] else ""
                body.append(f'<div class="scroll"><table{css}>{caption}<thead><tr>{head}</tr></thead>'
                            f"<tbody>{rows}</tbody></table></div>")
            elif kind == "row":
                body.append('<div class="row">' + "".join(_figure(path, alt) for path, alt in block[1]) + "</div>")
            else:
                body.append(_figure(block[1], block[2]))
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(self.title)}</title>"
                f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _cell(text: str) -> str:
    """A table cell whose value and interval ('1.23 [0.9, 1.5]') may go on two lines but never break inside."""
    point, sep, interval = text.partition(" [")
    if not sep:
        return f"<span>{html.escape(text)}</span>" if len(text) <= 24 else html.escape(text)
    return f"<span>{html.escape(point)}</span> <span>[{html.escape(interval)}</span>"


def _figure(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(alt)}</figcaption></figure>")


def save_grid(images: torch.Tensor, path: Path, n: int = 64) -> None:
    """uint8 images (N, C, H, W), C = 1 (gray) or 3 (RGB) -> an 8-column PNG grid of the first n (an 8-bit
    gray PNG for C = 1, RGB for C = 3), written atomically."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"sample grids need (N, 1 or 3, H, W) images, not {tuple(images.shape)}")
    grid = make_grid(images[:n], nrow=8, padding=2, pad_value=255)  # (3, H', W') uint8 (gray is repeated)
    pixels = grid[0].numpy() if images.shape[1] == 1 else grid.permute(1, 2, 0).contiguous().numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
