"""What the memory plan knows of a model's shape, without loading weights.

A denoiser's shape comes from its ``config.json`` built on the meta device (diffusers folders and
built-ins), or from the tables of published architectures below (hub ids), whose numbers
``tests/test_memory_plan.py`` recomputes from ``benchmarks/flow_arch.py`` and ``studio/models/real_arch.py``.
The swappable blocks (block swapping, ``blocks_to_swap``) are the ones the family names.
"""

from __future__ import annotations

import json
from pathlib import Path

# Published denoisers' shapes (inventory() of the meta-device models; recomputed by the tests):
# params, params in nn.Linear weights, Linear output rows, the largest Linear weight, and the LoRA
# in+out width summed over the default targets (to_q, to_k, to_v, to_out.0): LoRA params = rank × that;
# floating-point buffers (SD3's positional-embedding table).
ARCHITECTURES: dict[str, dict[str, int]] = {
    "flux-dev": {"params": 11901408320, "linear_params": 11898322944, "linear_rows": 3065920, "largest_linear": 56623104, "lora_width": 1167360, "buffers": 0},
    "sd35-medium": {"params": 2243171520, "linear_params": 2241822720, "linear_rows": 1241152, "largest_linear": 21233664, "lora_width": 454656, "buffers": 226492416},
    "sd35-large": {"params": 8056627520, "linear_params": 8053694464, "linear_rows": 2765248, "largest_linear": 35487744, "lora_width": 739328, "buffers": 89653248},
    "sd15": {"params": 859520964, "linear_params": 270049280, "linear_rows": 234880, "largest_linear": 13107200, "lora_width": 199296, "buffers": 0},
    "sdxl": {"params": 2567463684, "linear_params": 2232647680, "linear_rows": 1455040, "largest_linear": 13107200, "lora_width": 1451520, "buffers": 0},
}
TEXT_ENCODER_PARAMS = {"clip_l": 123060480, "clip_g": 694659840, "t5_xxl": 4762310656}
HUB_IDS = {
    "black-forest-labs/flux.1-dev": "flux-dev", "black-forest-labs/flux.1-schnell": "flux-dev",
    "stabilityai/stable-diffusion-3.5-medium": "sd35-medium", "stabilityai/stable-diffusion-3.5-large": "sd35-large",
    "stabilityai/stable-diffusion-3.5-large-turbo": "sd35-large",
    "stabilityai/stable-diffusion-xl-base-1.0": "sdxl",
    "runwayml/stable-diffusion-v1-5": "sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd15",
}
ENCODERS_OF = {"flux-dev": ("clip_l", "t5_xxl"), "sd35-medium": ("clip_l", "clip_g", "t5_xxl"),
               "sd35-large": ("clip_l", "clip_g", "t5_xxl"), "sdxl": ("clip_l", "clip_g"), "sd15": ("clip_l",)}
VAE_PARAMS = 84_000_000
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# The swappable blocks of each published transformer, in forward order (the family's block lists): runs of
# (count, params, Linear weight params, Linear output rows) per block (block_runs() of the meta models).
BLOCKS: dict[str, tuple[tuple[int, int, int, int], ...]] = {
    "flux-dev": ((19, 339831296, 339738624, 92160), (38, 141591808, 141557760, 33792)),
    "sd35-medium": ((13, 101506944, 101449728, 56832), (10, 84980992, 84934656, 46080), (1, 54294784, 54263808, 30720)),
    "sd35-large": ((37, 212999680, 212926464, 72960), (1, 136085248, 136036352, 48640)),
    "sd15": (), "sdxl": (),
}


def inventory(model, targets: tuple[str, ...] = DEFAULT_TARGETS) -> dict[str, int]:
    """The shape facts the plan needs from a (meta-device) denoiser."""
    import torch

    linear = rows = largest = lora = 0
    for path, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            linear += module.weight.numel()
            rows += module.out_features
            largest = max(largest, module.weight.numel())
            if any(path == t or path.endswith("." + t) for t in targets):
                lora += module.in_features + module.out_features
    buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())  # SD3's positional table: 226 M values
    return {"params": sum(p.numel() for p in model.parameters()), "linear_params": linear, "linear_rows": rows,
            "largest_linear": largest, "lora_width": lora, "buffers": buffers}


def block_runs(model) -> tuple[tuple[int, int, int, int], ...]:
    """The swappable blocks of a (meta-device) denoiser as runs of (count, params, Linear params, Linear rows)."""
    import torch

    from studio.families import FAMILIES

    family = next((f() for f in FAMILIES if f.detect({f.denoiser_name: model})), None)
    runs: list[tuple[int, int, int, int]] = []
    for block in family.swappable_blocks(model) if family is not None else []:
        linears = [m for m in block.modules() if isinstance(m, torch.nn.Linear)]
        facts = (sum(p.numel() for p in block.parameters()), sum(m.weight.numel() for m in linears),
                 sum(m.out_features for m in linears))
        if runs and runs[-1][1:] == facts:
            runs[-1] = (runs[-1][0] + 1, *facts)
        else:
            runs.append((1, *facts))
    return tuple(runs)


def swapped_blocks(inv: dict, count: int) -> list[tuple[int, int, int]]:
    """(params, Linear params, Linear rows) of the last ``count`` blocks (those block swapping keeps on the CPU)."""
    blocks = [facts for n, *facts in inv.get("blocks", ()) for _ in range(n)]
    return [tuple(b) for b in blocks[max(0, len(blocks) - count):]] if count else []  # type: ignore[misc]


def _denoiser_folder(config) -> Path | None:
    from studio.models.loader import describe_ref_kind

    kind = describe_ref_kind(config.base)
    if kind == "builtin":
        from studio.models.builtin import builtin_path

        root = builtin_path(config.base)
    elif kind == "folder":
        root = Path(config.base).expanduser()
    else:
        return None
    for name in ("transformer", "unet"):
        if (root / name / "config.json").exists():
            return root / name
    return None


def _meta_inventory(folder: Path, targets: tuple[str, ...]) -> dict[str, int]:
    import diffusers
    import torch

    config = json.loads((folder / "config.json").read_text())
    cls = getattr(diffusers, config["_class_name"])
    with torch.device("meta"):
        model = cls.from_config(config)
    return inventory(model, targets) | {"blocks": block_runs(model)}  # type: ignore[dict-item]


def _has_t5(root: Path) -> bool:
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        path = root / name / "config.json"
        if path.exists() and any(a.startswith("T5") for a in json.loads(path.read_text()).get("architectures") or []):
            return True
    return False


def _encoder_params(root: Path, names: tuple[str, ...]) -> dict[str, int]:
    import torch
    import transformers

    counts = {}
    for name in names:
        path = root / name / "config.json"
        if not path.exists():
            continue
        config = transformers.AutoConfig.from_pretrained(root / name)
        cls = getattr(transformers, config.architectures[0]) if config.architectures else transformers.AutoModel
        with torch.device("meta"):
            model = cls(config)
        counts[name] = sum(p.numel() for p in model.parameters())
    return counts


def describe_base(config) -> tuple[str, dict[str, int], dict[str, int], float]:
    """(architecture label, denoiser inventory, text encoder params, activation scale) of ``config.base``.

    Raises LookupError when the base's shape cannot be known without downloading it."""
    targets = tuple(config.lora_target_modules)
    folder = _denoiser_folder(config)
    if folder is not None:
        inv = _meta_inventory(folder, targets)
        encoders = _encoder_params(folder.parent, ("text_encoder", "text_encoder_2", "text_encoder_3"))
        label = f"{config.base} ({inv['params'] / 1e6:.1f} M-parameter {folder.name})"
        known = _nearest_architecture(folder)
        # a smaller model of a measured family: its activations scale with its width and depth, here its parameters
        scale = min(1.0, inv["params"] / ARCHITECTURES[known]["params"])
        return label, inv | {"activation_arch": known, "t5": _has_t5(folder.parent)}, encoders, scale  # type: ignore[return-value]
    arch = HUB_IDS.get(config.base.lower())
    if arch is None:
        raise LookupError(config.base)
    inv = dict(ARCHITECTURES[arch])
    if targets != DEFAULT_TARGETS:
        inv["note"] = "LoRA size at the default targets"  # type: ignore[assignment]
    inv |= {"activation_arch": arch, "blocks": BLOCKS[arch], "t5": "t5_xxl" in ENCODERS_OF[arch]}  # type: ignore[dict-item]
    return arch, inv, {k: TEXT_ENCODER_PARAMS[k] for k in ENCODERS_OF[arch]}, 1.0  # type: ignore[return-value]


def _nearest_architecture(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text())
    name = config["_class_name"]
    if name.startswith("Flux"):
        return "flux-dev"
    if name.startswith("SD3"):
        return "sd35-medium"
    if config.get("addition_embed_type") == "text_time":
        return "sdxl"
    return "sd15"
