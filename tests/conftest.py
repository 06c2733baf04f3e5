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


def train_until_cancelled(config, subject: Path, run: Path, at_step: int) -> None:
    """Train ``config`` into ``run`` and stop it the way a user does (a cancel request) right after the
    checkpoint at ``at_step``; the run is left as a cancelled run that can be resumed."""
    import trainers
    from studio.run_layout import cancel_path

    def cancel_after_checkpoint(event) -> None:
        if event["type"] == "checkpoint" and event["step"] == at_step:
            cancel_path(run).touch()

    with pytest.raises(trainers.TrainingCancelled):
        trainers.train(config, subject, run, listener=cancel_after_checkpoint)


def tiny_config(method: str, **overrides):
    """A small, fast config for tests (64 px, no samples/checkpoints unless asked)."""
    from studio.config import load_config

    values = {"method": method, "base": "tiny-sd", "resolution": 64, "steps": 30, "batch_size": 2,
              "sample_every": 0, "checkpoint_every": 0, "log_every": 5,
              "learning_rate": {"lora": 2e-3, "dreambooth": 5e-4, "textual_inversion": 5e-2}.get(method, 1e-3)}
    values.update(overrides)
    return load_config(None, values)


def _train_tiny(method: str, sample_subject: Path, directory: Path, **overrides) -> Path:
    import trainers

    trainers.train(tiny_config(method, **overrides), sample_subject, directory)
    return directory


# Finished tiny runs shared by the export and generation tests (a few seconds each: they only have to
# change the weights, not to learn the subject).
@pytest.fixture(scope="session")
def tiny_lora_run(sample_subject, tmp_path_factory) -> Path:
    """A LoRA run with text-encoder LoRA."""
    return _train_tiny("lora", sample_subject, tmp_path_factory.mktemp("runs") / "lora", steps=8, batch_size=1,
                       train_text_encoder=True)


@pytest.fixture(scope="session")
def tiny_ti_run(sample_subject, tmp_path_factory) -> Path:
    """A textual-inversion run with two vectors per token."""
    return _train_tiny("textual_inversion", sample_subject, tmp_path_factory.mktemp("runs") / "ti", steps=8,
                       batch_size=1, num_vectors=2)


@pytest.fixture(scope="session")
def tiny_dreambooth_run(sample_subject, tmp_path_factory) -> Path:
    return _train_tiny("dreambooth", sample_subject, tmp_path_factory.mktemp("runs") / "dreambooth", steps=8,
                       batch_size=1)


# Exports of those runs in every format (each verified by reloading as it is written).
def _export_all(run: Path, tmp_path_factory, name: str, **options):
    from studio.export import export_run

    return export_run(run, "all", tmp_path_factory.mktemp("exports") / name, **options)


@pytest.fixture(scope="session")
def tiny_lora_export(tiny_lora_run, tmp_path_factory):
    return _export_all(tiny_lora_run, tmp_path_factory, "lora")


@pytest.fixture(scope="session")
def tiny_ti_export(tiny_ti_run, tmp_path_factory):
    return _export_all(tiny_ti_run, tmp_path_factory, "ti")


@pytest.fixture(scope="session")
def tiny_dreambooth_export(tiny_dreambooth_run, tmp_path_factory):
    return _export_all(tiny_dreambooth_run, tmp_path_factory, "dreambooth", rank=4)


# The same for the built-in tiny-sdxl (two text encoders, SGM names in kohya and single-file exports).
@pytest.fixture(scope="session")
def tiny_sdxl_lora_run(sample_subject, tmp_path_factory) -> Path:
    """An SDXL LoRA run on the UNet and both text encoders."""
    return _train_tiny("lora", sample_subject, tmp_path_factory.mktemp("runs") / "sdxl-lora", base="tiny-sdxl",
                       steps=8, batch_size=1, train_text_encoder=True)


@pytest.fixture(scope="session")
def tiny_sdxl_ti_run(sample_subject, tmp_path_factory) -> Path:
    """An SDXL textual-inversion run (two vectors, learned in both text encoders)."""
    return _train_tiny("textual_inversion", sample_subject, tmp_path_factory.mktemp("runs") / "sdxl-ti",
                       base="tiny-sdxl", steps=8, batch_size=1, num_vectors=2)


@pytest.fixture(scope="session")
def tiny_sdxl_dreambooth_run(sample_subject, tmp_path_factory) -> Path:
    """An SDXL DreamBooth run that also tunes both text encoders (so its SVD LoRA has te1 and te2 layers)."""
    return _train_tiny("dreambooth", sample_subject, tmp_path_factory.mktemp("runs") / "sdxl-dreambooth",
                       base="tiny-sdxl", steps=8, batch_size=1, train_text_encoder=True)


@pytest.fixture(scope="session")
def tiny_sdxl_lora_export(tiny_sdxl_lora_run, tmp_path_factory):
    return _export_all(tiny_sdxl_lora_run, tmp_path_factory, "sdxl-lora")


@pytest.fixture(scope="session")
def tiny_sdxl_ti_export(tiny_sdxl_ti_run, tmp_path_factory):
    return _export_all(tiny_sdxl_ti_run, tmp_path_factory, "sdxl-ti")


@pytest.fixture(scope="session")
def tiny_sdxl_dreambooth_export(tiny_sdxl_dreambooth_run, tmp_path_factory):
    return _export_all(tiny_sdxl_dreambooth_run, tmp_path_factory, "sdxl-dreambooth", rank=4)
