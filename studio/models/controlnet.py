"""Resolve a ControlNet reference to a loaded ControlNet model of the base's family.

A reference is a built-in name (``tiny-controlnet``), a diffusers folder (``config.json`` + weights), a
single ``.safetensors`` file, or a Hugging Face Hub id — exactly as for base models, and loaded by the
family's ControlNet class through diffusers' own ``from_pretrained`` / ``from_single_file``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from studio.errors import ModelLoadError
from studio.models.builtin import builtin_path, builtins
from studio.models.loader import describe_ref_kind, hub_offline, refuse_pickle


def builtin_controlnets() -> list[str]:
    return [name for name, model in builtins().items() if model.kind == "controlnet"]


def _class_named(name: str, default: type) -> type:
    """The diffusers ControlNet class a config names (``_class_name``); ``default`` when it names none."""
    import diffusers

    found = getattr(diffusers, name, None) if "ControlNet" in name else None
    return found if isinstance(found, type) else default


def _class_for_folder(folder: Path, default: type) -> type:
    try:
        name = json.loads((folder / "config.json").read_text()).get("_class_name", "")
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{folder} is not a ControlNet folder (no readable config.json: {error}).",
                             browser=f"{folder.name} is not a ControlNet folder (no readable config.json).") from error
    return _class_named(name, default)


def load_controlnet(ref: str, family_name: str, *, torch_dtype: Any = None, allow_pickle: bool = False) -> Any:
    """The ControlNet ``ref`` names, for a base of ``family_name`` (see :mod:`studio.pipeline_tasks`)."""
    from studio.pipeline_tasks import controlnet_class

    default = controlnet_class(family_name)
    kind = describe_ref_kind(ref)
    path = Path(ref).expanduser()
    if kind == "builtin":
        model = builtins()[ref]
        if model.kind != "controlnet":
            raise ModelLoadError(f"'{ref}' is a built-in {model.kind} model, not a ControlNet. Built-in ControlNets: "
                                 f"{', '.join(builtin_controlnets())}.")
        path, kind = builtin_path(ref), "folder"
    kwargs: dict[str, Any] = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
    try:
        if kind == "folder":
            return _class_for_folder(path, default).from_pretrained(
                str(path), use_safetensors=None if allow_pickle else True, **kwargs)
        if kind == "single_file":
            refuse_pickle(path, allow_pickle)
            return default.from_single_file(str(path), **kwargs)
        if kind == "hub":  # the class its config names (a ControlNet of another family is refused by check_fits)
            hub_class = _class_named(str(default.load_config(ref).get("_class_name", "")), default)
            return hub_class.from_pretrained(ref, use_safetensors=None if allow_pickle else True, **kwargs)
    except ModelLoadError:
        raise
    except Exception as error:
        where = " (offline: HF_HUB_OFFLINE=1 and not in the local cache)" if kind == "hub" and hub_offline() else ""
        raise ModelLoadError(
            f"Could not load the ControlNet '{ref}'{where}: {type(error).__name__}: {str(error)[:300]}",
            browser=f"Could not load the ControlNet '{Path(ref).name if kind != 'hub' else ref}'{where}: "
                    f"{type(error).__name__}: {str(error)[:300]}",
        ) from error
    raise ModelLoadError(
        f"ControlNet '{ref}' is not a built-in ControlNet ({', '.join(builtin_controlnets())}), an existing folder "
        "or .safetensors file, or a Hugging Face Hub id of the form 'owner/name'."
    )


def check_fits(controlnet: Any, pipe: Any, ref: str) -> None:
    """Refuse a ControlNet made for another family or architecture than the base's, before it fails mid-generation."""
    from studio.families import FAMILIES, family_for

    family, kind = family_for(pipe), type(controlnet).__name__
    if kind not in family.controlnet_classes:
        owners = [f().label for f in FAMILIES if kind in f.controlnet_classes]
        made_for = f"made for {' / '.join(owners)} models" if owners else "not a ControlNet Studio uses with any family"
        raise ModelLoadError(
            f"The ControlNet '{ref}' is a {kind}, {made_for}; the base is a {family.label} model, which takes "
            f"{' or '.join(family.controlnet_classes)}. Choose a ControlNet trained for this base's family.")
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    mine, theirs = getattr(controlnet, "config", {}), getattr(denoiser, "config", {})
    for key in ("cross_attention_dim", "joint_attention_dim", "addition_embed_type"):
        if key == "joint_attention_dim" and mine.get(key) is None:
            continue  # SD3.5 Large's ControlNets read no text (an SD1.x ControlNet's addition_embed_type None still differs)
        if key in mine and key in theirs and mine[key] != theirs[key]:
            raise ModelLoadError(
                f"The ControlNet '{ref}' was made for another kind of base model ({key} {mine[key]}, the base has "
                f"{theirs[key]}). Choose a ControlNet trained for this base's family."
            )
