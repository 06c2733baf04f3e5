"""Scoring any set of images (``studio eval --images``), e.g. ones another tool generated."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from studio.atomic import write_json
from studio.evaluation.backbones import DEFAULT_CLIP, DEFAULT_DINO, Backbone, load_backbone
from studio.evaluation.embed_cache import reference_embeddings
from studio.evaluation.embedding import DEFAULT_BATCH_SIZE, Embedder
from studio.evaluation.errors import EvaluationError
from studio.evaluation.prompts import strip_identifier
from studio.evaluation.report import new_report
from studio.evaluation.scoring import per_group_scores, score_embeddings
from studio.images import expand_inputs

ImageInput = str | os.PathLike | Sequence[str | os.PathLike]


def collect_images(inputs: ImageInput, what: str) -> list[Path]:
    """Image files from files and/or folders (sorted by name); an empty or missing source is an error."""
    items = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    files, messages = expand_inputs(items)
    errors = [m for m in messages if m.level == "error"]
    if errors:
        raise EvaluationError(f"{what}: {errors[0]}.")
    if not files:
        where = ", ".join(str(i) for i in items) or "(nothing given)"
        raise EvaluationError(f"No {what} found in {where}: add .png, .jpg or .webp files.")
    return files


def read_prompt_map(source: str | os.PathLike | Mapping[str, str], images: Sequence[Path]) -> list[str]:
    """The prompt of each image, from a JSON object mapping file names (or paths) to prompts."""
    where = "the prompts mapping"
    if isinstance(source, Mapping):
        mapping = dict(source)
    else:
        where = str(source)
        try:
            mapping = json.loads(Path(source).expanduser().read_text(encoding="utf-8"))
        except OSError as error:
            raise EvaluationError(f"Prompts file {source} cannot be read ({error.strerror or error}).") from error
        except ValueError as error:
            raise EvaluationError(f"Prompts file {source} is not valid JSON ({error}).") from error
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise EvaluationError(f"{where} must be a JSON object mapping image file names to prompts, e.g. {{\"00.png\": \"a dog\"}}.")
    prompts, missing = [], []
    for path in images:
        prompt = mapping.get(path.name, mapping.get(str(path), mapping.get(path.as_posix())))
        if prompt is None:
            missing.append(path.name)
        prompts.append(prompt)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise EvaluationError(f"{where} has no prompt for {shown}; add an entry per image file name.")
    return prompts


def _backbone(kind: str, ref: str | Backbone, device: Any, allow_pickle: bool) -> Backbone:
    return ref if isinstance(ref, Backbone) else load_backbone(kind, ref, device=device, allow_pickle=allow_pickle)


def score_images(
    images: ImageInput,
    references: ImageInput,
    *,
    prompts: str | os.PathLike | Mapping[str, str] | None = None,
    class_images: ImageInput | None = None,
    identifier: str | None = None,
    clip: str | Backbone = DEFAULT_CLIP,
    dino: str | Backbone = DEFAULT_DINO,
    out: str | os.PathLike | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | None = None,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Score generated ``images`` against subject ``references``; return (and optionally write) the report.

    ``prompts`` maps image file names to prompts; without it CLIP-T is omitted and DIV treats all
    images as one group. ``identifier`` is removed from prompts before CLIP-T. ``class_images``
    (the fine-tuned model's images for the plain class prompt) enable PRES.
    """
    started = time.perf_counter()
    generated = collect_images(images, "images to score")
    refs = collect_images(references, "reference images")
    classes = collect_images(class_images, "class images") if class_images is not None else []
    prompt_list = read_prompt_map(prompts, generated) if prompts is not None else None
    embedder = Embedder(_backbone("clip", clip, device, allow_pickle), _backbone("dino", dino, device, allow_pickle), batch_size)
    ref_emb = reference_embeddings(embedder, refs)
    gen_emb = embedder.embed_files(generated, "scoring images")
    class_emb = embedder.embed_files(classes, "class images") if classes else None
    texts = [strip_identifier(p, identifier or "") for p in prompt_list] if prompt_list else None
    text_emb = embedder.embed_texts(texts) if texts else None
    groups = texts if texts else None

    report = new_report("images")
    report["scores"] = score_embeddings(
        gen_emb, ref_emb, texts=text_emb, groups=groups, class_dino=None if class_emb is None else class_emb.dino
    )
    report["backbones"] = embedder.describe()
    report["references"] = [str(p) for p in refs]
    report["images"] = [
        {"path": str(p), "role": "generated", "prompt": None if prompt_list is None else prompt_list[i]}
        for i, p in enumerate(generated)
    ] + [{"path": str(p), "role": "class", "prompt": None} for p in classes]
    report["per_prompt"] = []
    if prompt_list and texts:
        per_text = per_group_scores(gen_emb, ref_emb, texts, text_emb)
        for text, scores in per_text.items():
            members = [i for i, t in enumerate(texts) if t == text]
            report["per_prompt"].append(
                {"prompt": prompt_list[members[0]], "text": text, "scores": scores, "images": [str(generated[i]) for i in members]}
            )
    report["identifier_removed"] = identifier
    if not identifier:
        report["clip_t_text_rule"] = "CLIP-T scores each image against its prompt as given (no identifier was named to remove)"
    report["counts"] = {"images": len(generated), "references": len(refs), "class": len(classes)}
    report["notes"] = []
    if prompt_list is None:
        report["notes"].append("CLIP-T omitted: no prompts given (pass a prompts file).")
        report["notes"].append("DIV compares all images with each other: no prompts given to group them.")
    if not classes:
        report["notes"].append("PRES omitted: no class-prompt images given (pass class images).")
    report["timing"] = {"total_s": round(time.perf_counter() - started, 3)}
    if out is not None:
        write_json(out, report)
    return report
