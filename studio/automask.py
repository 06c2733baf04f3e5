"""Automatic subject masks from a text-prompted segmentation model (CLIPSeg through transformers).

The class noun is the prompt ("dog"); the model's per-pixel probability becomes the mask (white =
subject), upscaled to the photo's size. Loads like :mod:`studio.captioner`: a local folder, a cached
hub id (``CIDAS/clipseg-rd64-refined``) or the built-in ``tiny-clipseg`` for tests.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from studio.captioner import load_processor_and_model


def load_masker(ref: str) -> Callable[[list[Image.Image], str], list[Image.Image]]:
    """A function from (images, prompt) to greyscale masks the size of each image."""
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    processor, model = load_processor_and_model(ref, CLIPSegProcessor, CLIPSegForImageSegmentation, "segmentation model")

    @torch.no_grad()
    def mask(images: list[Image.Image], prompt: str) -> list[Image.Image]:
        masks = []
        for image in images:
            inputs = processor(text=[prompt], images=[image.convert("RGB")], return_tensors="pt", padding=True)
            logits = model(**inputs).logits
            logits = logits.reshape(1, 1, *logits.shape[-2:])
            probability = torch.sigmoid(torch.nn.functional.interpolate(logits, size=image.size[::-1], mode="bilinear"))
            masks.append(Image.fromarray((probability[0, 0].numpy() * 255).round().astype(np.uint8), mode="L"))
        return masks

    return mask
