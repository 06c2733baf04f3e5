"""The diffusion training objective: noise, targets, min-SNR-γ weights and the prior-preservation sum.

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


def draw_timesteps(count: int, scheduler, generator: torch.Generator, device) -> torch.Tensor:
    return to_device(torch.randint(0, scheduler.config.num_train_timesteps, (count,), generator=generator), device)


def prediction_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"Unsupported prediction_type '{kind}' in the scheduler config (epsilon or v_prediction).")


def signal_to_noise(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas / (1.0 - alphas)


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ (Hang et al. 2023): weight = min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR+1) for v."""
    snr = signal_to_noise(scheduler, timesteps)
    clipped = torch.clamp(snr, max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    return clipped / snr.clamp(min=1e-8)


def diffusion_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    *,
    weights: torch.Tensor | None,
    instance_count: int,
    prior_loss_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(total, instance loss, prior loss). The first ``instance_count`` rows are instance examples,
    the rest class (prior) examples."""
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if weights is not None:
        per_sample = per_sample * weights
    instance = per_sample[:instance_count].mean()
    if instance_count == per_sample.shape[0]:
        return instance, instance, None
    prior = per_sample[instance_count:].mean()
    return instance + prior_loss_weight * prior, instance, prior
