"""From embeddings to the DreamBooth scores, overall and per prompt."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from studio.evaluation.embedding import Embeddings
from studio.evaluation.metrics import diversity, mean_or_none, mean_pairwise_cosine, paired_cosine

METRICS = ("clip_i", "clip_t", "dino", "pres", "div")
HIGHER_IS_BETTER = {"clip_i": True, "clip_t": True, "dino": True, "pres": False, "div": True}


def score_embeddings(
    generated: Embeddings,
    references: Embeddings,
    *,
    texts: torch.Tensor | None = None,
    groups: Sequence[object] | None = None,
    class_dino: torch.Tensor | None = None,
) -> dict[str, float | None]:
    """All five scores for one generated set (a score that cannot be computed is None).

    ``texts``: CLIP text embedding per generated image (row-aligned) for CLIP-T; ``groups``: the
    prompt of each image, whose same-prompt pairs DIV compares (None: one group of all images);
    ``class_dino``: DINO embeddings of class-prompt images from the fine-tuned model, for PRES.
    """
    if not len(generated) or not len(references):
        raise ValueError("need at least one generated and one reference embedding")
    return {
        "clip_i": mean_pairwise_cosine(generated.clip, references.clip),
        "clip_t": None if texts is None else mean_or_none(paired_cosine(generated.clip, texts)),
        "dino": mean_pairwise_cosine(generated.dino, references.dino),
        "pres": None if class_dino is None or not len(class_dino) else mean_pairwise_cosine(class_dino, references.dino),
        "div": diversity(generated.dino, list(groups) if groups is not None else [0] * len(generated)),
    }


def per_group_scores(
    generated: Embeddings,
    references: Embeddings,
    groups: Sequence[object],
    texts: torch.Tensor | None = None,
) -> dict[object, dict[str, float | None]]:
    """CLIP-I, CLIP-T, DINO and DIV for each group (prompt) separately, in first-seen order."""
    result: dict[object, dict[str, float | None]] = {}
    for label in dict.fromkeys(groups):
        index = [i for i, g in enumerate(groups) if g == label]
        scores = score_embeddings(
            generated.select(index),
            references,
            texts=None if texts is None else texts[index],
            groups=[label] * len(index),
        )
        scores.pop("pres")
        result[label] = scores
    return result
