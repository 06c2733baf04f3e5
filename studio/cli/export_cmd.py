"""``studio export RUN --format F[,F...] --out DIR``: files other tools load, each verified by reloading."""

from __future__ import annotations

import argparse

from studio.export import DEFAULT_RANK, FORMATS_BY_METHOD, export_run
from studio.run_layout import EXPORTS_DIR


def register(subparsers) -> None:
    lines = "; ".join(f"{method}: {', '.join(names)}" for method, names in FORMATS_BY_METHOD.items())
    parser = subparsers.add_parser(
        "export",
        help="Export a finished run for diffusers, A1111/Forge/ComfyUI or PEFT (verified by reloading).",
        description=f"Formats by method ({lines}; 'all' for every one). Each file is reloaded into a fresh "
        "pipeline by its consumer's loader and must reproduce the studio's image at a fixed seed.",
    )
    parser.add_argument("run", help="A finished run directory.")
    parser.add_argument("--format", "-f", dest="formats", default="all",
                        help="Comma-separated formats (default: all of the run's method).")
    parser.add_argument("--out", "-o", default=None,
                        help="Folder to write (default: RUN/exports/<formats>); must not exist unless --force.")
    parser.add_argument("--force", action="store_true", help="Replace an existing export folder.")
    parser.add_argument("--rank", type=int, default=DEFAULT_RANK,
                        help=f"Rank of the LoRA extracted from a DreamBooth run (format 'lora'; default {DEFAULT_RANK}).")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", default=None,
                        help="Also upload the export to this Hugging Face Hub repository (needs a token and network).")
    parser.add_argument("--license", default="creativeml-openrail-m", help="License written into the model card.")
    parser.add_argument("--checkpoint", default="best", metavar="best|final|STEP",
                        help="Which weights: best (default: the checkpoint validation chose while training, or the "
                        "final result when it chose none), final, or the step of a kept checkpoint.")
    parser.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trainers.checkpoint_view import checkpoint_run

    weights = checkpoint_run(args.run, args.checkpoint)
    out = args.out
    if weights != Path(args.run).expanduser().resolve():
        step = weights.parent.name  # checkpoints/step-NNNNNN/run
        print(f"Exporting checkpoint {step} ({args.checkpoint}); pass --checkpoint final for the final result.")
        out = out or str(Path(args.run) / EXPORTS_DIR / f"{args.formats.replace(',', '-')}-{step}")
    result = export_run(
        weights, args.formats, out, force=args.force, rank=args.rank,
        push_to_hub=args.push_to_hub, license=args.license, log=print,
    )
    print(f"Wrote {len(result.files)} verified file(s) and a model card to {result.out_dir}")
    if result.url:
        print(f"Uploaded to {result.url}")
    return 0
