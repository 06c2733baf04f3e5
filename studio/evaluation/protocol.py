"""``studio eval RUN``: the DreamBooth protocol on a finished run.

For every prompt, K images from the fine-tuned model and K from the untrained base model (prompt
without the identifier) at the same fixed seeds, plus class-prompt images from the fine-tuned
model for PRES. Everything is written into a temporary folder inside the run and renamed to
``RUN/eval`` at the end, so a half-done evaluation never looks finished.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from studio import limits
from studio.atomic import atomic_dir, remove_stale_temporaries, write_json
from studio.evaluation.backbones import DEFAULT_CLIP, DEFAULT_DINO, load_backbone
from studio.evaluation.contact_sheet import SheetRow, write_contact_sheet
from studio.evaluation.defaults import GENERATION_BATCH_SIZE, IMAGES_PER_PROMPT
from studio.evaluation.embed_cache import reference_embeddings
from studio.evaluation.embedding import Embedder, Embeddings
from studio.evaluation.errors import EvaluationError
from studio.evaluation.generation import GenerationSettings, ImageRequest, generate_batches
from studio.evaluation.per_subject import score_other_subjects, subject_entry, subject_references
from studio.evaluation.prompts import EvalPrompt, build_prompts, is_live, resolve_templates
from studio.evaluation.report import new_report
from studio.evaluation.scoring import per_group_scores, score_embeddings
from studio.run_layout import CONTACT_SHEET_FILE, EVAL_DIR  # noqa: F401
from studio.run_layout import EVAL_REPORT_FILE as REPORT_FILE  # noqa: F401
from studio.runlock import run_lock
from studio.sampling import GUIDANCE, STEPS
from studio.work_progress import Tracker, track


def _runs_api() -> Any:
    try:
        import studio.runs as runs
    except ImportError as error:
        raise EvaluationError("Run evaluation needs studio.runs, which this Studio install lacks.") from error
    return runs


def _setting(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def _load_finished_run(run_dir: Path) -> Any:
    run = _runs_api().load_run(run_dir)
    if hasattr(run, "require_finished"):
        run.require_finished()  # raises the run module's own error, which names the resume command
    if not getattr(run, "finished", False) or not getattr(run, "result", None):
        raise EvaluationError(
            f"{run_dir} has no finished result (result.json is missing): training did not finish. "
            "Finish the training, or resume it from its last checkpoint, then run `studio eval` again."
        )
    return run


def _checkpoint_run(run: Any, checkpoint: str | int | None) -> Any:
    """The run whose weights are evaluated: ``run`` or a checkpoint of it (trainers/checkpoint_view.py)."""
    from trainers.checkpoint_view import checkpoint_run

    view = checkpoint_run(run.directory, checkpoint)
    return run if view == Path(run.directory).resolve() else _load_finished_run(view)


def _requests(prompts: Sequence[EvalPrompt], seeds: Sequence[int], role: str) -> list[ImageRequest]:
    return [
        ImageRequest(p.text if role == "base" else p.prompt, seed, role, f"images/{role}/{i:02d}-s{seed}.png", i)
        for i, p in enumerate(prompts)
        for seed in seeds
    ]


def _generate(pipe: Any, requests: list[ImageRequest], settings: GenerationSettings, root: Path,
              embedder: Embedder, timing: dict[str, float], tracker: Tracker) -> Embeddings:
    """Generate, save and embed batch by batch; the images never all sit in memory at once."""
    parts = []
    description = f"generating {requests[0].role} images"
    tracker.update.phase = description
    for chunk, images in generate_batches(pipe, requests, settings, description):
        started = time.perf_counter()
        for request, image in zip(chunk, images, strict=True):
            target = root / request.path
            target.parent.mkdir(parents=True, exist_ok=True)
            image.save(target, format="PNG")
        tracker.advance(len(chunk), images=[root / request.path for request in chunk])
        parts.append(embedder.embed_images(images))
        timing["embedding_s"] += time.perf_counter() - started
    return Embeddings.cat(parts)


def _to_device(pipe: Any, device: str | None) -> Any:
    target = device or ("cuda" if torch.cuda.is_available() else None)
    return pipe.to(target) if target and hasattr(pipe, "to") else pipe


def _prompt_source(prompts: str | os.PathLike | Sequence[str], class_noun: str) -> str:
    """How the prompts were chosen, for the report (``dreambench`` resolved to its live/object list)."""
    if not isinstance(prompts, str | os.PathLike):
        return "list"
    if prompts == "dreambench":
        return "dreambench-live" if is_live(class_noun) else "dreambench-objects"
    return str(prompts)


def _sheet_rows(references: Sequence[Path], prompts: Sequence[EvalPrompt], root: Path,
                requests: Sequence[ImageRequest], class_prompt: str) -> list[SheetRow]:
    rows = [SheetRow("reference images", list(references), [p.name for p in references])]
    for index, prompt in enumerate(prompts):
        mine = [r for r in requests if r.group == index and r.role in ("base", "personalised")]
        mine.sort(key=lambda r: (r.role != "base", r.seed))
        captions = [f"{'base' if r.role == 'base' else 'tuned'} s{r.seed}" for r in mine]
        label = f"{index + 1}. {prompt.prompt}   (base: {prompt.text})"
        rows.append(SheetRow(label, [root / r.path for r in mine], captions))
    classes = [r for r in requests if r.role == "class"]
    if classes:
        rows.append(SheetRow(f"class prompt '{class_prompt}', fine-tuned (PRES)", [root / r.path for r in classes],
                             [f"s{r.seed}" for r in classes]))
    return rows


def check_evaluation_limits(*, images_per_prompt: int, class_images: int | None, max_prompts: int | None, steps: int,
                            guidance: float, batch_size: int, front: str = limits.API) -> None:
    """The evaluation sizes a user typed, against :mod:`studio.limits` (the CLI, the API and the web UI)."""
    limits.EVAL_IMAGES_PER_PROMPT.check(images_per_prompt, front)
    if class_images is not None:
        limits.EVAL_CLASS_IMAGES.check(class_images, front)
    if max_prompts is not None:
        limits.EVAL_MAX_PROMPTS.check(max_prompts, front)
    limits.EVAL_STEPS.check(steps, front)
    limits.EVAL_GUIDANCE.check(guidance, front)
    limits.EVAL_BATCH.check(batch_size, front)


def _fresh_eval_dir(run_dir: Path) -> Path:
    """RUN/eval, after removing what a killed evaluation left beside it (the caller holds the run lock)."""
    remove_stale_temporaries(run_dir, EVAL_DIR)
    return run_dir / EVAL_DIR


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    prompts: str | os.PathLike | Sequence[str] = "dreambench",
    images_per_prompt: int = IMAGES_PER_PROMPT,
    class_images: int | None = None,
    max_prompts: int | None = None,
    clip: str = DEFAULT_CLIP,
    dino: str = DEFAULT_DINO,
    seed: int = 0,
    steps: int = STEPS,
    guidance: float = GUIDANCE,
    negative_prompt: str | None = None,
    batch_size: int = GENERATION_BATCH_SIZE,
    base: bool = True,
    device: str | None = None,
    allow_pickle: bool = False,
    front: str = limits.API,
    checkpoint: str | int | None = "best",
) -> dict[str, Any]:
    """Evaluate a finished run the DreamBooth way; write ``RUN/eval/`` and return the report.

    ``checkpoint``: ``best`` (the checkpoint validation chose while training, see docs/training.md;
    the final result when the run recorded none), ``final``, or a step number.

    ``prompts``: ``dreambench`` (live or object templates chosen by the class noun),
    ``dreambench-live``, ``dreambench-objects``, a prompt file or a list; ``{0}`` becomes the
    identifier (or the learned token of a textual-inversion run) and ``{1}`` the class noun.
    Image k of every prompt uses seed ``seed + k`` for both models. ``class_images`` defaults
    to ``2 * images_per_prompt``; ``base=False`` skips the base-model comparison.
    """
    started = time.perf_counter()
    check_evaluation_limits(images_per_prompt=images_per_prompt, class_images=class_images, max_prompts=max_prompts,
                            steps=steps, guidance=guidance, batch_size=batch_size, front=front)
    run_dir = Path(run_dir).expanduser()
    runs = _runs_api()
    run = _load_finished_run(run_dir)
    weights = _checkpoint_run(run, checkpoint)
    subject = run.subject
    token = runs.prompt_token(run)
    templates = resolve_templates(prompts, subject.class_noun)[: max_prompts or None]
    eval_prompts = build_prompts(templates, token, subject.class_noun)
    seeds = [seed + k for k in range(images_per_prompt)]
    class_count = 2 * images_per_prompt if class_images is None else class_images
    resolution = int(_setting(run.config, "resolution", None) or subject.resolution)
    settings = GenerationSettings(steps, guidance, negative_prompt, resolution, resolution, batch_size)

    embedder = Embedder(load_backbone("clip", clip, device=device, allow_pickle=allow_pickle),
                        load_backbone("dino", dino, device=device, allow_pickle=allow_pickle))
    references = subject_references(subject, 0)  # the main subject's photos (all of them for one subject)
    ref_emb = reference_embeddings(embedder, references)
    text_emb = embedder.embed_texts([p.text for p in eval_prompts])
    tuned_requests = _requests(eval_prompts, seeds, "personalised")
    class_requests = [
        ImageRequest(subject.class_prompt, seed + j, "class", f"images/class/s{seed + j}.png", -1) for j in range(class_count)
    ]
    base_requests = _requests(eval_prompts, seeds, "base") if base else []
    timing = {"generation_s": 0.0, "embedding_s": 0.0}
    report = new_report("run")
    others_count = len(seeds) * sum(len(resolve_templates(prompts, c.class_noun)[: max_prompts or None]) for c in subject.concepts[1:])
    tracker = track("loading models", len(tuned_requests) + len(class_requests) + len(base_requests) + others_count, "image")
    with run_lock(run.directory, "eval"), atomic_dir(_fresh_eval_dir(run.directory), replace=True) as root:
        generation_started = time.perf_counter()
        pipe = _to_device(runs.personalised_pipeline(weights), device)
        tuned = _generate(pipe, tuned_requests, settings, root, embedder, timing, tracker)
        others = score_other_subjects(subject, prompts, max_prompts, seeds, embedder,
                                      lambda requests: _generate(pipe, requests, settings, root, embedder, timing, tracker))
        classes = _generate(pipe, class_requests, settings, root, embedder, timing, tracker) if class_requests else None
        scheduler = type(getattr(pipe, "scheduler", None)).__name__
        del pipe
        gc.collect()
        base_emb = None
        if base_requests:
            pipe = _to_device(runs.base_pipeline(run), device)
            tracker.update.phase = "loading the base model"
            base_emb = _generate(pipe, base_requests, settings, root, embedder, timing, tracker)
            del pipe
            gc.collect()
        timing["generation_s"] = time.perf_counter() - generation_started - timing["embedding_s"]

        groups = [r.group for r in tuned_requests]
        texts = text_emb[groups]
        report["scores"] = score_embeddings(tuned, ref_emb, texts=texts, groups=groups,
                                            class_dino=None if classes is None else classes.dino)
        report["base_scores"] = None
        per_base: dict[object, dict] = {}
        if base_emb is not None:
            report["base_scores"] = score_embeddings(base_emb, ref_emb, texts=texts, groups=groups)
            report["base_scores"]["pres"] = None
            per_base = per_group_scores(base_emb, ref_emb, groups, texts)
        per_tuned = per_group_scores(tuned, ref_emb, groups, texts)
        if others:  # several subjects: each scored on its own prompts against its own photos
            report["subjects"] = [subject_entry(subject.concepts[0], report["scores"], [r.path for r in tuned_requests]),
                                  *others]
        report["per_prompt"] = [
            {
                "template": p.template,
                "prompt": p.prompt,
                "text": p.text,
                "scores": per_tuned[i],
                "base_scores": per_base.get(i),
                "images": [r.path for r in tuned_requests if r.group == i],
                "base_images": [r.path for r in base_requests if r.group == i],
            }
            for i, p in enumerate(eval_prompts)
        ]
        all_requests = tuned_requests + base_requests + class_requests
        report.update(
            run=str(run_dir),
            method=str(run.result.get("method", _setting(run.config, "method", ""))),
            base=str(run.result.get("base", _setting(run.config, "base", ""))),
            subject={
                "identifier": subject.identifier,
                "class_noun": subject.class_noun,
                "token": token,
                "class_prompt": subject.class_prompt,
                "directory": str(subject.directory),
            },
            settings={
                "prompts": _prompt_source(prompts, subject.class_noun),
                "num_prompts": len(eval_prompts),
                "images_per_prompt": images_per_prompt,
                "class_images": class_count,
                "seed": seed,
                "steps": steps,
                "guidance": guidance,
                "negative_prompt": negative_prompt,
                "resolution": resolution,
                "batch_size": batch_size,
                "scheduler": scheduler,
                "base_compared": base,
            },
            seeds=seeds,
            checkpoint={"choice": str(checkpoint or "best"), "step": weights.result.get("steps"),
                        "final": weights.directory == run.directory},
            backbones=embedder.describe(),
            references=[str(p) for p in references],
            images=[{"path": r.path, "prompt": r.prompt, "seed": r.seed, "role": r.role} for r in all_requests],
            counts={"personalised": len(tuned_requests), "base": len(base_requests), "class": len(class_requests),
                    "references": len(references), "prompts": len(eval_prompts)},
            contact_sheet=CONTACT_SHEET_FILE,
            notes=([] if base else ["Base model not compared (base=False)."])
            + ([] if class_requests else ["PRES omitted: no class-prompt images were requested."]),
        )
        write_contact_sheet(_sheet_rows(references, eval_prompts, root, all_requests, subject.class_prompt),
                            root / CONTACT_SHEET_FILE)
        report["timing"] = {k: round(v, 3) for k, v in timing.items()} | {
            "total_s": round(time.perf_counter() - started, 3)
        }
        write_json(root / REPORT_FILE, report)
    return report
