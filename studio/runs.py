"""Reading a run directory (the contract between trainer, CLI, evaluation, export and web UI)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import StudioError
from studio.run_layout import RESULT_FILE, SUBJECT_DIR, read_run_config
from studio.settings import TrainConfig
from studio.subjects import Subject, load_subject


class RunNotFinishedError(StudioError):
    """The run has no finished result yet."""


@dataclass
class Run:
    directory: Path
    config: TrainConfig
    subject: Subject
    result: dict[str, Any] | None

    @property
    def finished(self) -> bool:
        return self.result is not None

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def token(self) -> str:
        """What stands for the subject in prompts typed into a pipeline."""
        return (self.result or {}).get("token") or self.subject.identifier

    def require_finished(self) -> dict[str, Any]:
        if self.result is None:
            raise RunNotFinishedError(
                f"Run {self.directory} has no finished result (no {RESULT_FILE}). Finish it with "
                f"`studio train --resume {self.directory}` first.",
                browser=f"Run {self.directory.name} has not finished yet: resume it in the Jobs tab, then try again.",
            )
        return self.result

    def prompt(self, template: str) -> str:
        """A DreamBench-style template with {0} = the subject token and {1} = the class noun."""
        return template.format(self.token, self.subject.class_noun)


def load_run(run_dir: str | Path) -> Run:
    directory = Path(run_dir).expanduser().resolve()
    if not directory.is_dir():
        raise StudioError(f"Run directory {directory} does not exist.")
    config = read_run_config(directory)
    result_path = directory / RESULT_FILE
    result = json.loads(result_path.read_text()) if result_path.exists() else None
    return Run(directory, config, load_subject(directory / SUBJECT_DIR), result)


def base_pipeline(run: Run):
    """A fresh pipeline of the run's untrained base model."""
    from studio.models import load_configured_base

    return load_configured_base(run.config).pipeline


def personalised_pipeline(run: Run):
    """A fresh pipeline with the run's result applied (LoRA/TI loaded, or the DreamBooth model)."""
    from studio.adapters import apply_run_result

    result = run.require_finished()
    return apply_run_result(run.directory, result, run.config)


def prompt_token(run: Run) -> str:
    return run.token
