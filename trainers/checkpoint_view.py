"""A checkpoint of a run as a finished run of its own, so every tool that takes a run can use it.

``checkpoint_run(RUN, "best")`` returns ``RUN`` when the chosen checkpoint is the final result, and
otherwise ``RUN/checkpoints/step-NNNNNN/run/``: the run's config and subject, and the checkpoint's
weights saved the way the method saves its result (``adapter/`` or ``model/``), with a
``result.json`` that says which checkpoint of which run it is. It is written once (atomically) and
reused; ``studio eval``, ``studio export`` and the web UI read it like any finished run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from studio.atomic import atomic_dir, write_json
from studio.errors import StudioError
from studio.run_layout import config_path
from studio.validation.history import BEST, BEST_KEY, FINAL, RESULT_FILE, step_dir_name
from trainers.weights_view import WEIGHT_CHOICES, WEIGHTS_KEY, weights_dir_name

VIEW_DIR = "run"
CHECKPOINT_KEY = "checkpoint_of"  # in a view's result.json: {"run", "step"}


def parse_choice(value: str | int | None) -> str | int:
    """``best`` (default), ``final`` or a step number, from a CLI or UI value."""
    if value is None or value == "":
        return BEST
    if isinstance(value, int):
        return value
    text = str(value).strip().lower()
    if text in (BEST, FINAL, *WEIGHT_CHOICES):
        return text
    digits = text.removeprefix("step-")
    if digits.isdigit():
        return int(digits)
    raise StudioError(f"--checkpoint must be best, final, a step number (e.g. 400), or with EMA ema or raw, not '{value}'.")


def chosen_step(run_dir: Path, choice: str | int) -> int | None:
    """The checkpoint step a choice names; None for the final result."""
    result = _result(run_dir)
    if choice == FINAL:
        return None
    if choice == BEST:
        best = result.get(BEST_KEY) or {}
        return None if not best or best.get("final") or best.get("checkpoint") is None else int(best["step"])
    if int(choice) == int(result.get("steps", -1)):
        return None
    return int(choice)


def _result(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        raise StudioError(f"{run_dir} has no finished result (no {RESULT_FILE}); finish or resume the training first.")
    return json.loads(path.read_text())


def checkpoint_run(run_dir: str | Path, choice: str | int | None = BEST) -> Path:
    """The run directory that holds the chosen weights (``RUN`` itself for the final result)."""
    run_dir = Path(run_dir).expanduser().resolve()
    choice = parse_choice(choice)
    if choice in WEIGHT_CHOICES:
        return _weights_run(run_dir, str(choice))
    step = chosen_step(run_dir, choice)
    if step is None:
        return run_dir
    checkpoint = run_dir / "checkpoints" / step_dir_name(step)
    view = checkpoint / VIEW_DIR
    if (view / RESULT_FILE).is_file():
        return view
    if not checkpoint.is_dir():
        kept = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*")) if (run_dir / "checkpoints").is_dir() else []
        raise StudioError(f"{run_dir} has no checkpoint at step {step} (kept: {', '.join(kept) or 'none'}); "
                          "choose one of those, best or final.")
    _write_view(run_dir, checkpoint, view, step)
    return view


def _weights_run(run_dir: Path, kind: str) -> Path:
    """With EMA on: the run itself when its result holds ``kind`` weights, else its other-weights view."""
    result = _result(run_dir)
    if result.get(WEIGHTS_KEY) == kind:
        return run_dir
    view = run_dir / weights_dir_name(kind)
    if not (view / RESULT_FILE).is_file():
        raise StudioError(f"{run_dir} has no {kind} weights: they exist only for runs trained with EMA "
                          "(ema_decay above 0). Choose best, final or a step.")
    return view


def _write_view(run_dir: Path, checkpoint: Path, view: Path, step: int) -> None:
    import trainers
    from studio.models import load_configured_base
    from studio.subjects import load_subject
    from trainers.base import load_run_config
    from trainers.checkpoints import load_checkpoint

    config = load_run_config(run_dir)
    result = _result(run_dir)
    subject = load_subject(run_dir / "subject")
    method = trainers.METHODS[config.method](config, load_configured_base(config), subject)
    method.setup()
    state = load_checkpoint(checkpoint)
    use_ema = state.ema is not None and config.ema_weights == "ema"  # a checkpoint shows what the result shows
    method.load_trainable_state({k.removeprefix("ema."): v for k, v in state.ema.items() if k != "ema.updates"}
                                if use_ema else state.trainable)
    with atomic_dir(view, replace=True) as tmp:
        shutil.copy2(config_path(run_dir), config_path(tmp))
        shutil.copytree(run_dir / "subject", tmp / "subject")
        artifact = tmp / method.artifact
        artifact.mkdir()
        extras = method.save_result(artifact)
        view_result = {k: v for k, v in result.items() if k not in (BEST_KEY, "overfitting", "early_stop")}
        view_result.update(extras, steps=step, **{CHECKPOINT_KEY: {"run": str(run_dir), "step": step}})
        write_json(tmp / RESULT_FILE, view_result)
