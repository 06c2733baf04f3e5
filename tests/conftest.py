"""Shared fixtures: one studio data dir per test session (tiny models materialise once), offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO = Path(__file__).resolve().parent.parent
SAMPLE_SUBJECT = REPO / "datasets" / "sample_subject"


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """A studio data dir shared by the whole session, so tiny-sd is materialised once."""
    path = Path(os.environ.get("STUDIO_TEST_DATA_DIR") or tmp_path_factory.mktemp("studio-data"))
    os.environ["STUDIO_DATA_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def sample_subject(tiny_data_dir, tmp_path_factory) -> Path:
    """The bundled sample subject prepared at 64 px (the tiny models' resolution)."""
    from studio.subjects import prepare_subject

    images = sorted(p for p in SAMPLE_SUBJECT.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"})
    out = tmp_path_factory.mktemp("subject") / "toy"
    prepare_subject(images, "sks", "toy", out, resolution=64)
    return out


def tiny_config(method: str, **overrides):
    """A small, fast config for tests (64 px, no samples/checkpoints unless asked)."""
    from studio.config import load_config

    values = {"method": method, "base": "tiny-sd", "resolution": 64, "steps": 30, "batch_size": 2,
              "sample_every": 0, "checkpoint_every": 0, "log_every": 5,
              "learning_rate": {"lora": 2e-3, "dreambooth": 5e-4, "textual_inversion": 1e-2}[method]}
    values.update(overrides)
    return load_config(None, values)
