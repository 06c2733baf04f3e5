"""A contact sheet: labelled rows of thumbnails, so a person can check what the numbers mean."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from studio.atomic import atomic_file
from studio.evaluation.preprocessing import load_image

THUMB = 128
PAD = 6
LABEL_HEIGHT = 18
CAPTION_HEIGHT = 14
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (110, 110, 110)


@dataclass
class SheetRow:
    """One labelled row: images (paths or PIL images) with a short caption under each."""

    label: str
    images: Sequence[Path | Image.Image]
    captions: Sequence[str] = field(default_factory=list)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _thumbnail(item: Path | Image.Image, size: int) -> Image.Image:
    image = load_image(item) if isinstance(item, Path) else item.convert("RGB")
    image = image.copy()
    resample = Image.Resampling.NEAREST if max(image.size) < size else Image.Resampling.LANCZOS
    scale = size / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)
    tile = Image.new("RGB", (size, size), BACKGROUND)
    tile.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return tile


def render_contact_sheet(rows: Sequence[SheetRow], thumb: int = THUMB) -> Image.Image:
    """Rows top to bottom; each has its label above and its thumbnails left to right."""
    columns = max((len(r.images) for r in rows), default=1) or 1
    width = PAD + columns * (thumb + PAD)
    row_height = LABEL_HEIGHT + thumb + CAPTION_HEIGHT + PAD
    sheet = Image.new("RGB", (width, PAD + len(rows) * row_height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    label_font, caption_font = _font(13), _font(10)
    for r, row in enumerate(rows):
        top = PAD + r * row_height
        draw.text((PAD, top), _fit_text(draw, row.label, label_font, width - 2 * PAD), fill=INK, font=label_font)
        for c, item in enumerate(row.images):
            left = PAD + c * (thumb + PAD)
            sheet.paste(_thumbnail(item, thumb), (left, top + LABEL_HEIGHT))
            if c < len(row.captions):
                caption = _fit_text(draw, row.captions[c], caption_font, thumb)
                draw.text((left, top + LABEL_HEIGHT + thumb + 1), caption, fill=MUTED, font=caption_font)
    return sheet


def write_contact_sheet(rows: Sequence[SheetRow], path: str | Path, thumb: int = THUMB) -> Path:
    """Render and save as PNG atomically."""
    with atomic_file(path, ".png") as tmp:
        render_contact_sheet(rows, thumb).save(tmp, format="PNG")
    return Path(path)
