"""One in-memory form of a LoRA, whatever file it came from or goes to.

Every LoRA format we read or write (diffusers, kohya/webui, PEFT) is a list of per-module
low-rank pairs plus a scale. Converting through this form keeps each format's writer a few lines
and lets verification compare what a consumer loaded against exactly what a file holds.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from studio.errors import StudioError
from studio.families import LORA_COMPONENTS

LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
COMPONENTS = LORA_COMPONENTS  # every family's denoiser and LoRA-carrying text encoders
# Suffixes of a module's down/up tensors in diffusers-style files (new peft names and the older
# diffusers names that convert_state_dict_to_diffusers writes).
_PAIR_SUFFIXES = (
    (".lora_A.weight", ".lora_B.weight"),
    (".lora.down.weight", ".lora.up.weight"),
    (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"),
)


@dataclass
class LoraModule:
    """One adapted module: ``W' = W + (alpha / rank) * up @ down``.

    ``path`` is the module's name inside its live component, e.g.
    ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``; for text encoders with or without
    the ``text_model.`` root, as the installed transformers names it (``CLIPTextModel`` lost that root
    in transformers 5, ``CLIPTextModelWithProjection`` kept it). Compare paths with :func:`module_key`.
    """

    component: str
    path: str
    down: torch.Tensor  # [rank, in] or [rank, in, k, k]
    up: torch.Tensor  # [out, rank] or [out, rank, 1, 1]
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta(self) -> torch.Tensor:
        """The weight update this module adds (for tests and SVD checks)."""
        up = self.up.flatten(1).float()
        down = self.down.flatten(1).float()
        return (self.scale * up @ down).reshape(self.up.shape[0], *self.down.shape[1:])


@dataclass
class LoraWeights:
    modules: list[LoraModule]
    notes: dict[str, str] = field(default_factory=dict)

    def by_component(self, component: str) -> list[LoraModule]:
        return [m for m in self.modules if m.component == component]

    @property
    def components(self) -> list[str]:
        return [c for c in COMPONENTS if self.by_component(c)]

    def keyed(self) -> dict[tuple[str, str], LoraModule]:
        """Modules by (component, path without any ``text_model.`` root)."""
        return {module_key(m.component, m.path): m for m in self.modules}

    @property
    def ranks(self) -> list[int]:
        return sorted({m.rank for m in self.modules})


def module_key(component: str, path: str) -> tuple[str, str]:
    """A module's identity whether or not its text encoder has transformers' ``text_model.`` root."""
    if component.startswith("text_encoder") and path.startswith("text_model."):
        path = path[len("text_model.") :]
    return component, path


def _pattern_value(patterns: dict, path: str, default):
    """peft's rank/alpha pattern lookup: a key matches a module path as a dotted suffix."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key.lstrip('^')})$", path):
            return value
    return default


def split_diffusers_state_dict(state: dict[str, torch.Tensor], metadata: dict | None) -> LoraWeights:
    """Parse a diffusers-style LoRA state dict (``unet.<path>.lora.down.weight`` etc.)."""
    config = {}
    if metadata and metadata.get("lora_adapter_metadata"):
        config = json.loads(metadata["lora_adapter_metadata"])
    pairs: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    alphas: dict[tuple[str, str], float] = {}
    leftovers = []
    for key, value in state.items():
        component, _, rest = key.partition(".")
        if component not in COMPONENTS:
            leftovers.append(key)
            continue
        if rest.endswith(".alpha"):
            alphas[(component, rest[: -len(".alpha")])] = float(value)
            continue
        for down_suffix, up_suffix in _PAIR_SUFFIXES:
            for suffix, role in ((down_suffix, "down"), (up_suffix, "up")):
                if rest.endswith(suffix):
                    path = rest[: -len(suffix)]
                    pairs.setdefault((component, path), {})[role] = value
                    break
            else:
                continue
            break
        else:
            leftovers.append(key)
    if leftovers:
        raise StudioError(f"Unrecognised keys in a diffusers LoRA state dict, e.g. {leftovers[:3]}.")
    modules = []
    for (component, path), tensors in sorted(pairs.items()):
        if set(tensors) != {"down", "up"}:
            raise StudioError(f"LoRA module {component}.{path} lacks its {'up' if 'down' in tensors else 'down'} tensor.")
        rank = int(tensors["down"].shape[0])
        alpha = alphas.get((component, path))
        if alpha is None:
            alpha = _pattern_value(config.get(f"{component}.alpha_pattern"), path, config.get(f"{component}.lora_alpha"))
            declared_rank = _pattern_value(config.get(f"{component}.rank_pattern"), path, config.get(f"{component}.r"))
            if alpha is None:
                alpha = rank  # no alpha anywhere: diffusers and ComfyUI then apply scale 1
            elif declared_rank and declared_rank != rank:
                alpha = alpha * rank / declared_rank
        modules.append(LoraModule(component, path, tensors["down"], tensors["up"], float(alpha)))
    return LoraWeights(modules)


def read_diffusers_lora(path: str | Path) -> LoraWeights:
    """Read ``pytorch_lora_weights.safetensors`` (or any diffusers-keyed LoRA file)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    return split_diffusers_state_dict(state, metadata)


def diffusers_lora_state(weights: LoraWeights, family) -> dict[str, torch.Tensor]:
    """The diffusers LoRA layout every diffusers since 0.32 reads, under transformers 4 and 5.

    Keys are what ``save_lora_weights`` writes: ``<component>.<module>.lora_A.weight`` /
    ``.lora_B.weight``, text-encoder modules under CLIP's ``text_model.`` root
    (:meth:`studio.families.base.ModelFamily.diffusers_lora_key`). The scale is folded into ``lora_B``
    (``up * alpha / rank``; exact when it is 1, otherwise one extra rounding), so the file needs no
    alpha at all: a reader that finds none applies scale 1 (diffusers, peft and ComfyUI all do), and
    no ``lora_adapter_metadata`` is written for a diffusers version to misread (0.36 demands a
    ``rank_pattern`` in it, 0.32 mis-places text-encoder entries).
    """
    state: dict[str, torch.Tensor] = {}
    for module in weights.modules:
        up = module.up if module.scale == 1.0 else module.up * module.scale
        stem = family.diffusers_lora_key(module.component, module.path)
        if f"{stem}.lora_A.weight" in state:
            raise StudioError(f"Two LoRA modules map to the same diffusers key {stem}.")
        state[f"{stem}.lora_A.weight"] = module.down.contiguous()
        state[f"{stem}.lora_B.weight"] = up.contiguous()
    return state


def save_diffusers_lora_weights(weights: LoraWeights, directory: Path, family) -> Path:
    """Write ``directory/pytorch_lora_weights.safetensors`` in :func:`diffusers_lora_state`'s layout."""
    from studio.atomic import save_safetensors

    path = directory / LORA_WEIGHTS_FILE
    save_safetensors(diffusers_lora_state(weights, family), path, metadata={"format": "pt"})
    return path
