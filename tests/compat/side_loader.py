"""Runs inside a side environment (an older diffusers + transformers 4): loads exported files with that
diffusers' and peft's own loaders and renders the verification image. Standalone: imports no studio code.

Usage: python side_loader.py TASKS.json OUT.json, where TASKS.json is
{"base": DIR, "spec": {...}, "tasks": [{"kind": "lora"|"peft"|"pipeline"|"embedding", "path": P, ...}]}.
Each result: what loaded (LoRA layers attached, missing weights) and the image's max difference, in 8-bit
grey levels, to the studio's own image of the run (the export's images/example.png).
"""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import torch
from PIL import Image

ADAPTER = "compat"


def render(pipe, spec: dict, prompt: str | None = None) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    result = pipe(prompt=prompt or spec["prompt"], height=spec["height"], width=spec["width"],
                  num_inference_steps=spec["steps"], guidance_scale=spec["guidance"],
                  generator=torch.Generator("cpu").manual_seed(spec["seed"]), output_type="np")
    return (np.asarray(result.images[0], dtype=np.float64) * 255).round().clip(0, 255)


def attached(pipe) -> int:
    count = 0
    for name in ("unet", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, name, None)
        for _, module in (model.named_modules() if model is not None else []):
            lora_a = getattr(module, "lora_A", None)
            if lora_a is not None and ADAPTER in lora_a:
                count += 1
    return count


def run(task: dict, base: str, spec: dict) -> dict:
    from diffusers import DiffusionPipeline

    kind = task["kind"]
    out: dict = {"kind": kind, "path": task["path"]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if kind == "pipeline":
            pipe = DiffusionPipeline.from_pretrained(task["path"], use_safetensors=True)
        else:
            pipe = DiffusionPipeline.from_pretrained(base, use_safetensors=True)
        if kind == "lora":
            folder, _, weight_name = task["path"].rpartition("/")  # offline, older diffusers want both
            pipe.load_lora_weights(folder, weight_name=weight_name, adapter_name=ADAPTER)
            out["layers"] = attached(pipe)
        elif kind == "peft":
            from peft import PeftModel

            for component in task["components"]:
                PeftModel.from_pretrained(getattr(pipe, component), f"{task['path']}/{component}", adapter_name=ADAPTER)
            out["layers"] = attached(pipe)
        elif kind == "embedding":
            for entry in task["files"]:
                encoder = entry.get("encoder", "text_encoder")
                pipe.load_textual_inversion(entry["file"], token=entry["token"], text_encoder=getattr(pipe, encoder),
                                            tokenizer=getattr(pipe, encoder.replace("text_encoder", "tokenizer")))
    out["warnings"] = sorted({str(w.message)[:200] for w in caught if "missing" in str(w.message).lower()
                              or "not loaded" in str(w.message).lower()})
    reference = np.asarray(Image.open(task["reference"]).convert("RGB"), dtype=np.float64)
    out["grey_levels"] = float(np.abs(render(pipe, spec, task.get("spec")) - reference).max())
    return out


def main() -> None:
    import diffusers
    import transformers

    request = json.loads(open(sys.argv[1]).read())
    results = {"diffusers": diffusers.__version__, "transformers": transformers.__version__, "results": []}
    for task in request["tasks"]:
        try:
            results["results"].append(run(task, request["base"], request["spec"]))
        except Exception as error:  # report it: the test names the file and the error
            results["results"].append({"kind": task["kind"], "path": task["path"],
                                       "error": f"{type(error).__name__}: {str(error)[:400]}"})
    open(sys.argv[2], "w").write(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
