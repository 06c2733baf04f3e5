"""A fixed-noise evaluation loss: the denoising error on given images at fixed timesteps and noise.

Training noise and timesteps are random, so the training loss is noisy; this number is not, which
makes it the honest "did it learn?" measure for tests and reports.
"""

from __future__ import annotations

import torch

DEFAULT_TIMESTEPS = (50, 200, 400, 600, 800)


@torch.no_grad()
def fixed_noise_loss(pipeline, images: torch.Tensor, prompt: str, *, seed: int = 0, timesteps=DEFAULT_TIMESTEPS) -> float:
    """Mean MSE between the UNet's prediction and its target for ``images`` (in [-1, 1])."""
    from diffusers import DDPMScheduler

    from studio.families import family_for

    family = family_for(pipeline)
    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    vae, unet = pipeline.vae, pipeline.unet
    prompt = pipeline.maybe_convert_prompt(prompt, pipeline.tokenizer) if hasattr(pipeline, "maybe_convert_prompt") else prompt
    latents = vae.encode(images.to(vae.dtype)).latent_dist.mean * vae.config.scaling_factor
    embedding = family.encode_prompts(pipeline.components, [prompt] * len(images))
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for step in timesteps:
        t = torch.full((len(images),), step, dtype=torch.long)
        noise = torch.randn(latents.shape, generator=generator)
        noisy = scheduler.add_noise(latents, noise, t)
        target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
        height = images.shape[-1]
        prediction = unet(noisy, t, **family.unet_kwargs(embedding, height)).sample
        losses.append(torch.nn.functional.mse_loss(prediction.float(), target.float()).item())
    return sum(losses) / len(losses)
