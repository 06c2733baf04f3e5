"""Export a LoRA (a LoRA run's, or one extracted from a DreamBooth run) and prove each file reloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from studio.export.consumers import PROOF_OWN_CODE, consumer_report, match_all
from studio.export.consumers.flow_rules import (
    FLOW_KEY_RULE_CONSUMERS,
    REPORTED_CONSUMERS,
    flow_consumers,
    is_flow,
)
from studio.export.context import ExportContext
from studio.export.lora_kohya import save_kohya_lora
from studio.export.lora_peft import save_peft_folders
from studio.export.lora_weights import (
    LORA_WEIGHTS_FILE,
    LoraWeights,
    read_diffusers_lora,
    save_diffusers_lora_weights,
)
from studio.export.verify import (
    IMAGE_TOLERANCE,
    ExportVerificationError,
    check_image,
    check_lora_loaded,
    image_difference,
    render,
)
from studio.methods import method_spec
from studio.sampling import GUIDANCE, STEPS

ADAPTER = "verify"
LORA_FORMATS = method_spec("lora").export_formats
DIFFUSERS = "diffusers"
# The consumers each LoRA layout is written for; export fails if one of them would not load a run's
# LoRA completely at its trained strength (an SVD extraction reports what each leaves out instead).
CONSUMERS = {
    "diffusers": (DIFFUSERS,),
    "kohya": ("A1111", "Forge", "ComfyUI", "kohya sd-scripts", DIFFUSERS),
}


def export_lora_run(ctx: ExportContext, formats: list[str]) -> None:
    source = ctx.run.directory / ctx.result["artifact"] / LORA_WEIGHTS_FILE
    weights = read_diffusers_lora(source)
    ctx.extra["lora_modules"] = len(weights.modules)
    if "diffusers" in formats:
        # Rewritten, not copied: the run's file holds the installed transformers' text-encoder names
        # and alpha only in metadata (see lora_weights.diffusers_lora_state).
        target = save_diffusers_lora_weights(weights, ctx.out, ctx.family)
        _verify_lora_file(ctx, target, weights, "diffusers")
    if "kohya" in formats:
        target = save_kohya_lora(weights, ctx.out / f"{ctx.stem}.safetensors", ctx.family, kohya_info(ctx),
                                 unet_config=ctx.unet_config)
        _verify_lora_file(ctx, target, weights, "kohya")
    if "peft" in formats:
        folders = save_peft_folders(weights, ctx.out / "peft", ctx.base)
        _verify_peft(ctx, folders, weights)
    ctx.usage += lora_usage(ctx, formats, ".")


def export_extracted_lora(ctx: ExportContext, weights: LoraWeights, directory: Path,
                          module_norm2: dict[tuple[str, str], float], delta_norm2: float) -> None:
    """The SVD LoRA of a DreamBooth run in diffusers + kohya layout; its image gap is reported, not failed,
    and so is what each consumer leaves out of it (with its share of the fine-tune's change)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [(save_diffusers_lora_weights(weights, directory, ctx.family), "diffusers")]
    if ctx.family.supports_kohya_lora:
        written.append((save_kohya_lora(weights, directory / f"{ctx.stem}-lora.safetensors", ctx.family, kohya_info(ctx),
                                        unet_config=ctx.unet_config), "kohya"))
    for path, fmt in written:
        _verify_lora_file(ctx, path, weights, fmt, compare=False, norms=(module_norm2, delta_norm2))
    ctx.usage += lora_usage(ctx, [fmt for _, fmt in written], directory.relative_to(ctx.out).as_posix(),
                            kohya_stem=written[-1][0].stem if len(written) > 1 else None)


def kohya_info(ctx: ExportContext) -> dict:
    config = ctx.run.config
    return {
        "title": ctx.stem,
        "trigger_phrase": ctx.run.token,
        "resolution": config.resolution,
        "steps": ctx.result.get("steps", config.steps),
        "learning_rate": config.learning_rate,
        "description": f"{ctx.run.method} of {ctx.base} on '{ctx.run.subject.instance_prompt}' (Studio)",
    }


def _verify_lora_file(ctx: ExportContext, path: Path, weights: LoraWeights, fmt: str, compare: bool = True,
                      norms: tuple[dict, float] | None = None) -> None:
    label = fmt if compare else f"{fmt} (SVD rank {ctx.extra['svd']['rank']})"
    what = f"{label} LoRA {path.name}"
    if fmt == "kohya" and ctx.family.fused_kohya_layout:
        _verify_fused_kohya(ctx, path, weights, label, what)
        return
    pipe = ctx.fresh_base()
    pipe.load_lora_weights(str(path), adapter_name=ADAPTER, use_safetensors=True)
    layers = check_lora_loaded(pipe, ADAPTER, weights, what)
    difference = image_difference(render(pipe, ctx.spec), ctx.reference_image())
    if compare:
        check_image(what, difference)
        check = f"{layers} LoRA layers loaded by diffusers load_lora_weights; max pixel diff {difference:.1e}"
    else:
        ctx.extra.setdefault("svd_image_difference", {})[fmt] = difference
        check = f"{layers} LoRA layers loaded by diffusers load_lora_weights; max pixel diff to DreamBooth {difference:.3f}"
    consumers = _consumers(ctx, path, weights, fmt, strict=compare, norms=norms)
    consumers[DIFFUSERS] = _diffusers_verdict(layers)
    named = CONSUMERS[fmt] + (FLOW_KEY_RULE_CONSUMERS if is_flow(ctx.family) else ())
    loaded_by = [name for name in named if consumers[name]["loads"] == "all"]
    ctx.record(path, f"LoRA ({label})", ", ".join(loaded_by), check, layers=layers, max_abs_diff=difference,
               tolerance=IMAGE_TOLERANCE if compare else None, layout=fmt, consumers=consumers)


def _verify_fused_kohya(ctx: ExportContext, path: Path, weights: LoraWeights, label: str, what: str) -> None:
    """A layout whose modules are fused (Flux's BFL names): every update read back equal by the family's
    reader. diffusers' kohya-Flux reader hard-codes FLUX.1's widths, so it is run on that layout at those
    widths by the tests (tests/test_flux_kohya.py), not on a tiny model's file here."""
    import torch
    from safetensors.torch import load_file

    state = load_file(str(path))
    got = ctx.family.read_kohya_state(state, ctx.unet_config)
    denoiser = ctx.family.denoiser_name
    expected = {m.path: m.delta().double() for m in weights.modules if m.component == denoiser}
    wrong = sorted(p for p in expected if p not in got or not torch.allclose(got[p], expected[p], rtol=1e-4, atol=1e-6))
    extra = sorted(set(got) - set(expected))
    encoders = [m for m in weights.modules if m.component != denoiser]
    missing_te = [m.path for m in encoders
                  if f"{ctx.family.kohya_lora_name(m.component, m.path)}.lora_down.weight" not in state]
    if wrong or extra or missing_te:
        raise ExportVerificationError(f"{what}: read back, {len(wrong)} modules differ, {len(extra)} are extra and "
                                      f"{len(missing_te)} text-encoder modules are missing (e.g. {(wrong + extra + missing_te)[:3]}).")
    layers = len(expected) + len(encoders)
    consumers = _consumers(ctx, path, weights, "kohya", strict=label == "kohya", norms=None)
    consumers[DIFFUSERS] = {"proof": PROOF_OWN_CODE, "loads": "not run on this file",
                            "why": "diffusers' kohya-Flux reader hard-codes FLUX.1's widths; it reads this layout "
                                   "back exactly at those widths in tests/test_flux_kohya.py"} if ctx.family.name == "flux" else {
        "proof": "own code, in tests/test_flow_export.py", "loads": "none",
        "why": f"diffusers {_version('diffusers')} load_lora_weights finds no SD3 keys in this layout and loads "
               "nothing, without an error: use pytorch_lora_weights.safetensors (studio generate splits this file back itself)"}
    loaded_by = [name for name in REPORTED_CONSUMERS if consumers[name]["loads"] == "all"]
    ctx.record(path, f"LoRA ({label})", ", ".join(loaded_by) + " (key rules); Studio's reader",
               f"{layers} LoRA modules read back equal from the original fused layout", layers=layers, layout="kohya",
               consumers=consumers)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _diffusers_verdict(layers: int) -> dict[str, Any]:
    return {"proof": PROOF_OWN_CODE, "loads": "all", "modules_loaded": layers, "strength": "as trained",
            "loader": f"diffusers {_version('diffusers')} load_lora_weights (transformers {_version('transformers')})"}


def _consumers(ctx: ExportContext, path: Path, weights: LoraWeights, fmt: str, *, strict: bool,
               norms: tuple[dict, float] | None) -> dict[str, dict[str, Any]]:
    """Every key-rule consumer's verdict on the file; ``strict``: the ones it is written for must load all."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    if is_flow(ctx.family):  # Flux/SD3: ComfyUI's and Forge's rules for the original fused layout
        verdicts = flow_consumers(state, weights, ctx.layout())
        failed = [name for name in FLOW_KEY_RULE_CONSUMERS if fmt == "kohya" and verdicts[name]["loads"] != "all"]
        if strict and failed:
            raise ExportVerificationError(f"{fmt} LoRA {path.name}: by {failed[0]}'s key rules it would not load "
                                          f"completely ({verdicts[failed[0]]}). The export was not written.")
        return verdicts
    module_norm2, delta_norm2 = norms if norms else (None, None)
    verdicts = {
        name: consumer_report(result, weights, state, module_norm2, delta_norm2)
        for name, result in match_all(list(state), ctx.layout()).items()
    }
    failed = [name for name in CONSUMERS[fmt] if name in verdicts and verdicts[name]["loads"] != "all"]
    if strict and failed:
        name = failed[0]
        raise ExportVerificationError(
            f"{fmt} LoRA {path.name}: by {name}'s key rules it would not load completely "
            f"({verdicts[name]}). The export was not written."
        )
    return verdicts


def _verify_peft(ctx: ExportContext, folders: list[Path], weights: LoraWeights) -> None:
    from peft import PeftModel

    pipe = ctx.fresh_base()
    for folder in folders:
        # PeftModel injects the adapter into the module in place; the pipeline keeps using that module.
        PeftModel.from_pretrained(getattr(pipe, folder.name), str(folder), adapter_name=ADAPTER)
    layers = check_lora_loaded(pipe, ADAPTER, weights, "PEFT adapter folders")
    difference = image_difference(render(pipe, ctx.spec), ctx.reference_image())
    check_image("PEFT adapter folders", difference)
    for folder in folders:
        count = len(weights.by_component(folder.name))
        ctx.record(folder, "LoRA (PEFT adapter)", "peft PeftModel.from_pretrained",
                   f"{count} LoRA layers loaded by PeftModel.from_pretrained; max pixel diff {difference:.1e}",
                   layers=count, max_abs_diff=difference, tolerance=IMAGE_TOLERANCE,
                   consumers={"peft": {"proof": PROOF_OWN_CODE, "loads": "all", "modules_loaded": count,
                                       "loader": f"peft {_version('peft')} (transformers {_version('transformers')})"}})
    ctx.extra["peft_layers"] = layers


def lora_usage(ctx: ExportContext, formats: list[str], where: str, kohya_stem: str | None = None) -> list[str]:
    pipeline_class = ctx.family.pipeline_classes()[0].__name__
    prompt = ctx.spec.prompt
    folder = "DIR" if where == "." else f"DIR/{where}"
    snippets = []
    if "diffusers" in formats:
        subfolder = "" if where == "." else f", subfolder=\"{where}\""
        snippets.append(
            f"**diffusers**:\n\n```python\nfrom diffusers import {pipeline_class}\n\n"
            f"pipe = {pipeline_class}.from_pretrained(\"{ctx.base}\")\n"
            f"pipe.load_lora_weights(\"DIR\"{subfolder}, weight_name=\"{LORA_WEIGHTS_FILE}\")\n"
            f"image = pipe(\"{prompt}\", num_inference_steps={STEPS}, guidance_scale={GUIDANCE}).images[0]\n```"
        )
    if "kohya" in formats:
        stem = kohya_stem or ctx.stem
        snippets.append(
            f"**{'Forge' if is_flow(ctx.family) else 'AUTOMATIC1111 / Forge'}**: copy `{stem}.safetensors` into `models/Lora/` and write "
            f"`<lora:{stem}:1> {prompt}`. **ComfyUI**: copy it into `models/loras/` and add a *LoraLoader* node "
            f"between the checkpoint loader and the sampler. " + (
                "diffusers does not read this SD3 layout: use `pytorch_lora_weights.safetensors` there "
                "(`studio generate` reads both)."
                if ctx.family.name == "sd3" else
                f"diffusers also reads it: `pipe.load_lora_weights(\"{folder}/{stem}.safetensors\")`.")
        )
    if "peft" in formats:
        snippets.append(
            "**PEFT** (one adapter folder per component):\n\n```python\nimport os\n\n"
            f"from diffusers import {pipeline_class}\nfrom peft import PeftModel\n\n"
            f"pipe = {pipeline_class}.from_pretrained(\"{ctx.base}\")\n"
            f"for name in {('unet', *ctx.family.text_encoder_names)!r}:\n"
            "    if os.path.isdir(f\"DIR/peft/{name}\"):\n"
            "        PeftModel.from_pretrained(getattr(pipe, name), f\"DIR/peft/{name}\")\n```"
        )
    return snippets
