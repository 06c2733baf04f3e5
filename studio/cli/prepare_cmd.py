"""``studio prepare``: photos in, subject directory out (a thin front over studio.subjects)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

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
    parser.add_argument("--crop", choices=CROP_MODES, default="center", help="center: crop to fill; pad: fit and pad with white")
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
    missing = [flag for flag, value in (("--images", args.images), ("--identifier", args.identifier),
                                        ("--class-noun", args.class_noun), ("--out", args.out)) if not value]
    if missing:
        raise SubjectError(f"studio prepare needs {', '.join(missing)}; see `studio prepare --help`.")
    tokenizers = None
    if not args.no_identifier_check:
        try:
            tokenizers = _load_tokenizers(args.base, args.allow_pickle)
        except ModelLoadError as error:
            print(f"  warning  the identifier was not checked: {error}")
    print(f"Checking {len(args.images)} input(s) for {args.resolution} px training ({args.crop} crop):")
    reports: list[Validation] = []

    def report(validation: Validation) -> None:
        reports.append(validation)
        _print_report(validation)

    try:
        subject = prepare_subject(
            args.images,
            args.identifier,
            args.class_noun,
            args.out,
            resolution=args.resolution,
            crop=args.crop,
            tokenizer=tokenizers,
            force=args.force,
            on_validated=report,
        )
    except SubjectError as error:
        if reports and not reports[0].ok:  # the reasons are printed above; do not repeat them
            raise SubjectError(f"{len(reports[0].errors)} problem(s) above; nothing was written to {args.out}.") from error
        raise
    print(
        f"Subject written to {subject.directory}: {len(subject.image_paths)} images at "
        f"{subject.resolution}x{subject.resolution}; instance prompt '{subject.instance_prompt}', "
        f"class prompt '{subject.class_prompt}'."
    )
    return 0
