"""Which diffusers pipeline does each generation task for each model family, and what a base model is.

Each family names its task pipelines and ControlNet classes (``task_pipelines``, ``controlnet_classes`` in
:mod:`studio.families`); this module only looks them up. A task pipeline is built from the loaded base
pipeline's components (``from_pipe``: no new weights, the adapters already loaded into its denoiser and text
encoders stay active); a ControlNet is passed in as one more component. A family without a pipeline for a
task is refused with a message saying so.
"""

from __future__ import annotations

import inspect
from typing import Any

from studio.errors import StudioError

TASKS = ("inpaint", "control", "control-img2img", "control-inpaint", "instruct")
_TASK_WORDS = {"instruct": "instruction edits", "control": "ControlNet",
               "control-img2img": "ControlNet with a start image (no mask)", "control-inpaint": "ControlNet with a mask"}


def family_tasks(family_name: str) -> Any:
    """The family named so (its ``task_pipelines``, ``controlnet_classes``, ``control_image_argument``)."""
    from studio.families import family_named

    family = family_named(family_name)
    if not family.task_pipelines:
        raise StudioError(f"Inpainting, ControlNet and instruction edits are not available for {family.label or family_name} "
                          "models yet.")
    return family


def pipeline_class(family_name: str, task: str) -> type:
    import diffusers

    family = family_tasks(family_name)
    name = family.task_pipelines.get(task)
    if name is None:
        raise StudioError(f"{family.label or family_name} models have no pipeline for {_TASK_WORDS.get(task, task)} in "
                          f"diffusers {diffusers.__version__}.")
    return getattr(diffusers, name)


def controlnet_class(family_name: str) -> type:
    """The ControlNet class that loads a hub id or single file for a base of ``family_name``."""
    import diffusers

    family = family_tasks(family_name)
    if not family.controlnet_classes:
        raise StudioError(f"{family.label or family_name} models take no ControlNet in Studio yet.")
    return getattr(diffusers, family.controlnet_classes[0])


def denoiser_inputs(pipe: Any) -> int | None:
    """Input channels of the base's denoiser: 4 (plain SD), 9 (inpainting), 8 (InstructPix2Pix)."""
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    return getattr(getattr(denoiser, "config", None), "in_channels", None)


def base_kind(pipe: Any) -> str:
    """``"inpaint"`` (an inpainting model), ``"instruct"`` (instruction-tuned) or ``"plain"``."""
    if getattr(pipe, "unet", None) is None:
        return "plain"  # transformer families: their inpainting pipelines blend on the plain model
    return {9: "inpaint", 8: "instruct"}.get(denoiser_inputs(pipe) or 4, "plain")


def accepts(pipe: Any, argument: str) -> bool:
    """Whether ``pipe``'s ``__call__`` takes ``argument``."""
    return argument in inspect.signature(type(pipe).__call__).parameters
