"""Resolve a base-model reference to diffusers pipeline components.

A reference is one of: a built-in name (``tiny-sd``), a local diffusers folder, a single-file
``.safetensors`` checkpoint, or a Hugging Face Hub id. All of them end in the same place: a
diffusers pipeline loaded by diffusers' own ``from_pretrained`` / ``from_single_file``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.errors import ModelLoadError, PickleRefusedError
from studio.models.builtin import builtin_path, builtins, is_builtin

PICKLE_SUFFIXES = {".ckpt", ".bin", ".pt", ".pth", ".pkl"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass
class BaseModel:
    """A loaded base model: its reference, where it came from and its pipeline."""

    ref: str
    source: str  # "builtin" | "folder" | "single_file" | "hub"
    pipeline: Any
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def components(self) -> dict[str, Any]:
        """The components training uses (the family's list: denoiser, VAE, text encoders, tokenizers, scheduler)."""
        names = self.family.component_names
        return {name: c for name, c in self.pipeline.components.items() if name in names and c is not None}

    @property
    def family(self):
        from studio.families import family_for

        return family_for(self.pipeline)


def refuse_pickle(path: Path, allow_pickle: bool) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise PickleRefusedError(
            f"{path} is a pickle file ({path.suffix}); loading it can run arbitrary code. "
            "Convert it to .safetensors, or pass --allow-pickle if you trust its source.",
            browser=f"{path.name} is a pickle file ({path.suffix}); loading it can run arbitrary code, and the web UI "
                    "never does. Convert it to .safetensors and choose that file instead.",
        )


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def describe_ref_kind(ref: str) -> str:
    path = Path(ref).expanduser()
    if is_builtin(ref):
        return "builtin"
    if path.is_dir():
        return "folder"
    if path.is_file():
        return "single_file"
    if HUB_ID.match(ref):
        return "hub"
    return "unknown"


def _folder_pipeline(path: Path, allow_pickle: bool, torch_dtype):
    from diffusers import DiffusionPipeline

    if not (path / "model_index.json").is_file():
        raise ModelLoadError(
            f"{path} is not a diffusers model folder (no model_index.json). "
            "Give a diffusers folder, a .safetensors checkpoint file, a hub id, or 'tiny-sd'."
        )
    kwargs: dict[str, Any] = {"safety_checker": None, "requires_safety_checker": False}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    index = json.loads((path / "model_index.json").read_text())
    if "safety_checker" not in index:
        kwargs.pop("safety_checker")
        kwargs.pop("requires_safety_checker")
    try:
        return DiffusionPipeline.from_pretrained(str(path), use_safetensors=None if allow_pickle else True, **kwargs)
    except (OSError, ValueError) as error:
        if not allow_pickle and "safetensors" in str(error).lower():
            raise PickleRefusedError(
                f"{path} has no .safetensors weights (only pickle .bin files). Convert them, "
                "or pass --allow-pickle if you trust its source.",
                browser=f"{path.name} has no .safetensors weights (only pickle .bin files), and the web UI never loads "
                        "pickle files. Convert them to .safetensors first.",
            ) from error
        raise ModelLoadError(f"Could not load the diffusers folder {path}: {error}") from error


def _single_file_pipeline(path: Path, allow_pickle: bool, torch_dtype, config: str | None):
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    from studio.families import family_for_keys

    refuse_pickle(path, allow_pickle)
    pipeline_class = StableDiffusionPipeline
    if path.suffix.lower() == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                keys = list(handle.keys())
        except Exception as error:
            raise ModelLoadError(f"{path} is not a readable safetensors file ({error}).") from error
        family = family_for_keys(keys)
        if family is not None:
            pipeline_class = family.pipeline_classes()[0]
        else:
            raise ModelLoadError(
                f"{path} is not a Stable Diffusion checkpoint (no 'model.diffusion_model.*' keys). "
                "LoRA or embedding files are adapters: pass them with --adapter, not as the base model.",
                browser=f"{path.name} is not a Stable Diffusion checkpoint. LoRA or embedding files are adapters, "
                        "not base models: train or import them as runs and pick them under Trained runs.",
            )
    kwargs: dict[str, Any] = {}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    if config:
        kwargs["config"] = str(Path(config).expanduser()) if Path(config).expanduser().exists() else config
    try:
        pipe = pipeline_class.from_single_file(str(path), **kwargs)
    except Exception as error:
        hint = (
            " Offline, diffusers needs the model's configuration: set base_config (--set base_config=FOLDER) to a "
            "local diffusers folder of the same architecture (for example one made by `studio models materialize`)."
            if hub_offline() or not config
            else ""
        )
        raise ModelLoadError(f"Could not load the single-file checkpoint {path}: {error}.{hint}") from error
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None
    return pipe


def _hub_pipeline(ref: str, allow_pickle: bool, torch_dtype):
    from diffusers import DiffusionPipeline

    kwargs: dict[str, Any] = {}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    try:
        return DiffusionPipeline.from_pretrained(ref, use_safetensors=None if allow_pickle else True, **kwargs)
    except Exception as error:
        where = "offline (HF_HUB_OFFLINE=1) and not in the local cache" if hub_offline() else "not reachable"
        raise ModelLoadError(
            f"Could not load base model '{ref}' from the Hugging Face Hub: it is {where} ({type(error).__name__}). "
            "Fix: give a local diffusers folder or a .safetensors checkpoint, or use 'tiny-sd' for an offline demo."
        ) from error


def load_base(
    ref: str,
    *,
    allow_pickle: bool = False,
    torch_dtype=None,
    single_file_config: str | None = None,
    vae: str | None = None,
) -> BaseModel:
    """Load base model ``ref`` (built-in name, diffusers folder, single file, or hub id); ``vae``
    replaces its VAE (see :mod:`studio.models.vae`)."""
    if vae:
        from studio.models.vae import load_vae, replace_vae

        base = load_base(ref, allow_pickle=allow_pickle, torch_dtype=torch_dtype, single_file_config=single_file_config)
        config_folder = base.path if base.path is not None and base.path.is_dir() else single_file_config
        replace_vae(base.pipeline, load_vae(vae, torch_dtype=torch_dtype, allow_pickle=allow_pickle,
                                            config_folder=Path(config_folder) if config_folder else None))
        base.extra["vae"] = vae
        return base
    kind = describe_ref_kind(ref)
    path = Path(ref).expanduser()
    if kind == "builtin":
        folder = builtin_path(ref)
        return BaseModel(ref, "builtin", _folder_pipeline(folder, allow_pickle, torch_dtype), folder)
    if kind == "folder":
        return BaseModel(ref, "folder", _folder_pipeline(path, allow_pickle, torch_dtype), path)
    if kind == "single_file":
        pipe = _single_file_pipeline(path, allow_pickle, torch_dtype, single_file_config)
        return BaseModel(ref, "single_file", pipe, path)
    if kind == "hub":
        return BaseModel(ref, "hub", _hub_pipeline(ref, allow_pickle, torch_dtype))
    if path.suffix and not path.exists():
        raise ModelLoadError(f"Base model file {path} does not exist.")
    raise ModelLoadError(
        f"'{ref}' is not a built-in model ({', '.join(builtins())}), an existing folder or file, "
        "or a Hugging Face Hub id of the form 'owner/name'."
    )


def load_configured_base(config, *, torch_dtype=None) -> BaseModel:
    """The base a training configuration names, as its run uses it: with its ``vae`` override and,
    for a single-file base, its ``base_config`` folder. ``torch_dtype``: a dtype, or per component
    (diffusers' dict form, ``"default"`` for the rest), for diffusers folders, built-ins and hub ids."""
    try:
        if describe_ref_kind(config.base) == "single_file":
            torch_dtype = None  # from_single_file takes one dtype for every component
        return load_base(config.base, vae=config.vae, single_file_config=config.base_config, torch_dtype=torch_dtype,
                         allow_pickle=bool(getattr(config, "allow_pickle", False)))
    except PickleRefusedError as error:
        # A run's models come from its settings, so the opt-in is the setting, not a command's flag.
        text = str(error).replace(
            "pass --allow-pickle if you trust its source",
            "if you trust its source turn on the setting allow_pickle (studio train --allow-pickle, "
            "--set allow_pickle=true, or allow_pickle in the web UI's Train tab)",
        )
        raise PickleRefusedError(text) from error


def _tokenizer(folder: Path):
    """A tokenizer folder as its config names it: CLIP's BPE, or another (T5's) through AutoTokenizer."""
    from transformers import AutoTokenizer, CLIPTokenizer

    config = folder / "tokenizer_config.json"
    declared = json.loads(config.read_text()).get("tokenizer_class", "") if config.is_file() else ""
    if not declared or declared.startswith("CLIP"):
        return CLIPTokenizer.from_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder))


def load_tokenizers(ref: str, *, allow_pickle: bool = False) -> list[Any]:
    """Only the tokenizer(s) of a base model: cheap, for identifier checks."""
    from transformers import CLIPTokenizer

    kind = describe_ref_kind(ref)
    if kind in ("builtin", "folder"):
        folder = builtin_path(ref) if kind == "builtin" else Path(ref).expanduser()
        names = [n for n in ("tokenizer", "tokenizer_2", "tokenizer_3") if (folder / n).is_dir()]
        return [_tokenizer(folder / n) for n in names]
    if kind == "hub":
        try:
            return [CLIPTokenizer.from_pretrained(ref, subfolder="tokenizer")]
        except Exception as error:
            raise ModelLoadError(
                f"Could not load the tokenizer of '{ref}' ({type(error).__name__}); offline, use a local folder or 'tiny-sd'."
            ) from error
    return [load_base(ref, allow_pickle=allow_pickle).pipeline.tokenizer]
