"""Training objectives a family chooses: DDPM (ε or v prediction) and rectified flow matching.

An objective answers three questions for the loop, the validation losses and the fixed-noise loss
alike (one copy of the maths): which timesteps a batch trains at, how clean latents and noise make the
denoiser's input and target at those timesteps, and how each sample's loss is weighted.

Timesteps are in the convention of the family's scheduler: DDPM's integer steps 0..999, and for flow
matching ``σ × 1000`` (σ ∈ (0, 1), the noise fraction), which is what diffusers' flow-matching
pipelines hand their transformers; the family's ``predict`` rescales them if its denoiser wants
another unit.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch


def _on(tensor: torch.Tensor, device) -> torch.Tensor:
    device = torch.device(device)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class Objective(ABC):
    kind: str

    @abstractmethod
    def sample_timesteps(self, count: int, generator: torch.Generator, device, *, image_tokens: int) -> torch.Tensor:
        """Random training timesteps for ``count`` samples (``image_tokens``: latent positions per image)."""

    @abstractmethod
    def timesteps_at(self, fraction: float, count: int, device) -> torch.Tensor:
        """The timesteps ``fraction`` of the way from clean (0) to pure noise (1): fixed-noise losses."""

    @abstractmethod
    def noised(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(denoiser input, training target)."""

    def weights(self, timesteps: torch.Tensor, min_snr_gamma: float) -> torch.Tensor | None:
        """Per-sample loss weights, or None for equal weights."""
        return None


class DDPMObjective(Objective):
    """Denoising diffusion (SD1.x/2.x, SDXL): the scheduler's ε or v target, uniform timesteps,
    optional Min-SNR-γ weights."""

    kind = "ddpm"

    def __init__(self, scheduler_config: Any):
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler.from_config(scheduler_config)
        self.prediction_type = self.scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"Unsupported prediction_type '{self.prediction_type}' in the scheduler config (epsilon or v_prediction).")

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def sample_timesteps(self, count: int, generator: torch.Generator, device, *, image_tokens: int = 0) -> torch.Tensor:
        return _on(torch.randint(0, self.num_train_timesteps, (count,), generator=generator), device)

    def timesteps_at(self, fraction: float, count: int, device) -> torch.Tensor:
        return torch.full((count,), int(self.num_train_timesteps * fraction), dtype=torch.long, device=device)

    def noised(self, latents, noise, timesteps):
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        target = noise if self.prediction_type == "epsilon" else self.scheduler.get_velocity(latents, noise, timesteps)
        return noisy, target

    def signal_to_noise(self, timesteps: torch.Tensor) -> torch.Tensor:
        alphas = self.scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
        return alphas / (1.0 - alphas)

    def weights(self, timesteps: torch.Tensor, min_snr_gamma: float) -> torch.Tensor | None:
        """Min-SNR-γ (Hang et al. 2023): min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR+1) for v."""
        if not min_snr_gamma:
            return None
        snr = self.signal_to_noise(timesteps)
        clipped = torch.clamp(snr, max=min_snr_gamma)
        if self.prediction_type == "v_prediction":
            return clipped / (snr + 1.0)
        return clipped / snr.clamp(min=1e-8)


@dataclass(frozen=True)
class FlowSampling:
    """How flow-matching training draws σ.

    ``density``: "logit_normal" (σ = sigmoid(N(mean, std)), SD3's paper and the diffusers SD3 script's
    default) or "uniform". ``shift``: the scheduler's static shift σ' = sσ / (1 + (s-1)σ), SD3's 3.0.
    ``resolution_shift``: Flux's shift that grows with the image's token count (the pipeline's
    ``calculate_shift``: μ linear in tokens from ``base_shift`` at ``base_tokens`` to ``max_shift``
    at ``max_tokens``, σ' = e^μ / (e^μ + 1/σ - 1)), so training sees the σ the sampler uses at that size.
    """

    density: str = "logit_normal"
    mean: float = 0.0
    std: float = 1.0
    shift: float = 1.0
    resolution_shift: bool = False
    base_tokens: int = 256
    max_tokens: int = 4096
    base_shift: float = 0.5
    max_shift: float = 1.15


class FlowMatchingObjective(Objective):
    """Rectified flow (SD3/3.5, Flux.1): x_σ = (1-σ)·x + σ·ε, target ε - x (the velocity), equal weights."""

    kind = "flow_matching"
    num_train_timesteps = 1000

    def __init__(self, sampling: FlowSampling):
        self.sampling = sampling

    def shifted(self, sigma: torch.Tensor, image_tokens: int) -> torch.Tensor:
        s = self.sampling
        if s.resolution_shift:
            slope = (s.max_shift - s.base_shift) / (s.max_tokens - s.base_tokens)
            mu = s.base_shift + slope * (image_tokens - s.base_tokens)
            return math.exp(mu) / (math.exp(mu) + (1.0 / sigma.clamp(min=1e-6) - 1.0))
        if s.shift != 1.0:
            return s.shift * sigma / (1.0 + (s.shift - 1.0) * sigma)
        return sigma

    def sample_timesteps(self, count: int, generator: torch.Generator, device, *, image_tokens: int) -> torch.Tensor:
        s = self.sampling
        if s.density == "logit_normal":
            sigma = torch.sigmoid(s.mean + s.std * torch.randn((count,), generator=generator))
        elif s.density == "uniform":
            sigma = torch.rand((count,), generator=generator)
        else:
            raise ValueError(f"Unknown flow-matching timestep density '{s.density}' (logit_normal or uniform).")
        sigma = self.shifted(sigma, image_tokens).clamp(1e-4, 1.0)
        return _on(sigma * self.num_train_timesteps, device)

    def timesteps_at(self, fraction: float, count: int, device) -> torch.Tensor:
        return torch.full((count,), float(fraction) * self.num_train_timesteps, device=device)

    def noised(self, latents, noise, timesteps):
        sigma = (timesteps.float() / self.num_train_timesteps).view(-1, *([1] * (latents.ndim - 1)))
        noisy = ((1.0 - sigma) * latents.float() + sigma * noise.float()).to(latents.dtype)
        return noisy, noise - latents
