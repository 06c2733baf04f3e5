"""Trainers: one Accelerate loop (``trainers.base``) and three methods that say what trains.

Public API: :func:`train` starts a run, :func:`resume` continues one from its last checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from studio.settings import TrainConfig
from trainers.base import Trainer, TrainingCancelled, TrainingFailed, load_run_config, prepare_run_dir
from trainers.dreambooth import DreamBoothMethod
from trainers.lora import LoRAMethod
from trainers.method import Method
from trainers.textual_inversion import TextualInversionMethod

METHODS: dict[str, type[Method]] = {
    "lora": LoRAMethod,
    "dreambooth": DreamBoothMethod,
    "textual_inversion": TextualInversionMethod,
}


def train(
    config: TrainConfig,
    subject_dir: str | Path,
    run_dir: str | Path,
    *,
    listener: Callable[[dict], None] | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Train ``config.method`` on the subject in ``subject_dir``; writes and returns the run's result."""
    from accelerate import PartialState

    run_dir = Path(run_dir)
    # Without a GPU, processes started by `accelerate launch` join a gloo (multi-CPU) group.
    state = PartialState(cpu=not torch.cuda.is_available())
    failure: Exception | None = None
    if state.is_main_process:  # one process creates the run directory; the others wait for it
        try:
            prepare_run_dir(config, Path(subject_dir), run_dir)
        except Exception as error:
            failure = error
    state.wait_for_everyone()
    if failure is not None:
        raise failure
    if not (run_dir / "config.yaml").exists():
        raise TrainingFailed(f"The main process could not create {run_dir}; see its error above.")
    return Trainer(METHODS[config.method], config, run_dir, listener=listener, show_progress=show_progress).run()


def resume(
    run_dir: str | Path, *, listener: Callable[[dict], None] | None = None, show_progress: bool = False
) -> dict[str, Any]:
    """Continue a run from its last checkpoint (optimizer, LR schedule, RNG and data order restored)."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    return Trainer(METHODS[config.method], config, run_dir, listener=listener, show_progress=show_progress).run(resume=True)


__all__ = ["METHODS", "TrainingCancelled", "TrainingFailed", "resume", "train"]
