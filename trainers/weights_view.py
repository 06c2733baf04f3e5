"""With EMA on, the set of weights the result does not use, written as a finished run of its own.

``ema_weights: ema`` makes the run's result the EMA; the raw weights go to ``RUN/weights-raw/``
(and with ``raw``, the EMA to ``RUN/weights-ema/``): config, subject, the artifact and a
``result.json`` saying which weights they are. ``studio eval/export/generate`` take it like any run,
and ``--checkpoint raw`` / ``--checkpoint ema`` pick it (:func:`trainers.checkpoint_view.checkpoint_run`).
"""

from __future__ import annotations

import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from studio.atomic import atomic_dir, write_json
from studio.run_layout import RESULT_FILE, SUBJECT_DIR, config_path

WEIGHT_CHOICES = ("ema", "raw")
WEIGHTS_KEY = "weights"  # in result.json: which set a result holds


def weights_dir_name(kind: str) -> str:
    return f"weights-{kind}"


def write_other_weights(trainer, result: dict[str, Any]) -> dict[str, str]:
    """Write the set of weights the result does not hold; returns its record for result.json."""
    other = "raw" if trainer.config.ema_weights == "ema" else "ema"
    result[WEIGHTS_KEY] = trainer.config.ema_weights
    run_dir: Path = trainer.run_dir
    view = run_dir / weights_dir_name(other)
    with atomic_dir(view, replace=True) as tmp:
        shutil.copy2(config_path(run_dir), config_path(tmp))
        shutil.copytree(run_dir / SUBJECT_DIR, tmp / SUBJECT_DIR)
        artifact = tmp / trainer.method.artifact
        artifact.mkdir()
        with trainer.evaluated_weights(ema=False), trainer.ema.applied() if other == "ema" else nullcontext():
            extras = trainer.method.save_result(artifact)
        write_json(tmp / RESULT_FILE, dict(result) | extras | {WEIGHTS_KEY: other, "weights_of": str(run_dir)})
    return {WEIGHTS_KEY: other, "run": view.name}
