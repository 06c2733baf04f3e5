"""Textual inversion: new placeholder token(s) whose embedding rows are the only thing that changes.

Each text encoder's token embedding is wrapped (:class:`EmbeddingWithNewRows`): the vocabulary's
matrix stays a frozen parameter and the new rows are a separate, small trainable tensor. The rest of
the vocabulary cannot change, and neither a gradient nor optimizer state exists for it (for SDXL's
two encoders that is 101 M values: 1.2 GB of gradient and Adam moments, plus the 0.4 GB copy a
restore-after-each-step scheme keeps). The frozen parts of the encoders may then be held in reduced
precision like any frozen weight.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from studio.errors import ConfigError
from trainers.method import Method

EMBEDDINGS_FILE = "learned_embeds.safetensors"


class EmbeddingWithNewRows(torch.nn.Module):
    """A token embedding extended by trainable rows for new tokens (ids from ``vocabulary`` on)."""

    def __init__(self, vocabulary: torch.nn.Embedding, new_rows: torch.Tensor):
        super().__init__()
        self.vocabulary = vocabulary.requires_grad_(False)
        self.vocabulary_size = vocabulary.num_embeddings
        self.new_rows = torch.nn.Parameter(new_rows.detach().clone().float())
        self.num_embeddings = self.vocabulary_size + new_rows.shape[0]
        self.embedding_dim = vocabulary.embedding_dim

    @property
    def weight(self) -> torch.Tensor:
        """The whole matrix, vocabulary then new rows (what a resized embedding would hold); a copy."""
        matrix = self.vocabulary.weight
        return torch.cat([matrix, self.new_rows.to(matrix.dtype)])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        known = self.vocabulary(input_ids.clamp(max=self.vocabulary_size - 1))
        new = torch.nn.functional.embedding((input_ids - self.vocabulary_size).clamp(min=0), self.new_rows)
        return torch.where((input_ids >= self.vocabulary_size).unsqueeze(-1), new.to(known.dtype), known)


class TextualInversionMethod(Method):
    name = "textual_inversion"
    artifact = "adapter"
    reduced_frozen_params_ok = True  # only the new rows train; the encoders' other weights are frozen

    @property
    def placeholder_tokens(self) -> list[str]:
        first = f"<{self.subject.identifier}>"
        return [first] + [f"{first}_{i}" for i in range(1, self.config.num_vectors)]

    @property
    def token(self) -> str:
        return self.placeholder_tokens[0]

    def _with_tokens(self, prompt: str, tokens: str) -> str:
        pattern = rf"(?<!\S){re.escape(self.subject.identifier)}(?!\S)"
        replaced, count = re.subn(pattern, lambda _: tokens, prompt)
        return replaced if count else f"{tokens} {prompt}"

    def instance_prompt(self) -> str:
        return self._with_tokens(self.subject.instance_prompt, " ".join(self.placeholder_tokens))

    def pipeline_prompt(self, prompt_with_identifier: str) -> str:
        return self._with_tokens(prompt_with_identifier, self.token)

    def training_prompt(self, prompt_with_identifier: str) -> str:
        return self._with_tokens(prompt_with_identifier, " ".join(self.placeholder_tokens))

    def setup(self) -> None:
        if len(self.subject.concepts) > 1:
            raise ConfigError(
                f"Textual inversion learns one subject's token; this subject holds {len(self.subject.concepts)} "
                f"({', '.join(c.identifier for c in self.subject.concepts)}). Train them with lora or dreambooth, "
                "or one textual-inversion run per subject."
            )
        for module in self.components.values():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False)
        initializer = self.config.initializer_token or self.subject.class_noun
        self.token_ids: dict[str, list[int]] = {}
        for encoder_name in self.encoder_names:
            tokenizer_name = self.family.tokenizer_of(encoder_name)
            tokenizer, encoder = self.components[tokenizer_name], self.components[encoder_name]
            init_ids = tokenizer(initializer, add_special_tokens=False).input_ids
            if not init_ids:
                raise ConfigError(f"initializer_token '{initializer}' tokenizes to nothing; choose a word such as the class noun.")
            vocabulary = encoder.get_input_embeddings()
            added = tokenizer.add_tokens(self.placeholder_tokens)
            if added != len(self.placeholder_tokens):
                raise ConfigError(
                    f"The tokenizer already knows one of {self.placeholder_tokens}; choose another identifier."
                )
            ids = tokenizer.convert_tokens_to_ids(self.placeholder_tokens)
            if ids != list(range(vocabulary.num_embeddings, vocabulary.num_embeddings + len(ids))):
                raise ConfigError(f"The tokenizer of {encoder_name} is larger than its embedding matrix; is the base model complete?")
            with torch.no_grad():
                start = vocabulary.weight[init_ids].float().mean(dim=0)
            encoder.set_input_embeddings(EmbeddingWithNewRows(vocabulary, start.expand(len(ids), -1)))
            self.token_ids[encoder_name] = ids

    @property
    def encoder_names(self) -> tuple[str, ...]:
        """The text encoders that get the new tokens: the family's CLIP encoders (not T5)."""
        return self.family.embedding_text_encoder_names

    def text_encoder_trains(self) -> bool:
        return True

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return {name: self.components[name] for name in self.encoder_names}

    def learned_embeddings(self) -> dict[str, torch.Tensor]:
        """Per text encoder, the [num_vectors, dim] learned rows."""
        return {name: self.components[name].get_input_embeddings().new_rows.detach().float().cpu() for name in self.token_ids}

    def save_result(self, directory: Path) -> dict[str, Any]:
        from studio.atomic import save_safetensors

        learned = self.learned_embeddings()
        if len(learned) == 1:  # diffusers' format: {placeholder: [n, dim]}
            save_safetensors({self.token: next(iter(learned.values()))}, directory / EMBEDDINGS_FILE)
        else:  # one file per encoder for families with several encoders
            for name, rows in learned.items():
                save_safetensors({self.token: rows}, directory / f"learned_embeds_{name}.safetensors")
        return {"placeholder_tokens": self.placeholder_tokens, "num_vectors": self.config.num_vectors,
                "files": sorted(p.name for p in directory.iterdir())}
