"""Private and offline by default: environment that must be set before gradio is imported.

Without these, ``gradio.Blocks()`` asks a version-check and a telemetry host, and gradio_client
and huggingface_hub may contact the Hub. Uploads and Gradio's file cache go inside the studio data
directory (``DATA_DIR/uploads``), so nothing a person uploads lands elsewhere on the machine.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

OFFLINE_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}


def configure(data_dir: str | Path | None = None) -> Path:
    """Set the offline/private environment and return the uploads folder; call before importing gradio.

    A variable the user set explicitly is kept (``HF_HUB_OFFLINE=0`` still allows hub downloads of
    base models), except analytics, which stay off.
    """
    from studio.paths import DATA_DIR_ENV
    from studio.paths import data_dir as studio_data_dir

    if "gradio" in sys.modules:
        warnings.warn("webui.env.configure() ran after gradio was imported; some settings may not apply.", stacklevel=2)
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    if data_dir:
        os.environ[DATA_DIR_ENV] = str(Path(data_dir).expanduser().resolve())
    uploads = studio_data_dir().resolve() / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(uploads)
    return uploads
