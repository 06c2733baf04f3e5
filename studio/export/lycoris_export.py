"""Export a DoRA, LoKr or LoHa run and prove each file reloads (see :mod:`studio.export.lycoris`).

* ``peft``: loaded by peft's own ``PeftModel.from_pretrained``; every layer's adapted weight equals the
  run's and the image matches the studio's (tolerance as for LoRA).
* ``diffusers`` (DoRA): loaded by diffusers' own ``load_lora_weights``, checked the same way.
* ``kohya`` (LyCORIS layout): each key-rule consumer's reading is computed from the file and the base
  weights (:mod:`studio.export.consumers.lycoris_rules`); ComfyUI and Forge, which the layout is written
  for, must load every module at its trained strength or the export fails. diffusers' own loader is run
  on it too, and its verdict recorded (it drops ``dora_scale`` and reads no LoKr/LoHa on these families).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from studio.atomic import save_safetensors
from studio.export.consumers import PROOF_OWN_CODE
from studio.export.consumers.lycoris_package import CONSUMER as LYCORIS_CONSUMER
from studio.export.consumers.lycoris_package import lycoris_flow_package_verdict, lycoris_package_verdict
from studio.export.consumers.lycoris_rules import lycoris_reports
from studio.export.context import ExportContext
from studio.export.lora_export import _version
from studio.export.lora_weights import LORA_WEIGHTS_FILE, module_key
from studio.export.lycoris import (
    AdapterWeights,
    base_weights,
    diffusers_dora_state,
    kohya_lycoris_state,
    read_diffusers_dora,
    read_peft_adapters,
    save_peft_adapter_folders,
)
from studio.export.verify import (
    IMAGE_TOLERANCE,
    ExportVerificationError,
    check_image,
    image_difference,
    render,
)
from studio.methods import adapter_type_spec

ADAPTER = "verify"
KOHYA_WRITTEN_FOR = ("ComfyUI", "Forge")  # the consumers whose LyCORIS readers the layout is made for


def read_run_adapter(ctx: ExportContext) -> AdapterWeights:
    artifact = ctx.run.directory / ctx.result["artifact"]
    if adapter_type_spec(ctx.result.get("adapter_type")).run_layout == "peft":
        return read_peft_adapters(artifact)
    return read_diffusers_dora(artifact / LORA_WEIGHTS_FILE)


def export_lycoris_run(ctx: ExportContext, formats: list[str]) -> None:
    weights = read_run_adapter(ctx)
    label = adapter_type_spec(weights.kind).label
    ctx.extra["adapter_type"] = weights.kind
    ctx.extra["adapter_modules"] = len(weights.modules)
    if "diffusers" in formats:
        path = ctx.out / LORA_WEIGHTS_FILE
        save_safetensors(diffusers_dora_state(weights, ctx.family), path, metadata={"format": "pt"})
        pipe = ctx.fresh_base()
        pipe.load_lora_weights(str(path), adapter_name=ADAPTER, use_safetensors=True)
        _record_own_code(ctx, pipe, weights, path, f"{label} (diffusers)", "diffusers",
                         f"diffusers {_version('diffusers')} load_lora_weights (peft {_version('peft')})")
    if "peft" in formats:
        from peft import PeftModel

        folders = save_peft_adapter_folders(weights, ctx.out / "peft", ctx.base)
        pipe = ctx.fresh_base()
        for folder in folders:
            PeftModel.from_pretrained(getattr(pipe, folder.name), str(folder), adapter_name=ADAPTER)
        for folder in folders:
            _record_own_code(ctx, pipe, weights, folder, f"{label} (PEFT adapter)", "peft",
                             f"peft {_version('peft')} PeftModel.from_pretrained (transformers {_version('transformers')})",
                             component=folder.name)
    if "kohya" in formats:
        _export_kohya(ctx, weights, label)
    ctx.usage += usage(ctx, weights, formats)


def _record_own_code(ctx: ExportContext, pipe, weights: AdapterWeights, path: Path, what: str, consumer: str,
                     loader: str, component: str | None = None) -> None:
    layers = check_adapter_loaded(pipe, weights, f"{what} {path.name}")
    difference = image_difference(render(pipe, ctx.spec), ctx.reference_image())
    check_image(f"{what} {path.name}", difference)
    count = len(weights.by_component(component)) if component else layers
    ctx.record(path, what, loader.split(" ")[0] if consumer == "peft" else consumer,
               f"{count} {weights.kind} layers loaded by {loader}; max pixel diff {difference:.1e}",
               layers=count, max_abs_diff=difference, tolerance=IMAGE_TOLERANCE, layout=consumer,
               consumers={consumer: {"proof": PROOF_OWN_CODE, "loads": "all", "modules_loaded": count,
                                     "strength": "as trained", "loader": loader}})


def _export_kohya(ctx: ExportContext, weights: AdapterWeights, label: str) -> None:
    from safetensors.torch import load_file

    if ctx.family.fused_kohya_layout:
        _export_fused_kohya(ctx, weights, label)
        return
    pipe = ctx.fresh_base()
    bases = base_weights(pipe.components, weights)
    path = ctx.out / f"{ctx.stem}.safetensors"
    state = kohya_lycoris_state(weights, ctx.family, bases, ctx.unet_config)
    save_safetensors(state, path, metadata=lycoris_metadata(weights, ctx))
    state = load_file(str(path))  # what a consumer reads: the file itself
    wanted = weights.keyed()
    verdicts = lycoris_reports(list(state), ctx.layout(), wanted, state, bases)
    failed = [name for name in KOHYA_WRITTEN_FOR if verdicts[name]["loads"] != "all"]
    if failed:
        raise ExportVerificationError(f"kohya {label} {path.name}: by {failed[0]}'s rules it would not load completely at "
                                      f"its trained strength ({verdicts[failed[0]]}). The export was not written.")
    verdicts["diffusers"] = _diffusers_on_kohya(ctx, path, weights)
    verdicts[LYCORIS_CONSUMER] = lycoris_package_verdict(weights.kind)
    loaded_by = [name for name, verdict in verdicts.items() if verdict["loads"] == "all"]
    ctx.record(path, f"{label} (kohya / LyCORIS)", ", ".join(loaded_by),
               f"{len(wanted)} modules; by their key rules and arithmetic: " +
               "; ".join(f"{name} {v['loads']}" for name, v in verdicts.items()),
               layers=len(wanted), layout="kohya", consumers=verdicts)


def _export_fused_kohya(ctx: ExportContext, weights: AdapterWeights, label: str) -> None:
    """Flux/SD3: the original fused layout (:mod:`studio.export.lycoris_fused`); ComfyUI's and Forge's
    reading of every original weight it touches must equal the adapter's."""
    from safetensors.torch import load_file

    from studio.export.consumers import layout_of
    from studio.export.consumers.lycoris_flow_rules import lycoris_flow_reports
    from studio.export.lycoris_fused import fused_lycoris_state, intended_weights, original_bases

    pipe = ctx.fresh_base()
    config = ctx.unet_config
    members = original_bases(pipe.components[ctx.family.denoiser_name], weights, ctx.family, config)
    encoders = {k: v for k, v in base_weights(pipe.components, weights).items() if k[0] != ctx.family.denoiser_name}
    path = ctx.out / f"{ctx.stem}.safetensors"
    save_safetensors(fused_lycoris_state(weights, ctx.family, config, members, encoders), path,
                     metadata=lycoris_metadata(weights, ctx))
    state = load_file(str(path))  # what a consumer reads: the file itself
    bases, adapted = intended_weights(weights, ctx.family, config, members, encoders)
    shapes = {target: (int(base.shape[0]), int(base[0].numel())) for target, base in bases.items()}
    verdicts = lycoris_flow_reports(state, layout_of(pipe.components, ctx.family), shapes, bases, adapted)
    failed = [name for name in KOHYA_WRITTEN_FOR if verdicts[name]["loads"] != "all"]
    if failed:
        raise ExportVerificationError(f"kohya {label} {path.name}: by {failed[0]}'s rules it would not load completely at "
                                      f"its trained strength ({verdicts[failed[0]]}). The export was not written.")
    verdicts["diffusers"] = _diffusers_on_kohya(ctx, path, weights)
    verdicts[LYCORIS_CONSUMER] = lycoris_flow_package_verdict(weights.kind, state)
    loaded_by = [name for name, verdict in verdicts.items() if verdict["loads"] == "all"]
    ctx.record(path, f"{label} (kohya / LyCORIS)", ", ".join(loaded_by),
               f"{len(weights.modules)} modules in {len(shapes)} weights of the original fused layout; by their key "
               "rules and arithmetic: " + "; ".join(f"{name} {v['loads']}" for name, v in verdicts.items()),
               layers=len(weights.modules), layout="kohya", consumers=verdicts)


def _diffusers_on_kohya(ctx: ExportContext, path: Path, weights: AdapterWeights) -> dict[str, Any]:
    """diffusers' own loader on the LyCORIS file: what it attaches and the image it then renders."""
    loader = f"diffusers {_version('diffusers')} load_lora_weights"
    pipe = ctx.fresh_base()
    try:
        pipe.load_lora_weights(str(path), adapter_name=ADAPTER, use_safetensors=True)
    except Exception as error:  # diffusers refuses what it cannot convert
        return {"proof": PROOF_OWN_CODE, "loads": "refused", "loader": loader, "refused": f"{type(error).__name__}: {str(error)[:200]}"}
    attached = _attached_layers(pipe)
    if not attached:  # it read nothing from the file (SD3's layout): no image to compare
        return {"proof": PROOF_OWN_CODE, "loads": "none", "loader": loader, "modules_loaded": 0,
                "note": "diffusers attaches no layer from this layout; use the peft or diffusers export"}
    difference = image_difference(render(pipe, ctx.spec), ctx.reference_image())
    complete = len(attached) == len(weights.modules) and difference <= IMAGE_TOLERANCE
    return {"proof": PROOF_OWN_CODE, "loads": "all" if complete else ("partial" if attached else "none"),
            "loader": loader, "modules_loaded": len(attached), "max_abs_diff": difference,
            **({} if complete else {"note": "diffusers drops dora_scale from kohya files (the magnitude) and reads "
                                            "no LoKr/LoHa for this family; use the peft or diffusers export"})}


def _attached_layers(pipe) -> dict[tuple[str, str], Any]:
    from studio.export.lora_weights import COMPONENTS

    layers = {}
    for component in COMPONENTS:
        model = getattr(pipe, component, None)
        if model is None:
            continue
        for path, layer in model.named_modules():
            scaling = getattr(layer, "scaling", None)  # peft's per-adapter dict (Flux attention has a float)
            if isinstance(scaling, dict) and ADAPTER in scaling:
                layers[module_key(component, path.removeprefix("base_model.model."))] = layer
    return layers


def loaded_delta(layer) -> torch.Tensor:
    """The weight change a peft layer applies for the verified adapter (float64)."""
    base = layer.get_base_layer().weight.detach().double()
    if hasattr(layer, "lora_A") and ADAPTER in layer.lora_A:
        low_rank = layer.scaling[ADAPTER] * (layer.lora_B[ADAPTER].weight.detach().double().flatten(1)
                                             @ layer.lora_A[ADAPTER].weight.detach().double().flatten(1))
        adapted = base + low_rank.reshape(base.shape)
        magnitudes = getattr(layer, "lora_magnitude_vector", None) or {}
        if ADAPTER not in magnitudes:
            return adapted - base
        magnitude = magnitudes[ADAPTER].weight.detach().double().flatten()
        norm = adapted.flatten(1).norm(dim=1)
        return adapted * (magnitude / norm).reshape(-1, *[1] * (base.dim() - 1)) - base
    return layer.get_delta_weight(ADAPTER).detach().double().reshape(base.shape)


def check_adapter_loaded(pipe, weights: AdapterWeights, what: str) -> int:
    """Every module of ``weights`` attached (none extra), each changing its layer as the run's does."""
    attached = _attached_layers(pipe)
    expected = weights.keyed()
    missing, extra = sorted(set(expected) - set(attached)), sorted(set(attached) - set(expected))
    if missing or extra:
        raise ExportVerificationError(
            f"{what}: the loader attached {len(attached)} layers but the file has {len(expected)} modules "
            f"(not loaded: {[f'{c}.{p}' for c, p in missing[:3]]}; unexpected: {[f'{c}.{p}' for c, p in extra[:3]]}).")
    for key, module in expected.items():
        layer = attached[key]
        base = layer.get_base_layer().weight.detach()
        if not torch.allclose(loaded_delta(layer), module.delta(base), rtol=1e-4, atol=1e-7):
            raise ExportVerificationError(f"{what}: {key[0]}.{key[1]} was loaded with a different weight change.")
    return len(expected)


def lycoris_metadata(weights: AdapterWeights, ctx: ExportContext) -> dict[str, str]:
    """sd-scripts' ``ss_*`` keys as LyCORIS' network module writes them, and ``modelspec.*``."""
    from studio.export.lora_export import kohya_info

    info = kohya_info(ctx)
    algo = adapter_type_spec(weights.kind).kohya_algo
    args = {"algo": "lora", "dora_wd": "True"} if weights.kind == "dora" else {"algo": algo}
    resolution = int(info.get("resolution") or ctx.family.default_resolution)
    return {
        "ss_network_module": "lycoris.kohya",
        "ss_network_dim": str(max(m.rank for m in weights.modules)),
        "ss_network_alpha": str(max(m.alpha for m in weights.modules)),
        "ss_network_args": json.dumps(args),
        "ss_base_model_version": ctx.family.kohya_base_model_version,
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_output_name": str(info["title"]),
        "ss_max_train_steps": str(info.get("steps", "")),
        "ss_learning_rate": str(info.get("learning_rate", "")),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": ctx.family.modelspec_architecture,
        "modelspec.implementation": "diffusers",
        "modelspec.title": str(info["title"]),
        "modelspec.trigger_phrase": str(info.get("trigger_phrase") or ""),
        "modelspec.resolution": f"{resolution}x{resolution}",
    }


def usage(ctx: ExportContext, weights: AdapterWeights, formats: list[str]) -> list[str]:
    pipeline_class = ctx.family.pipeline_classes()[0].__name__
    label = adapter_type_spec(weights.kind).label
    snippets = []
    if "diffusers" in formats:
        snippets.append(f"**diffusers** ({label}):\n\n```python\nfrom diffusers import {pipeline_class}\n\n"
                        f"pipe = {pipeline_class}.from_pretrained(\"{ctx.base}\")\n"
                        f"pipe.load_lora_weights(\"DIR\", weight_name=\"{LORA_WEIGHTS_FILE}\")\n```")
    if "peft" in formats:
        snippets.append(f"**PEFT** ({label}; one adapter folder per component):\n\n```python\nimport os\n\n"
                        f"from diffusers import {pipeline_class}\nfrom peft import PeftModel\n\n"
                        f"pipe = {pipeline_class}.from_pretrained(\"{ctx.base}\")\n"
                        f"for name in {tuple(weights.components)!r}:\n"
                        "    PeftModel.from_pretrained(getattr(pipe, name), f\"DIR/peft/{name}\")\n```")
    if "kohya" in formats:
        snippets.append(f"**ComfyUI / Forge** ({label}, LyCORIS layout): copy `{ctx.stem}.safetensors` into "
                        "`models/loras/` (ComfyUI: a *LoraLoader* node) or `models/Lora/` (Forge: "
                        f"`<lora:{ctx.stem}:1>`). export.json says what AUTOMATIC1111 and kohya sd-scripts make of it.")
    return snippets
