"""Export a DreamBooth run: the diffusers folder, one original-layout ``.safetensors``, or an SVD LoRA.

The single file uses SD1.x's original layout (``studio.export.ldm_keys``) or SDXL's SGM layout
(``studio.families.sdxl.names``); it is reloaded with the family pipeline's ``from_single_file``, with the
run's own model folder as the offline ``config``.
"""

from __future__ import annotations

import shutil
from importlib import import_module
from pathlib import Path

import torch

from studio.atomic import save_safetensors
from studio.errors import StudioError
from studio.export.context import ExportContext
from studio.export.portable_folder import make_portable
from studio.export.verify import IMAGE_TOLERANCE, check_image, check_same_weights, image_difference, render
from studio.methods import method_spec

FULL_FORMATS = method_spec("dreambooth").export_formats


def export_dreambooth_run(ctx: ExportContext, formats: list[str], rank: int) -> None:
    model_dir = ctx.run.directory / ctx.result["artifact"]
    ctx.usage += _usage(ctx, formats)
    if "diffusers" in formats:
        shutil.copytree(model_dir, ctx.out, dirs_exist_ok=True)
        make_portable(ctx.out, ctx.family)
        _verify_folder(ctx, ctx.out)
    if "single-file" in formats and ctx.family.single_file_writer:  # the family's own writer (Flux, SD3)
        import_module(ctx.family.single_file_writer).export_single_file(ctx)
    elif "single-file" in formats:
        _verify_single_file(ctx, write_single_file(ctx.reference_pipeline(), ctx.out / f"{ctx.stem}.safetensors",
                                                    ctx.family), model_dir)
    if "lora" in formats:
        _export_svd(ctx, rank)


def single_file_state(pipe, family) -> dict[str, torch.Tensor]:
    """Every weight of the pipeline in the original checkpoint layout A1111/ComfyUI load (the family's names)."""
    return family.single_file_state(pipe)


def write_single_file(pipe, path: Path, family) -> Path:
    architecture = family.modelspec_architecture.removesuffix("/lora")  # the base model's, not a LoRA's
    metadata = {"format": "pt", "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": architecture,
                "modelspec.implementation": "https://github.com/Stability-AI/generative-models"}
    save_safetensors(single_file_state(pipe, family), path, metadata=metadata)
    return path


def _components(ctx: ExportContext) -> tuple[str, ...]:
    """The weighted components a full-model export must carry: denoiser, VAE and every text encoder."""
    return ctx.family.weighted_component_names


def _verify_folder(ctx: ExportContext, folder: Path) -> None:
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(folder), use_safetensors=True)
    tensors = check_same_weights(ctx.reference_pipeline(), pipe, _components(ctx), "diffusers folder")
    difference = image_difference(render(pipe, ctx.spec), ctx.reference_image())
    check_image("diffusers folder", difference)
    ctx.record(folder / "model_index.json", "full model (diffusers folder)", "diffusers from_pretrained",
               f"{tensors} tensors equal after from_pretrained; max pixel diff {difference:.1e}",
               tensors=tensors, max_abs_diff=difference, tolerance=IMAGE_TOLERANCE)


def _verify_single_file(ctx: ExportContext, path: Path, config_dir: Path) -> None:
    """``from_single_file`` with a local config folder (offline diffusers cannot fetch one)."""
    from safetensors import safe_open

    pipeline_class = ctx.family.pipeline_classes()[0]
    pipe = pipeline_class.from_single_file(str(path), config=str(config_dir))
    check_same_weights(ctx.reference_pipeline(), pipe, _components(ctx), "single-file checkpoint")
    with safe_open(str(path), framework="pt") as handle:
        in_file = len(list(handle.keys()))
    expected = len(single_file_state(ctx.reference_pipeline(), ctx.family))
    if in_file != expected:
        raise StudioError(f"{path.name}: {in_file} tensors written, {expected} expected.")
    difference = image_difference(render(pipe, ctx.spec), ctx.reference_image())
    check_image("single-file checkpoint", difference)
    ctx.record(path, "full model (single file, original SD layout)", "A1111, Forge, ComfyUI, diffusers from_single_file",
               f"{in_file} tensors, all reloaded equal by from_single_file; max pixel diff {difference:.1e}",
               tensors=in_file, max_abs_diff=difference, tolerance=IMAGE_TOLERANCE)


def _export_svd(ctx: ExportContext, rank: int) -> None:
    from studio.export.lora_export import export_extracted_lora
    from studio.export.svd_extract import extract_lora

    base = ctx.fresh_base()
    extraction = extract_lora(base.components, ctx.reference_pipeline().components, rank)
    if not extraction.weights.modules:
        raise StudioError("The DreamBooth model's weights equal the base model's: there is no fine-tune to extract.")
    ctx.extra["svd"] = extraction.summary()
    ctx.extra["base_image_difference"] = image_difference(render(base, ctx.spec), ctx.reference_image())
    del base
    export_extracted_lora(ctx, extraction.weights, ctx.out / "lora", extraction.module_norm2, extraction.delta_norm2)
    summary = ctx.extra["svd"]
    gaps = ctx.extra.get("svd_image_difference", {})
    summary["consumers"] = _svd_consumers(ctx)
    ctx.notes.append(
        f"The LoRA in `lora/` is an SVD extraction of the fine-tune (rank {rank}, {summary['modules']} layers). "
        f"It holds {summary['captured_fraction']:.1%} of the squared weight change "
        f"(biases, norms and embeddings cannot be a LoRA: {summary['not_adaptable_fraction']:.1%}). "
        f"Max pixel difference to the DreamBooth model at the verification seed: {gaps.get('diffusers', float('nan')):.3f} "
        f"(the untouched base model: {ctx.extra['base_image_difference']:.3f}); a higher --rank narrows it."
        f" What no file holds is {summary['left_out_relative_norm']:.1%} of the change (relative Frobenius norm)."
    )
    for where, verdicts in summary["consumers"].items():
        for consumer, verdict in verdicts.items():
            if verdict["loads"] != "all" and "why" in verdict:  # a consumer that has no place for the file
                ctx.notes.append(f"{consumer} does not load `{where}` ({verdict['loads']}): {verdict['why']}.")
            elif verdict["loads"] != "all" and "modules_in_file" in verdict:  # counted, not "not checked"
                ctx.notes.append(
                    f"{consumer} loads {verdict['modules_loaded']} of the {verdict['modules_in_file']} layers of "
                    f"`{where}` ({verdict['loads']}); the {len(verdict.get('left_out', []))} it leaves out are "
                    f"{verdict.get('left_out_relative_norm', 0.0):.2%} of the change (relative Frobenius norm)."
                )


def _svd_consumers(ctx: ExportContext) -> dict[str, dict]:
    """Per SVD file: the verdicts of the consumers its layout is written for (as recorded)."""
    from studio.export.lora_export import CONSUMERS

    return {entry["path"]: {name: entry["consumers"][name] for name in CONSUMERS[entry["layout"]]}
            for entry in ctx.files if entry["path"].startswith("lora/") and "consumers" in entry}


def _usage(ctx: ExportContext, formats: list[str]) -> list[str]:
    pipeline_class = ctx.family.pipeline_classes()[0].__name__
    snippets = []
    if "diffusers" in formats:
        snippets.append(
            f"**diffusers** (this folder is a complete pipeline):\n\n```python\nfrom diffusers import {pipeline_class}\n\n"
            f"pipe = {pipeline_class}.from_pretrained(\"DIR\")\nimage = pipe(\"{ctx.spec.prompt}\").images[0]\n```"
        )
    if "single-file" in formats and ctx.family.single_file_writer:
        snippets.append(import_module(ctx.family.single_file_writer).usage(ctx.stem))
    elif "single-file" in formats:
        snippets.append(
            f"**AUTOMATIC1111 / Forge**: copy `{ctx.stem}.safetensors` into `models/Stable-diffusion/`. **ComfyUI**: "
            f"into `models/checkpoints/`, then pick it in *Load Checkpoint*. **diffusers**: "
            f"`{pipeline_class}.from_single_file(\"DIR/{ctx.stem}.safetensors\", config=\"{ctx.base}\")` "
            "(offline, `config` must be a local diffusers folder of the same architecture)."
        )
    return snippets
