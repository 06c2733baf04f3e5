"""Evaluation of a folder that holds several subjects: each is scored on its own prompts against its own photos.

The first subject is the report's main one (``scores``); ``report["subjects"]`` lists every subject with
its identifier, class noun and scores (CLIP-I, DINO, CLIP-T, DIV), so a dog and its backpack are judged
separately rather than averaged into one number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from studio.evaluation.embed_cache import reference_embeddings
from studio.evaluation.generation import ImageRequest
from studio.evaluation.prompts import build_prompts, resolve_templates
from studio.evaluation.scoring import score_embeddings


def subject_references(subject: Any, index: int) -> list[Path]:
    """The photos of subject ``index`` of a subject folder."""
    return [subject.image_paths[i] for i in subject.concepts[index].images]


def score_other_subjects(
    subject: Any,
    prompts: str | Sequence[str],
    max_prompts: int | None,
    seeds: Sequence[int],
    embedder: Any,
    generate: Callable[[list[ImageRequest]], Any],
) -> list[dict[str, Any]]:
    """Scores of subjects 2.. of ``subject``: ``generate(requests)`` renders and embeds the fine-tuned model's
    images (the caller's pipeline); each subject's prompts carry its own identifier and class noun."""
    results = []
    for index, concept in enumerate(subject.concepts[1:], start=1):
        templates = resolve_templates(prompts, concept.class_noun)[: max_prompts or None]
        eval_prompts = build_prompts(templates, concept.identifier, concept.class_noun)
        requests = [
            ImageRequest(p.prompt, seed, "personalised", f"images/subject-{index}/{i:02d}-s{seed}.png", i)
            for i, p in enumerate(eval_prompts)
            for seed in seeds
        ]
        generated = generate(requests)
        groups = [r.group for r in requests]
        texts = embedder.embed_texts([p.text for p in eval_prompts])[groups]
        references = reference_embeddings(embedder, subject_references(subject, index))
        results.append(subject_entry(concept, score_embeddings(generated, references, texts=texts, groups=groups),
                                     [r.path for r in requests]))
    return results


def subject_entry(concept: Any, scores: dict[str, Any], images: list[str]) -> dict[str, Any]:
    return {"identifier": concept.identifier, "class_noun": concept.class_noun, "scores": scores, "images": images}
