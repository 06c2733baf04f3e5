"""Runs inside the lycoris-lora side environment: loads Studio's Flux/SD3 kohya/LyCORIS files (the fused original
layout: BFL's ``double_blocks``/``single_blocks``, SAI's ``joint_blocks``) with LyCORIS' own kohya loader
(``lycoris.kohya.create_network_from_weights``, what sd-scripts runs for ``--network_module lycoris.kohya``) and
reports which keys its modules consumed and the weight each module gives against the adapted weight Studio meant,
along both of LyCORIS' paths: inference (``apply_to``, then the layer's own forward, read back on the identity) and
merging (``get_merged_weight``, what ``merge_to`` writes). Standalone: imports no studio code.

Usage: python lycoris_flow_loader.py TASKS.json OUT.json, where TASKS.json is {"tasks": [{"file": LYCORIS FILE,
"bases": FILE, "expected": FILE}]}; the weight files are keyed ``unet.<original name>`` (``unet.double_blocks.0.
img_attn.qkv``: sd-scripts' Flux and MMDiT models name their layers so) and ``te1.<CLIP path>``/``te2.<CLIP path>``
(sd-scripts hands the loader a list of text encoders, so LyCORIS names them ``lora_te1_``, ``lora_te2_``). The
trees handed to the loader are Linear layers of those names and weights, which is all the loader reads.
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
        *parents, leaf = key[len(prefix):].split(".")
        parent = root
        for part in parents:
            if not hasattr(parent, part):
                parent.add_module(part, torch.nn.Module())
            parent = getattr(parent, part)
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            layer.weight.copy_(weight)
        parent.add_module(leaf, layer)
    return root


def _stem(key: str) -> str:
    tree, path = key.split(".", 1)
    prefix = "lora_unet_" if tree == "unet" else f"lora_{tree}_"
    return prefix + path.replace(".", "_")


def run(task: dict) -> dict:
    from lycoris.kohya import create_network_from_weights

    bases, expected = load_file(task["bases"]), load_file(task["expected"])
    state = load_file(task["file"])
    unet = _tree(bases, "unet.")
    encoders = [_tree(bases, f"te{i}.") for i in (1, 2)]
    network, _ = create_network_from_weights(1.0, task["file"], None, encoders, unet, weights_sd=state,
                                              for_inference=True)
    modules = list(network.unet_loras) + list(network.text_encoder_loras)
    names = {_stem(key): key for key in bases}
    consumed, classes = set(), {}
    merged = {}
    for module in modules:
        consumed |= {f"{module.lora_name}.{k}" for k in type(module).weight_list if f"{module.lora_name}.{k}" in state}
        classes[type(module).__name__] = classes.get(type(module).__name__, 0) + 1
        with torch.no_grad():
            merged[module.lora_name] = module.get_merged_weight(multiplier=1.0)[0].double()
    network.apply_to(encoders, unet, apply_text_encoder=True, apply_unet=True)
    forward = {}
    for module in modules:
        layer = module.org_module[0]
        with torch.no_grad():  # the layer's forward now runs LyCORIS' module: x @ W'.T, so the identity gives W'.T
            forward[module.lora_name] = layer(torch.eye(layer.in_features)).double().T
    report = {"file": task["file"], "modules_created": len(modules), "modules_in_file": len({k.split(".")[0] for k in state}),
              "keys_in_file": len(state), "keys_consumed": len(consumed), "not_consumed": sorted(set(state) - consumed)[:10],
              "classes": classes}
    for path, got in (("forward", forward), ("merged", merged)):
        worst, relative, off = 0.0, 0.0, []
        for name, weight in got.items():
            want, base = expected[names[name]].double(), bases[names[name]].double()
            difference = float((weight - want).abs().max())
            share = difference / float((want - base).abs().max() or 1.0)
            worst, relative = max(worst, difference), max(relative, share)
            if share > 1e-4:
                off.append(name)
        report |= {f"{path}_max_abs_diff": worst, f"{path}_max_diff_relative_to_update": relative,
                   f"{path}_modules_off": sorted(off)}
    return report


def main() -> None:
    request, answer = sys.argv[1], sys.argv[2]
    results = []
    for task in json.loads(open(request).read())["tasks"]:
        try:
            results.append(run(task))
        except Exception as error:  # reported, not raised: the caller asserts
            results.append({"file": task["file"], "error": f"{type(error).__name__}: {error}"})
    with open(answer, "w") as out:
        json.dump({"lycoris": version("lycoris-lora"), "torch": torch.__version__, "results": results}, out)


if __name__ == "__main__":
    main()
