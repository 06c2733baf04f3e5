"""One line per export format saying what the file is and who loads it, for the web UI's checkboxes and
``studio export --help``. The export report (export.json) records per file which consumers were checked."""

from __future__ import annotations

FORMAT_NOTES: dict[tuple[str, str], str] = {
    ("lora", "diffusers"): "one .safetensors in diffusers' layout: diffusers' load_lora_weights, ComfyUI",
    ("lora", "kohya"): "one .safetensors in kohya's layout: AUTOMATIC1111, Forge, ComfyUI, kohya sd-scripts",
    ("lora", "peft"): "adapter folders per model part: PEFT's PeftModel.from_pretrained",
    ("textual_inversion", "diffusers"): "learned_embeds.safetensors: diffusers' load_textual_inversion",
    ("textual_inversion", "a1111"): "an embedding file for AUTOMATIC1111, Forge and ComfyUI (embeddings folder)",
    ("pivotal", "diffusers"): "the LoRA and its token's learned_embeds.safetensors: load_lora_weights + load_textual_inversion",
    ("pivotal", "kohya"): "a kohya LoRA and an A1111 embedding, used together: AUTOMATIC1111, Forge, ComfyUI",
    ("dreambooth", "diffusers"): "the whole model as a diffusers folder: DiffusionPipeline.from_pretrained",
    ("dreambooth", "single-file"): "the whole model as one checkpoint file: AUTOMATIC1111, Forge, ComfyUI",
    ("dreambooth", "lora"): "a small LoRA extracted from the fine-tune, in diffusers' and kohya's layouts",
}


def format_note(method: str, fmt: str) -> str:
    return FORMAT_NOTES.get((method, fmt), "")


def format_choice(method: str | None, fmt: str) -> tuple[str, str]:
    """``("kohya: one .safetensors ... ", "kohya")`` for a checkbox (label, value)."""
    note = format_note(method, fmt) if method else ""
    return (f"{fmt}: {note}" if note else fmt, fmt)
