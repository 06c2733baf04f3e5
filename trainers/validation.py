"""Validation while training: fixed-noise losses and a quick subject score at checkpoints.

At step 0 (the untrained base), at every checkpoint, every ``validation_every`` steps and at the end,
the trainer asks :class:`Validator` for a record: the denoising loss on a few instance (and class)
images at fixed noise and timesteps, and, within the time budget, a quick DreamBooth score of a few
images made at fixed seeds (CLIP-I, DINO, CLIP-T; PRES with prior preservation). Records go to
``events.jsonl``; the rules in :mod:`studio.validation.rules` pick the best checkpoint, flag
overfitting and may stop the run early.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from studio.atomic import atomic_dir
from studio.errors import ModelLoadError
from studio.evaluation.backbones import load_backbone
from studio.evaluation.defaults import DEFAULT_CLIP, DEFAULT_DINO
from studio.evaluation.embed_cache import reference_embeddings
from studio.evaluation.embedding import Embedder
from studio.evaluation.prompts import EvalPrompt, build_prompts, dreambench_templates, strip_identifier
from studio.evaluation.scoring import score_embeddings
from studio.models.vae import decode_in_fp32
from studio.validation.history import (
    EARLY_STOP_EVENT,
    NOTE_EVENT,
    OVERFITTING_EVENT,
    VALIDATION_DIR,
    VALIDATION_EVENT,
    step_dir_name,
    validation_records,
)
from studio.validation.rules import RuleSettings, choose_best, overfitting, should_stop_early
from studio.validation.sheet import write_validation_sheet
from trainers import placement
from trainers.samples import generate_seeded

LOSS_IMAGES = 4  # instance (and class) images the validation loss uses
LOSS_TIMESTEP_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)
LOSS_SEED_OFFSET = 7_919  # the loss's noise stream, apart from training's
CLASS_IMAGES = 2  # class-prompt images for PRES
# The backbones embed a handful of images per validation: on the CPU they cost well under a second and
# take no accelerator memory from training (a recipe sized for 8 GB keeps its headroom).
BACKBONE_DEVICE = "cpu"
TINY = {"clip": "tiny-clip", "dino": "tiny-dino"}
DEFAULTS = {"clip": DEFAULT_CLIP, "dino": DEFAULT_DINO}


def validation_active(config: Any) -> bool:
    """Validation runs when asked and when there is more than one candidate (checkpoints or every-N)."""
    return bool(config.validation and (config.checkpoint_every or config.validation_every))


def score_prompts(trainer) -> list[EvalPrompt]:
    """The quick subject score's prompts: the instance prompt, then DreamBench templates for the class."""
    token, noun = trainer.method.token, trainer.subject.class_noun
    instance = trainer.method.instance_prompt()
    first = EvalPrompt("{instance prompt}", instance, strip_identifier(instance, token))
    more = build_prompts(dreambench_templates(noun), token, noun)
    return ([first] + [p for p in more if p.prompt != instance])[: trainer.config.validation_prompts]


def rendered_prompts(trainer) -> list[str]:
    """Every prompt validation may render images of (as the pipeline gets it), known before training."""
    if not validation_active(trainer.config):
        return []
    prompts = [trainer.method.pipeline_prompt(p.prompt) for p in score_prompts(trainer)]
    return prompts + ([trainer.class_prompt] if trainer.class_paths else [])


class Validator:
    """Holds the validation state of one training session; the trainer calls :meth:`validate`."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.config = trainer.config
        self.enabled = validation_active(self.config) and trainer.accelerator.is_main_process
        self.active = validation_active(self.config)
        self.rules = RuleSettings.from_config(self.config)
        self.records: list[dict] = []
        self.embedder: Embedder | None = None
        self.references = None
        self.validation_s = 0.0
        self.train_s = 0.0
        self.last_score_cost: float | None = None
        self.clock: float | None = None
        self.best: dict | None = None
        self.flagged: dict | None = None
        self.stop_reason: str | None = None

    # ------------------------------------------------------------------ timing and schedule
    def start(self) -> None:
        """Called when the loop starts (after a resume too): history and costs continue from the events."""
        if self.enabled:
            self.records = validation_records(self.trainer.run_dir)
            if self.records:
                last = self.records[-1]
                self.validation_s = float(last.get("validation_s") or 0.0)
                self.train_s = float(last.get("train_s") or 0.0)
                self.last_score_cost = last.get("score_s") or None
                self.best = choose_best(self.records, self.rules)
                self.flagged = overfitting(self.records, self.rules)
        self.clock = time.perf_counter()

    def _tick(self) -> None:
        """Everything since the last tick that was not validation counts as training time."""
        now = time.perf_counter()
        self.train_s += now - (self.clock or now)
        self.clock = now

    def due(self, step: int, checkpoint_due: bool) -> bool:
        if not self.active:
            return False
        every = self.config.validation_every
        return step == 0 or checkpoint_due or step == self.config.steps or bool(every and step % every == 0)

    def protected(self) -> list[str]:
        """Checkpoint folder names that pruning must keep: the best so far."""
        if self.best is None or self.best["step"] in (0, self.config.steps):
            return []
        return [step_dir_name(self.best["step"])]

    def _score_allowed(self, step: int) -> tuple[bool, str]:
        if step == 0 or self.last_score_cost is None:
            return True, ""
        budget = self.config.validation_budget * self.train_s
        if self.validation_s + self.last_score_cost <= budget:
            return True, ""
        return False, (f"The quick subject score was skipped at step {step} to keep validation within "
                       f"{self.config.validation_budget:.0%} of the training time (validation so far "
                       f"{self.validation_s:.1f} s, training {self.train_s:.1f} s, one score about "
                       f"{self.last_score_cost:.1f} s); the validation loss was recorded.")

    # ------------------------------------------------------------------ the validation
    def validate(self, step: int, *, candidate: bool) -> dict | None:
        """Validate at ``step``; returns the record (main process), and decides on early stop."""
        stop = False
        if self.enabled:
            self._tick()
            started = time.perf_counter()
            record = self._measure(step, candidate)
            cost = time.perf_counter() - started
            self.validation_s += cost
            self.clock = time.perf_counter()
            record.update(cost_s=round(cost, 3), validation_s=round(self.validation_s, 3),
                          train_s=round(self.train_s, 3),
                          share=round(self.validation_s / self.train_s, 4) if self.train_s > 0.5 else None)
            self.records = [r for r in self.records if r["step"] != step] + [record]
            self.best = choose_best(self.records, self.rules)
            record["best_step"] = self.best["step"] if self.best else None
            self.trainer.events.emit(VALIDATION_EVENT, **record)
            write_validation_sheet(self.trainer.run_dir, self.records, record["best_step"],
                                   list(self.trainer.subject.image_paths))
            self.validation_s += time.perf_counter() - self.clock
            self.clock = time.perf_counter()
            self._flags(step, candidate)
            stop = self.stop_reason is not None
        self.stop_reason = self._broadcast_stop(stop) if self.trainer.accelerator.num_processes > 1 else self.stop_reason
        return self.records[-1] if self.enabled and self.records else None

    def _broadcast_stop(self, stop: bool) -> str | None:
        from accelerate.utils import broadcast

        flag = broadcast(torch.tensor([1 if stop else 0], device=self.trainer.device))
        if int(flag.item()) and self.stop_reason is None:
            return "stopped early (decided by the main process)"
        return self.stop_reason

    def _flags(self, step: int, candidate: bool) -> None:
        if self.flagged is None:
            self.flagged = overfitting(self.records, self.rules)
            if self.flagged is not None:
                self.trainer.events.emit(OVERFITTING_EVENT, step=self.flagged["step"], signal=self.flagged["signal"],
                                         message=self.flagged["message"])
        if candidate and step < self.config.steps:  # the run can only end where a checkpoint is
            reason = should_stop_early(self.records, self.rules)
            if reason:
                self.stop_reason = reason
                self.trainer.events.emit(EARLY_STOP_EVENT, step=step, message=reason,
                                         best_step=self.best["step"] if self.best else None)

    def _measure(self, step: int, candidate: bool) -> dict:
        trainer = self.trainer
        unet = trainer.components[trainer.family.denoiser_name]
        was_training = unet.training
        unet.eval()
        try:
            losses = self._losses()
            allowed, skipped = self._score_allowed(step)
            record: dict[str, Any] = {"step": step, "candidate": candidate, **losses, "scores": None}
            if allowed:
                setup_s = self._prepare()  # once per session: backbones and reference embeddings
                started = time.perf_counter()
                record.update(self._quick_score(step))
                self.last_score_cost = time.perf_counter() - started
                record["score_s"] = round(self.last_score_cost, 3)
                if setup_s:
                    record["setup_s"] = round(setup_s, 3)
            else:
                record["skipped"] = skipped
        finally:
            unet.train(was_training)
        if candidate and step not in (0, self.config.steps):
            record["checkpoint"] = f"checkpoints/{step_dir_name(step)}"
        return record

    @torch.no_grad()
    def _losses(self) -> dict[str, float | None]:
        """Denoising MSE at fixed noise and timesteps on the first instance (and class) images."""
        trainer, config = self.trainer, self.config
        # one batch holds one shape: with aspect-ratio buckets, the images shaped like the first one
        shape = trainer.latents.shape_of(0)
        same = [i for i in range(trainer.instance_count + len(trainer.class_paths)) if trainer.latents.shape_of(i) == shape]
        instance = [i for i in same if i < trainer.instance_count][:LOSS_IMAGES]
        classes = [i for i in same if i >= trainer.instance_count][:LOSS_IMAGES]
        resolution = config.resolution if shape == (config.resolution, config.resolution) else shape
        generator = torch.Generator().manual_seed(config.seed + LOSS_SEED_OFFSET)
        latents = trainer.latents.latents(instance + classes, generator)
        embedding = trainer._embeddings(len(instance), len(classes))
        objective, family = trainer.objective, trainer.family  # the family's objective and denoiser inputs
        unet, dtype = trainer.components[family.denoiser_name], trainer.unet_dtype
        per_row = torch.zeros(len(latents), dtype=torch.float64)
        for fraction in LOSS_TIMESTEP_FRACTIONS:
            timesteps = objective.timesteps_at(fraction, len(latents), latents.device)
            noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
            noisy, target = objective.noised(latents, noise, timesteps)
            with trainer.accelerator.autocast():
                prediction = family.predict(unet, noisy.to(dtype), timesteps, embedding.to(dtype=dtype), resolution)
            error = (prediction.float() - target.float()).pow(2).flatten(1).mean(1)
            per_row += error.double().cpu() / len(LOSS_TIMESTEP_FRACTIONS)
        count = len(instance)
        return {"loss": round(float(per_row[:count].mean()), 6),
                "class_loss": round(float(per_row[count:].mean()), 6) if classes else None}

    # ------------------------------------------------------------------ the quick subject score
    def _backbone(self, kind: str):
        requested = getattr(self.config, f"validation_{kind}")
        ref = DEFAULTS[kind] if requested == "auto" else requested
        try:
            return load_backbone(kind, ref, device=BACKBONE_DEVICE)
        except ModelLoadError:
            if requested != "auto":
                raise
        self.trainer.events.emit(NOTE_EVENT, step=self.trainer.step, message=(
            f"The {kind.upper()} backbone {ref} could not be loaded (offline and not cached), so the quick subject "
            f"score uses the built-in {TINY[kind]}: its numbers compare checkpoints of this run, not other runs or "
            f"the paper's. Set validation_{kind} to a local folder for real scores."))
        return load_backbone(kind, TINY[kind], device=BACKBONE_DEVICE)

    def _prompts(self) -> list[EvalPrompt]:
        return score_prompts(self.trainer)

    def _prepare(self) -> float:
        """Load the backbones and embed the subject's photos (first score of a session); returns the seconds."""
        if self.embedder is not None:
            return 0.0
        started = time.perf_counter()
        self.embedder = Embedder(self._backbone("clip"), self._backbone("dino"))
        self.references = reference_embeddings(self.embedder, list(self.trainer.subject.image_paths))
        self.prompt_set = self._prompts()
        self.text_embeddings = self.embedder.embed_texts([p.text for p in self.prompt_set])
        return time.perf_counter() - started

    def _quick_score(self, step: int) -> dict[str, Any]:
        trainer, config = self.trainer, self.config
        seeds = list(range(config.validation_images_per_prompt))
        requests = [(i, p, seed) for i, p in enumerate(self.prompt_set) for seed in seeds]
        prompts = [trainer.method.pipeline_prompt(p.prompt) for _, p, _ in requests]
        class_prompt = getattr(trainer, "class_prompt", None) if trainer.class_paths else None
        class_seeds = list(range(CLASS_IMAGES)) if class_prompt else []
        pipeline = trainer.base.pipeline
        vae = getattr(pipeline, "vae", None)
        embedded = trainer.sample_embeddings  # cached before training (trainers/sample_embeddings.py): no text encoder

        def embeddings(texts: list[str]) -> dict | None:
            return None if embedded is None else embedded.pipeline_kwargs(texts, trainer.device, trainer.unet_dtype)

        with placement.brought_back(trainer.components, trainer.sampling_released(), trainer.device), trainer.accelerator.autocast(), \
                decode_in_fp32(vae) if vae is not None else nullcontext():
            kwargs = {"steps": config.validation_steps, "guidance": config.sample_guidance, "resolution": config.resolution}
            images = generate_seeded(pipeline, prompts, [s for _, _, s in requests], prompt_kwargs=embeddings(prompts), **kwargs)
            class_images = generate_seeded(pipeline, [class_prompt] * len(class_seeds), class_seeds,
                                           prompt_kwargs=embeddings([class_prompt] * len(class_seeds)), **kwargs) \
                if class_seeds else []
        generated = self.embedder.embed_images(images)
        groups = [i for i, _, _ in requests]
        class_emb = self.embedder.embed_images(class_images) if class_images else None
        scores = score_embeddings(generated, self.references, texts=self.text_embeddings[groups], groups=groups,
                                  class_dino=None if class_emb is None else class_emb.dino)
        paths = self._save(step, requests, images, class_seeds, class_images)
        return {"scores": {k: (round(v, 6) if v is not None else None) for k, v in scores.items()},
                "images": paths, "prompts": [p.prompt for p in self.prompt_set],
                "class_prompt": class_prompt, "backbones": {"clip": self.embedder.clip.ref, "dino": self.embedder.dino.ref}}

    def _save(self, step: int, requests, images, class_seeds, class_images) -> list[str]:
        run_dir = self.trainer.run_dir
        names = [f"{i:02d}-s{seed}.png" for i, _, seed in requests] + [f"class-s{s}.png" for s in class_seeds]
        target = run_dir / VALIDATION_DIR / step_dir_name(step)
        with atomic_dir(target, replace=True) as tmp:
            for name, image in zip(names, list(images) + list(class_images), strict=True):
                image.save(Path(tmp) / name)
        return [str((target / name).relative_to(run_dir)) for name in names]

    # ------------------------------------------------------------------ the result
    def summary(self) -> dict[str, Any]:
        """What result.json records: the chosen checkpoint and why, overfitting and early stop."""
        if not self.enabled or self.best is None:
            return {}
        best = dict(self.best)
        final = best["step"] == self.trainer.step
        best["checkpoint"] = None if final else f"checkpoints/{step_dir_name(best['step'])}"
        best["final"] = final
        extras: dict[str, Any] = {"best_checkpoint": best}
        if self.flagged:
            extras["overfitting"] = {"step": self.flagged["step"], "message": self.flagged["message"]}
        if self.stop_reason:
            extras["early_stop"] = self.stop_reason
        last = self.records[-1]
        extras["validation_cost"] = {"validation_s": last.get("validation_s"), "train_s": last.get("train_s"),
                                     "share": last.get("share")}
        return extras
