"""Losses and validation scores to TensorBoard and Weights & Biases through Accelerate's trackers.

The trackers are optional: ``report_to`` names them, and a tracker whose package is missing is left
out with a plain note in the run's events (training goes on). The bridge listens to the trainer's
events, so the loop itself knows nothing of trackers.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

TENSORBOARD_DIR = "tensorboard"  # RUN/tensorboard/studio/ holds the event files
PROJECT = "studio"
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def requested(config: Any) -> list[str]:
    choice = config.report_to
    return [] if choice == "none" else list(PACKAGES) if choice == "all" else [choice]


def available(name: str) -> bool:
    # Accelerate's TensorBoard tracker also works with tensorboardX.
    alternatives = ("tensorboard", "tensorboardX") if name == "tensorboard" else (PACKAGES[name],)
    return any(importlib.util.find_spec(module) is not None for module in alternatives)


def missing_message(name: str) -> str:
    return (f"report_to asks for {name}, but the {PACKAGES[name]} package is not installed, so nothing is logged "
            f"there (events.jsonl and the web UI still have everything). Install it with "
            f"`pip install {PACKAGES[name]}` and resume or start the run again.")


def accelerator_kwargs(config: Any, run_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """Keyword arguments for ``Accelerator`` and the notes about trackers left out."""
    from accelerate.utils import ProjectConfiguration

    names = requested(config)
    usable = [n for n in names if available(n)]
    notes = [missing_message(n) for n in names if n not in usable]
    if not usable:
        return {}, notes
    project = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(Path(run_dir) / TENSORBOARD_DIR))
    return {"log_with": usable, "project_config": project}, notes


def _hparams(config: Any) -> dict[str, Any]:
    values = dataclasses.asdict(config)
    return {k: v for k, v in values.items() if isinstance(v, bool | int | float | str)}


def _metrics(event: dict) -> dict[str, float]:
    kind = event.get("type")
    if kind == "step":
        return {"train/loss": event["loss"], "train/lr": event["lr"]}
    if kind == "validation":
        values = {"validation/loss": event.get("loss"), "validation/class_loss": event.get("class_loss")}
        values |= {f"validation/{k}": v for k, v in (event.get("scores") or {}).items()}
        return {k: float(v) for k, v in values.items() if v is not None}
    return {}


class TrackerBridge:
    """Starts the accelerator's trackers and forwards step and validation events to them."""

    def __init__(self, accelerator, config: Any, run_dir: Path, listener: Callable[[dict], None] | None = None):
        self.accelerator = accelerator
        self.listener = listener
        self.started = bool(getattr(accelerator, "log_with", None)) and accelerator.is_main_process
        if self.started:
            accelerator.init_trackers(PROJECT, config=_hparams(config))

    def __call__(self, event: dict) -> None:
        if self.started:
            values = _metrics(event)
            if values:
                self.accelerator.log(values, step=int(event.get("step") or 0))
            if event.get("type") in ("finished", "failed", "cancelled"):
                self.close()
        if self.listener is not None:
            self.listener(event)

    def close(self) -> None:
        if self.started:
            self.started = False
            self.accelerator.end_training()
