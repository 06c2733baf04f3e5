"""The shared shape of a consumer's key rules: which module names it knows and how it splits a key.

Each consumer module (``comfyui``, ``webui``, ``sd_scripts``) restates, in our words, how that tool
matches the keys of a LoRA file to its model's layers; :func:`match_keys` then tells which modules of a
file it would load and which keys it would drop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Tensor suffixes per LoRA spelling: (down, up). Every consumer here reads a subset of them.
KOHYA_PAIR = (".lora_down.weight", ".lora_up.weight")
PEFT_PAIR = (".lora_A.weight", ".lora_B.weight")
DIFFUSERS_PAIR = (".lora.down.weight", ".lora.up.weight")
ATTN_PROCESSOR_PAIR = ("_lora.down.weight", "_lora.up.weight")
LINEAR_LAYER_PAIR = (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight")
ALPHA = ".alpha"


@dataclass
class KeyMatch:
    """What one consumer makes of a file's keys."""

    consumer: str
    modules: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)  # module -> (down key, up key)
    alphas: dict[tuple[str, str], str] = field(default_factory=dict)  # module -> its alpha key
    dropped: list[str] = field(default_factory=list)  # keys the consumer ignores or warns about
    rejected: str | None = None  # why the consumer refuses the whole file, if it does

    @property
    def loads_everything(self) -> bool:
        return not self.dropped and self.rejected is None


def match_keys(consumer: str, keys: list[str], names: dict[str, tuple[str, str]],
               pairs: tuple[tuple[str, str], ...]) -> KeyMatch:
    """Keys ``<name><down suffix>`` + ``<name><up suffix>`` (+ ``<name>.alpha``) for a known name load."""
    result = KeyMatch(consumer)
    present = set(keys)
    used: set[str] = set()
    for name, module in names.items():
        for down, up in pairs:
            if name + down in present and name + up in present:
                result.modules[module] = (name + down, name + up)
                used |= {name + down, name + up}
                if name + ALPHA in present:
                    result.alphas[module] = name + ALPHA
                    used.add(name + ALPHA)
                break
    result.dropped = sorted(present - used)
    return result


def loads_verdict(refused: bool, loaded: bool, incomplete: bool) -> str:
    """How much of a file a consumer loads: ``refused`` (its loader errors), ``none``, ``partial`` or ``all``."""
    if refused:
        return "refused"
    if not loaded:
        return "none"
    return "partial" if incomplete else "all"
