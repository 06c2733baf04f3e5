"""Subject masks: which pixels of a photo are the subject, so the loss can weight them.

A mask is a greyscale image the size of its photo: white (255) is the subject, black (0) the
background, grey in between. Sources, the first that exists wins:

* painted on the Subject tab (the web UI hands it over as an image);
* a mask file: ``NAME.mask.png`` beside the photo, or ``NAME.png`` (any image format) in a
  ``--masks`` folder;
* the photo's own alpha channel, when it has transparent pixels (a cut-out PNG);
* an automatic mask from a segmentation model (:mod:`studio.automask`), when asked.

Masks go through the same geometry as their photo (square crop, pad or bucket); padding is
background. Training turns them into loss weights: ``background + (1 - background) * mask``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from studio.buckets import fit_bucket
from studio.images import IMAGE_EXTENSIONS, ImageRejected

MASK_SUFFIX = ".mask"
MASKS_DIR = "masks"
# A mask whose subject covers less than this share of the photo is probably inverted or empty.
MIN_COVERAGE = 0.005


def is_mask_file(path: Path) -> bool:
    """Whether ``path`` is a sidecar mask (``NAME.mask.png``), not a photo."""
    return Path(path).stem.endswith(MASK_SUFFIX)


def find_mask_file(photo: Path, masks_dir: Path | None = None) -> Path | None:
    """The mask file for ``photo``: ``NAME.mask.<ext>`` beside it, else ``NAME.<ext>`` in ``masks_dir``."""
    for extension in IMAGE_EXTENSIONS:
        sidecar = photo.with_name(f"{photo.stem}{MASK_SUFFIX}{extension}")
        if sidecar.is_file():
            return sidecar
    if masks_dir is not None:
        for extension in IMAGE_EXTENSIONS:
            candidate = Path(masks_dir) / f"{photo.stem}{extension}"
            if candidate.is_file():
                return candidate
    return None


def to_mask(img: Image.Image) -> Image.Image:
    """Any image as an 8-bit mask: its alpha where it has one that is not fully opaque, else its brightness."""
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        alpha = img.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            return alpha
    return img.convert("L")


def read_mask(path: Path, photo_size: tuple[int, int]) -> Image.Image:
    """A mask file as an ``L`` image of ``photo_size``; raise :class:`ImageRejected` with the reason."""
    try:
        with Image.open(path) as opened:
            opened.load()
            img = ImageOps.exif_transpose(opened) or opened
            mask = to_mask(img)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ImageRejected(f"is not a mask image Studio can read ({error}); save it as a greyscale PNG") from error
    return match_size(mask, photo_size)


def match_size(mask: Image.Image, photo_size: tuple[int, int]) -> Image.Image:
    """``mask`` at ``photo_size``; a mask of another shape (aspect ratio off by over 2 %) is refused."""
    if mask.size == photo_size:
        return mask
    ratio = (mask.size[0] / mask.size[1]) / (photo_size[0] / photo_size[1])
    if abs(ratio - 1) > 0.02:
        raise ImageRejected(
            f"is {mask.size[0]}x{mask.size[1]} but its photo is {photo_size[0]}x{photo_size[1]}; "
            "a mask must have the photo's shape (paint it on the photo itself)"
        )
    return mask.resize(photo_size, Image.Resampling.BILINEAR)


def alpha_mask(data: bytes) -> Image.Image | None:
    """The alpha channel of an image file (oriented like the photo), or None when it has no transparency."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if not (opened.mode in ("RGBA", "LA", "PA") or "transparency" in opened.info):
                return None
            opened.load()
            img = ImageOps.exif_transpose(opened) or opened
            alpha = img.convert("RGBA").getchannel("A")
    except Exception:  # the photo itself was decoded already; a broken alpha just means no mask
        return None
    return alpha if alpha.getextrema()[0] < 255 else None


def check_coverage(mask: Image.Image) -> str | None:
    """A warning when the mask marks (almost) nothing or everything as the subject."""
    share = float(np.asarray(mask, dtype=np.float32).mean() / 255.0)
    if share < MIN_COVERAGE:
        return "has a mask that marks almost nothing as the subject (is it inverted? white is the subject)"
    if share > 1 - MIN_COVERAGE:
        return "has a mask that marks the whole photo as the subject; it changes nothing"
    return None


def fit_mask(mask: Image.Image, resolution: int, crop: str, bucket: tuple[int, int] | None = None) -> Image.Image:
    """``mask`` through the same geometry as its photo (see :func:`studio.images.fit_photo`)."""
    if crop == "bucket":
        assert bucket is not None
        return fit_bucket(mask, bucket, Image.Resampling.BILINEAR)
    width, height = mask.size
    if crop == "center":
        return fit_bucket(mask, (resolution, resolution), Image.Resampling.BILINEAR)
    scale = resolution / max(width, height)
    new_size = (max(1, min(resolution, round(width * scale))), max(1, min(resolution, round(height * scale))))
    canvas = Image.new("L", (resolution, resolution), 0)
    canvas.paste(mask.resize(new_size, Image.Resampling.BILINEAR),
                 ((resolution - new_size[0]) // 2, (resolution - new_size[1]) // 2))
    return canvas
