"""Is the subject's identifier a good one? One rare token, as DreamBooth recommends.

DreamBooth binds the subject to an identifier that the text encoder sees as a single token with
little prior meaning: a common word ("dog", "toy") must first be unlearned, and a made-up word
that splits into several tokens spreads the subject over pieces that each mean something.

Where the rare tokens are depends on the tokenizer. The DreamBooth paper looked at ids 5000-10000
of Imagen's T5 SentencePiece vocabulary. CLIP's BPE vocabulary (Stable Diffusion 1.x/2.x/XL) is
ordered by merge, most frequent first, so its ids 5000-10000 are everyday words ("toy", "egg",
"pen"); its rare whole-word tokens sit at the end. Studio therefore calls a token rare when its id
is in the last fifth of the vocabulary (ids 39,526-49,405 for CLIP; e.g. "sks" is 48,136 and
"ohwx" 47,993, while "dog" is 1,929).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

# Rare range starts at this fraction of the vocabulary size (see the module docstring).
RARE_FRACTION = 0.8
WORD_END = "</w>"
# Suggestions: short letter strings without vowels, so they read as no English word.
MAX_SUGGESTION_LENGTH = 3
_VOWELS = set("aeiouy")
# Rare by id, but loaded meanings nobody wants to bind a subject to.
_BLOCKED = {"fck", "sht", "wtf", "fml", "fkn", "stfu", "nsfw", "kkk", "bch", "dck", "cnt", "sx", "xxx", "nsf", "lsd"}


@dataclass
class IdentifierCheck:
    """How a tokenizer sees an identifier, and what to use instead if it is a poor choice."""

    identifier: str
    tokens: list[str]
    token_ids: list[int]
    is_single_token: bool
    is_rare: bool
    suggestions: list[str] = field(default_factory=list)
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.is_single_token and self.is_rare


def _special_ids(tokenizer: Any) -> set[int]:
    return {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}


def rare_id_range(tokenizer: Any) -> range:
    """Token ids Studio treats as rare: the last fifth of the vocabulary, special tokens excluded."""
    size = len(tokenizer)
    special = _special_ids(tokenizer)
    end = size
    while end - 1 in special:
        end -= 1
    return range(int(size * RARE_FRACTION), end)


def _tokenize(tokenizer: Any, text: str) -> tuple[list[str], list[int]]:
    tokens = list(tokenizer.tokenize(text))
    return tokens, [int(i) for i in tokenizer.convert_tokens_to_ids(tokens)]


def suggest_identifiers(tokenizer: Any, n: int = 5, seed: int = 0, *, exclude: tuple[str, ...] = ()) -> list[str]:
    """``n`` rare single-token identifiers, the same ones for the same tokenizer and ``seed``.

    Candidates are whole-word vocabulary entries in :func:`rare_id_range` made of 2-3 lowercase
    ASCII letters with no vowels (so no English word), each re-checked by tokenizing it alone.
    """
    rare = rare_id_range(tokenizer)
    candidates: list[tuple[int, str]] = []
    for token, token_id in tokenizer.get_vocab().items():
        if token_id not in rare or not token.endswith(WORD_END):
            continue
        stem = token[: -len(WORD_END)]
        if not (2 <= len(stem) <= MAX_SUGGESTION_LENGTH and stem.isascii() and stem.isalpha() and stem.islower()):
            continue
        if _VOWELS & set(stem) or stem in _BLOCKED or stem in exclude:
            continue
        candidates.append((token_id, stem))
    candidates.sort()
    random.Random(seed).shuffle(candidates)
    chosen: list[str] = []
    for _, stem in candidates:
        if len(chosen) >= n:
            break
        tokens, _ = _tokenize(tokenizer, stem)
        if tokens == [stem + WORD_END]:
            chosen.append(stem)
    return chosen


def check_identifier(tokenizer: Any, identifier: str, *, n_suggestions: int = 5) -> IdentifierCheck:
    """Tokenize ``identifier`` and judge it; suggestions are filled in only when it is a poor choice."""
    tokens, ids = _tokenize(tokenizer, identifier)
    single = len(tokens) == 1
    rare = single and ids[0] in rare_id_range(tokenizer)
    check = IdentifierCheck(identifier, tokens, ids, single, rare)
    if check.ok:
        check.message = f"'{identifier}' is one rare token (id {ids[0]}): a good identifier."
        return check
    check.suggestions = suggest_identifiers(tokenizer, n_suggestions, exclude=(identifier.lower(),))
    alternatives = ", ".join(check.suggestions) or "none found"
    if single:
        problem = (
            f"'{identifier}' is a single token but a common one (id {ids[0]} of {len(tokenizer)}): the model "
            "already has a meaning for it that training must overwrite."
        )
    elif not tokens:
        problem = f"'{identifier}' produces no tokens at all, so the prompt could not refer to the subject."
    else:
        pieces = " + ".join(t.replace(WORD_END, "") for t in tokens)
        problem = (
            f"'{identifier}' is split into {len(tokens)} tokens ({pieces}): the subject would be spread over "
            "pieces that each have their own meaning."
        )
    check.message = f"{problem} Rare single-token identifiers: {alternatives}."
    return check
