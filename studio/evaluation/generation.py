"""Generating evaluation images at fixed seeds, in batches, with classifier-free guidance."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from studio.evaluation.defaults import GENERATION_BATCH_SIZE
from studio.images import to_rgb
from studio.sampling import GUIDANCE, STEPS


@dataclass(frozen=True)
class GenerationSettings:
    """Sampler settings shared by every image of an evaluation (personalised, base and class)."""

    steps: int = STEPS
    guidance: float = GUIDANCE
    negative_prompt: str | None = None
    height: int = 512
    width: int = 512
    batch_size: int = GENERATION_BATCH_SIZE


@dataclass(frozen=True)
class ImageRequest:
    """One image to generate. ``path`` is relative to the eval folder; ``group`` is the prompt index."""

    prompt: str
    seed: int
    role: str  # "personalised" | "base" | "class"
    path: str
    group: int


def generate_batches(
    pipe: Any, requests: Sequence[ImageRequest], settings: GenerationSettings, description: str = "generating"
) -> Iterator[tuple[list[ImageRequest], list[Image.Image]]]:
    """Yield (requests, RGB images) batch by batch, so a caller can save and embed as it goes.

    Each image has its own CPU ``torch.Generator`` seeded with its request's seed: an image depends
    only on its prompt and seed, not on the batch it happened to share or on the device.
    """
    from studio.families import prompt_arguments

    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    step = max(1, settings.batch_size)
    with tqdm(total=len(requests), desc=description, unit="img", disable=None) as bar:
        for start in range(0, len(requests), step):
            chunk = list(requests[start : start + step])
            kwargs: dict[str, Any] = {
                **prompt_arguments(pipe, [r.prompt for r in chunk]),
                "guidance_scale": settings.guidance,
                "num_inference_steps": settings.steps,
                "generator": [torch.Generator("cpu").manual_seed(r.seed) for r in chunk],
                "height": settings.height,
                "width": settings.width,
                "output_type": "pil",
            }
            if settings.negative_prompt:
                kwargs["negative_prompt"] = [settings.negative_prompt] * len(chunk)
            with torch.inference_mode():
                images = pipe(**kwargs).images
            bar.update(len(chunk))
            yield chunk, [to_rgb(image) for image in images]
