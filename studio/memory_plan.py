"""The memory plan: a training run's predicted accelerator peak, before any work.

The prediction is the benchmarks' floor (``benchmarks/floors.py``: frozen weights, trainable weights,
their gradients and optimizer state) plus the activations the benchmarks measured for the same
architecture (``benchmarks/results/flow_memory.json`` and ``memory*.json``), scaled by pixels and batch,
plus a fixed allowance for the CUDA context, workspaces and allocator slack.

Nothing here loads weights: a denoiser's shape comes from its ``config.json`` built on the meta device
(diffusers folders and built-ins), or from the table of published architectures below (hub ids), whose
numbers ``tests/test_memory_plan.py`` recomputes from ``benchmarks/flow_arch.py`` and
``studio/models/real_arch.py``.

When the run will not fit, :func:`plan_memory` names settings that would make it fit (found by trying
them on the same model), so `studio train` and the Train tab can say so before anything loads.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GIB = 2**30
ADAM_8BIT_BLOCK = 256  # as benchmarks/floors.py (bitsandbytes' blockwise 8-bit optimizer state)
ADAM_8BIT_MIN_SIZE = 4096
NF4_BLOCK = 64  # bitsandbytes Linear4bit: 4-bit codes, one absmax per 64 values, absmax itself 8-bit per 256 blocks
CONTEXT_GIB = 1.0  # CUDA context, cuBLAS/attention workspaces and allocator slack (docs/performance.md)
FP32_ACTIVATION_FACTOR = 1.5  # SD1.5 at 512 px: fp32 activations / bf16 activations, 0.59/0.38 and 1.77/1.19

# Activations of one training step at batch 1 (GiB, bf16 compute), measured by the benchmarks:
# (reference resolution, with gradient checkpointing, without).
ACTIVATIONS = {
    "flux-dev": (1024, 2.22, 23.87),      # flow_memory.json, H200
    "sd35-medium": (1024, 0.77, 8.77),    # flow_memory.json, H200
    "sd35-large": (1024, 1.38, 16.87),    # flow_memory.json, H200
    "sd15": (512, 0.38, 1.19),            # memory.json (dry compute, bf16 frozen weights)
    "sdxl": (1024, 0.79, 8.05),           # memory.json / memory_sdxl_nogc.json
}
# A quantized base's step held more than floor + activations on the H200 (NF4, LoRA r=16, 1024 px, gradient
# checkpointing; benchmarks/qlora_memory.py): measured peak − (weights + gradients + optimizer state + the
# unquantized run's activations). Not proportional to one layer's dequantized weight (Flux's largest is
# 0.1 GiB); int8 and the other architectures are not measured: the larger figure stands in for them.
QUANTIZED_OVERHEAD_GIB = {"flux-dev": 2.26, "sd35-medium": 1.29}

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


@dataclass
class Plan:
    """A run's predicted peak on one device, by part (GiB), and what would make it fit."""

    architecture: str
    parts: dict[str, float]
    peak_gib: float
    device_gib: float | None
    device: str
    notes: list[str] = field(default_factory=list)
    sampling_gib: float = 0.0
    suggestions: list[dict[str, Any]] = field(default_factory=list)  # settings that make it fit, with the peak then

    @property
    def fits(self) -> bool | None:
        return None if self.device_gib is None else self.peak_gib <= self.device_gib

    def describe(self, surface: str = "cli") -> str:
        """The plan in words; a suggested change reads ``--set key=value`` in the CLI, ``key = value`` in the
        browser (where webui.messages turns setting names into their controls' labels)."""

        def change(settings: dict) -> str:
            if surface == "browser":
                return ", ".join(f"{k} = {_text(v)}" for k, v in settings.items())
            return " ".join(f"--set {k}={_text(v)}" for k, v in settings.items())

        parts = ", ".join(f"{name} {value:.2f}" for name, value in self.parts.items() if value >= 0.005)
        step = sum(self.parts.values())
        lines = [f"Memory plan ({self.architecture}): predicted peak {self.peak_gib:.1f} GiB on the accelerator; "
                 f"training step {step:.1f} GiB ({parts} GiB)."]
        if self.device_gib is not None:
            verdict = "fits" if self.fits else "does NOT fit"
            lines.append(f"{self.device}: {self.device_gib:.1f} GiB; the run {verdict}.")
        if self.fits is False:
            if self.suggestions:
                best = self.suggestions[0]
                lines.append(f"It would fit ({best['peak_gib']:.1f} GiB) with: {change(best['settings'])}")
                for other in self.suggestions[1:]:
                    lines.append(f"  or ({other['peak_gib']:.1f} GiB): {change(other['settings'])}")
            else:
                lines.append("No combination of the settings tried (gradient_checkpointing, mixed_precision, base_quantization, "
                             "optimizer, batch_size, resolution, lora_rank) makes it fit this device.")
        lines += self.notes
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"fits": self.fits}


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


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
    return inventory(model, targets)


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
        return label, inv | {"activation_arch": known}, encoders, scale  # type: ignore[return-value]
    arch = HUB_IDS.get(config.base.lower())
    if arch is None:
        raise LookupError(config.base)
    inv = dict(ARCHITECTURES[arch])
    if targets != DEFAULT_TARGETS:
        inv["note"] = "LoRA size at the default targets"  # type: ignore[assignment]
    return arch, inv | {"activation_arch": arch}, {k: TEXT_ENCODER_PARAMS[k] for k in ENCODERS_OF[arch]}, 1.0  # type: ignore[return-value]


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


def optimizer_bytes(tensor_sizes: list[int], optimizer: str) -> int:
    """Optimizer state of trainable tensors of these sizes (benchmarks/floors.py's rule; prodigy keeps four
    fp32 states per value, schedule-free AdamW two)."""
    total = 0
    for n in tensor_sizes:
        if optimizer == "adamw8bit" and n >= ADAM_8BIT_MIN_SIZE:
            total += 2 * (n + 4 * math.ceil(n / ADAM_8BIT_BLOCK))
        elif optimizer == "prodigy":
            total += 4 * 4 * n
        else:
            total += 2 * 4 * n
    return total


def quantized_linear_bytes(inv: dict[str, int], quantization: str, frozen_bytes: int) -> float:
    """Bytes of the denoiser's Linear weights as held: frozen dtype, int8 (+ one fp32 scale per row), or NF4
    (4 bits + 8-bit absmax per 64 values + one fp32 per 256 absmax values)."""
    n = inv["linear_params"]
    if quantization == "int8":
        return n + 4 * inv["linear_rows"]
    if quantization == "nf4":
        return n / 2 + n / NF4_BLOCK + 4 * n / (NF4_BLOCK * 256)
    return n * frozen_bytes


def predict(config, *, device_type: str = "cuda", described=None) -> tuple[dict[str, float], list[str]]:
    """The predicted accelerator peak of ``config``'s training step, by part (GiB)."""
    label, inv, encoders, scale = described or describe_base(config)
    notes = []
    mixed = config.mixed_precision if device_type == "cuda" else "no"
    frozen = {"fp32": 4, "bf16": 2, "fp16": 2}.get(config.frozen_weights_dtype, 2 if mixed in ("bf16", "fp16") else 4)
    quant = getattr(config, "base_quantization", "none")
    method = config.method
    adapter = method != "dreambooth"  # LoRA, textual inversion (and LoRA + token, pivotal): the denoiser is frozen
    lora = method in ("lora", "pivotal")
    if not adapter:
        quant = "none"
    parts: dict[str, float] = {}
    if adapter:
        linear = quantized_linear_bytes(inv, quant, frozen)
        other = (inv["params"] - inv["linear_params"] + inv.get("buffers", 0)) * frozen
        parts["frozen denoiser"] = (linear + other) / GIB
        if quant != "none":  # dequantization transients, measured on the H200 (benchmarks/results/qlora_memory.json)
            parts["quantized-layer overhead"] = QUANTIZED_OVERHEAD_GIB.get(inv["activation_arch"], max(QUANTIZED_OVERHEAD_GIB.values()))
    trainable: list[int] = []
    if lora:
        rank = config.lora_rank
        per_layer = inv["lora_width"] * rank
        factor = 2 if config.adapter_type in ("loha",) else 1
        trainable.append(per_layer * factor)
    elif method == "dreambooth":
        trainable.append(inv["params"])
        parts["buffers"] = inv.get("buffers", 0) * 4 / GIB
    encoder_total = sum(encoders.values())
    token = method in ("textual_inversion", "pivotal")
    encoders_held = token or config.train_text_encoder or not config.cache_text_embeddings
    if encoders_held:
        if method == "dreambooth" and config.train_text_encoder:
            trainable.append(encoder_total)
        else:
            parts["text encoders"] = encoder_total * frozen / GIB
            if lora and config.train_text_encoder:
                trainable.append(encoder_total // 200)  # a LoRA on the attention projections: well under 1 %
        if token:
            trainable.append(config.num_vectors * 4096)
    if not config.cache_latents:
        parts["VAE"] = VAE_PARAMS * 4 / GIB
    n_trainable = sum(trainable)
    # trainable weights fp32; 8-bit/prodigy rule per tensor; the one big tensor of a full fine-tune split as its layers
    sizes = trainable if method != "dreambooth" else [max(1, inv["largest_linear"])] * max(1, n_trainable // max(1, inv["largest_linear"]))
    parts["trainable weights"] = n_trainable * 4 / GIB
    parts["gradients"] = n_trainable * 4 / GIB
    parts["optimizer state"] = optimizer_bytes(sizes, config.optimizer) / GIB
    ref, with_ckpt, without = ACTIVATIONS[inv["activation_arch"]]  # type: ignore[index]
    pixels = (config.resolution / ref) ** 2
    batch = config.batch_size * (2 if config.prior_preservation and method != "textual_inversion" else 1)
    act = (with_ckpt if config.gradient_checkpointing else without) * pixels * batch * scale
    if mixed == "no":
        act *= FP32_ACTIVATION_FACTOR
    parts["activations"] = act
    if device_type == "cuda":
        parts["CUDA context and slack"] = CONTEXT_GIB
    if "note" in inv:
        notes.append(f"Note: {inv['note']}.")
    return parts, notes


def sampling_gib(config, parts: dict[str, float], described, device_type: str = "cuda") -> float:
    """The peak while samples or validation images render (0 when neither runs): the trainer brings the released
    text encoders and the VAE back beside the denoiser (``placement.brought_back``); no gradients then."""
    validation = bool(config.validation and (config.checkpoint_every or config.validation_every))
    if not (config.sample_every or validation):
        return 0.0
    _, inv, encoders, scale = described
    mixed = config.mixed_precision if device_type == "cuda" else "no"
    frozen = {"fp32": 4, "bf16": 2, "fp16": 2}.get(config.frozen_weights_dtype, 2 if mixed in ("bf16", "fp16") else 4)
    held = parts.get("frozen denoiser", 0.0) + parts.get("quantized-layer overhead", 0.0) + parts.get("buffers", 0.0) + parts["trainable weights"]
    held += parts.get("optimizer state", 0.0)  # stays on the device between steps
    ref, with_ckpt, _ = ACTIVATIONS[inv["activation_arch"]]
    forward = 2 * with_ckpt * (config.resolution / ref) ** 2 * scale  # guidance doubles the batch; no saved activations
    return held + (sum(encoders.values()) * frozen + VAE_PARAMS * 4) / GIB + forward + parts.get("CUDA context and slack", 0.0)


def total_gib(config, *, device_type: str = "cuda", described=None) -> tuple[float, dict[str, float], float, list[str]]:
    """(peak, the training step's parts, the sampling phase's peak, notes)."""
    described = described or describe_base(config)
    parts, notes = predict(config, device_type=device_type, described=described)
    sampling = sampling_gib(config, parts, described, device_type)
    return max(sum(parts.values()), sampling), parts, sampling, notes


def device_memory_gib() -> tuple[str, float] | None:
    """The first CUDA device's name and total memory, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return props.name, props.total_memory / GIB


# Settings that lower the peak, in the order a user gives up least by taking them (each is kept only
# if the plan needs it: see _suggest).
def _candidates(config) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not config.gradient_checkpointing:
        out.append({"gradient_checkpointing": True})
    if config.mixed_precision == "no":
        out.append({"mixed_precision": "bf16"})
    if config.frozen_weights_dtype == "fp32":
        out.append({"frozen_weights_dtype": "auto"})
    if not config.cache_text_embeddings and config.method != "textual_inversion":
        out.append({"cache_text_embeddings": True})
    if config.optimizer in ("adamw", "prodigy", "schedulefree_adamw"):
        out.append({"optimizer": "adamw8bit"})
    adapter = config.method in ("lora", "textual_inversion")  # base_quantization's methods
    quant = getattr(config, "base_quantization", "none")
    if adapter and quant == "none":
        out.append({"base_quantization": "int8"})
    if adapter and quant in ("none", "int8"):
        out.append({"base_quantization": "nf4"})
    if config.sample_every or (config.validation and (config.checkpoint_every or config.validation_every)):
        out.append({"sample_every": 0, "validation": False})
    if config.batch_size > 1:
        out.append({"batch_size": 1})
    if config.method == "lora" and config.train_text_encoder:
        out.append({"train_text_encoder": False})
    if config.method == "lora" and config.lora_rank > 8:
        out.append({"lora_rank": 8})
    for resolution in (768, 512):
        if config.resolution > resolution:
            out.append({"resolution": resolution})
    return out


def _suggest(config, device_gib: float, device_type: str, described) -> list[dict[str, Any]]:
    """Settings that bring the peak under ``device_gib``: the first found by adding candidates in order,
    pruned of any it does not need; then each single candidate that fits alone."""
    def peak(changes: dict[str, Any]) -> float:
        return total_gib(dataclasses.replace(config, **changes), device_type=device_type, described=described)[0]

    found: list[dict[str, Any]] = []
    chosen: dict[str, Any] = {}
    for candidate in _candidates(config):
        chosen = chosen | candidate
        if peak(chosen) <= device_gib:
            for key in list(chosen):  # drop what is not needed (a later candidate may have done the work)
                trial = {k: v for k, v in chosen.items() if k != key}
                if trial and peak(trial) <= device_gib:
                    chosen = trial
            found.append({"settings": chosen, "peak_gib": peak(chosen)})
            break
    for candidate in _candidates(config):
        if candidate != chosen and len(found) < 3 and peak(candidate) <= device_gib:
            found.append({"settings": candidate, "peak_gib": peak(candidate)})
    return found


def plan_memory(config, *, device_gib: float | None = None, device: str | None = None, device_type: str = "cuda") -> Plan:
    """The plan of ``config`` on a device of ``device_gib`` (default: this machine's GPU, if any)."""
    if device_gib is None and device_type == "cuda":
        found = device_memory_gib()
        if found is not None:
            device, device_gib = found
    described = describe_base(config)
    peak, parts, sampling, notes = total_gib(config, device_type=device_type, described=described)
    if sampling:
        notes = [*notes, f"Samples and validation images bring the text encoders and VAE back beside the denoiser: "
                         f"{sampling:.1f} GiB then (sample_every=0 and validation=false avoid it)."]
    plan = Plan(described[0], {k: round(v, 3) for k, v in parts.items()}, peak, device_gib,
                device or (f"a {device_gib:g} GiB GPU" if device_gib else "no GPU"), notes, sampling_gib=sampling)
    if plan.fits is False:
        plan.suggestions = _suggest(config, device_gib, device_type, described)  # type: ignore[arg-type]
    return plan


def check_before_training(config) -> Plan | None:
    """On a GPU, with ``memory_check`` on: refuse a run whose plan does not fit, naming the settings that would
    make it fit. Returns the plan (None where it cannot be made: no GPU, or a base of unknown shape)."""
    from studio.errors import ConfigError
    from trainers.quantize import check_quantization

    check_quantization(config)
    if not getattr(config, "memory_check", True) or device_memory_gib() is None:
        return None
    try:
        plan = plan_memory(config)
    except (LookupError, OSError, KeyError, ValueError):
        return None
    if plan.fits is False:
        raise ConfigError(plan.describe() + "\n(Turn the check off with --set memory_check=false to try anyway.)",
                          browser=plan.describe("browser") + "\n(Untick memory_check in the settings to try anyway.)")
    return plan



CARDS_GIB = (8, 12, 16, 24)  # consumer cards, as sold (a "12 GB" card reports about 11.6-12 GiB to torch)


def plan_markdown(config) -> str:
    """The Train tab's memory line: the plan on this machine's GPU, or, without one, per card size."""
    try:
        found = device_memory_gib()
        if found is not None:
            plan = plan_memory(config)
            text = plan.describe("browser")
            return "**Memory plan.** " + text.replace("\n", "  \n")
        plan = plan_memory(config, device_gib=max(CARDS_GIB))
    except (LookupError, OSError, KeyError, ValueError):
        return f"**Memory plan:** the shape of {config.base} is not known without downloading it; no prediction."
    verdicts = []
    for gib in CARDS_GIB:
        ok = plan.peak_gib <= gib
        hint = ""
        if not ok:
            suggestion = _suggest(config, gib, "cuda", describe_base(config))
            if suggestion:
                hint = " (with " + ", ".join(f"{k} = {_text(v)}" for k, v in suggestion[0]["settings"].items()) + ")"
        verdicts.append(f"{gib} GB: {'fits' if ok else 'no' + hint}")
    return (f"**Memory plan** (no GPU here): predicted GPU peak {plan.peak_gib:.1f} GiB. " + "; ".join(verdicts) + ".")
