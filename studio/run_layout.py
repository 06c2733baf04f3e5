"""Every file and folder name inside a run directory, in one place (no torch, no trainers).

The trainer writes these and the CLI, the worker, the web UI, evaluation and export read them; each
of them imports the names from here, so reading a run never imports ``trainers`` or torch.

```
RUN/
  config.yaml            CONFIG_FILE        the resolved settings
  subject/               SUBJECT_DIR        a copy of the subject
  events.jsonl           EVENTS_FILE        one JSON object per line
  cancel.request         CANCEL_FILE        a stop request the trainer polls
  result.json            RESULT_FILE        what the finished result is
  samples/step-N/        SAMPLES_DIR
  checkpoints/step-N/    CHECKPOINTS_DIR    (a finished view of one: checkpoints/step-N/run/)
  validation/            VALIDATION_DIR     validation images and contact_sheet.png
  adapter/ or model/     the method's artifact (studio.methods)
  eval/report.json       EVAL_DIR / EVAL_REPORT_FILE, eval/contact_sheet.png
  exports/<formats>/     EXPORTS_DIR
```
"""

from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "config.yaml"
SUBJECT_DIR = "subject"
EVENTS_FILE = "events.jsonl"
CANCEL_FILE = "cancel.request"
RESULT_FILE = "result.json"
SAMPLES_DIR = "samples"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_VIEW_DIR = "run"
VALIDATION_DIR = "validation"
EVAL_DIR = "eval"
EVAL_REPORT_FILE = "report.json"
CONTACT_SHEET_FILE = "contact_sheet.png"
EXPORTS_DIR = "exports"
REPLICAS_DIR = "replicas"


def config_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CONFIG_FILE


def result_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / RESULT_FILE


def events_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / EVENTS_FILE


def cancel_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CANCEL_FILE


def eval_report_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / EVAL_DIR / EVAL_REPORT_FILE


def read_run_config(run_dir: str | Path):
    """The run's resolved :class:`~studio.settings.TrainConfig` (YAML only: no torch, no trainers)."""
    from studio.config import read_config
    from studio.errors import ConfigError

    path = config_path(run_dir)
    if not path.exists():
        raise ConfigError(f"{run_dir} is not a run directory (no {CONFIG_FILE}).")
    return read_config(path)
