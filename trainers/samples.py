"""Validation samples: fixed prompts at a fixed seed, so a person sees training move."""

from __future__ import annotations

from pathlib import Path

import torch

from studio.atomic import atomic_dir
from studio.run_layout import SAMPLES_DIR  # noqa: F401 - re-exported (the trainer)


@torch.no_grad()
def generate_seeded(pipeline, prompts: list[str], seeds: list[int], *, steps: int, guidance: float,
                    resolution: int | tuple[int, int], prompt_kwargs: dict | None = None) -> list:
    """One image per (prompt, seed), square or (width, height), with classifier-free guidance; no progress bar.
    ``prompt_kwargs``: the prompts' embeddings as pipeline arguments (trainers/sample_embeddings.py), used
    instead of encoding ``prompts``."""
    from studio.families import prompt_arguments

    pipeline.set_progress_bar_config(disable=True)
    width, height = resolution if isinstance(resolution, tuple) else (resolution, resolution)
    return pipeline(
        **(prompt_arguments(pipeline, prompts) if prompt_kwargs is None else prompt_kwargs),
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=[torch.Generator().manual_seed(seed) for seed in seeds],
    ).images


def render_samples(
    pipeline, prompts: list[str], *, seed: int, steps: int, guidance: float, resolution: int, directory: Path,
    prompt_kwargs: dict | None = None,
) -> list[Path]:
    """Render one image per prompt into ``directory`` (atomically); returns the image paths."""
    images = generate_seeded(pipeline, prompts, [seed] * len(prompts), steps=steps, guidance=guidance, resolution=resolution,
                             prompt_kwargs=prompt_kwargs)
    with atomic_dir(directory, replace=True) as tmp:
        for index, image in enumerate(images):
            image.save(tmp / f"{index:02d}.png")
    return [directory / f"{index:02d}.png" for index in range(len(images))]


def default_sample_prompts(subject) -> list[str]:
    """The instance prompt and the subject in a new context (shows identity and editability)."""
    return [subject.instance_prompt, f"a {subject.identifier} {subject.class_noun} on the beach"]
