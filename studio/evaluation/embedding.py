"""Embedding images with both backbones at once, in batches, each image decoded and embedded once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from studio.evaluation.backbones import Backbone
from studio.evaluation.preprocessing import load_image

DEFAULT_BATCH_SIZE = 16


@dataclass
class Embeddings:
    """Raw image embeddings of one image set, row i = image i, per backbone kind."""

    clip: torch.Tensor
    dino: torch.Tensor

    def __len__(self) -> int:
        return len(self.dino)

    @staticmethod
    def empty() -> Embeddings:
        return Embeddings(torch.zeros(0, 0), torch.zeros(0, 0))

    @staticmethod
    def cat(parts: Sequence[Embeddings]) -> Embeddings:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Embeddings.empty()
        return Embeddings(torch.cat([p.clip for p in parts]), torch.cat([p.dino for p in parts]))

    def select(self, index: Sequence[int]) -> Embeddings:
        return Embeddings(self.clip[list(index)], self.dino[list(index)])


@dataclass
class Embedder:
    """The CLIP and DINO backbones used together, so a decoded image feeds both before it is dropped."""

    clip: Backbone
    dino: Backbone
    batch_size: int = DEFAULT_BATCH_SIZE

    def embed_images(self, images: Sequence[Image.Image]) -> Embeddings:
        """Embed in-memory RGB images (e.g. straight from a pipeline), in batches."""
        parts = []
        for start in range(0, len(images), self.batch_size):
            chunk = list(images[start : start + self.batch_size])
            parts.append(Embeddings(self.clip.embed_images(chunk), self.dino.embed_images(chunk)))
        return Embeddings.cat(parts)

    def embed_files(self, paths: Sequence[Path], description: str = "embedding") -> Embeddings:
        """Read and embed image files in batches with a progress bar (hidden when not a terminal)."""
        parts = []
        with tqdm(total=len(paths), desc=description, unit="img", disable=None) as bar:
            for start in range(0, len(paths), self.batch_size):
                chunk = [load_image(p) for p in paths[start : start + self.batch_size]]
                parts.append(self.embed_images(chunk))
                bar.update(len(chunk))
        return Embeddings.cat(parts)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """CLIP text embeddings, each distinct text encoded once."""
        unique = list(dict.fromkeys(texts))
        rows = []
        for start in range(0, len(unique), self.batch_size):
            rows.append(self.clip.embed_texts(unique[start : start + self.batch_size]))
        table = torch.cat(rows) if rows else torch.zeros(0, 0)
        position = {text: i for i, text in enumerate(unique)}
        return table[[position[t] for t in texts]] if texts else table

    def describe(self) -> dict:
        return {"clip": self.clip.describe(), "dino": self.dino.describe()}
