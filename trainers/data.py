"""Training data: images as tensors, deterministic batch order, and the latent cache."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from studio.images import fit_square


def load_image_tensors(paths: list[Path], resolution: int) -> torch.Tensor:
    """Images as a float tensor [N, 3, H, W] in [-1, 1] at ``resolution`` (center-cropped if needed)."""
    tensors = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (resolution, resolution):
                image = fit_square(image, resolution, "center")
            array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
        tensors.append(torch.from_numpy(array).permute(2, 0, 1))
    return torch.stack(tensors)


def sample_indices(step: int, batch: int, count: int, seed: int, stream: int, rank: int = 0, world: int = 1) -> list[int]:
    """Which items step ``step`` uses: epoch-wise permutations derived from the step number alone,
    so resuming at any step continues the exact same data order without saving a sampler."""
    global_batch = batch * world
    first = step * global_batch + rank * batch
    indices = []
    for position in range(first, first + batch):
        epoch, offset = divmod(position, count)
        indices.append(_epoch_order(seed, stream, epoch, count)[offset])
    return indices


@lru_cache(maxsize=8)
def _epoch_order(seed: int, stream: int, epoch: int, count: int) -> tuple[int, ...]:
    """One epoch's permutation, drawn once per epoch rather than once per item (it was a per-step cost)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + stream * 7_919 + epoch)
    return tuple(torch.randperm(count, generator=generator).tolist())


def to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """Move a freshly drawn CPU tensor to ``device`` without a host sync: a plain ``.to("cuda")``
    from pageable memory waits for the GPU to finish its queued work, every step."""
    device = torch.device(device)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class LatentSource:
    """VAE latents for the training images, encoded once (the fast path) or every step.

    The cache keeps each image's posterior mean and std (for both orientations when random flips
    are on), so a cached step still draws a fresh latent sample exactly as re-encoding would.
    Images may differ in shape (aspect-ratio buckets); one call's ``indices`` must share one shape.
    The flips of the last call are in ``last_flips`` (a mask flips with its image).
    """

    def __init__(self, vae, images: torch.Tensor | list[torch.Tensor], *, cache: bool, random_flip: bool, device, dtype):
        self.vae = vae
        self.images = images
        self.items = list(images)
        self.random_flip = random_flip
        self.device = device
        self.dtype = dtype
        self.scaling = float(vae.config.scaling_factor)
        self.shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self.cached: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        self.last_flips = torch.zeros(0, dtype=torch.bool)
        if cache:
            self.cached = self._encode_all()

    @torch.no_grad()
    def _encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.vae.encode(images.to(self.device, dtype=self.vae.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()

    def _encode_all(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        means, stds = [], []
        variants = [self.items, [image.flip(-1) for image in self.items]] if self.random_flip else [self.items]
        for variant in variants:
            for image in variant:  # one image at a time: at 512 px a 4-image VAE pass holds ~2 GB
                mean, std = self._encode(image[None])
                means.append(mean)
                stds.append(std)
        return means, stds

    def shape_of(self, index: int) -> tuple[int, int]:
        """(height, width) in pixels of image ``index``."""
        return tuple(self.items[index].shape[-2:])  # type: ignore[return-value]

    def latents(self, indices: list[int], generator: torch.Generator) -> torch.Tensor:
        count = len(self.items)
        flips = (
            torch.rand(len(indices), generator=generator) < 0.5 if self.random_flip else torch.zeros(len(indices), dtype=torch.bool)
        )
        self.last_flips = flips
        if self.cached is not None:
            rows = [i + count * int(f) for i, f in zip(indices, flips, strict=True)]
            mean, std = torch.cat([self.cached[0][r] for r in rows]), torch.cat([self.cached[1][r] for r in rows])
        else:
            batch = torch.stack([self.items[i] for i in indices])
            batch = torch.where(flips[:, None, None, None], batch.flip(-1), batch)
            mean, std = self._encode(batch)
        noise = to_device(torch.randn(mean.shape, generator=generator), mean.device)
        return ((mean + std * noise - self.shift) * self.scaling).to(self.dtype)

    @property
    def needs_vae(self) -> bool:
        return self.cached is None
