"""``studio prepare``: photos in, subject directory out (a thin front over studio.subjects)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from studio.captions import PLACEMENTS
from studio.errors import ModelLoadError, SubjectError
from studio.images import CROP_MODES
from studio.subjects import Validation, prepare_subject

DEFAULT_BASE = "tiny-sd"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="check subject photos and write a subject folder",
        description=(
            "Check 3-5 photos of one subject, crop them to the training resolution and write a subject "
            "folder (images/ + subject.json). Nothing is written unless every photo passes."
        ),
    )
    parser.add_argument("--images", nargs="+", metavar="PATH", help="image files and/or folders of images")
    parser.add_argument("--identifier", help="rare word that will name the subject, e.g. sks")
    parser.add_argument("--class-noun", help="what the subject is, e.g. dog or 'teddy bear'")
    parser.add_argument("--out", metavar="SUBJECT_DIR", help="subject folder to create")
    parser.add_argument("--resolution", type=int, default=512, help="training resolution in px (default 512)")
    parser.add_argument("--crop", choices=CROP_MODES, default="center",
                        help="center: crop to fill; pad: fit and pad with white; bucket: keep each photo's shape (aspect-ratio buckets)")
    parser.add_argument("--dataset", metavar="REF", help="a Hugging Face dataset instead of --images: a hub id, an imagefolder "
                        "(photos + metadata.jsonl) or a save_to_disk folder")
    parser.add_argument("--split", default="train", help="the dataset split (default train)")
    parser.add_argument("--image-column", help="the dataset's image column (default: image)")
    parser.add_argument("--caption-column", help="the dataset's caption column (default: text, caption or prompt)")
    parser.add_argument("--no-captions", action="store_true", help="ignore caption files (.txt sidecars, metadata.jsonl)")
    parser.add_argument("--identifier-placement", choices=PLACEMENTS, default="class",
                        help="where a caption without {identifier} gets it: before the class noun (class), in front (prefix) or nowhere (none)")
    parser.add_argument("--masks", metavar="DIR", help="folder of masks named like the photos (white = subject)")
    parser.add_argument("--auto-caption", metavar="MODEL", help="caption photos that have none with this image-to-text model "
                        "(a folder or hub id, e.g. Salesforce/blip-image-captioning-base)")
    parser.add_argument("--auto-mask", metavar="MODEL", help="mask photos that have none with this CLIPSeg model, prompted "
                        "with the class noun (a folder or hub id, e.g. CIDAS/clipseg-rd64-refined)")
    parser.add_argument("--repeats", type=int, nargs="+", metavar="N",
                        help="times an epoch shows each photo (with --combine: one value per subject)")
    parser.add_argument("--combine", nargs="+", metavar="SUBJECT_DIR",
                        help="combine prepared subjects into one folder --out, for training several subjects in one run")
    parser.add_argument("--save-dataset", metavar="SUBJECT_DIR",
                        help="write the prepared subject as a Hugging Face imagefolder dataset at --out")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="with --save-dataset: also upload it to this Hub dataset repository")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: make the repository private")
    parser.add_argument("--base", default=DEFAULT_BASE, help=f"base model whose tokenizer checks the identifier (default {DEFAULT_BASE})")
    parser.add_argument("--no-identifier-check", action="store_true", help="skip loading the tokenizer to check the identifier")
    parser.add_argument("--allow-pickle", action="store_true", help="allow a pickle (.ckpt/.bin) --base (only from sources you trust)")
    parser.add_argument("--force", action="store_true", help="replace an existing subject folder")
    parser.add_argument("--suggest-identifiers", action="store_true", help="print rare single-token identifiers and exit")
    parser.set_defaults(func=run)


def _load_tokenizers(base: str, allow_pickle: bool = False) -> list[Any]:
    from studio.models import load_tokenizers

    print(f"Loading the tokenizer of {base} (a built-in model is built on first use; this can take a minute)...")
    tokenizers = load_tokenizers(base, allow_pickle=allow_pickle)
    if not tokenizers:
        raise ModelLoadError(f"{base} has no tokenizer folder.")
    return tokenizers


def _print_report(validation: Validation) -> None:
    for item in validation.accepted:
        print(f"  ok       {item.path} ({item.size[0]}x{item.size[1]} {item.format})")
    for message in validation.warnings:
        print(f"  warning  {message}")
    sys.stdout.flush()  # keep the rejections in order when both streams go to one place
    for message in validation.errors:
        print(f"  rejected {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    if args.suggest_identifiers:
        from studio.identifiers import suggest_identifiers

        tokenizer = _load_tokenizers(args.base, args.allow_pickle)[0]
        print("Rare single-token identifiers:", ", ".join(suggest_identifiers(tokenizer, n=10)))
        return 0
    if args.save_dataset or args.combine:
        return _save_or_combine(args)
    if args.images and args.dataset:
        raise SubjectError("Give --images or --dataset, not both.")
    missing = [flag for flag, value in (("--images or --dataset", args.images or args.dataset), ("--identifier", args.identifier),
                                        ("--class-noun", args.class_noun), ("--out", args.out)) if not value]
    if missing:
        raise SubjectError(f"studio prepare needs {', '.join(missing)}; see `studio prepare --help`.")
    if args.repeats and len(args.repeats) > 1:
        raise SubjectError("--repeats takes one value when preparing one subject (one per subject with --combine).")
    tokenizers = None
    if not args.no_identifier_check:
        try:
            tokenizers = _load_tokenizers(args.base, args.allow_pickle)
        except ModelLoadError as error:
            print(f"  warning  the identifier was not checked: {error}")
    if args.dataset:
        from studio.hf_datasets import staged_dataset

        print(f"Reading the dataset {args.dataset} (split {args.split})...")
        with staged_dataset(args.dataset, split=args.split, image_column=args.image_column,
                            caption_column=args.caption_column) as staged:
            return _prepare(args, [str(f) for f in staged.files], tokenizers, staged.captions, staged.masks)
    return _prepare(args, args.images, tokenizers, None, None)


def _save_or_combine(args: argparse.Namespace) -> int:
    if not args.out:
        raise SubjectError("--save-dataset and --combine need --out (the folder to write).")
    if args.save_dataset:
        from studio.hf_datasets import export_subject_dataset

        result = export_subject_dataset(args.save_dataset, args.out, force=args.force, push_to_hub=args.push_to_hub,
                                        private=args.private)
        print(f"Dataset written to {result['folder']}: {result['rows']} rows (load it with "
              f"datasets.load_dataset('imagefolder', data_dir='{result['folder']}')).")
        if "hub" in result:
            print(f"Pushed to {result['hub']}")
        return 0
    from studio.subject_sets import combine_subjects

    subject = combine_subjects(args.combine, args.out, repeats=args.repeats, force=args.force)
    for concept in subject.concepts:
        print(f"  {concept.identifier}: {len(concept.images)} images of '{concept.class_noun}', repeats {concept.repeats}")
    print(f"Combined subject written to {subject.directory}.")
    return 0


def _prepare(args: argparse.Namespace, images: list[str], tokenizers: Any, captions: Any, masks: Any) -> int:
    auto_caption = auto_mask = None
    if args.auto_caption:
        from studio.captioner import load_captioner

        print(f"Loading the captioner {args.auto_caption}...")
        auto_caption = load_captioner(args.auto_caption)
    if args.auto_mask:
        from studio.automask import load_masker

        print(f"Loading the segmentation model {args.auto_mask}...")
        auto_mask = load_masker(args.auto_mask)
    print(f"Checking {len(images)} input(s) for {args.resolution} px training ({args.crop} crop):")
    reports: list[Validation] = []

    def report(validation: Validation) -> None:
        reports.append(validation)
        _print_report(validation)

    try:
        subject = prepare_subject(
            images,
            args.identifier,
            args.class_noun,
            args.out,
            resolution=args.resolution,
            crop=args.crop,
            tokenizer=tokenizers,
            force=args.force,
            on_validated=report,
            read_captions=not args.no_captions,
            captions=captions,
            identifier_placement=args.identifier_placement,
            masks_dir=args.masks,
            masks=masks,
            auto_caption=auto_caption,
            auto_mask=auto_mask,
            repeats=(args.repeats or [1])[0],
        )
    except SubjectError as error:
        if reports and not reports[0].ok:  # the reasons are printed above; do not repeat them
            raise SubjectError(f"{len(reports[0].errors)} problem(s) above; nothing was written to {args.out}.") from error
        raise
    sizes = sorted({tuple(s.get("trained_size") or (subject.resolution, subject.resolution)) for s in subject.sources})
    captioned = sum(1 for c in subject.captions if c)
    masked = sum(1 for m in subject.mask_paths if m)
    print(
        f"Subject written to {subject.directory}: {len(subject.image_paths)} images at "
        f"{', '.join(f'{w}x{h}' for w, h in sizes)}; instance prompt '{subject.instance_prompt}', "
        f"class prompt '{subject.class_prompt}'; {captioned} captioned, {masked} masked."
    )
    return 0
