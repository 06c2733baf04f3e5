"""The per-model-family seam: everything that differs between SD1.x/2.x and SDXL (and later
families) lives behind this small interface, never as ``if sdxl:`` branches in the loop."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class PromptEmbedding:
    """Text conditioning for a batch: per-token states and (for SDXL) the pooled embedding."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None

    def to(self, device=None, dtype=None) -> PromptEmbedding:
        return PromptEmbedding(
            self.hidden.to(device=device, dtype=dtype),
            None if self.pooled is None else self.pooled.to(device=device, dtype=dtype),
        )

    def select(self, index: torch.Tensor | list[int]) -> PromptEmbedding:
        index = torch.as_tensor(index, device=self.hidden.device)
        return PromptEmbedding(
            self.hidden.index_select(0, index), None if self.pooled is None else self.pooled.index_select(0, index)
        )

    @staticmethod
    def cat(parts: list[PromptEmbedding]) -> PromptEmbedding:
        pooled = [p.pooled for p in parts]
        return PromptEmbedding(
            torch.cat([p.hidden for p in parts]), None if pooled[0] is None else torch.cat(pooled)  # type: ignore[arg-type]
        )

    def state(self) -> dict[str, torch.Tensor]:
        return {"hidden": self.hidden} | ({} if self.pooled is None else {"pooled": self.pooled})

    @staticmethod
    def from_state(state: dict[str, torch.Tensor]) -> PromptEmbedding:
        return PromptEmbedding(state["hidden"], state.get("pooled"))


class ModelFamily(ABC):
    """What a trainer, exporter or generator must know about one family of diffusion models."""

    name: str
    default_resolution: int
    text_encoder_names: tuple[str, ...]
    tokenizer_names: tuple[str, ...]
    kohya_base_model_version: str
    modelspec_architecture: str

    def text_encoders(self, components: dict[str, Any]) -> list[Any]:
        return [components[name] for name in self.text_encoder_names]

    def tokenizers(self, components: dict[str, Any]) -> list[Any]:
        return [components[name] for name in self.tokenizer_names]

    def tokenize(self, components: dict[str, Any], prompts: list[str]) -> list[torch.Tensor]:
        """Token ids per text encoder, padded to each tokenizer's max length."""
        return [
            tokenizer(
                prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids
            for tokenizer in self.tokenizers(components)
        ]

    @abstractmethod
    def encode(self, components: dict[str, Any], token_ids: list[torch.Tensor]) -> PromptEmbedding:
        """Run the text encoder(s); gradients flow when they train."""

    @abstractmethod
    def unet_kwargs(self, embedding: PromptEmbedding, resolution: int) -> dict[str, Any]:
        """Keyword arguments for ``unet(latents, t, **kwargs)`` beyond the first two."""

    def encode_prompts(self, components: dict[str, Any], prompts: list[str], device=None) -> PromptEmbedding:
        ids = [t.to(device) if device is not None else t for t in self.tokenize(components, prompts)]
        return self.encode(components, ids)

    @abstractmethod
    def pipeline_classes(self) -> tuple[type, type]:
        """(txt2img, img2img) diffusers pipeline classes."""
