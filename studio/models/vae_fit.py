"""A short deterministic fit that turns a randomly initialised tiny VAE into a usable autoencoder.

Used only by the built-in tiny model builders, once, when they are first materialised.
"""

from __future__ import annotations

import math

import torch


def synthetic_images(count: int, resolution: int, generator: torch.Generator) -> torch.Tensor:
    """Random smooth scenes: a colour gradient background with a few coloured ellipses, in [-1, 1]."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, resolution), torch.linspace(-1, 1, resolution), indexing="ij")
    images = []
    for _ in range(count):
        top, bottom = torch.rand(3, 1, 1, generator=generator), torch.rand(3, 1, 1, generator=generator)
        image = top + (bottom - top) * (ys + 1) / 2
        for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
            cx, cy = (torch.rand(2, generator=generator) * 1.6 - 0.8).tolist()
            rx, ry = (torch.rand(2, generator=generator) * 0.5 + 0.15).tolist()
            angle = float(torch.rand(1, generator=generator)) * math.pi
            u = (xs - cx) * math.cos(angle) + (ys - cy) * math.sin(angle)
            v = -(xs - cx) * math.sin(angle) + (ys - cy) * math.cos(angle)
            mask = ((u / rx) ** 2 + (v / ry) ** 2 <= 1).float()
            colour = torch.rand(3, 1, 1, generator=generator)
            image = image * (1 - mask) + colour * mask
        images.append(image)
    return torch.stack(images) * 2 - 1


def fit_autoencoder(vae, *, resolution: int, seed: int, steps: int = 100, batch_size: int = 4, lr: float = 3e-3):
    """Fit ``vae`` to reconstruct synthetic scenes; returns it frozen, in eval mode.

    The log-variance head starts near zero variance so the fit is a plain autoencoder fit and the
    posterior stays sharp (sampling from it then adds almost no noise).
    """
    with torch.no_grad():
        channels = vae.quant_conv.out_channels // 2
        vae.quant_conv.weight[channels:].zero_()
        vae.quant_conv.bias[channels:].fill_(-10.0)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    vae.train()
    for _ in range(steps):
        images = synthetic_images(batch_size, resolution, generator)
        reconstruction = vae.decode(vae.encode(images).latent_dist.mean).sample
        loss = torch.nn.functional.mse_loss(reconstruction, images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    vae.eval()
    vae.requires_grad_(False)
    return vae
