"""Backbone input transforms, written out with PIL and torch so the numbers never depend on
which image-processor backend (torchvision or PIL) transformers happens to pick.

Both follow torchvision's semantics, which the reference implementations use:
``Resize(shorter_side, BICUBIC)`` (the longer side scaled and truncated to an int),
``CenterCrop(crop)`` (offsets rounded), ``ToTensor()`` (/255) and ``Normalize(mean, std)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from studio.evaluation.errors import EvaluationError
from studio.images import ImageRejected, decode_image

# Bump when any transform's output changes: it is part of every embedding-cache key.
PREPROCESSING_VERSION = "1"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# DINO's evaluation transform resizes to 256 and crops 224; other input sizes keep that ratio.
DINO_RESIZE_RATIO = 256 / 224


@dataclass(frozen=True)
class Transform:
    """Resize the shorter side to ``resize`` (bicubic), center-crop ``crop``, normalise."""

    name: str
    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.resize < self.crop:
            raise ValueError(f"resize ({self.resize}) must be at least crop ({self.crop})")

    def describe(self) -> dict:
        """JSON-ready settings, for reports and cache keys."""
        return {**asdict(self), "interpolation": "bicubic", "version": PREPROCESSING_VERSION}

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """One RGB PIL image -> a normalised float tensor of shape (3, crop, crop)."""
        cropped = center_crop(resize_shorter(image, self.resize), self.crop)
        return normalize(to_tensor(cropped), self.mean, self.std)

    def batch(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([self(image) for image in images])


def clip_transform(image_size: int = 224) -> Transform:
    """CLIP's own transform: shorter side to ``image_size``, center crop, CLIP mean/std."""
    return Transform("clip", image_size, image_size, CLIP_MEAN, CLIP_STD)


def dino_transform(image_size: int = 224) -> Transform:
    """DINO's official evaluation transform: 256 bicubic, center crop 224, ImageNet mean/std."""
    return Transform("dino", round(image_size * DINO_RESIZE_RATIO), image_size, IMAGENET_MEAN, IMAGENET_STD)


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
    """Scale so the shorter side is ``size``; the longer side is truncated like torchvision's."""
    width, height = image.size
    if width <= height:
        new = (size, int(size * height / width))
    else:
        new = (int(size * width / height), size)
    if new == (width, height):
        return image
    return image.resize(new, Image.Resampling.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Cut the central ``size`` x ``size`` square (offsets rounded like torchvision's)."""
    width, height = image.size
    if width < size or height < size:
        raise ValueError(f"image {width}x{height} is smaller than the {size} px crop")
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit RGB -> float (3, H, W) in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def normalize(tensor: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    mean_t = torch.tensor(mean, dtype=tensor.dtype).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=tensor.dtype).view(-1, 1, 1)
    return (tensor - mean_t) / std_t


def load_image(path: str | Path) -> Image.Image:
    """Read an image for scoring: EXIF orientation applied, transparency composited onto white.

    Reuses :func:`studio.images.decode_image` (full decode, so truncated files are refused);
    any problem becomes an :class:`EvaluationError` naming the file.
    """
    try:
        return decode_image(path).image
    except ImageRejected as reason:
        raise EvaluationError(f"{path} {reason}; remove or replace it, then score again.") from reason
