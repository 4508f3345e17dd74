"""How a report is written: table cells, markdown tables, the Report (JSON + markdown + PNGs) and its pictures."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image, ImageDraw

from avpcli import evaluate
from avpcli.files import atomic_write_bytes
from avpcli.images import contact_sheet, to_pil


def number(value: Any, digits: int = 3) -> str:
    """A table cell: fixed digits, 'undefined' for a missing or NaN number."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "undefined"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def percent(fraction: float | None) -> str:
    """A table cell for an accuracy: percent with one decimal, 'undefined' when there is none."""
    return number(None if fraction is None else 100 * fraction, 1)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; numbers are formatted with `number`."""
    def cell(value: Any) -> str:
        return value if isinstance(value, str) else number(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _json_ready(value: Any) -> Any:
    if isinstance(value, float):
        return evaluate.nan_to_none(value)
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass
class Report:
    """One analysis's output: data for JSON, markdown text, and pictures (name → PIL image)."""

    name: str
    data: dict[str, Any]
    markdown: str
    pictures: dict[str, Image.Image] = field(default_factory=dict)

    def write(self, folder: Path) -> Path:
        """Write `<name>.json`, `<name>.md` (pictures linked) and `<name>-<picture>.png`; returns the .md path."""
        folder.mkdir(parents=True, exist_ok=True)
        links = []
        for picture_name, picture in self.pictures.items():
            file_name = f"{self.name}-{picture_name}.png"
            picture.save(folder / file_name, format="PNG")
            links.append(f"![{picture_name}]({file_name})")
        atomic_write_bytes(folder / f"{self.name}.json",
                           (json.dumps(_json_ready(self.data), indent=2, allow_nan=False) + "\n").encode())
        text = self.markdown + ("\n" + "\n\n".join(links) + "\n" if links else "")
        atomic_write_bytes(folder / f"{self.name}.md", text.encode())
        return folder / f"{self.name}.md"


# ------------------------------------------------------------------------------------------------
# Pictures (PIL only)

_ORIGINAL_COLOUR = (40, 90, 200)
_ENCRYPTED_COLOUR = (220, 80, 30)


def histogram_picture(series: dict[str, torch.Tensor], height: int = 140) -> Image.Image:
    """Grey-level histograms (256 bins each) as bar charts stacked vertically, one per series, labelled."""
    colours = [_ORIGINAL_COLOUR, _ENCRYPTED_COLOUR, (30, 150, 60)]
    width, margin = 256 * 2, 16
    picture = Image.new("RGB", (width + 2 * margin, len(series) * (height + 2 * margin)), "white")
    draw = ImageDraw.Draw(picture)
    for row, (label, counts) in enumerate(series.items()):
        top = row * (height + 2 * margin) + margin
        peak = max(int(counts.max()), 1)
        for level, count in enumerate(counts.tolist()):
            bar = round(height * count / peak)
            left = margin + 2 * level
            draw.rectangle([left, top + height - bar, left + 1, top + height], fill=colours[row % len(colours)])
        draw.line([margin, top + height, margin + width, top + height], fill="black")
        draw.text((margin + 4, top - 2), f"{label} (0..255 grey levels)", fill="black")
    return picture


def scatter_picture(first: torch.Tensor, second: torch.Tensor, label: str, size: int = 256) -> Image.Image:
    """Adjacent-pixel pairs (x = pixel, y = its neighbour, 0–255) as dots, like the paper's Fig. 9."""
    margin = 16
    picture = Image.new("RGB", (size + 2 * margin, size + 2 * margin), "white")
    draw = ImageDraw.Draw(picture)
    draw.rectangle([margin, margin, margin + size, margin + size], outline="black")
    scale = size / 255
    for x, y in zip(first.tolist(), second.tolist()):
        px, py = margin + x * scale, margin + size - y * scale
        draw.point((px, py), fill=_ENCRYPTED_COLOUR)
    draw.text((margin + 2, 2), label, fill="black")
    return picture


def sheet_picture(rows: Sequence[Sequence[torch.Tensor]]) -> Image.Image:
    """images.contact_sheet as a PIL image."""
    return to_pil(contact_sheet(rows))


def side_by_side(pictures: Sequence[Image.Image], gap: int = 8) -> Image.Image:
    """Pictures in one row on white."""
    width = sum(picture.width for picture in pictures) + gap * (len(pictures) - 1)
    height = max(picture.height for picture in pictures)
    canvas = Image.new("RGB", (width, height), "white")
    left = 0
    for picture in pictures:
        canvas.paste(picture, (left, 0))
        left += picture.width + gap
    return canvas
