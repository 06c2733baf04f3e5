"""Runs inside the lycoris-lora side environment: loads Studio's kohya/LyCORIS files with LyCORIS' own kohya
loader (``lycoris.kohya.create_network_from_weights``, what sd-scripts runs for ``--network_module
lycoris.kohya``) and reports, per file, which keys its modules consumed and each module's merged weight
against the adapted weight Studio meant. Standalone: imports no studio code.

Usage: python lycoris_loader.py TASKS.json OUT.json, where TASKS.json is {"tasks": [{"file": LYCORIS FILE,
"bases": FILE of base weights, "expected": FILE of adapted weights}]}; both weight files are keyed
``unet.<path>`` / ``te.<path>`` with diffusers' UNet paths and CLIP's rooted paths (sd-scripts' models name
their modules so). The UNet and text encoder handed to the loader are module trees with those names and
weights (Linear / Conv2d layers), which is all the loader reads from them.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version

import torch
from safetensors.torch import load_file


def _tree(weights: dict[str, torch.Tensor], prefix: str) -> torch.nn.Module:
    root = torch.nn.Module()
    for key, weight in weights.items():
        if not key.startswith(prefix):
            continue
        path = key[len(prefix):].split(".")
        parent = root
        for part in path[:-1]:
            if not hasattr(parent, part):
                parent.add_module(part, torch.nn.Module())
            parent = getattr(parent, part)
        if weight.dim() == 4:
            layer = torch.nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), bias=False)
        else:
            layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            layer.weight.copy_(weight)
        parent.add_module(path[-1], layer)
    return root


def run(task: dict) -> dict:
    from lycoris.kohya import create_network_from_weights

    bases, expected = load_file(task["bases"]), load_file(task["expected"])
    state = load_file(task["file"])
    unet, text_encoder = _tree(bases, "unet."), _tree(bases, "te.")
    network, _ = create_network_from_weights(1.0, task["file"], None, text_encoder, unet, weights_sd=state,
                                              for_inference=True)
    modules = list(network.unet_loras) + list(network.text_encoder_loras)
    consumed, worst, worst_relative, per_algo = set(), 0.0, 0.0, {}
    names = {}
    for key in bases:
        stem = ("lora_unet_" if key.startswith("unet.") else "lora_te_") + key.split(".", 1)[1].replace(".", "_")
        names[stem] = key
    for module in modules:
        consumed |= {f"{module.lora_name}.{k}" for k in type(module).weight_list if f"{module.lora_name}.{k}" in state}
        per_algo[type(module).__name__] = per_algo.get(type(module).__name__, 0) + 1
        with torch.no_grad():
            merged = module.get_merged_weight(multiplier=1.0)[0].double()
        want = expected[names[module.lora_name]].double().reshape(merged.shape)
        base = bases[names[module.lora_name]].double().reshape(merged.shape)
        difference = float((merged - want).abs().max())
        worst = max(worst, difference)
        worst_relative = max(worst_relative, difference / float((want - base).abs().max() or 1.0))
    return {"file": task["file"], "modules_created": len(modules), "modules_in_file": len({k.split(".")[0] for k in state}),
            "keys_in_file": len(state), "keys_consumed": len(consumed), "not_consumed": sorted(set(state) - consumed)[:10],
            "classes": per_algo, "max_abs_diff": worst, "max_diff_relative_to_update": worst_relative}


def main() -> None:
    request, answer = sys.argv[1], sys.argv[2]
    tasks = json.loads(open(request).read())["tasks"]
    results = []
    for task in tasks:
        try:
            results.append(run(task))
        except Exception as error:  # reported, not raised: the caller asserts
            results.append({"file": task["file"], "error": f"{type(error).__name__}: {error}"})
    with open(answer, "w") as handle:
        json.dump({"lycoris": version("lycoris-lora"), "torch": torch.__version__, "results": results}, handle, indent=1)


if __name__ == "__main__":
    main()
