"""Samples and validation images from cached prompt embeddings: T5 never comes back during training.

A Flux or SD3.5 run with its text encoders frozen reads its training prompts' embeddings from the disk
cache (``trainers/t5_cache.py``) and releases the encoders. Training-time samples and the quick subject
score's images need other prompts (the sample prompts, the validation prompts, the class prompt and the
empty prompt of classifier-free guidance): they are embedded once, before training, through the same
cache, and the pipelines get ``prompt_embeds`` / ``pooled_prompt_embeds`` (and the empty prompt's as the
negative) instead of text. So the encoders stay released: on a GPU T5-XXL's 9.5 GB never returns to it.

Used where the base carries a T5 encoder (Flux, SD3.5 with T5) and the prompt cache is on; other bases
bring their (small) CLIP encoders back for samples as before.
"""

from __future__ import annotations

from typing import Any

import torch

from studio.families.base import PromptEmbedding
from trainers import t5_cache

NEGATIVE = ""  # what the pipelines encode for guidance when no negative prompt is given


def carries_t5(family, components: dict) -> bool:
    return any(type(components.get(name)).__name__.startswith("T5") for name in family.text_encoder_names)


class SampleEmbeddings:
    """The embedding of each prompt that samples or validation images may render (held on the CPU)."""

    def __init__(self, prompts: list[str], embedding: PromptEmbedding) -> None:
        self.rows = {prompt: index for index, prompt in enumerate(prompts)}
        self.embedding = embedding

    def __contains__(self, prompt: str) -> bool:
        return prompt in self.rows

    def pipeline_kwargs(self, prompts: list[str], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        """The pipeline arguments that stand for ``prompts`` (in place of ``prompt=``)."""
        chosen = self.embedding.select([self.rows[p] for p in prompts]).to(device, dtype)
        negative = self.embedding.select([self.rows[NEGATIVE]] * len(prompts)).to(device, dtype)
        kwargs = {"prompt_embeds": chosen.hidden, "negative_prompt_embeds": negative.hidden}
        if chosen.pooled is not None:
            kwargs |= {"pooled_prompt_embeds": chosen.pooled, "negative_pooled_prompt_embeds": negative.pooled}
        return kwargs


def prepare_sample_embeddings(trainer, prompts: list[str]) -> SampleEmbeddings | None:
    """Embed ``prompts`` (and the empty prompt) through the disk cache while the encoders are still at hand;
    None where samples keep encoding text (no T5, the prompt cache off, or the text encoders training)."""
    if trainer.cached_embeddings is None or not carries_t5(trainer.family, trainer.components):
        return None
    unique = list(dict.fromkeys([*prompts, NEGATIVE]))
    embedding = t5_cache.cached_prompt_embeddings(trainer.base, trainer.family, trainer.components, unique,
                                                  torch.device("cpu"))
    return SampleEmbeddings(unique, embedding)
