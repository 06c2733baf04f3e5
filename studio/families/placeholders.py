"""What each text encoder reads for a textual-inversion placeholder with several vectors.

A run with ``num_vectors = N`` adds ``<tok>``, ``<tok>_1`` … ``<tok>_{N-1}`` to each CLIP tokenizer, one learned
row each; a user types ``<tok>`` once and the CLIP encoders must read all N tokens (diffusers'
``maybe_convert_prompt`` expands it so, where the pipeline has it). T5 has no learned row: it reads the prompt
as text, so it gets the placeholder as typed, once — in training exactly as at inference, where diffusers
passes the unexpanded prompt to T5 (``prompt_2`` for Flux, ``prompt_3`` for SD3). docs/model-families.md
says why this and not the class word.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_VECTOR = re.compile(r"^(?P<base>.+)_(?P<index>\d+)$")


def multi_vector_placeholders(tokenizers: Iterable) -> dict[str, list[str]]:
    """Each placeholder with more than one vector (``<tok>`` -> ``[<tok>, <tok>_1, …]``) the tokenizers hold."""
    added: set[str] = set()
    for tokenizer in tokenizers:
        added |= set(getattr(tokenizer, "added_tokens_encoder", {}) or {})
    placeholders: dict[str, list[str]] = {}
    for token in added:
        match = _VECTOR.match(token)
        if match and match["base"] in added and f"{match['base']}_1" in added:
            placeholders.setdefault(match["base"], [match["base"]])
    for base, tokens in placeholders.items():
        index = 1
        while f"{base}_{index}" in added:
            tokens.append(f"{base}_{index}")
            index += 1
    return placeholders


def _pattern(token: str) -> str:
    return rf"(?<![^\s,(]){re.escape(token)}(?!_\d)"


def expand_placeholders(prompt: str, placeholders: dict[str, list[str]]) -> str:
    """``<tok>`` -> ``<tok> <tok>_1 …`` (what a CLIP encoder reads); an already expanded prompt stays as it is."""
    for base, tokens in placeholders.items():
        prompt = collapse_placeholders(prompt, {base: tokens})
        prompt = re.sub(_pattern(base), lambda _, whole=" ".join(tokens): whole, prompt)
    return prompt


def collapse_placeholders(prompt: str, placeholders: dict[str, list[str]]) -> str:
    """``<tok> <tok>_1 …`` -> ``<tok>`` (what T5 reads: the placeholder as typed, once)."""
    for tokens in placeholders.values():
        for token in tokens[1:]:
            prompt = re.sub(rf"\s*{re.escape(token)}(?![\w])", "", prompt)
    return prompt


__all__ = ["collapse_placeholders", "expand_placeholders", "multi_vector_placeholders"]
