"""Inpainting masks: reading one (a file, or the layer painted in the browser) and keeping what lies outside it.

White (or painted, i.e. non-transparent) pixels are repainted, black (or transparent) ones kept. The mask
is resized to the generated image with nearest-neighbour sampling and made strictly binary, so "outside
the mask" is a well-defined set of pixels.

On a plain base, diffusers' inpainting pipelines blend: after every step the latents outside the mask are
replaced by the start image's latents (noised to that step), so the decoded image differs from the start
image there only by the VAE's reconstruction error. An inpainting base (9-channel UNet) sees the mask and
the masked image instead and regenerates everything. Either way :func:`keep_outside` then puts the start
image's own pixels back outside the mask (what webuis call the overlay), so they are unchanged exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from studio.errors import StudioError
from studio.generation_images import open_image


def load_mask(mask: Any, width: int, height: int) -> Image.Image:
    """A binary ``L`` mask (255: repaint) at ``width`` x ``height``; refused when nothing is to be repainted."""
    image = open_image(mask, "--mask")
    alpha = image.getchannel("A") if "A" in image.getbands() else None
    if alpha is not None and alpha.getextrema()[0] < 255:
        marked = np.asarray(alpha) > 0  # a painted layer: whatever was painted
    else:
        marked = np.asarray(image.convert("L")) > 127  # a mask image: white repaints
    binary = Image.fromarray((marked * 255).astype(np.uint8), mode="L")
    if binary.size != (width, height):
        binary = binary.resize((width, height), Image.Resampling.NEAREST)
    if not binary.getextrema()[1]:
        raise StudioError("The mask is empty: paint (or make white) the area to repaint.",
                          browser="The mask is empty: paint over the part of the start image to repaint.")
    return binary


def keep_outside(generated: Image.Image, start: Image.Image, mask: Image.Image) -> Image.Image:
    """``generated`` inside the mask, ``start``'s own pixels outside it."""
    return Image.composite(generated.convert("RGB"), start.convert("RGB"), mask)


def outside_difference(image: Image.Image, start: Image.Image, mask: Image.Image) -> float:
    """Mean absolute difference (0-255) between two images over the pixels outside ``mask``."""
    outside = np.asarray(mask) == 0
    diff = np.abs(np.asarray(image, dtype=np.float32) - np.asarray(start, dtype=np.float32)).mean(axis=-1)
    return float(diff[outside].mean()) if outside.any() else 0.0
