"""SD3/3.5 DreamBooth as one all-in-one file in Stability's original layout
(:mod:`studio.families.sd3.checkpoint`): the MMDiT, CLIP-L, CLIP-G, T5 (when the base has one) and the VAE.

Proof. (1) diffusers' own loader: ``StableDiffusion3Pipeline.from_single_file`` with the run's model folder as
the offline ``config`` reads every component back; every tensor is compared with the run's pipeline and the
image rendered from the reloaded pipeline is compared with the run's, both pipelines' weights in fresh memory
(:func:`_fresh_memory`; the difference as loaded is recorded too). (2) Key rules: ComfyUI's *Load Checkpoint*
and Forge (the same detection, :mod:`studio.export.consumers.sd3_checkpoint`) on the file's names and shapes;
they build SD3 at its real widths (64 · depth), so a tiny model's file is refused there and the verdict says
why. A1111 (1.10+) has no SD3.5 model (verdict none); SD3 medium checkpoints load through its own port of SAI's
code, whose rules are not restated here (not checked).
"""

from __future__ import annotations

from typing import Any

from studio.export.consumers.a1111_sd3 import a1111_sd3_checkpoint_verdict
from studio.export.consumers.sd3_checkpoint import sd3_checkpoint_verdict

FORMAT = "full model (single file, SD3 all-in-one)"
FORGE = "Forge"
COMFYUI = "ComfyUI"


def export_single_file(ctx) -> None:
    """Write ``<stem>.safetensors``, reload it with diffusers' ``from_single_file`` and record each consumer's verdict."""
    from safetensors import safe_open

    from studio.export.full_model import write_single_file
    from studio.export.verify import (
        IMAGE_TOLERANCE,
        check_image,
        check_same_weights,
        image_difference,
        render,
    )

    reference = ctx.reference_pipeline()
    path = write_single_file(reference, ctx.out / f"{ctx.stem}.safetensors", ctx.family)
    model_dir = ctx.run.directory / ctx.result["artifact"]
    pipeline_class = ctx.family.pipeline_classes()[0]
    reloaded = pipeline_class.from_single_file(str(path), config=str(model_dir))
    components = tuple(name for name in ctx.family.weighted_component_names if getattr(reference, name, None) is not None)
    tensors = check_same_weights(reference, reloaded, components, "SD3 single-file checkpoint")
    as_loaded = image_difference(render(reloaded, ctx.spec), ctx.reference_image())
    for pipe in (reference, reloaded):
        _fresh_memory(pipe, components)
    difference = image_difference(render(reloaded, ctx.spec), render(reference, ctx.spec))
    check_image("SD3 single-file checkpoint", difference)
    with safe_open(str(path), framework="pt") as handle:
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    consumers: dict[str, dict[str, Any]] = {
        "diffusers from_single_file": {"proof": "own code", "loads": "all", "tensors": tensors,
                                       "loader": f"{pipeline_class.__name__}.from_single_file (config: the run's model folder)"},
        COMFYUI: sd3_checkpoint_verdict(shapes, COMFYUI),
        FORGE: sd3_checkpoint_verdict(shapes, FORGE) | {"note": "Forge's huggingface_guess repeats ComfyUI's detection"},
        "A1111": a1111_sd3_checkpoint_verdict(reference.transformer.config),
    }
    by_rules = [name for name in (COMFYUI, FORGE) if consumers[name]["loads"] == "all"]
    ctx.record(path, FORMAT, "diffusers from_single_file" + "".join(f", {n} (key rules)" for n in by_rules),
               f"{len(shapes)} tensors; all {tensors} of {', '.join(components)} reloaded equal by from_single_file; "
               f"max pixel diff {difference:.1e} (as loaded {as_loaded:.1e}); ComfyUI by its rules: "
               f"{consumers[COMFYUI]['loads']}",
               tensors=len(shapes), max_abs_diff=difference, as_loaded_diff=as_loaded, tolerance=IMAGE_TOLERANCE,
               consumers=consumers)


def _fresh_memory(pipe, components: tuple[str, ...]) -> None:
    """Every weight copied into newly allocated memory. diffusers keeps tensors where safetensors mapped them, at
    whatever alignment the file gave them, and float32 kernels then round differently by up to an ulp; with
    both pipelines' weights in fresh allocations the same weights give the same image."""
    for name in components:
        module = getattr(pipe, name)
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.data = tensor.data.clone()


def usage(stem: str) -> str:
    return (f"**ComfyUI**: copy `{stem}.safetensors` into `models/checkpoints/` and pick it in *Load Checkpoint* (it "
            "holds the MMDiT, CLIP-L, CLIP-G, T5 and the VAE). **Forge**: into `models/Stable-diffusion/`. **diffusers**: "
            f"`StableDiffusion3Pipeline.from_single_file(\"DIR/{stem}.safetensors\", config=BASE_FOLDER)`.")


__all__ = ["FORMAT", "export_single_file", "usage"]
