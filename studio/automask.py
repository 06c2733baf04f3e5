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

from studio.captioner import model_folder
from studio.errors import ModelLoadError


def load_masker(ref: str) -> Callable[[list[Image.Image], str], list[Image.Image]]:
    """A function from (images, prompt) to greyscale masks the size of each image."""
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    source, local = model_folder(ref)
    try:
        processor = CLIPSegProcessor.from_pretrained(source, local_files_only=local)
        model = CLIPSegForImageSegmentation.from_pretrained(source, local_files_only=local).eval()
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"Cannot load the segmentation model {ref}: {error}. Give a local folder, or a hub id that "
                             "is cached (or reachable online).") from None

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
