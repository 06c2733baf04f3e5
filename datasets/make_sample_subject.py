"""Draw the sample subject: a yellow rubber duck in four photo-like scenes.

Run once (``python datasets/make_sample_subject.py``); the images are committed. Everything is
procedural (PIL shapes + numpy noise, fixed seeds), so the result is the same on every machine
and owes nothing to anyone's photos. The duck keeps the same look (yellow body, orange beak,
black eye, pale wing) while position, scale, facing and background change: that is what makes
it a "subject" a tiny model can learn at 64 px.

The last image is a JPEG whose pixels are stored rotated, with an EXIF Orientation tag that
turns it upright, to exercise EXIF handling in ``studio prepare``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

OUT = Path(__file__).resolve().parent / "sample_subject"
SUPERSAMPLE = 4
YELLOW, SHADE, WING = (250, 204, 40), (214, 160, 20), (255, 226, 110)
BEAK, EYE = (242, 120, 28), (20, 20, 24)


def background(size: tuple[int, int], top: tuple[int, int, int], bottom: tuple[int, int, int], seed: int,
               stripes: int = 0) -> np.ndarray:
    """A vertical gradient with optional stripes (tiles, planks) and film-grain noise."""
    width, height = size
    t = np.linspace(0.0, 1.0, height)[:, None, None]
    img = (1 - t) * np.array(top, float) + t * np.array(bottom, float)
    img = np.repeat(img, width, axis=1)
    if stripes:
        x = np.arange(width)[None, :, None]
        img = img * (0.9 + 0.1 * (np.sin(2 * np.pi * x * stripes / width) > 0.92))
    rng = np.random.default_rng(seed)
    img += rng.normal(0.0, 6.0, img.shape)
    return img


def draw_duck(canvas: Image.Image, center: tuple[float, float], scale: float, facing: int) -> None:
    """Draw the duck (about ``scale`` px wide) at ``center``; ``facing`` is 1 (right) or -1 (left)."""
    s = SUPERSAMPLE
    cx, cy, r = center[0] * s, center[1] * s, scale * s / 2
    draw = ImageDraw.Draw(canvas)
    draw.ellipse((cx - r * 1.05, cy + r * 0.55, cx + r * 1.05, cy + r * 0.8), fill=(0, 0, 0, 70))  # shadow
    draw.ellipse((cx - r, cy - r * 0.2, cx + r, cy + r * 0.7), fill=SHADE)  # body
    draw.ellipse((cx - r * 0.95, cy - r * 0.25, cx + r * 0.95, cy + r * 0.55), fill=YELLOW)
    tail = cx - facing * r * 0.95
    draw.polygon([(tail, cy - r * 0.05), (tail - facing * r * 0.3, cy - r * 0.35), (tail, cy + r * 0.25)], fill=YELLOW)
    hx, hy, hr = cx + facing * r * 0.45, cy - r * 0.55, r * 0.5
    draw.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=YELLOW)  # head
    bx = hx + facing * hr * 0.8
    draw.polygon([(bx, hy - hr * 0.1), (bx + facing * hr * 0.75, hy + hr * 0.15), (bx, hy + hr * 0.4)], fill=BEAK)
    ex, ey, er = hx + facing * hr * 0.35, hy - hr * 0.25, hr * 0.16
    draw.ellipse((ex - er, ey - er, ex + er, ey + er), fill=EYE)
    draw.ellipse((ex - er * 0.3 + facing * er * 0.3, ey - er * 0.6, ex + er * 0.2 + facing * er * 0.3, ey - er * 0.1),
                 fill=(255, 255, 255))
    wx, wy = cx - facing * r * 0.15, cy + r * 0.1
    draw.ellipse((wx - r * 0.45, wy - r * 0.2, wx + r * 0.45, wy + r * 0.25), fill=WING)


def scene(size: tuple[int, int], bg: np.ndarray, center: tuple[float, float], scale: float, facing: int) -> Image.Image:
    big = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8)).resize(
        (size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE), Image.Resampling.BICUBIC
    ).convert("RGBA")
    layer = Image.new("RGBA", big.size, (0, 0, 0, 0))
    draw_duck(layer, center, scale, facing)
    big = Image.alpha_composite(big, layer).convert("RGB")
    small = big.resize(size, Image.Resampling.LANCZOS).filter(ImageFilter.GaussianBlur(0.4))
    grain = np.random.default_rng(sum(size) + int(scale)).normal(0.0, 3.0, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(small, float) + grain, 0, 255).astype(np.uint8))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    table = scene((256, 256), background((256, 256), (190, 150, 110), (120, 80, 50), 1, stripes=5), (128, 150), 150, 1)
    table.save(OUT / "01_table.png", optimize=True)
    tiles = scene((320, 256), background((320, 256), (150, 200, 230), (90, 140, 190), 2, stripes=8), (200, 140), 110, -1)
    tiles.save(OUT / "02_bath.png", optimize=True)
    grass = scene((288, 288), background((288, 288), (170, 210, 250), (60, 130, 50), 3), (100, 190), 120, 1)
    grass.save(OUT / "03_garden.jpg", quality=90)
    # Displayed upright as 256x320; stored as 320x256 with Orientation 6 (rotate 90 degrees clockwise to view).
    shelf = scene((256, 320), background((256, 320), (235, 235, 230), (160, 160, 170), 4), (140, 200), 170, -1)
    exif = Image.Exif()
    exif[0x0112] = 6
    shelf.transpose(Image.Transpose.ROTATE_90).save(OUT / "04_shelf_exif.jpg", quality=90, exif=exif.tobytes())


if __name__ == "__main__":
    main()
