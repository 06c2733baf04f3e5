"""Finding subject photos, reading each one safely, and making it a square RGB training image.

Apart from :func:`expand_inputs`, everything here works on one file; :mod:`studio.subjects`
applies it to a set of photos (counts, duplicates, writing the subject directory). Failures
raise :class:`ImageRejected` with a reason written for the user; the caller adds the file name.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
# MPO is how Pillow names the JPEGs many phones write (a JPEG with extra preview frames).
ACCEPTED_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WebP"}
# A photo above this is either a panorama nobody trains on or a decompression bomb.
DEFAULT_MAX_PIXELS = 90_000_000
# center and pad make square images; bucket keeps the photo's shape (studio.buckets).
CROP_MODES = ("center", "pad", "bucket")
PAD_COLOR = (255, 255, 255)
# EXIF orientations 5-8 swap width and height when applied.
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112


class ImageRejected(Exception):
    """A photo cannot be used; ``str(error)`` is the reason, without the file name."""


@dataclass
class FileMessage:
    """One line of feedback; ``path`` is None for messages about the set as a whole."""

    level: str  # "error" or "warning"
    text: str
    path: Path | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.text}" if self.path is not None else self.text


@dataclass
class DecodedImage:
    """A photo that passed the integrity checks, oriented and converted to 8-bit RGB.

    ``size`` is the full (width, height) as displayed, after EXIF orientation; ``image`` may be
    smaller than that when a large JPEG was decoded at reduced scale.
    """

    path: Path
    sha256: str
    format: str
    mode: str
    size: tuple[int, int]
    image: Image.Image = field(repr=False)
    notes: list[str] = field(default_factory=list)


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block should not cost the user the photo
        return 1


def decode_image(
    path: str | Path,
    *,
    min_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DecodedImage:
    """Open, fully decode and orient ``path``; raise :class:`ImageRejected` if it is unusable.

    Integrity is checked by decoding every pixel (``load()``), with Pillow's
    ``LOAD_TRUNCATED_IMAGES`` left False, so a truncated or corrupt file is rejected rather
    than padded with grey. ``min_side`` lets a large JPEG be decoded at 1/2, 1/4 or 1/8 scale
    (``Image.draft``) as long as both sides stay at least that big: the reduced decode still
    reads the whole compressed stream, so it catches truncation just the same, at a fraction
    of the time and memory.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageRejected(f"cannot be read ({error.strerror or error})") from error
    if not data:
        raise ImageRejected("is an empty file")
    digest = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected(f"is too large to open safely, a possible decompression bomb ({error})") from error
    except UnidentifiedImageError as error:
        raise ImageRejected("is not an image Studio can read (expected JPEG, PNG or WebP)") from error
    except Exception as error:
        raise ImageRejected(f"is corrupt: its header cannot be parsed ({error})") from error

    kind = ACCEPTED_FORMATS.get(img.format or "")
    if kind is None:
        raise ImageRejected(f"is a {img.format} image; convert it to JPEG, PNG or WebP")
    width, height = img.size
    if width * height > max_pixels:
        raise ImageRejected(
            f"has {width}x{height} = {width * height / 1e6:.0f} megapixels, over the safety limit of "
            f"{max_pixels / 1e6:.0f} (a possible decompression bomb); resize it first"
        )
    notes = []
    if kind != "JPEG" and getattr(img, "n_frames", 1) > 1:
        notes.append("is animated; only its first frame is used")
    mode = img.mode
    if kind == "JPEG" and min_side:
        img.draft(None, (min_side, min_side))
    try:
        img.load()  # first: a failed load leaves a half-decoded image that a second load() accepts
    except Exception as error:
        raise ImageRejected(f"is corrupt or truncated and cannot be decoded ({error})") from error
    orientation = _orientation(img)
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception as error:
        raise ImageRejected(f"has EXIF orientation data that cannot be applied ({error})") from error
    if orientation in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    try:
        rgb = to_rgb(img)
    except ImageRejected:
        raise
    except Exception as error:
        raise ImageRejected(f"could not be converted to RGB ({error})") from error
    return DecodedImage(path, digest, kind, mode, (width, height), rgb, notes)


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    """Scale 16-bit greyscale (0..65535) to 8 bits; Pillow's own convert would clip at 255."""
    values = np.asarray(img).astype(np.float64)
    if img.mode == "F" and values.size and values.max() <= 1.0:
        values = values * 255.0
    elif img.mode != "F":
        values = values / 257.0
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB the way a person would expect to see it.

    Transparent areas become white (not black, as a plain ``convert`` gives); palette,
    greyscale and CMYK convert normally; 16-bit greyscale is scaled rather than clipped.
    """
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return _sixteen_bit_to_rgb(img)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*PAD_COLOR, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as error:
        raise ImageRejected(f"uses the {img.mode} colour mode, which cannot be converted to RGB") from error


def fit_square(img: Image.Image, resolution: int, crop: str = "center") -> Image.Image:
    """Resize an RGB image to ``resolution`` x ``resolution`` (``center`` or ``pad``).

    ``center``: scale the shorter side to ``resolution`` and cut the middle out of the longer
    one (fills the frame; may cut off the subject's edges in very wide or tall photos).
    ``pad``: scale the longer side to ``resolution`` and pad the rest with white (keeps the
    whole photo; the model also learns the white bars).
    """
    if crop not in ("center", "pad"):
        raise ValueError(f"fit_square crops center or pad, not {crop!r}")
    width, height = img.size
    if crop == "center":
        scale = resolution / min(width, height)
        new_size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
        resized = img.resize(new_size, Image.Resampling.LANCZOS)
        left = (new_size[0] - resolution) // 2
        top = (new_size[1] - resolution) // 2
        return resized.crop((left, top, left + resolution, top + resolution))
    scale = resolution / max(width, height)
    new_size = (max(1, min(resolution, round(width * scale))), max(1, min(resolution, round(height * scale))))
    resized = img.resize(new_size, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (resolution, resolution), PAD_COLOR)
    canvas.paste(resized, ((resolution - new_size[0]) // 2, (resolution - new_size[1]) // 2))
    return canvas


def fit_photo(img: Image.Image, resolution: int, crop: str = "center") -> Image.Image:
    """The training image of a photo: a square (:func:`fit_square`) or, for ``bucket``, its own aspect-ratio
    bucket of about ``resolution``² pixels (:mod:`studio.buckets`)."""
    if crop == "bucket":
        from studio.buckets import bucket_image

        return bucket_image(img, resolution)
    return fit_square(img, resolution, crop)


def scaled_side(size: tuple[int, int], crop: str) -> int:
    """The side that gets scaled to the training resolution: the shorter for center, the longer for pad;
    for bucket, the side of a square of the photo's area (a bucket holds about resolution² pixels)."""
    if crop == "bucket":
        return int((size[0] * size[1]) ** 0.5)
    return min(size) if crop == "center" else max(size)


def dhash(img: Image.Image, hash_size: int = 8) -> int:
    """A difference hash: one bit per horizontally adjacent pair in a tiny greyscale copy.

    Survives resizing, recompression and brightness changes (they keep which neighbour is
    brighter) but not a new pose or background, which is what "near duplicate" should mean.
    """
    small = img.convert("L").resize((hash_size + 1, hash_size), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.int16)
    bits = (pixels[:, 1:] > pixels[:, :-1]).flatten()
    return int("".join("1" if bit else "0" for bit in bits), 2)


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return (a ^ b).bit_count()


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[FileMessage]]:
    """Turn files and folders into the list of files to check, in a stable order.

    A folder contributes its JPEG/PNG/WebP files, sorted by name; hidden files are ignored.
    Caption files (``NAME.txt`` beside ``NAME.jpg``, ``metadata.jsonl``) and masks (``NAME.mask.png``)
    belong to the photos and are left to :mod:`studio.captions` and :mod:`studio.masks`; other files and
    subfolders are reported as warnings, so the user sees what was not used. A file named explicitly
    is always checked by content, whatever its extension.
    """
    files: list[Path] = []
    messages: list[FileMessage] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key in seen:
            messages.append(FileMessage("warning", "is listed more than once; it is used once", path))
            return
        seen.add(key)
        files.append(path)

    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            entries = sorted(path.iterdir(), key=lambda p: p.name)
            stems = {e.stem for e in entries if e.suffix.lower() in IMAGE_EXTENSIONS}
            for entry in entries:
                if entry.name.startswith(".") or entry.name == "metadata.jsonl":
                    continue
                if entry.suffix.lower() in IMAGE_EXTENSIONS and entry.stem.endswith(".mask"):
                    continue  # a photo's mask (studio.masks)
                if entry.suffix.lower() == ".txt" and entry.stem in stems:
                    continue  # a photo's caption (studio.captions)
                if entry.is_dir():
                    messages.append(FileMessage("warning", "is a subfolder; subfolders are not searched", entry))
                elif entry.suffix.lower() in IMAGE_EXTENSIONS:
                    add(entry)
                else:
                    messages.append(FileMessage("warning", "was skipped: not a .jpg, .jpeg, .png or .webp file", entry))
        elif path.exists():
            add(path)
        else:
            messages.append(FileMessage("error", "does not exist", path))
    return files, messages


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file, read from its header (for files Studio wrote, e.g. a subject's images)."""
    with Image.open(path) as img:
        return img.size
