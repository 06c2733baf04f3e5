"""The loss the loop minimises: noise, and the per-sample weighted sum with prior preservation.

Timesteps, inputs and targets are the family's objective (:mod:`studio.families.objective`).

Weights are computed per sample *before* the batch is split into instance and class halves, so
min-SNR-γ and prior preservation combine correctly (each sample keeps its own timestep's weight).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainers.data import to_device


def draw_noise(latents: torch.Tensor, generator: torch.Generator, noise_offset: float) -> torch.Tensor:
    noise = torch.randn(latents.shape, generator=generator)
    if noise_offset:
        noise = noise + noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator)
    return to_device(noise, latents.device).to(latents.dtype)


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ weights of a DDPM ``scheduler`` (the maths lives in the family's objective)."""
    from studio.families.objective import DDPMObjective

    return DDPMObjective(scheduler.config).weights(timesteps, gamma)


def diffusion_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    *,
    weights: torch.Tensor | None,
    instance_count: int,
    prior_loss_weight: float,
    pixel_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(total, instance loss, prior loss). The first ``instance_count`` rows are instance examples,
    the rest class (prior) examples. ``pixel_weights`` [B, 1, h, w] (masked loss): each sample's error is
    the weighted mean over its pixels, so a weight map of ones changes nothing."""
    error = F.mse_loss(prediction.float(), target.float(), reduction="none")
    if pixel_weights is None:
        per_sample = error.mean(dim=(1, 2, 3))
    else:
        pixel_weights = pixel_weights.to(error.device, error.dtype)
        per_sample = (error * pixel_weights).mean(dim=(1, 2, 3)) / pixel_weights.mean(dim=(1, 2, 3)).clamp_min(1e-8)
    if weights is not None:
        per_sample = per_sample * weights
    instance = per_sample[:instance_count].mean()
    if instance_count == per_sample.shape[0]:
        return instance, instance, None
    prior = per_sample[instance_count:].mean()
    return instance + prior_loss_weight * prior, instance, prior
