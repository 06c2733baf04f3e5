"""``studio eval``: score a finished run the DreamBooth way, or score any folder of images."""

from __future__ import annotations

import argparse
import json
from typing import Any

from studio.errors import StudioError
from studio.evaluation.defaults import DEFAULT_CLIP, DEFAULT_DINO, GENERATION_BATCH_SIZE, IMAGES_PER_PROMPT
from studio.sampling import GUIDANCE, STEPS


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score a run (CLIP-I, CLIP-T, DINO, PRES, DIV) or any folder of images",
        description=(
            "Evaluate a finished run: generate DreamBench prompts with the fine-tuned and the base model at "
            "fixed seeds and write RUN/eval/ (report.json, images, contact_sheet.png). Or, with --images and "
            "--references, score any images. Scores are raw cosines (0-1), as in the DreamBooth paper."
        ),
    )
    parser.add_argument("run", nargs="?", metavar="RUN", help="run folder to evaluate")
    parser.add_argument("--images", nargs="+", metavar="PATH", help="score these images (files or folders) instead of a run")
    parser.add_argument("--references", nargs="+", metavar="PATH", help="the subject's real photos (with --images)")
    parser.add_argument("--class-image-dir", nargs="+", metavar="PATH", help="class-prompt images for PRES (with --images)")
    parser.add_argument("--identifier", help="identifier to remove from prompts before CLIP-T (with --images)")
    parser.add_argument(
        "--prompts",
        metavar="dreambench|FILE",
        help="with RUN: dreambench (default; live or object list by class), dreambench-live, dreambench-objects, "
        "or a file of templates ({0}=identifier, {1}=class noun); with --images: a JSON file mapping image names to prompts",
    )
    parser.add_argument("--images-per-prompt", type=int, default=IMAGES_PER_PROMPT, metavar="K",
                        help=f"images per prompt (default {IMAGES_PER_PROMPT})")
    parser.add_argument("--max-prompts", type=int, metavar="N", help="use only the first N prompts (quicker, less exact)")
    parser.add_argument("--class-images", type=int, metavar="N", help="class-prompt images for PRES (default 2*K)")
    parser.add_argument("--clip", default=DEFAULT_CLIP, metavar="REF", help=f"CLIP backbone: hub id, folder or tiny-clip (default {DEFAULT_CLIP})")
    parser.add_argument("--dino", default=DEFAULT_DINO, metavar="REF", help=f"DINO backbone: hub id, folder or tiny-dino (default {DEFAULT_DINO})")
    parser.add_argument("--seed", type=int, default=0, help="first seed; image k of every prompt uses seed+k (default 0)")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"sampling steps (default {STEPS})")
    parser.add_argument("--guidance", type=float, default=GUIDANCE, help=f"classifier-free guidance scale (default {GUIDANCE})")
    parser.add_argument("--negative-prompt", help="negative prompt for every image")
    parser.add_argument("--batch-size", type=int, default=GENERATION_BATCH_SIZE,
                        help=f"images generated per batch (default {GENERATION_BATCH_SIZE})")
    parser.add_argument("--no-base", action="store_true", help="skip generating with the untrained base model")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--allow-pickle", action="store_true", help="allow backbones with only pickle .bin weights")
    parser.add_argument("--checkpoint", default="best", metavar="best|final|STEP",
                        help="with RUN: which weights; best (default: the checkpoint validation chose while training, "
                        "or the final result when it chose none), final, or the step of a kept checkpoint")
    parser.add_argument("--out", metavar="FILE", help="with --images: write the report JSON here")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    parser.set_defaults(func=run)


def _score_folders(args: argparse.Namespace) -> dict:
    from studio.evaluation import score_images

    if not args.references:
        raise StudioError("--images needs --references: the subject's real photos to compare with.")
    if args.run:
        raise StudioError(f"Give either a run folder ({args.run}) or --images, not both.")
    return score_images(
        args.images,
        args.references,
        prompts=args.prompts,
        class_images=args.class_image_dir,
        identifier=args.identifier,
        clip=args.clip,
        dino=args.dino,
        out=args.out,
        device=args.device,
        allow_pickle=args.allow_pickle,
    )


def _evaluate_run(args: argparse.Namespace) -> dict:
    from studio.evaluation import evaluate_run

    if not args.run:
        raise StudioError("studio eval needs a run folder, or --images with --references; see `studio eval --help`.")
    if args.out:
        raise StudioError("--out is for --images; a run's report is always written to RUN/eval/report.json.")
    return evaluate_run(
        args.run,
        prompts=args.prompts or "dreambench",
        images_per_prompt=args.images_per_prompt,
        class_images=args.class_images,
        max_prompts=args.max_prompts,
        clip=args.clip,
        dino=args.dino,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        negative_prompt=args.negative_prompt,
        batch_size=args.batch_size,
        base=not args.no_base,
        device=args.device,
        allow_pickle=args.allow_pickle,
        front="cli",
        checkpoint=args.checkpoint,
    )


def run(args: argparse.Namespace) -> int:
    from studio.evaluation import format_summary

    report = _score_folders(args) if args.images else _evaluate_run(args)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(format_summary(report))
    if report["kind"] == "run":
        print(f"Report, images and contact sheet written to {report['run']}/eval/.")
    elif args.out:
        print(f"Report written to {args.out}.")
    return 0
