"""Flux DreamBooth as one file in Black Forest Labs' original layout: the transformer only, as
``flux1-dev.safetensors`` holds it (``double_blocks.*``, ``single_blocks.*``, no prefix).

That is what ComfyUI's *Load Diffusion Model* (``models/diffusion_models/``) and Forge (``models/Stable-diffusion/``
with CLIP-L, T5 and the VAE picked beside it) read for Flux; the text encoders and the VAE are the base
model's files (``clip_l``, ``t5xxl``, ``ae``) — a DreamBooth run that changed a text encoder is refused
here (export ``--format diffusers``).

Proof. diffusers' own single-file converter hard-codes FLUX.1's widths (``tests/test_flux_kohya.py`` runs
it at those widths), so a tiny model's file cannot be read by it. Instead: (1) own code — the file is
converted back by :func:`diffusers_transformer_state` (the inverse of
:func:`studio.families.flux.names.bfl_transformer_state`), every tensor compared with the run's
transformer, then loaded with ``load_state_dict(strict=True)`` into a fresh base pipeline that renders
the studio's image; (2) key rules — :func:`comfyui_flux_checkpoint` restates how ComfyUI recognises
and sizes a Flux checkpoint and compares the model it would build with the file's names and shapes;
:func:`forge_flux_checkpoint` adds what Forge's loader does before the same detection.
"""

from __future__ import annotations

from typing import Any

import torch

from studio.errors import StudioError
from studio.families.flux.names import (
    DOUBLE_GROUPS,
    DOUBLE_NORMS,
    OUTER,
    SINGLE_GROUPS,
    SINGLE_NORMS,
    SWAPPED,
    Group,
    bfl_transformer_state,
    member_sizes,
)
from studio.families.fused_lora import swap_halves

FORMAT = "full model (single file, BFL transformer)"
# ComfyUI's model_detection, Flux branch (restated): a Flux model is recognised by this key; its widths
# are FLUX.1's, fixed; only the block counts, the guidance input and the input channels come from the file.
COMFYUI_FLUX_MARKER = "double_blocks.0.img_attn.norm.key_norm.scale"
COMFYUI_FLUX_FIXED = {"num_attention_heads": 24, "attention_head_dim": 128, "joint_attention_dim": 4096,
                      "pooled_projection_dim": 768}


def _groups(config: Any) -> list[Group]:
    groups = []
    for count, prefix, bfl, table in ((config.num_layers, "transformer_blocks.", "double_blocks.", DOUBLE_GROUPS),
                                      (config.num_single_layers, "single_transformer_blocks.", "single_blocks.",
                                       SINGLE_GROUPS)):
        for index in range(int(count)):
            for name, members in table.items():
                groups.append(Group(f"{bfl}{index}.{name}", tuple(f"{prefix}{index}.{m}" for m in members)))
    groups += [Group(name, (member,)) for name, member in OUTER.items()]
    return groups


def diffusers_transformer_state(bfl: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """BFL's layout back to diffusers' ``FluxTransformer2DModel`` names: fused weights split at the members'
    output rows (from ``config``), the final modulation's halves swapped back, QK norms renamed."""
    out: dict[str, torch.Tensor] = {}
    left = dict(bfl)
    for group in _groups(config):
        for leaf in ("weight", "bias"):
            value = left.pop(f"{group.name}.{leaf}", None)
            if value is None:
                continue
            sizes = member_sizes(group, config) or [value.shape[0]]
            if sum(sizes) != value.shape[0]:
                raise StudioError(f"{group.name}.{leaf}: {value.shape[0]} rows, the config says {sum(sizes)}.")
            for path, part in zip(group.members, value.split(sizes), strict=True):
                if path in SWAPPED:
                    part = swap_halves(part)
                out[f"{path}.{leaf}"] = part.contiguous()
    for count, prefix, bfl_prefix, norms in ((config.num_layers, "transformer_blocks.", "double_blocks.", DOUBLE_NORMS),
                                             (config.num_single_layers, "single_transformer_blocks.", "single_blocks.",
                                              SINGLE_NORMS)):
        for index in range(int(count)):
            for diffusers_name, bfl_name in norms.items():
                value = left.pop(f"{bfl_prefix}{index}.{bfl_name}.scale", None)
                if value is not None:
                    out[f"{prefix}{index}.{diffusers_name}.weight"] = value
    if left:
        raise StudioError(f"{len(left)} tensors of the BFL file have no place in diffusers' Flux (e.g. {sorted(left)[:3]}).")
    return out


def comfyui_flux_checkpoint(shapes: dict[str, tuple[int, ...]], prefix: str = "") -> dict[str, Any]:
    """ComfyUI's verdict on a Flux transformer file (names and shapes only): it recognises Flux by
    :data:`COMFYUI_FLUX_MARKER`, builds FLUX.1's widths with the file's block counts, guidance input and
    input channels, and loads the file into it. Loads "all" only if every tensor of that model is in the
    file with its shape and the file holds nothing else."""
    from diffusers import FluxTransformer2DModel

    keys = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
    if COMFYUI_FLUX_MARKER not in keys:
        return {"proof": "key rules", "loads": "none", "why": f"no {COMFYUI_FLUX_MARKER}: not recognised as Flux"}

    def count(start: str) -> int:
        return len({k.split(".")[1] for k in keys if k.startswith(start)})

    config = dict(COMFYUI_FLUX_FIXED, num_layers=count("double_blocks."), num_single_layers=count("single_blocks."),
                  guidance_embeds="guidance_in.in_layer.weight" in keys, in_channels=keys["img_in.weight"][1])
    with torch.device("meta"):
        model = FluxTransformer2DModel(**config)
    built = {k: tuple(v.shape) for k, v in bfl_transformer_state(model.state_dict()).items()}
    missing = sorted(set(built) - set(keys))
    unexpected = sorted(set(keys) - set(built))
    wrong = sorted(k for k in set(built) & set(keys) if tuple(keys[k]) != built[k])
    report: dict[str, Any] = {"proof": "key rules", "tensors": len(keys), "config": config}
    if missing or unexpected or wrong:
        report["loads"] = "refused"
        report["why"] = (f"ComfyUI builds FLUX.1's widths (3072): {len(wrong)} tensors of another shape, "
                         f"{len(missing)} missing, {len(unexpected)} unexpected (e.g. {(wrong + missing + unexpected)[:3]})")
    else:
        report["loads"] = "all"
    return report


def forge_flux_checkpoint(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """Forge's verdict (``backend/loader.py`` ``split_state_dict``): a file with no ``model.diffusion_model.`` key gets
    that prefix on every key, then ``huggingface_guess`` (ComfyUI's detection, copied) recognises Flux by the same
    marker and sizes it at FLUX.1's widths (dev with ``guidance_in``, else schnell); the transformer must hold more
    than 16 tensors. CLIP-L, T5 and the VAE come from the files picked beside it."""
    prefix = "model.diffusion_model."
    if not any(k.startswith(prefix) for k in shapes):
        shapes = {prefix + k: v for k, v in shapes.items()}
    verdict = comfyui_flux_checkpoint(shapes, prefix)
    if verdict["loads"] == "all" and verdict["tensors"] <= 16:
        verdict |= {"loads": "refused", "why": "Forge asserts more than 16 transformer tensors"}
    if "config" in verdict:
        verdict["repo"] = "black-forest-labs/FLUX.1-" + ("dev" if verdict["config"]["guidance_embeds"] else "schnell")
    return verdict


def export_flux_single_file(ctx) -> None:
    """Write ``<stem>-transformer.safetensors`` and prove it (see the module docstring)."""
    from safetensors.torch import load_file

    from studio.atomic import save_safetensors
    from studio.export.verify import (
        IMAGE_TOLERANCE,
        ExportVerificationError,
        check_image,
        image_difference,
        render,
    )

    reference = ctx.reference_pipeline()
    base = ctx.fresh_base()
    changed = [name for name in ctx.family.weighted_component_names if name != "transformer"
               and _differs(getattr(reference, name), getattr(base, name))]
    if changed:
        raise StudioError(f"This DreamBooth run changed {', '.join(changed)}: a Flux single file holds the transformer "
                          "only (ComfyUI and Forge take the text encoders and VAE from the base model's files). "
                          "Export --format diffusers instead.")
    source = {k: v.detach().cpu().contiguous() for k, v in reference.transformer.state_dict().items()}
    path = ctx.out / f"{ctx.stem}-transformer.safetensors"
    save_safetensors(bfl_transformer_state(source), path,
                     metadata={"format": "pt", "modelspec.sai_model_spec": "1.0.0",
                               "modelspec.architecture": ctx.family.modelspec_architecture.removesuffix("/lora"),
                               "modelspec.implementation": "https://github.com/black-forest-labs/flux"})
    written = load_file(str(path))
    back = diffusers_transformer_state(written, reference.transformer.config)
    if back.keys() != source.keys():
        raise ExportVerificationError(f"{path.name}: read back with {len(set(source) - set(back))} tensors missing.")
    different = [k for k in source if not torch.equal(back[k], source[k])]
    if different:
        raise ExportVerificationError(f"{path.name}: {len(different)} tensors read back different (e.g. {different[:3]}).")
    base.transformer.load_state_dict(back, strict=True)
    difference = image_difference(render(base, ctx.spec), ctx.reference_image())
    check_image(path.name, difference)
    comfy = comfyui_flux_checkpoint({k: tuple(v.shape) for k, v in written.items()})
    consumers = {
        "Studio (own code)": {"proof": "own code", "loads": "all", "tensors": len(source),
                              "loader": "inverse conversion + load_state_dict(strict=True) into the base pipeline"},
        "ComfyUI": comfy,
        "Forge": forge_flux_checkpoint({k: tuple(v.shape) for k, v in written.items()}),
        "diffusers from_single_file": {"proof": "own code", "loads": "not run on this file",
                                       "why": "its Flux converter hard-codes FLUX.1's widths; it reads Studio's BFL "
                                              "layout back exactly at those widths in tests/test_flux_kohya.py"},
    }
    loaded_by = "Studio's inverse conversion" + "".join(f", {name} (key rules)" for name in ("ComfyUI", "Forge")
                                                        if consumers[name]["loads"] == "all")
    ctx.record(path, FORMAT, loaded_by,
               f"{len(written)} BFL tensors; all {len(source)} diffusers tensors read back equal; "
               f"max pixel diff {difference:.1e}; ComfyUI by its rules: {comfy['loads']}",
               tensors=len(written), max_abs_diff=difference, tolerance=IMAGE_TOLERANCE, consumers=consumers)


export_single_file = export_flux_single_file  # the family's single_file_writer entry point


def _differs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() != sb.keys() or any(not torch.equal(sa[k], sb[k]) for k in sa)


def usage(stem: str) -> str:
    return (f"**ComfyUI**: copy `{stem}-transformer.safetensors` into `models/diffusion_models/` and load it with "
            "*Load Diffusion Model*, with the base model's CLIP-L and T5-XXL (*DualCLIPLoader*, type flux) and its "
            "VAE (`ae.safetensors`, *Load VAE*). **Forge**: copy it into `models/Stable-diffusion/` and pick the "
            "base model's `clip_l`, `t5xxl` and `ae` as VAE / Text Encoder.")


__all__ = ["FORMAT", "comfyui_flux_checkpoint", "diffusers_transformer_state", "export_flux_single_file", "forge_flux_checkpoint",
           "export_single_file", "usage"]
