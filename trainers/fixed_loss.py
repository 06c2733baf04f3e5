"""A fixed-noise evaluation loss: the denoising error on given images at fixed timesteps and noise.

Training noise and timesteps are random, so the training loss is noisy; this number is not, which
makes it the honest "did it learn?" measure for tests and reports. Inputs, targets and the denoiser's
call are the family's (the same objective the trainer uses).
"""

from __future__ import annotations

import torch

DEFAULT_FRACTIONS = (0.05, 0.2, 0.4, 0.6, 0.8)  # of the way from clean to pure noise


@torch.no_grad()
def fixed_noise_loss(pipeline, images: torch.Tensor, prompt: str, *, seed: int = 0, fractions=DEFAULT_FRACTIONS) -> float:
    """Mean MSE between the denoiser's prediction and its target for ``images`` (in [-1, 1])."""
    from studio.families import family_for

    family = family_for(pipeline)
    objective = family.objective(pipeline.scheduler.config)
    vae = pipeline.vae
    denoiser = getattr(pipeline, family.denoiser_name)
    prompt = pipeline.maybe_convert_prompt(prompt, pipeline.tokenizer) if hasattr(pipeline, "maybe_convert_prompt") else prompt
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    latents = (vae.encode(images.to(vae.dtype)).latent_dist.mean - shift) * vae.config.scaling_factor
    embedding = family.encode_prompts(pipeline.components, [prompt] * len(images))
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for fraction in fractions:
        t = objective.timesteps_at(fraction, len(images), latents.device)
        noise = torch.randn(latents.shape, generator=generator)
        noisy, target = objective.noised(latents, noise, t)
        prediction = family.predict(denoiser, noisy, t, embedding, images.shape[-1])
        losses.append(torch.nn.functional.mse_loss(prediction.float(), target.float()).item())
    return sum(losses) / len(losses)
