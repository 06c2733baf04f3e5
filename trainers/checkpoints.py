"""Resumable checkpoints: trainable weights, optimizer, LR schedule, RNG and step, without pickle.

Each checkpoint is written to a temporary folder, fsynced and renamed to ``checkpoints/step-NNNNNN``
when complete; only the last K are kept. A checkpoint that cannot be read back (a disk error, a file
damaged after it was written) raises :class:`CorruptCheckpointError` naming the file, so resume can
fall back to the previous one.
"""

from __future__ import annotations

import shutil
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from studio.atomic import atomic_dir, save_safetensors, write_json
from studio.run_layout import CHECKPOINTS_DIR  # noqa: F401
from studio.statedict import load_state, save_state

EMA_FILE = "ema.safetensors"


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and not p.name.startswith("."))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


@dataclass
class TrainingState:
    step: int
    trainable: dict[str, torch.Tensor]
    optimizer: dict
    lr_scheduler: dict
    generator: torch.Tensor
    torch_rng: torch.Tensor
    cuda_rng: list[torch.Tensor] | None = None
    ema: dict[str, torch.Tensor] | None = None  # the EMA of the trainable weights (trainers/ema.py), when kept


def save_checkpoint(run_dir: Path, state: TrainingState, keep: int, protect: Collection[str] = ()) -> Path:
    """Write ``checkpoints/step-NNNNNN``; keep the last ``keep`` and the folders named in ``protect``
    (the best checkpoint so far, which validation chose)."""
    target = Path(run_dir) / CHECKPOINTS_DIR / f"step-{state.step:06d}"
    with atomic_dir(target, replace=True) as tmp:
        save_safetensors(state.trainable, tmp / "trainable.safetensors")
        if state.ema is not None:
            save_safetensors(state.ema, tmp / EMA_FILE)
        save_state(state.optimizer, tmp, "optimizer")
        save_state(
            {"generator": state.generator, "torch": state.torch_rng, "cuda": state.cuda_rng or []}, tmp, "rng"
        )
        write_json(tmp / "trainer.json", {"step": state.step, "lr_scheduler": state.lr_scheduler})
    for old in checkpoint_dirs(run_dir)[:-keep]:
        if old.name not in protect:
            shutil.rmtree(old, ignore_errors=True)
    return target


class CorruptCheckpointError(Exception):
    """A checkpoint folder whose files cannot be read back; the message names the file."""


def _read(path: Path, reader):
    try:
        return reader()
    except Exception as error:  # safetensors, JSON and missing-file errors all mean "unreadable"
        raise CorruptCheckpointError(f"{path.name}: {type(error).__name__}: {error}") from error


def load_checkpoint(directory: Path) -> TrainingState:
    import json

    directory = Path(directory)
    trainer = _read(directory / "trainer.json", lambda: json.loads((directory / "trainer.json").read_text()))
    rng = _read(directory / "rng.safetensors", lambda: load_state(directory, "rng"))
    trainable = _read(directory / "trainable.safetensors", lambda: load_file(str(directory / "trainable.safetensors")))
    optimizer = _read(directory / "optimizer.safetensors", lambda: load_state(directory, "optimizer"))
    ema = _read(directory / EMA_FILE, lambda: load_file(str(directory / EMA_FILE))) if (directory / EMA_FILE).exists() else None
    try:
        step = int(trainer["step"])
        if directory.name != f"step-{step:06d}":
            raise ValueError(f"it records step {step}")
        return TrainingState(
            step=step, trainable=trainable, optimizer=optimizer, lr_scheduler=trainer["lr_scheduler"],
            generator=rng["generator"], torch_rng=rng["torch"], cuda_rng=rng["cuda"] or None, ema=ema,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CorruptCheckpointError(f"trainer.json: {type(error).__name__}: {error}") from error
