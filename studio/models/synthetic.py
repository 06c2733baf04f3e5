"""Procedurally drawn scenes: stand-in images for benchmarks and checks that need many pictures."""

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
