"""What each training step holds: which images (one aspect-ratio bucket per batch), their prompts (captions,
with dropout) and their masks; and which class images pair with them for prior preservation.

Everything is a function of the step number, the seed and the process rank, so resuming at any step
continues the exact same data, captions and dropout. A subject whose images all share one shape uses
the very same order as before buckets existed (``trainers.data.sample_indices``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from studio.buckets import assign_bucket, bucket_image, buckets, fit_bucket
from studio.captions import dropped
from studio.images import fit_square
from studio.settings import TrainConfig
from studio.subjects import Subject
from trainers.data import sample_indices


def training_size(size: tuple[int, int], resolution: int, use_buckets: bool) -> tuple[int, int]:
    """(width, height) an image of ``size`` trains at: its bucket for ``resolution``, or the square."""
    if not use_buckets or size == (resolution, resolution):
        return (resolution, resolution)
    return size if size in buckets(resolution) else assign_bucket(size, resolution)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def load_pair(image_path: Path, mask_path: Path | None, resolution: int, use_buckets: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An image [3, H, W] in [-1, 1] at its training size, and its mask [1, H, W] in [0, 1] (same geometry)."""
    with Image.open(image_path) as opened:
        image = opened.convert("RGB")
    mask = None
    if mask_path is not None:
        with Image.open(mask_path) as opened:
            mask = opened.convert("L")
    target = training_size(image.size, resolution, use_buckets)
    if image.size != target:
        if target[0] == target[1]:
            image = fit_square(image, resolution, "center")
            mask = None if mask is None else fit_bucket(mask, target, Image.Resampling.BILINEAR)
        else:
            image = bucket_image(image, resolution) if image.size not in buckets(resolution) else image
            mask = None if mask is None else fit_bucket(mask, image.size, Image.Resampling.BILINEAR)
    mask_tensor = None if mask is None else torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None]
    return _to_tensor(image), mask_tensor


def loss_weights(masks: list[torch.Tensor | None], latent_hw: tuple[int, int], background: float,
                 flips: torch.Tensor) -> torch.Tensor | None:
    """Per-pixel loss weights [B, 1, h, w] at latent size: ``background + (1 - background) * mask`` (flipped with
    their images); None when no row has a mask."""
    if all(m is None for m in masks):
        return None
    rows = []
    for mask, flip in zip(masks, flips.tolist(), strict=True):
        if mask is None:
            rows.append(torch.ones(1, *latent_hw))
            continue
        small = F.interpolate(mask[None], size=latent_hw, mode="area")[0]
        small = small.flip(-1) if flip else small
        rows.append(background + (1.0 - background) * small)
    return torch.stack(rows)


@dataclass
class Step:
    """One micro-batch: image indices (instance rows first, then class rows) and a prompt index per row."""

    indices: list[int]
    prompt_rows: list[int]
    instance_rows: int


class BatchPlan:
    """The instance items (images repeated by their subject's ``repeats``), their buckets, prompts and class
    pools; :meth:`step` says what micro-step ``position`` of process ``rank`` trains on."""

    def __init__(self, config: TrainConfig, subject: Subject, sizes: list[tuple[int, int]], *, prior: bool,
                 instance_prompt=lambda text: text):
        """``sizes``: each subject image's training size; ``prior``: class images join the batches;
        ``instance_prompt``: the method's view of a prompt with the identifier (textual inversion swaps in its
        placeholder tokens). Prompt 0 is the first subject's instance prompt and, with ``prior``, prompt 1 its
        class prompt (what validation's fixed-noise loss conditions on)."""
        self.config, self.subject, self.sizes = config, subject, sizes
        self.items = [i for c in subject.concepts for i in c.images for _ in range(c.repeats)]
        self.prompts: list[str] = []
        self.class_pools: dict[tuple[int, tuple[int, int]], list[int]] = {}  # (concept, size) -> class image indices
        first = self._prompt_index(instance_prompt(subject.concepts[0].instance_prompt))
        self.class_prompts = [
            ((config.class_prompt if k == 0 and config.class_prompt else c.class_prompt) or "").strip()
            for k, c in enumerate(subject.concepts)
        ] if prior else []
        self.class_prompt_index = {k: self._prompt_index(text) for k, text in enumerate(self.class_prompts)}
        self.instance_prompt = [first] + [self._prompt_index(instance_prompt(c.instance_prompt)) for c in subject.concepts[1:]]
        self.image_prompt = [self._prompt_index(self._caption(i, instance_prompt)) for i in range(len(sizes))]
        self.empty = self._prompt_index("") if config.caption_dropout and config.caption_dropout_to == "empty" else None
        self.concept_of = {i: k for k, c in enumerate(subject.concepts) for i in c.images}
        self.groups: dict[tuple[int, int], list[int]] = {}
        for position, item in enumerate(self.items):
            self.groups.setdefault(sizes[item], []).append(position)

    def _caption(self, index: int, instance_prompt) -> str:
        caption = self.subject.captions[index] if self.config.captions else None
        return instance_prompt(caption or self.subject.concept_of(index).instance_prompt)

    def _prompt_index(self, prompt: str) -> int:
        if prompt not in self.prompts:
            self.prompts.append(prompt)
        return self.prompts.index(prompt)

    def class_requests(self) -> list[tuple[int, str, tuple[int, int], int]]:
        """(concept, prompt, size, count) of the class images prior preservation needs: each subject's class
        images in each bucket its photos use, ``num_class_images`` shared out by photo count."""
        requests = []
        for k, concept in enumerate(self.subject.concepts):
            sizes = [self.sizes[i] for i in concept.images]
            for size in sorted(set(sizes), key=sizes.index):
                share = sizes.count(size) / len(sizes)
                requests.append((k, self.class_prompts[k], size, max(1, round(self.config.num_class_images * share))))
        return requests

    def add_class_pool(self, concept: int, size: tuple[int, int], first: int, count: int) -> None:
        """Class images ``first .. first + count - 1`` (indices in the training images) are ``concept``'s at ``size``."""
        self.class_pools[(concept, size)] = list(range(first, first + count))

    # --- the order -----------------------------------------------------------------------------
    def _instance_items(self, position: int, rank: int, world: int) -> list[int]:
        batch, seed = self.config.batch_size, self.config.seed
        if len(self.groups) == 1:
            return [self.items[p] for p in sample_indices(position, batch, len(self.items), seed, 0, rank, world)]
        groups = tuple(tuple(g) for g in self.groups.values())
        epoch, offset = divmod(position * world + rank, len(_bucket_batches(groups, batch, seed, 0)))
        return [self.items[p] for p in _bucket_batches(groups, batch, seed, epoch)[offset]]

    def step(self, position: int, rank: int = 0, world: int = 1) -> Step:
        config = self.config
        images = self._instance_items(position, rank, world)
        drop = dropped(config.seed, position, rank, len(images), config.caption_dropout)
        prompts = [
            (self.empty if self.empty is not None else self.instance_prompt[self.concept_of[i]]) if gone else self.image_prompt[i]
            for i, gone in zip(images, drop, strict=True)
        ]
        classes: list[int] = []
        if self.class_pools:
            pool_ids = {key: n for n, key in enumerate(self.class_pools)}
            draws: dict[tuple[int, tuple[int, int]], list[int]] = {}
            used: dict[tuple[int, tuple[int, int]], int] = {}
            for i in images:
                key = (self.concept_of[i], self.sizes[i])
                pool = self.class_pools[key]
                if key not in draws:
                    draws[key] = sample_indices(position, config.batch_size, len(pool), config.seed, 1 + pool_ids[key], rank, world)
                classes.append(pool[draws[key][used.get(key, 0)]])
                used[key] = used.get(key, 0) + 1
                prompts.append(self.class_prompt_index[key[0]])
        return Step(images + classes, prompts, len(images))


@lru_cache(maxsize=8)
def _bucket_batches(groups: tuple[tuple[int, ...], ...], batch: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch of batches, each from one bucket: every bucket's items shuffled and cut into batches (the last
    one filled up from the bucket's start), then the batches shuffled."""
    rng = np.random.default_rng([seed, epoch, 0xB0])
    batches: list[list[int]] = []
    for group in groups:
        order = [group[i] for i in rng.permutation(len(group))]
        for start in range(0, len(order), batch):
            chunk = order[start : start + batch]
            while len(chunk) < batch:
                chunk.append(order[(start + len(chunk)) % len(order)])
            batches.append(chunk)
    return [batches[i] for i in rng.permutation(len(batches))]
