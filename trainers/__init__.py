"""Trainers: one Accelerate loop (``trainers.base``) and three methods that say what trains.

Public API: :func:`train` starts a run, :func:`resume` continues one from its last checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from studio.environment.check import require_working_environment
from studio.errors import RunBusyError
from studio.run_layout import config_path
from studio.rundir import claimable, discard_run_dir
from studio.runlock import run_lock
from studio.settings import TrainConfig
from trainers.base import Trainer, TrainingCancelled, TrainingFailed, load_run_config, prepare_run_dir
from trainers.dreambooth import DreamBoothMethod
from trainers.lora import LoRAMethod
from trainers.method import Method
from trainers.pivotal import PivotalMethod
from trainers.textual_inversion import TextualInversionMethod

METHODS: dict[str, type[Method]] = {
    "lora": LoRAMethod,
    "dreambooth": DreamBoothMethod,
    "textual_inversion": TextualInversionMethod,
    "pivotal": PivotalMethod,
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

    require_working_environment()  # a broken package set stops here, not at step 0
    from studio.memory_plan import check_before_training

    check_before_training(config)  # on a GPU: refuses a run that will not fit, naming settings that would (issue 17)

    run_dir = Path(run_dir)
    # Without a GPU, processes started by `accelerate launch` join a gloo (multi-CPU) group.
    state = PartialState(cpu=not torch.cuda.is_available())
    failure: Exception | None = None
    existed = run_dir.exists()
    with ExitStack() as held:
        if state.is_main_process:  # one process creates the run directory (under its lock); the others wait
            try:
                if not claimable(run_dir):  # before locking: never leave a lock file in someone's folder
                    prepare_run_dir(config, Path(subject_dir), run_dir)  # raises, naming --out
                held.enter_context(run_lock(run_dir, "train"))
                prepare_run_dir(config, Path(subject_dir), run_dir)
            except Exception as error:
                failure = error
                if not existed and not isinstance(error, RunBusyError):  # the lock made the folder: remove it
                    discard_run_dir(run_dir, keep_folder=False)
        state.wait_for_everyone()
        if failure is not None:
            raise failure
        if not config_path(run_dir).exists():
            raise TrainingFailed(f"The main process could not create {run_dir}; see its error above.")
        trainer: Trainer | None = None
        try:
            trainer = Trainer(METHODS[config.method], config, run_dir, listener=listener, show_progress=show_progress)
            return trainer.run()
        except BaseException:
            if state.is_main_process and (trainer is None or not trainer.loop_started):  # a failed start leaves nothing behind
                discard_run_dir(run_dir, keep_folder=existed)
            raise


def resume(
    run_dir: str | Path, *, listener: Callable[[dict], None] | None = None, show_progress: bool = False
) -> dict[str, Any]:
    """Continue a run from its last checkpoint (optimizer, LR schedule, RNG and data order restored)."""
    require_working_environment()
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    return Trainer(METHODS[config.method], config, run_dir, listener=listener, show_progress=show_progress).run(resume=True)


__all__ = ["METHODS", "TrainingCancelled", "TrainingFailed", "resume", "train"]
