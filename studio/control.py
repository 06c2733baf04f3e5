"""Control images for ControlNet: canny edges computed here, or a map given as an image (depth, pose...).

Canny follows OpenCV's ``cv2.Canny(image, low, high)`` (what ControlNet's canny models were trained on):
3x3 Sobel gradients of the grey image, L1 magnitude, non-maximum suppression along the gradient
direction, then hysteresis (weak edges are kept where they connect to strong ones). White edges on
black, as RGB. Only numpy: no OpenCV.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from studio.sampling import CANNY_HIGH, CANNY_LOW, CONTROL_STRENGTH

PREPROCESSORS = ("canny", "none")  # none: the image already is the control map (depth, pose, edges...)


@dataclass(frozen=True)
class ControlSpec:
    """What conditions a generation: a ControlNet, its image and how strongly it steers."""

    model: str  # a ControlNet: built-in name, diffusers folder, .safetensors file or hub id
    image: Any  # a path or PIL image
    preprocess: str = "canny"
    strength: float = CONTROL_STRENGTH  # ControlNet conditioning scale (0: no effect)
    canny_low: float = CANNY_LOW
    canny_high: float = CANNY_HIGH


def _shift(array: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``array`` moved by (dy, dx) with edge padding: ``out[y, x] = array[y - dy, x - dx]``."""
    padded = np.pad(array, 1, mode="edge")
    height, width = array.shape
    return padded[1 - dy:1 - dy + height, 1 - dx:1 - dx + width]


def _sobel(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    def at(dy: int, dx: int) -> np.ndarray:  # the neighbour at offset (dy, dx)
        return _shift(grey, -dy, -dx)

    gx = (at(-1, 1) + 2 * at(0, 1) + at(1, 1)) - (at(-1, -1) + 2 * at(0, -1) + at(1, -1))
    gy = (at(1, -1) + 2 * at(1, 0) + at(1, 1)) - (at(-1, -1) + 2 * at(-1, 0) + at(-1, 1))
    return gx, gy


def _suppress_non_maxima(magnitude: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """``magnitude`` where it is a local maximum across the edge (4 quantised directions), else 0."""
    angle = (np.degrees(np.arctan2(gy, gx)) + 180.0) % 180.0
    sector = ((angle + 22.5) // 45).astype(int) % 4  # 0: horizontal gradient, 1: 45°, 2: vertical, 3: 135°
    neighbours = {0: (0, 1), 1: (1, 1), 2: (1, 0), 3: (1, -1)}
    keep = np.zeros_like(magnitude, dtype=bool)
    for index, (dy, dx) in neighbours.items():
        ahead, behind = _shift(magnitude, -dy, -dx), _shift(magnitude, dy, dx)
        keep |= (sector == index) & (magnitude > ahead) & (magnitude >= behind)
    return np.where(keep, magnitude, 0.0)


def _hysteresis(strong: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """Strong pixels plus every weak pixel 8-connected to one through weak pixels."""
    edges = strong.copy()
    while True:
        grown = edges.copy()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                grown |= _shift(edges, dy, dx)
        grown &= weak
        if np.array_equal(grown, edges):
            return edges
        edges = grown


def canny_edges(image: Image.Image, low: float = CANNY_LOW, high: float = CANNY_HIGH) -> Image.Image:
    """White canny edges on black (RGB), ``low``/``high`` as OpenCV's hysteresis thresholds."""
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    gx, gy = _sobel(grey)
    thin = _suppress_non_maxima(np.abs(gx) + np.abs(gy), gx, gy)
    low, high = min(low, high), max(low, high)
    edges = _hysteresis(thin >= high, thin >= low) if thin.size else thin.astype(bool)
    return Image.fromarray((edges * 255).astype(np.uint8), mode="L").convert("RGB")


def control_image(spec: ControlSpec, width: int, height: int) -> Image.Image:
    """The image the ControlNet sees: ``spec.image`` at ``width`` x ``height``, as edges or as given."""
    from studio.errors import StudioError
    from studio.generation_images import load_image

    if spec.preprocess not in PREPROCESSORS:
        raise StudioError(f"Control type '{spec.preprocess}' is unknown; choose one of {', '.join(PREPROCESSORS)}.")
    image = load_image(spec.image, "--control", width, height)
    return canny_edges(image, spec.canny_low, spec.canny_high) if spec.preprocess == "canny" else image
