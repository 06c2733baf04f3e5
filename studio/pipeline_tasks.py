"""Which diffusers pipeline does each generation task for each model family, and what a base model is.

A task pipeline is built from the loaded base pipeline's components (``from_pipe``: no new weights, the
adapters already loaded into its UNet and text encoders stay active); a ControlNet is passed in as one
more component. Families are named as :mod:`studio.families` names them; a family missing from the table,
or a task it has no pipeline for, is refused with a message saying so.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from studio.errors import StudioError

TASKS = ("inpaint", "control", "control-img2img", "control-inpaint", "instruct")


@dataclass(frozen=True)
class FamilyTasks:
    pipelines: dict[str, str]  # task -> diffusers pipeline class name
    controlnet_class: str  # the ControlNet model class of this family
    control_image_argument: str = "control_image"  # how the txt2img ControlNet pipeline names its control image


_SD = FamilyTasks(
    {"inpaint": "StableDiffusionInpaintPipeline", "control": "StableDiffusionControlNetPipeline",
     "control-img2img": "StableDiffusionControlNetImg2ImgPipeline",
     "control-inpaint": "StableDiffusionControlNetInpaintPipeline",
     "instruct": "StableDiffusionInstructPix2PixPipeline"},
    "ControlNetModel", control_image_argument="image",
)
TABLE: dict[str, FamilyTasks] = {
    "sd1": _SD,
    "sd2": _SD,
    "sdxl": FamilyTasks(
        {"inpaint": "StableDiffusionXLInpaintPipeline", "control": "StableDiffusionXLControlNetPipeline",
         "control-img2img": "StableDiffusionXLControlNetImg2ImgPipeline",
         "control-inpaint": "StableDiffusionXLControlNetInpaintPipeline",
         "instruct": "StableDiffusionXLInstructPix2PixPipeline"},
        "ControlNetModel", control_image_argument="image",
    ),
    # The flow families (named as their studio.families entries will be): no instruction-tuned pipeline.
    "sd3": FamilyTasks(
        {"inpaint": "StableDiffusion3InpaintPipeline", "control": "StableDiffusion3ControlNetPipeline",
         "control-inpaint": "StableDiffusion3ControlNetInpaintingPipeline"},
        "SD3ControlNetModel",
    ),
    "flux": FamilyTasks(
        {"inpaint": "FluxInpaintPipeline", "control": "FluxControlNetPipeline",
         "control-img2img": "FluxControlNetImg2ImgPipeline", "control-inpaint": "FluxControlNetInpaintPipeline"},
        "FluxControlNetModel",
    ),
}


def family_tasks(family_name: str) -> FamilyTasks:
    if family_name not in TABLE:
        raise StudioError(f"Inpainting, ControlNet and instruction edits are not available for {family_name} models yet.")
    return TABLE[family_name]


def pipeline_class(family_name: str, task: str) -> type:
    import diffusers

    name = family_tasks(family_name).pipelines.get(task)
    if name is None:
        what = {"instruct": "instruction edits", "control-img2img": "ControlNet with a start image (no mask)"}.get(task, task)
        raise StudioError(f"{family_name} models have no pipeline for {what} in diffusers {diffusers.__version__}.")
    return getattr(diffusers, name)


def controlnet_class(family_name: str) -> type:
    import diffusers

    return getattr(diffusers, family_tasks(family_name).controlnet_class)


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
