"""Limits on every size and count a person can type outside the training settings, declared once.

Training settings carry their own ranges in :mod:`studio.settings`. Everything else a user types —
image sizes and counts for generation, evaluation sizes, prompt lengths, upload sizes — is bounded
here, and the CLI, the Python API, the web UI and its HTTP API all check the same declarations, so a
10000x10000 image or 100000 images are refused at once instead of running for minutes and
gigabytes. Each limit knows its CLI flag and its web control, so the message names what the person
typed and how to fix it. ``studio settings --markdown`` lists them (docs/settings.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from studio.errors import StudioError

CLI, UI, API = "cli", "ui", "api"


@dataclass(frozen=True)
class Limit:
    """A bounded number a user types: ``minimum <= value <= maximum`` (and a multiple of ``multiple_of``)."""

    name: str  # the Python API's parameter name
    minimum: float
    maximum: float
    help: str
    flag: str | None = None  # the CLI flag (None: no CLI flag sets it)
    control: str | None = None  # the web UI control's label (None: not in the web UI)
    multiple_of: int | None = None
    unit: str = ""

    def label(self, front: str = API) -> str:
        if front == CLI and self.flag:
            return self.flag
        if front == UI and self.control:
            return self.control
        return self.name

    def check(self, value: Any, front: str = API) -> Any:
        """``value`` if allowed; otherwise a :class:`LimitError` naming the flag/control and the fix."""
        label = self.label(front)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise LimitError(f"{label} must be a number from {_fmt(self.minimum)} to {_fmt(self.maximum)}{self._unit()}, not {value!r}.")
        if value < self.minimum or value > self.maximum:
            bound = self.maximum if value > self.maximum else self.minimum
            side = "at most" if value > self.maximum else "at least"
            raise LimitError(
                f"{label} {_fmt(value)} is out of range: it must be {side} {_fmt(bound)}{self._unit()} "
                f"({self.help}). Use {label} {_fmt(bound)} or a value in between {_fmt(self.minimum)} and {_fmt(self.maximum)}."
            )
        if self.multiple_of and value % self.multiple_of:
            lower = max(int(value) // self.multiple_of * self.multiple_of, self.multiple_of)
            raise LimitError(f"{label} {_fmt(value)} is not a multiple of {self.multiple_of}; use {lower} or {lower + self.multiple_of}.")
        return value

    def _unit(self) -> str:
        return f" {self.unit}" if self.unit else ""


class LimitError(StudioError):
    """A number a user typed is outside its declared limit."""


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# ---------------------------------------------------------------- generation (CLI, API, web Generate tab)
IMAGE_SIDE = Limit("width/height", 8, 2048, "a side of a generated image", flag="--width/--height",
                   control="Width/Height", multiple_of=8, unit="pixels")
IMAGE_PIXELS = Limit("width*height", 64, 2048 * 2048, "pixels of one generated image (2048x2048)",
                     flag="--width x --height", control="Width x Height", unit="pixels")
NUM_IMAGES = Limit("num_images", 1, 64, "images one request generates", flag="--num-images")
GENERATION_STEPS = Limit("steps", 1, 500, "denoising steps", flag="--steps", control="Steps")
GUIDANCE = Limit("guidance", 0, 50, "classifier-free guidance scale", flag="--guidance", control="Guidance")
STRENGTH = Limit("strength", 0, 1, "how far img2img moves from the start image", flag="--strength", control="Strength")
SEED = Limit("seed", 0, 2**32 - 1, "the first image's seed", flag="--seed", control="Seed")
ADAPTERS = Limit("adapters", 0, 16, "LoRAs and embeddings composed in one request", flag="--adapter (count)",
                 control="Trained runs (count)")
CONTROL_STRENGTH = Limit("control.strength", 0, 2, "how strongly the ControlNet steers (0: not at all)",
                         flag="--control-strength", control="Control strength")
CANNY_THRESHOLD = Limit("control.canny_low/high", 0, 2040, "canny edge thresholds on the Sobel gradient (L1)",
                        flag="--canny-low/--canny-high", control="Canny thresholds")
IMAGE_GUIDANCE = Limit("image_guidance", 0, 20, "how closely an instruction edit keeps to the start image",
                       flag="--image-guidance", control="Image guidance")
INPUT_IMAGE_PIXELS = Limit("input image", 1, 8192 * 8192, "pixels of a start image, mask or control image as read "
                           "(it is then resized to the generated size)", flag="--init-image/--mask/--control",
                           control="Start image / mask / control image", unit="pixels")
# Images the pipeline renders at once; more are rendered in several batches (same images, bounded memory).
GENERATION_BATCH = 4

# ---------------------------------------------------------------- text
PROMPT_CHARS = Limit("prompt", 1, 4000, "characters in a prompt (CLIP reads the first 77 tokens)", flag="--prompt",
                     control="Prompt", unit="characters")
NEGATIVE_CHARS = Limit("negative_prompt", 0, 4000, "characters in a negative prompt", flag="--negative",
                       control="Negative prompt", unit="characters")
SETTING_TEXT_CHARS = 4000  # any text setting, and each item of a list setting (studio.config)
SETTING_LIST_ITEMS = 64  # items of a list setting such as sample_prompts or lora_target_modules
RECIPE_BYTES = 1_000_000  # a recipe or config.yaml file

# ---------------------------------------------------------------- evaluation (CLI, API, web Evaluate tab)
EVAL_IMAGES_PER_PROMPT = Limit("images_per_prompt", 1, 64, "images per prompt", flag="--images-per-prompt",
                               control="Images per prompt")
EVAL_CLASS_IMAGES = Limit("class_images", 0, 512, "class-prompt images for PRES", flag="--class-images",
                          control="Class images")
EVAL_MAX_PROMPTS = Limit("max_prompts", 1, 1000, "prompts evaluated", flag="--max-prompts", control="Prompts (0: all)")
EVAL_STEPS = Limit("steps", 1, 500, "sampling steps", flag="--steps", control="Sampling steps")
EVAL_GUIDANCE = Limit("guidance", 0, 50, "classifier-free guidance scale", flag="--guidance", control="Guidance")
EVAL_BATCH = Limit("batch_size", 1, 64, "images generated per batch", flag="--batch-size", control="Batch size")

# ---------------------------------------------------------------- uploads (web UI)
UPLOAD_MB = Limit("upload", 1, 25, "size of one uploaded file", control="Photos", unit="MB")

ALL: tuple[Limit, ...] = (
    IMAGE_SIDE, IMAGE_PIXELS, NUM_IMAGES, GENERATION_STEPS, GUIDANCE, STRENGTH, SEED, ADAPTERS, CONTROL_STRENGTH,
    CANNY_THRESHOLD, IMAGE_GUIDANCE, INPUT_IMAGE_PIXELS, PROMPT_CHARS,
    NEGATIVE_CHARS, EVAL_IMAGES_PER_PROMPT, EVAL_CLASS_IMAGES, EVAL_MAX_PROMPTS, EVAL_STEPS, EVAL_GUIDANCE,
    EVAL_BATCH, UPLOAD_MB,
)


def check_text(limit: Limit, text: str | None, front: str = API) -> None:
    """A prompt's length against ``limit`` (an empty prompt is the caller's own message)."""
    if text is not None and len(text) > limit.maximum:
        label = limit.label(front)
        raise LimitError(f"{label} is {len(text)} characters; at most {_fmt(limit.maximum)} are accepted ({limit.help}). Shorten it.")


def check_image_size(width: int | None, height: int | None, front: str = API) -> None:
    for side in (width, height):
        if side is not None:
            IMAGE_SIDE.check(side, front)
    if width is not None and height is not None:
        IMAGE_PIXELS.check(width * height, front)


def limits_markdown() -> str:
    """The limits as a markdown table (appended to docs/settings.md)."""
    lines = ["## Limits", "", "Declared once in `studio/limits.py`; the CLI, the Python API and the web UI (and its HTTP API) "
             "all refuse values outside them.", "", "| limit | range | CLI | web UI | what |", "|---|---|---|---|---|"]
    for item in ALL:
        multiple = f", multiple of {item.multiple_of}" if item.multiple_of else ""
        lines.append(f"| `{item.name}` | {_fmt(item.minimum)}–{_fmt(item.maximum)}{item._unit()}{multiple} | "
                     f"{item.flag or '—'} | {item.control or '—'} | {item.help} |")
    lines += ["", f"Text settings and each item of a list setting: at most {SETTING_TEXT_CHARS} characters; list settings "
              f"at most {SETTING_LIST_ITEMS} items; recipe files at most {RECIPE_BYTES // 1000} kB, without YAML aliases."]
    return "\n".join(lines) + "\n"
