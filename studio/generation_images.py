"""Images in and out of generation: the img2img init image and saving results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo

from studio.atomic import atomic_file
from studio.errors import StudioError
from studio.images import to_rgb

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def load_init_image(image: Any, width: int | None, height: int | None) -> Image.Image:
    """An RGB init image at ``width`` x ``height`` (default: its own size rounded down to multiples of 8)."""
    if not isinstance(image, Image.Image):
        path = Path(image).expanduser()
        try:
            with Image.open(path) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened) or opened
        except (OSError, ValueError) as error:
            raise StudioError(f"--init-image {path} cannot be read as an image ({error}).") from error
    image = to_rgb(image)
    w = width or max(8, image.width - image.width % 8)
    h = height or max(8, image.height - image.height % 8)
    return image if image.size == (w, h) else image.resize((w, h), Image.Resampling.LANCZOS)


def output_paths(out: str | Path, seeds: list[int]) -> list[Path]:
    """``out`` as one file (one image) or a folder (``<seed>.png`` each); a file with several images gets ``-N``."""
    out = Path(out).expanduser()
    if out.suffix.lower() in IMAGE_SUFFIXES:
        if len(seeds) == 1:
            return [out]
        return [out.with_name(f"{out.stem}-{index}{out.suffix}") for index in range(len(seeds))]
    return [out / f"{seed}.png" for seed in seeds]


def save_image(image: Image.Image, path: Path, parameters: dict[str, Any]) -> Path:
    """Write atomically; PNGs carry the generation parameters as text (as webuis do)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if path.suffix.lower() == ".png":
        info = PngInfo()
        info.add_text("parameters", json.dumps(parameters, default=str))
        kwargs["pnginfo"] = info
    with atomic_file(path, suffix=path.suffix) as tmp:
        image.save(tmp, **kwargs)
    return path
