"""A T5 tokenizer for the built-in flow-matching models, built offline.

No package on the index that Studio may use ships T5's SentencePiece model (``spiece.model``):
sentencepiece's wheel carries only its normalisation tables, transformers and tokenizers ship no
vocabularies. So the built-ins' T5 tokenizer is the real transformers ``T5Tokenizer`` class (a
SentencePiece-style Unigram model in ``tokenizer.json``, T5's special tokens ``<pad>`` 0, ``</s>`` 1,
``<unk>`` 2 and 100 ``<extra_id_N>``, 32,100 entries as T5's) whose pieces come from the real CLIP
vocabulary shipped with Studio: CLIP's word-final pieces ``dog</w>`` become SentencePiece's
word-initial ``▁dog``, ranked as CLIP merged them. English prompts split into real word pieces, so
identifiers, class nouns and multi-token prompts behave as they do with T5; the ids differ from T5's.
"""

from __future__ import annotations

import math
from pathlib import Path

from studio.models.tokenizer import BOS_TOKEN, EOS_TOKEN, clip_vocab_and_merges

T5_PIECES = 32_000  # before the 100 sentinel tokens, as T5's
T5_MAX_LENGTH = 512  # FluxPipeline's max_sequence_length for Flux.1-dev
SPECIALS = ("<pad>", "</s>", "<unk>")


def t5_pieces() -> list[tuple[str, float]]:
    """(piece, log-probability-like score) in id order: specials, then CLIP's pieces as SentencePiece ones."""
    vocab, _ = clip_vocab_and_merges()
    pieces: list[tuple[str, float]] = [(s, 0.0) for s in SPECIALS]
    seen = set(SPECIALS)
    for token in sorted(vocab, key=vocab.__getitem__):
        if token in (BOS_TOKEN, EOS_TOKEN):
            continue
        piece = "▁" + token.removesuffix("</w>") if token.endswith("</w>") else token
        if piece in seen or piece == "▁":
            continue
        seen.add(piece)
        pieces.append((piece, -math.log(len(pieces) + 1)))
        if len(pieces) == T5_PIECES:
            break
    return pieces


def write_t5_tokenizer(directory: Path, *, max_length: int = T5_MAX_LENGTH) -> None:
    """Write a ``T5Tokenizer`` folder (tokenizer.json; no sentencepiece needed to load it)."""
    from transformers import T5Tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = T5Tokenizer(vocab=t5_pieces(), extra_ids=100, model_max_length=max_length)
    tokenizer.save_pretrained(str(directory))
