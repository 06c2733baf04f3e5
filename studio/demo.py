"""The offline demo: the bundled sample subject, prepared and trained on a built-in tiny model.

It runs the same functions as the CLI and the web UI, end to end, with nothing downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from studio.config import load_config
from studio.paths import datasets_dir
from studio.subjects import prepare_subject

SAMPLE_SUBJECT = "sample_subject"


def sample_subject_images() -> list[Path]:
    folder = datasets_dir() / SAMPLE_SUBJECT
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"})


def run_demo(out_dir: Path, *, recipe: str = "tiny-lora", overrides: dict | None = None,
             listener: Callable[[dict], None] | None = None) -> dict:
    """Prepare the sample subject into ``out_dir/subject`` and train ``recipe`` into ``out_dir/run``."""
    import trainers

    out_dir = Path(out_dir)
    config = load_config(recipe, overrides)
    subject_dir = out_dir / "subject"
    if not subject_dir.exists():
        prepare_subject(sample_subject_images(), "sks", "toy", subject_dir, resolution=config.resolution)
    run_dir = out_dir / "run"
    result = trainers.train(config, subject_dir, run_dir, listener=listener, show_progress=listener is not None)
    return {"subject": subject_dir, "run": run_dir, "result": result}
