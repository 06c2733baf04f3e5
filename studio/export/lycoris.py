"""DoRA, LoKr and LoHa adapters in one in-memory form, read from a run and written in each layout.

A module holds peft's tensors under peft's names (``lora_A``/``lora_B``/``lora_magnitude_vector``;
``lokr_w1``/``lokr_w2`` or their ``_a``/``_b`` halves; ``hada_w1_a`` …) with peft's ``alpha`` and
rank. :meth:`AdapterModule.delta` is the weight change peft applies, the reference every consumer's
reading of a written file is compared against.

Layouts written here:

* **PEFT** folders (``peft/<component>/``), the adapter type's own ``adapter_config.json``.
* **diffusers** (DoRA only): ``<component>.<module>.lora_A/lora_B.weight`` (scale folded into B) and
  ``.lora_magnitude_vector``, which ``load_lora_weights`` turns into a peft DoRA layer.
* **kohya / LyCORIS** (``lora_unet_…``/``lora_te…`` names from the family): LoKr ``lokr_w1``/``lokr_w2``
  (``_a``/``_b`` when peft decomposed a factor, then with ``alpha``; with both factors whole the LyCORIS
  readers apply no alpha, so peft's ``alpha / r`` is folded into ``lokr_w1`` and ``alpha`` is 1, which
  LyCORIS' own loader requires), LoHa ``hada_w1_a`` …
  with ``alpha`` (scale ``alpha / rank``), DoRA ``lora_down``/``lora_up``/``alpha`` plus ``dora_scale``
  [out, 1]. ComfyUI and Forge divide an output-axis ``dora_scale`` by the norm of the *base* weight
  rows, where peft divides its magnitude by the norm of the *adapted* rows; the file's ``dora_scale`` is
  peft's magnitude times ``(‖W‖ + eps) / ‖W + ΔW‖`` for the base it was trained on, which makes their
  result peft's at strength 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from studio.errors import StudioError

KINDS = ("dora", "lokr", "loha")
DORA_EPS = float(torch.finfo(torch.float32).eps)  # ComfyUI/Forge add it to the row norm (float32 weights)


@dataclass
class AdapterModule:
    component: str
    path: str  # as the live module names it (text encoders: the installed transformers' names)
    kind: str  # "dora" | "lokr" | "loha"
    tensors: dict[str, torch.Tensor]
    alpha: float
    rank: int

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def factor(self, name: str) -> torch.Tensor:
        """``w1``/``w2`` of a LoKr: the whole factor, or the product of its halves."""
        whole = self.tensors.get(f"lokr_{name}")
        if whole is not None:
            return whole.double()
        return self.tensors[f"lokr_{name}_a"].double() @ self.tensors[f"lokr_{name}_b"].double()

    def delta(self, base: torch.Tensor) -> torch.Tensor:
        """``W' - W`` as peft computes it for base weight ``base`` (float64)."""
        weight = base.double()
        if self.kind == "lokr":
            return (torch.kron(self.factor("w1"), self.factor("w2")) * self.scale).reshape(weight.shape)
        if self.kind == "loha":
            t = {k: v.double() for k, v in self.tensors.items()}
            product = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
            return (product * self.scale).reshape(weight.shape)
        low_rank = self.scale * self.tensors["lora_B"].double().flatten(1) @ self.tensors["lora_A"].double().flatten(1)
        adapted = weight + low_rank.reshape(weight.shape)
        norm = adapted.flatten(1).norm(dim=1)
        magnitude = self.tensors["lora_magnitude_vector"].double()
        return adapted * (magnitude / norm).reshape(-1, *[1] * (weight.dim() - 1)) - weight


@dataclass
class AdapterWeights:
    kind: str
    modules: list[AdapterModule]
    notes: dict[str, str] = field(default_factory=dict)

    def by_component(self, component: str) -> list[AdapterModule]:
        return [m for m in self.modules if m.component == component]

    @property
    def components(self) -> list[str]:
        return list(dict.fromkeys(m.component for m in self.modules))

    def keyed(self) -> dict[tuple[str, str], AdapterModule]:
        from studio.export.lora_weights import module_key

        return {module_key(m.component, m.path): m for m in self.modules}


# --- reading a run's result -------------------------------------------------------------------------
def read_peft_adapters(directory: Path) -> AdapterWeights:
    """LoKr/LoHa/DoRA from peft folders (a run's ``adapter/peft/`` or an export's)."""
    from safetensors.torch import load_file

    from studio.peft_files import CONFIG_FILE, KEY_PREFIX, WEIGHTS_FILE, peft_folders

    modules: list[AdapterModule] = []
    kinds = set()
    for component, folder in peft_folders(directory).items():
        config = json.loads((folder / CONFIG_FILE).read_text())
        kind = {"LOKR": "lokr", "LOHA": "loha"}.get(config.get("peft_type", "LORA"), "dora" if config.get("use_dora") else "lora")
        if kind not in KINDS:
            raise StudioError(f"{folder} holds a plain LoRA; read it with studio.export.lora_peft.")
        kinds.add(kind)
        alpha = float(config.get("lora_alpha", config.get("alpha", config.get("r", 8))))
        grouped: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in load_file(str(folder / WEIGHTS_FILE)).items():
            name = key.removeprefix(KEY_PREFIX).removesuffix(".weight")
            path, _, tensor = name.rpartition(".")
            grouped.setdefault(path, {})[tensor] = value
        for path, tensors in sorted(grouped.items()):
            modules.append(AdapterModule(component, path, kind, tensors, alpha, int(config["r"])))
    return _one_kind(kinds, modules, directory)


def read_diffusers_dora(path: Path) -> AdapterWeights:
    """DoRA from a diffusers LoRA file (``lora.down/up`` or ``lora_A/B`` plus ``lora_magnitude_vector``)."""
    from safetensors import safe_open

    from studio.export.lora_weights import COMPONENTS

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    config = json.loads(metadata.get("lora_adapter_metadata") or "{}")
    roles = {".lora.down.weight": "lora_A", ".lora_A.weight": "lora_A", ".lora.up.weight": "lora_B",
             ".lora_B.weight": "lora_B", ".lora_linear_layer.down.weight": "lora_A",
             ".lora_linear_layer.up.weight": "lora_B", ".lora_magnitude_vector.weight": "lora_magnitude_vector",
             ".lora_magnitude_vector": "lora_magnitude_vector"}
    grouped: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        component, _, rest = key.partition(".")
        suffix = next((s for s in roles if rest.endswith(s)), None)
        if component not in COMPONENTS or suffix is None:
            raise StudioError(f"{path}: unrecognised key in a DoRA file: {key}.")
        grouped.setdefault((component, rest[: -len(suffix)]), {})[roles[suffix]] = value
    modules = []
    for (component, module_path), tensors in sorted(grouped.items()):
        rank = int(tensors["lora_A"].shape[0])
        alpha = float(config.get(f"{component}.lora_alpha", rank))
        declared = int(config.get(f"{component}.r", rank))
        modules.append(AdapterModule(component, module_path, "dora", tensors, alpha * rank / declared, rank))
    if not all("lora_magnitude_vector" in m.tensors for m in modules):
        raise StudioError(f"{path} is a plain LoRA (no lora_magnitude_vector); it is not a DoRA.")
    return AdapterWeights("dora", modules)


def _one_kind(kinds: set[str], modules: list[AdapterModule], where: Path) -> AdapterWeights:
    if len(kinds) != 1:
        raise StudioError(f"{where} holds {sorted(kinds) or 'no'} adapters; expected one adapter type.")
    return AdapterWeights(kinds.pop(), modules)


# --- writing ------------------------------------------------------------------------------------------
def base_weights(components: dict, weights: AdapterWeights) -> dict[tuple[str, str], torch.Tensor]:
    """The base model's weight of each adapted module (peft-wrapped layers keep it in ``base_layer``)."""
    from studio.export.lora_weights import module_key

    found = {}
    for module in weights.modules:
        layer = _submodule(components[module.component], module.path)
        layer = getattr(layer, "base_layer", layer)
        found[module_key(module.component, module.path)] = layer.weight.detach().float().cpu()
    return found


def _submodule(model, path: str):
    """A module by path, with or without CLIP's ``text_model.`` root (transformers 4 and 5 differ)."""
    from studio.families.base import clip_rooted_path, clip_rootless_path

    for candidate in dict.fromkeys([path, clip_rootless_path(path), clip_rooted_path(path)]):
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            continue
    raise StudioError(f"{type(model).__name__} has no layer {path}.")


def kohya_lycoris_state(weights: AdapterWeights, family, bases: dict[tuple[str, str], torch.Tensor],
                        unet_config=None) -> dict[str, torch.Tensor]:
    """The kohya/LyCORIS layout (see the module docstring); ``bases`` only matter for DoRA."""
    from studio.export.lora_weights import module_key

    state: dict[str, torch.Tensor] = {}
    for module in weights.modules:
        name = family.kohya_lora_name(module.component, module.path, unet_config)
        if any(key.startswith(name + ".") for key in state):
            raise StudioError(f"Two adapter modules map to the same kohya name {name}.")
        base = bases.get(module_key(module.component, module.path))
        state |= {f"{name}.{key}": value for key, value in lycoris_tensors(module, base).items()}
    return state


def lycoris_tensors(module: AdapterModule, base: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """One module's tensors in the LyCORIS layout (suffix -> tensor); ``base`` (its base weight) only for DoRA."""
    t = module.tensors
    if module.kind == "lokr":
        out = {key: value.contiguous() for key, value in t.items()}
        if any(k.endswith(("_a", "_b")) for k in t):
            out["alpha"] = torch.tensor(module.alpha)
        else:  # LyCORIS readers apply no alpha to whole factors: fold peft's scale into w1. LyCORIS' own loader
            # still requires the key (it writes 1 for such a module itself); the others ignore it there.
            out["lokr_w1"] = (t["lokr_w1"] * module.scale).contiguous()
            out["alpha"] = torch.tensor(1.0)
        return out
    if module.kind == "loha":
        return {key: value.contiguous() for key, value in t.items()} | {"alpha": torch.tensor(module.alpha)}
    if base is None:
        raise StudioError(f"{module.component}.{module.path}: a DoRA's kohya file needs the base weight.")
    base = base.double()
    adapted = base + module.scale * (t["lora_B"].double().flatten(1) @ t["lora_A"].double().flatten(1)).reshape(base.shape)
    ratio = (base.flatten(1).norm(dim=1) + DORA_EPS) / adapted.flatten(1).norm(dim=1)
    return {"lora_down.weight": t["lora_A"].contiguous(), "lora_up.weight": t["lora_B"].contiguous(),
            "alpha": torch.tensor(module.alpha),
            "dora_scale": (t["lora_magnitude_vector"].double() * ratio).float().reshape(-1, 1).contiguous()}


def diffusers_dora_state(weights: AdapterWeights, family) -> dict[str, torch.Tensor]:
    """DoRA in the diffusers layout ``load_lora_weights`` reads (scale folded into ``lora_B``)."""
    from studio.families import is_denoiser

    state = {}
    for module in weights.modules:
        stem = family.diffusers_lora_key(module.component, module.path)
        state[f"{stem}.lora_A.weight"] = module.tensors["lora_A"].contiguous()
        state[f"{stem}.lora_B.weight"] = (module.tensors["lora_B"] * module.scale).contiguous()
        # diffusers hands text-encoder keys to transformers, which matches the magnitude's parameter name
        # (``….lora_magnitude_vector.<adapter>.weight``); the denoiser's go through peft, which adds it.
        magnitude = "lora_magnitude_vector" + ("" if is_denoiser(module.component) else ".weight")
        state[f"{stem}.{magnitude}"] = module.tensors["lora_magnitude_vector"].contiguous()
    return state


def rewrite_diffusers_dora(path: Path, family) -> None:
    """Rewrite a DoRA file ``save_lora_weights`` wrote into :func:`diffusers_dora_state`'s layout: its
    text-encoder magnitudes are otherwise dropped when diffusers loads them under transformers 5."""
    from studio.atomic import save_safetensors

    save_safetensors(diffusers_dora_state(read_diffusers_dora(path), family), path, metadata={"format": "pt"})


def peft_config_for(kind: str, modules: list[AdapterModule], base_model: str):
    """The adapter type's peft config for ``modules`` (one rank and alpha; every path targeted exactly)."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    from studio.export.lora_peft import target_modules

    rank, alpha = modules[0].rank, modules[0].alpha
    targets = target_modules(modules)  # the same rooted/rootless text-encoder pattern as LoRA's folders
    if kind == "dora":
        return LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, use_dora=True, base_model_name_or_path=base_model)
    config_class = LoKrConfig if kind == "lokr" else LoHaConfig
    return config_class(r=rank, alpha=alpha, target_modules=targets, base_model_name_or_path=base_model)


def save_peft_adapter_folders(weights: AdapterWeights, directory: Path, base_model: str) -> list[Path]:
    """``directory/<component>/`` per adapted component, each tensor under both CLIP spellings for text
    encoders (as the LoRA folders do, so transformers 4 and 5 each find theirs)."""
    from studio.atomic import save_safetensors, write_json
    from studio.export.lora_peft import _key_paths
    from studio.peft_files import CONFIG_FILE, KEY_PREFIX, WEIGHTS_FILE, config_dict

    folders = []
    for component in weights.components:
        modules = weights.by_component(component)
        folder = directory / component
        folder.mkdir(parents=True, exist_ok=True)
        state = {}
        for module in modules:
            for path in _key_paths(module):
                for tensor, value in module.tensors.items():
                    suffix = ".weight" if tensor in ("lora_A", "lora_B") else ""
                    state[f"{KEY_PREFIX}{path}.{tensor}{suffix}"] = value.clone().contiguous()
        save_safetensors(state, folder / WEIGHTS_FILE, metadata={"format": "pt"})
        write_json(folder / CONFIG_FILE, config_dict(peft_config_for(weights.kind, modules, base_model)))
        folders.append(folder)
    return folders
