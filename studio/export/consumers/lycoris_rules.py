"""How ComfyUI, Forge, AUTOMATIC1111 and kohya sd-scripts read LyCORIS tensors (LoKr, LoHa, DoRA), restated.

Module names are each consumer's LoRA names (:mod:`.comfyui`, :mod:`.webui`, :mod:`.sd_scripts`); what
differs is which tensors beside a name each one reads and the arithmetic it applies:

* **ComfyUI** (comfy/weight_adapter: ``lora.py``, ``lokr.py``, ``loha.py``, ``base.py``) and **Forge** (the
  same adapters in its packages): LoKr ``lokr_w1``/``lokr_w2`` or their ``_a``/``_b`` halves (``lokr_t2``),
  ``ΔW = kron(w1, w2)``, scaled by ``alpha / rank`` only when a factor is a product (rank = the ``_b``
  half's first dimension, the second factor's when both), else 1; LoHa ``hada_w1_a/b``, ``hada_w2_a/b``,
  ``ΔW = (w1a·w1b) ⊙ (w2a·w2b) · alpha / rank(w1b)``; DoRA: a ``dora_scale`` beside any of them. When its
  first dimension is the layer's outputs, ``W' = (W + ΔW) · dora_scale / (‖W rows‖ + eps)`` (the *base*
  rows' norm); otherwise ``W' = (W + ΔW) · dora_scale / ‖(W + ΔW) columns‖``.
* **A1111** (extensions-builtin/Lora: ``network_lokr.py``, ``network_hada.py``, ``network.py``): the same
  LoKr and LoHa arithmetic; a ``dora_scale`` is always taken on the input axis,
  ``(W + ΔW) · dora_scale / ‖(W + ΔW) columns‖``, so an output-axis magnitude is misapplied.
* **kohya sd-scripts** (``networks/lora.py``): only ``lora_down``/``lora_up``/``alpha``; LoKr and LoHa
  need LyCORIS' own network module, and ``dora_scale`` is ignored without a word.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from studio.export.consumers import comfyui, sd_scripts, webui
from studio.export.consumers.layout import ModelLayout
from studio.export.consumers.rules import ALPHA, KeyMatch

LORA_TENSORS = (".lora_down.weight", ".lora_up.weight")
LOKR_TENSORS = (".lokr_w1", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2", ".lokr_w2_a", ".lokr_w2_b", ".lokr_t2")
LOHA_TENSORS = (".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".hada_t1", ".hada_t2")
DORA_SCALE = ".dora_scale"
COMFY_EPS = float(torch.finfo(torch.float32).eps)


def _algo(name: str, present: set[str]) -> str | None:
    if name + LORA_TENSORS[0] in present and name + LORA_TENSORS[1] in present:
        return "lora"
    if (name + ".lokr_w1" in present or name + ".lokr_w1_a" in present) and \
            (name + ".lokr_w2" in present or name + ".lokr_w2_a" in present):
        return "lokr"
    if all(name + s in present for s in LOHA_TENSORS[:4]):
        return "loha"
    return None


_TENSORS = {"lora": LORA_TENSORS, "lokr": LOKR_TENSORS, "loha": LOHA_TENSORS}


def match_lycoris(consumer: str, keys: list[str], names: dict[str, tuple[str, str]], algos: tuple[str, ...],
                  reads_dora: bool) -> KeyMatch:
    """Which modules a consumer loads: a known name whose tensors form one of ``algos``."""
    result = KeyMatch(consumer)
    present = set(keys)
    used: set[str] = set()
    for name, module in names.items():
        algo = _algo(name, present)
        if algo is None or algo not in algos:
            continue
        taken = [name + s for s in _TENSORS[algo] if name + s in present]
        if name + ALPHA in present:
            taken.append(name + ALPHA)
            result.alphas[module] = name + ALPHA
        if reads_dora and name + DORA_SCALE in present:
            taken.append(name + DORA_SCALE)
        result.modules[module] = (name, algo)  # the file's name of the module and how it is read
        used |= set(taken)
    result.dropped = sorted(present - used)
    return result


def _product(state: dict[str, torch.Tensor], name: str, factor: str) -> tuple[torch.Tensor, int | None]:
    whole = state.get(f"{name}.lokr_{factor}")
    if whole is not None:
        return whole.double(), None
    a, b = state[f"{name}.lokr_{factor}_a"].double(), state[f"{name}.lokr_{factor}_b"].double()
    return a @ b, int(b.shape[0])


def file_delta(state: dict[str, torch.Tensor], name: str, algo: str, shape: torch.Size) -> torch.Tensor:
    """``ΔW`` before any DoRA normalisation, as the LyCORIS readers compute it (float64)."""
    alpha = state.get(name + ALPHA)
    if algo == "lora":
        down, up = state[name + LORA_TENSORS[0]].double().flatten(1), state[name + LORA_TENSORS[1]].double().flatten(1)
        scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
        return (scale * up @ down).reshape(shape)
    if algo == "lokr":
        w1, dim1 = _product(state, name, "w1")
        w2, dim2 = _product(state, name, "w2")
        dim = dim2 if dim2 is not None else dim1
        scale = float(alpha) / dim if alpha is not None and dim is not None else 1.0
        return (torch.kron(w1, w2) * scale).reshape(shape)
    t = {s: state[name + s].double() for s in LOHA_TENSORS[:4]}
    scale = float(alpha) / t[".hada_w1_b"].shape[0] if alpha is not None else 1.0
    return ((t[".hada_w1_a"] @ t[".hada_w1_b"]) * (t[".hada_w2_a"] @ t[".hada_w2_b"]) * scale).reshape(shape)


def _columns_norm(weight: torch.Tensor) -> torch.Tensor:
    flat = weight.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1, keepdim=True)
    return flat.reshape(weight.shape[1], *[1] * (weight.dim() - 1)).transpose(0, 1)


def comfy_weight(state, name, algo, base: torch.Tensor, reads_dora: bool = True) -> torch.Tensor:
    """ComfyUI's and Forge's adapted weight at strength 1."""
    adapted = base + file_delta(state, name, algo, base.shape)
    scale = state.get(name + DORA_SCALE) if reads_dora else None
    if scale is None:
        return adapted
    scale = scale.double()
    if scale.shape[0] == base.shape[0]:
        norm = base.flatten(1).norm(dim=1).reshape(-1, *[1] * (base.dim() - 1)) + COMFY_EPS
    else:
        norm = _columns_norm(adapted)
    return adapted * (scale / norm)


def a1111_weight(state, name, algo, base: torch.Tensor) -> torch.Tensor:
    """AUTOMATIC1111's adapted weight at strength 1 (a ``dora_scale`` always on the input axis)."""
    adapted = base + file_delta(state, name, algo, base.shape)
    scale = state.get(name + DORA_SCALE)
    if scale is None:
        return adapted
    return adapted * (scale.double().reshape(scale.shape[0], *scale.shape[1:]) / _columns_norm(adapted))


def sd_scripts_weight(state, name, algo, base: torch.Tensor) -> torch.Tensor:
    return base + file_delta(state, name, algo, base.shape)


Rule = Callable[[list[str], ModelLayout], KeyMatch]
ALL_ALGOS = ("lora", "lokr", "loha")


def _comfy(keys, layout):
    return match_lycoris(comfyui.NAME, keys, comfyui.lora_names(layout), ALL_ALGOS, True)


def _forge(keys, layout):
    result = match_lycoris(webui.FORGE, keys, comfyui.lora_names(layout), ALL_ALGOS, True)
    if len(result.dropped) > webui.FORGE_MAX_UNMATCHED:
        result.rejected = f"{len(result.dropped)} keys unmatched (Forge refuses a LoRA with more than {webui.FORGE_MAX_UNMATCHED})"
    return result


def _a1111(keys, layout):
    return match_lycoris(webui.A1111, keys, webui.a1111_names(layout), ALL_ALGOS, True)


def _sd_scripts(keys, layout):
    return match_lycoris(sd_scripts.NAME, keys, sd_scripts.lora_names(layout), ("lora",), False)


# consumer -> (key rule, adapted weight at strength 1)
CONSUMERS: dict[str, tuple[Rule, Callable[..., torch.Tensor]]] = {
    comfyui.NAME: (_comfy, comfy_weight),
    webui.A1111: (_a1111, a1111_weight),
    webui.FORGE: (_forge, comfy_weight),
    sd_scripts.NAME: (_sd_scripts, sd_scripts_weight),
}


def lycoris_reports(keys: list[str], layout: ModelLayout, wanted: dict[tuple[str, str], Any],
                    state: dict[str, torch.Tensor] | None = None,
                    bases: dict[tuple[str, str], torch.Tensor] | None = None) -> dict[str, dict[str, Any]]:
    """Every key-rule consumer's verdict on a LyCORIS file: modules it loads, keys it drops, and (with the
    file's tensors and the base weights) whether its arithmetic gives peft's adapted weight."""
    from studio.export.consumers import PROOF_KEY_RULES, with_verdict

    reports = {}
    for consumer, (rule, weight_of) in CONSUMERS.items():
        result = rule(keys, layout)
        left_out = sorted(set(wanted) - set(result.modules))
        report: dict[str, Any] = {"proof": PROOF_KEY_RULES, "modules_loaded": len(set(result.modules) & set(wanted)),
                                  "modules_in_file": len(wanted), "keys_dropped": len(result.dropped)}
        if result.dropped:
            report["dropped"] = result.dropped[:10]
        if result.rejected:
            report["refused"] = result.rejected
        if left_out:
            report["left_out"] = [f"{c}.{p}" for c, p in left_out][:10]
        wrong = None
        if state is not None and bases is not None:
            wrong = []
            for module, (name, algo) in result.modules.items():
                base = bases[module].double()
                expected = base + wanted[module].delta(base)
                if not torch.allclose(weight_of(state, name, algo, base), expected, rtol=1e-4, atol=1e-6):
                    wrong.append(f"{module[0]}.{module[1]}")
        reports[consumer] = with_verdict(report, result, left_out, wrong)
    return reports
