"""The memory plan: a training run's predicted accelerator peak, before any work.

The prediction is the benchmarks' floor (``benchmarks/floors.py``: frozen weights, trainable weights,
their gradients and optimizer state) plus the activations the benchmarks measured for the same
architecture (``benchmarks/results/flow_memory.json`` and ``memory*.json``), scaled by pixels and batch,
plus a fixed allowance for the CUDA context, workspaces and allocator slack.

Nothing here loads weights: a denoiser's shape comes from ``studio/memory_shapes.py`` (its ``config.json``
on the meta device, or the tables of published architectures).

Measured: the activations below on an H200 (bf16) or on the CPU (dry compute); the quantized-layer overhead, block
swapping's buffer and activation offloading's saving on the emulated CUDA device (``benchmarks/device_emulation.py``,
checked against the H200's figures). Block swapping (``blocks_to_swap``) takes the swapped blocks' frozen weights off
the device and adds a buffer of two of them (the block computing and the one being copied in).

When the run will not fit, :func:`plan_memory` names settings that would make it fit (found by trying
them on the same model), so `studio train` and the Train tab can say so before anything loads.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from studio.memory_shapes import (  # noqa: F401 - ARCHITECTURES, HUB_IDS, inventory: re-exported (tests, benchmarks)
    ARCHITECTURES,
    ENCODERS_OF,
    HUB_IDS,
    TEXT_ENCODER_PARAMS,
    VAE_PARAMS,
    describe_base,
    inventory,
    swapped_blocks,
)

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
# A quantized base holds one layer's weight dequantized (NF4, int8) or upcast (fp8) at a time beside its parts: the
# layer computing, in the compute dtype. Measured on the emulated device (benchmarks/lowvram_memory.py --emulate,
# results/lowvram_memory_emulated.json): NF4 and fp8 steps hold the bf16 step's activations and nothing more but
# that layer. (The H200's NF4 runs held 1.3-2.3 GiB more: bitsandbytes answered in fp32 under autocast, which made the
# residual stream fp32; fixed in trainers/bitsandbytes_layers.py.)
QUANTIZED_LAYERS_HELD = 1
# offload_activations: the checkpointed blocks' inputs (GiB at the reference resolution, batch 1) that leave the
# device, measured on the emulated device as the peak's fall (flux-dev, sd35-medium); sd35-large scaled from medium
# by width x blocks. Denoisers not listed (UNets) are not counted: the plan keeps their activations whole.
OFFLOADED_INPUTS = {"flux-dev": (1024, 1.44), "sd35-medium": (1024, 0.135), "sd35-large": (1024, 0.135 * 2432 * 38 / (1536 * 24))}
SWAP_BUFFER_BLOCKS = 2  # block swapping: the block computing and the next one arriving (trainers/block_swap.py)
SWAP_AUTO = "fewest"  # a suggestion's blocks_to_swap before it is sized


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
                             "offload_activations, blocks_to_swap, optimizer, batch_size, resolution, lora_rank) makes it "
                             "fit this device.")
        lines += self.notes
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"fits": self.fits}


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


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
    """Bytes of the denoiser's Linear weights as held: frozen dtype, int8 or fp8 (+ one fp32 scale per row), or
    NF4 (4 bits + 8-bit absmax per 64 values + one fp32 per 256 absmax values)."""
    n = inv["linear_params"]
    if quantization in ("int8", "fp8"):
        return n + 4 * inv["linear_rows"]
    if quantization == "nf4":
        return n / 2 + n / NF4_BLOCK + 4 * n / (NF4_BLOCK * 256)
    return n * frozen_bytes


def _frozen_bytes(params: int, linear: int, rows: int, quant: str, frozen: int) -> float:
    """Bytes of frozen weights as held: the Linear weights quantized, the rest in the frozen dtype."""
    return quantized_linear_bytes({"linear_params": linear, "linear_rows": rows}, quant, frozen) + (params - linear) * frozen


def _quantized_overhead(inv: dict, frozen: int) -> float:
    """GiB a quantized step holds beyond its parts: the largest layer dequantized or upcast (QUANTIZED_LAYERS_HELD)."""
    return QUANTIZED_LAYERS_HELD * inv["largest_linear"] * frozen / GIB


def swap_effective(config) -> bool:
    """Whether ``blocks_to_swap`` takes weights off the device: it needs checkpointing and a frozen denoiser, and the
    trainer refuses it with int8 (trainers/block_swap.py)."""
    return bool(getattr(config, "blocks_to_swap", 0) and config.gradient_checkpointing
                and config.method in ("lora", "textual_inversion") and config.base_quantization != "int8")


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
        if quant != "none":  # the layer computing, dequantized or upcast
            parts["quantized-layer overhead"] = _quantized_overhead(inv, frozen)
        if swap_effective(config):  # block swapping: those blocks' frozen weights wait on the CPU
            swapped = [_frozen_bytes(p, lin, rows, quant, frozen) for p, lin, rows in swapped_blocks(inv, config.blocks_to_swap)]
            if swapped:
                parts["frozen denoiser"] -= sum(swapped) / GIB
                parts["block-swap buffer"] = SWAP_BUFFER_BLOCKS * max(swapped) / GIB
            else:
                notes.append("Note: blocks_to_swap has no effect here: this denoiser has no swappable blocks.")
        elif getattr(config, "blocks_to_swap", 0):
            notes.append("Note: blocks_to_swap saves nothing without gradient_checkpointing (and not with int8); the "
                         "trainer refuses that combination.")
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
    if config.gradient_checkpointing and getattr(config, "offload_activations", False):
        offloaded = OFFLOADED_INPUTS.get(inv["activation_arch"])  # type: ignore[arg-type]
        if offloaded is None:
            notes.append("Note: offload_activations is not counted for this denoiser (measured for Flux and SD3); the "
                         "plan keeps its activations whole.")
        else:
            act = max(act - offloaded[1] * (config.resolution / offloaded[0]) ** 2 * batch * scale, 0.0)
    parts["activations"] = act
    if device_type == "cuda":
        parts["CUDA context and slack"] = CONTEXT_GIB
    if "note" in inv:
        notes.append(f"Note: {inv['note']}.")
    return parts, notes


def sampling_gib(config, parts: dict[str, float], described, device_type: str = "cuda") -> float:
    """The peak while samples or validation images render (0 when neither runs): the trainer brings the released
    text encoders (unless their embeddings are cached: bases with T5) and the VAE back beside the denoiser
    (``placement.brought_back``); no gradients then."""
    validation = bool(config.validation and (config.checkpoint_every or config.validation_every))
    if not (config.sample_every or validation):
        return 0.0
    _, inv, encoders, scale = described
    mixed = config.mixed_precision if device_type == "cuda" else "no"
    frozen = {"fp32": 4, "bf16": 2, "fp16": 2}.get(config.frozen_weights_dtype, 2 if mixed in ("bf16", "fp16") else 4)
    held = sum(parts.get(k, 0.0) for k in ("frozen denoiser", "quantized-layer overhead", "block-swap buffer", "buffers"))
    held += parts["trainable weights"] + parts.get("optimizer state", 0.0)  # stays on the device between steps
    ref, with_ckpt, _ = ACTIVATIONS[inv["activation_arch"]]
    forward = 2 * with_ckpt * (config.resolution / ref) ** 2 * scale  # guidance doubles the batch; no saved activations
    encoder_bytes = 0 if samples_from_cached_embeddings(config, inv) else sum(encoders.values()) * frozen
    return held + (encoder_bytes + VAE_PARAMS * 4) / GIB + forward + parts.get("CUDA context and slack", 0.0)


def samples_from_cached_embeddings(config, inv: dict) -> bool:
    """Whether samples render from cached prompt embeddings, leaving the text encoders off the device
    (trainers/sample_embeddings.py: bases with T5, the prompt cache on, text encoders frozen)."""
    frozen_encoders = config.method in ("lora", "dreambooth") and not config.train_text_encoder
    return bool(inv.get("t5") and config.cache_text_embeddings and frozen_encoders)


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
    if not getattr(config, "offload_activations", False):  # two copies of each block's input per step
        out.append({"offload_activations": True} | ({} if config.gradient_checkpointing else {"gradient_checkpointing": True}))
    if adapter and not getattr(config, "blocks_to_swap", 0):  # slower steps (PCIe copies): after giving up samples
        out.append({"blocks_to_swap": SWAP_AUTO})  # the fewest blocks that make it fit (_suggest)
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
    pruned of any it does not need; then each single candidate that fits alone. A block-swap candidate
    swaps the fewest blocks that fit (all of them when none does)."""
    blocks = sum(run[0] for run in described[1].get("blocks", ()))

    def sized(changes: dict[str, Any]) -> dict[str, Any]:
        if changes.get("blocks_to_swap") != SWAP_AUTO:
            return changes
        for count in range(1, blocks + 1):
            if peak(changes | {"blocks_to_swap": count}) <= device_gib:
                return changes | {"blocks_to_swap": count}
        return changes | {"blocks_to_swap": blocks}

    def peak(changes: dict[str, Any]) -> float:
        if changes.get("blocks_to_swap") == SWAP_AUTO:
            changes = sized(changes)
        return total_gib(dataclasses.replace(config, **changes), device_type=device_type, described=described)[0]

    candidates = [c for c in _candidates(config) if blocks or "blocks_to_swap" not in c]
    found: list[dict[str, Any]] = []
    chosen: dict[str, Any] = {}
    for candidate in candidates:
        chosen = sized(chosen | candidate)
        if peak(chosen) <= device_gib:
            for key in list(chosen):  # drop what is not needed (a later candidate may have done the work)
                trial = {k: v for k, v in chosen.items() if k != key}
                if trial and peak(trial) <= device_gib:
                    chosen = trial
            if "blocks_to_swap" in chosen:  # as few blocks as the rest of the changes allow
                chosen = sized(chosen | {"blocks_to_swap": SWAP_AUTO})
            found.append({"settings": chosen, "peak_gib": peak(chosen)})
            break
    for candidate in candidates:
        candidate = sized(candidate)
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
        back = "the VAE (prompt embeddings cached)" if samples_from_cached_embeddings(config, described[1]) else \
            "the text encoders and VAE"
        notes = [*notes, f"Samples and validation images bring {back} back beside the denoiser: "
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
    from trainers.activation_offload import check_activation_offload
    from trainers.block_swap import check_block_swap
    from trainers.quantize import check_quantization

    check_quantization(config)
    check_block_swap(config)
    check_activation_offload(config)
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
