"""Images in and out of generation: input images (start image, mask, control image) and saving results."""

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


# What each input image is called on the command line and in the browser (errors name it).
INPUT_NAMES = {"--init-image": "start image", "--mask": "mask", "--control": "control image"}


def open_image(image: Any, flag: str) -> Image.Image:
    """A loaded PIL image (a path is opened, EXIF-rotated and checked against the input-image limit)."""
    if isinstance(image, Image.Image):
        return image
    from studio import limits

    path = Path(image).expanduser()
    name = INPUT_NAMES.get(flag, flag)
    try:
        with Image.open(path) as opened:
            limits.INPUT_IMAGE_PIXELS.check(opened.width * opened.height)
            opened.load()
            return ImageOps.exif_transpose(opened) or opened
    except limits.LimitError as error:
        raise StudioError(f"{flag} {path} is too large: {error}",
                          browser=f"The {name} {path.name} is too large: {error}") from error
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise StudioError(f"{flag} {path} cannot be read as an image ({error}).",
                          browser=f"The {name} {path.name} cannot be read as an image ({error}).") from error


def load_image(image: Any, flag: str, width: int | None, height: int | None) -> Image.Image:
    """An RGB image at ``width`` x ``height`` (default: its own size rounded down to multiples of 8)."""
    image = to_rgb(open_image(image, flag))
    w = width or max(8, image.width - image.width % 8)
    h = height or max(8, image.height - image.height % 8)
    return image if image.size == (w, h) else image.resize((w, h), Image.Resampling.LANCZOS)


def load_init_image(image: Any, width: int | None, height: int | None) -> Image.Image:
    """The img2img / inpainting / instruction-edit start image (see :func:`load_image`)."""
    return load_image(image, "--init-image", width, height)


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
