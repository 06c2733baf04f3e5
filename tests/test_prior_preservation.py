"""Language drift in miniature: prior preservation keeps the class prompt close to the base model.

Distance: mean squared pixel difference between what the fine-tuned model and the untrained base
generate for the plain class prompt ("a toy") at the same seeds. Everything is seeded, so the
comparison is deterministic.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config

import trainers
from studio.runs import load_run, personalised_pipeline
from trainers.objectives import diffusion_loss, min_snr_weights

SEEDS = [0, 1, 2, 3]


def class_prompt_images(pipeline, prompt: str) -> np.ndarray:
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(
        prompt=[prompt] * len(SEEDS), num_inference_steps=10, guidance_scale=5.0, height=64, width=64,
        generator=[torch.Generator().manual_seed(s) for s in SEEDS], output_type="np",
    ).images
    return np.asarray(images, dtype=np.float64)


@pytest.mark.slow
def test_prior_preservation_reduces_class_drift(sample_subject, tmp_path):
    from studio.models import load_base

    settings = {"steps": 120, "batch_size": 1, "learning_rate": 1e-3, "num_class_images": 8, "class_image_steps": 10,
                "min_snr_gamma": 5.0, "noise_offset": 0.02}
    distances = {}
    reference = class_prompt_images(load_base("tiny-sd").pipeline, "a toy")
    for prior in (False, True):
        run_dir = tmp_path / f"prior-{prior}"
        trainers.train(tiny_config("dreambooth", prior_preservation=prior, **settings), sample_subject, run_dir)
        tuned = class_prompt_images(personalised_pipeline(load_run(run_dir)), "a toy")
        distances[prior] = float(((tuned - reference) ** 2).mean())
    assert distances[True] < distances[False] * 0.8, distances


def test_min_snr_weights_apply_per_sample_with_prior_split():
    """The combination the reference script breaks: weights follow each sample into its half."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    timesteps = torch.tensor([10, 900, 500, 20])
    weights = min_snr_weights(scheduler, timesteps, 5.0)
    prediction = torch.zeros(4, 4, 2, 2)
    target = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 4, 2, 2) + 1
    total, instance, prior = diffusion_loss(prediction, target, weights=weights, instance_count=2, prior_loss_weight=0.5)
    per_sample = (target**2).mean(dim=(1, 2, 3)) * weights
    assert torch.isclose(instance, per_sample[:2].mean())
    assert torch.isclose(prior, per_sample[2:].mean())
    assert torch.isclose(total, per_sample[:2].mean() + 0.5 * per_sample[2:].mean())
    assert weights[0] < 1 and torch.isclose(weights[1], torch.tensor(1.0))
