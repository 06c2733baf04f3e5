"""Where the studio keeps its own files (built-in models, class-image cache, uploads, jobs)."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "STUDIO_DATA_DIR"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The studio data directory: ``$STUDIO_DATA_DIR`` or ``~/.cache/studio``."""
    configured = os.environ.get(DATA_DIR_ENV)
    path = Path(configured).expanduser() if configured else Path.home() / ".cache" / "studio"
    path.mkdir(parents=True, exist_ok=True)
    return path


def builtin_models_dir() -> Path:
    return data_dir() / "models"


def class_images_cache_dir() -> Path:
    return data_dir() / "class-images"


def recipes_dir() -> Path:
    return PROJECT_ROOT / "recipes"


def datasets_dir() -> Path:
    return PROJECT_ROOT / "datasets"
