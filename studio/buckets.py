"""Aspect-ratio buckets: photos keep their shape, at about the training resolution's area.

A bucket is a (width, height) in pixels whose sides are multiples of :func:`bucket_step` and whose
area is at most ``resolution²`` (the way kohya's sd-scripts builds them). A photo goes into the
bucket whose aspect ratio is closest to its own (compared on a log scale, so 2:1 and 1:2 are as far
from square), is scaled to cover the bucket and loses only the thin remainder from its middle.

Every batch holds examples of one bucket, so the denoiser sees one shape per step.
"""

from __future__ import annotations

import math

from PIL import Image

# The widest bucket: kohya's default max aspect is 2; 3 lets panoramas and tall portraits keep more.
MAX_ASPECT = 3.0


def bucket_step(resolution: int) -> int:
    """Bucket sides are multiples of this: 64 px (8 latent pixels, what every SD/SDXL/Flux/SD3 denoiser
    accepts) from 256 px up; 32 px below (the built-in tiny models train at 64-128 px)."""
    return 64 if resolution >= 256 else 32


def buckets(resolution: int, max_aspect: float = MAX_ASPECT) -> list[tuple[int, int]]:
    """Every bucket for ``resolution``: (width, height), square first, then by aspect ratio.

    For each width (a multiple of the step), the tallest height that keeps the area within
    ``resolution²``; both orientations; aspect ratios beyond ``max_aspect`` are left out.
    """
    step = bucket_step(resolution)
    area = resolution * resolution
    found = {(resolution, resolution)}
    width = step
    while width <= area // step:
        height = (area // width) // step * step
        if height >= step and max(width, height) / min(width, height) <= max_aspect:
            found.add((width, height))
            found.add((height, width))
        width += step
    # keep the largest bucket per aspect ratio only
    best: dict[float, tuple[int, int]] = {}
    for size in found:
        key = round(size[0] / size[1], 6)
        if key not in best or size[0] * size[1] > best[key][0] * best[key][1]:
            best[key] = size
    return sorted(best.values(), key=lambda s: (abs(math.log(s[0] / s[1])), -s[0]))


def assign_bucket(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """The bucket for a photo of ``size`` (width, height): the closest aspect ratio (log scale)."""
    aspect = math.log(size[0] / size[1])
    return min(buckets(resolution), key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), -b[0] * b[1]))


def fit_bucket(img: Image.Image, bucket: tuple[int, int], resample: Image.Resampling = Image.Resampling.LANCZOS) -> Image.Image:
    """Scale ``img`` to cover ``bucket`` (width, height) and cut the remainder from the middle."""
    width, height = img.size
    scale = max(bucket[0] / width, bucket[1] / height)
    new_size = (max(bucket[0], round(width * scale)), max(bucket[1], round(height * scale)))
    resized = img.resize(new_size, resample)
    left = (new_size[0] - bucket[0]) // 2
    top = (new_size[1] - bucket[1]) // 2
    return resized.crop((left, top, left + bucket[0], top + bucket[1]))


def bucket_image(img: Image.Image, resolution: int, resample: Image.Resampling = Image.Resampling.LANCZOS) -> Image.Image:
    """``img`` in its own bucket for ``resolution``."""
    return fit_bucket(img, assign_bucket(img.size, resolution), resample)
