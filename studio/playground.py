"""A prompt playground: the base model and the personalised one side by side, pipelines cached.

A thin wrapper over :func:`studio.runs.personalised_pipeline` / :func:`studio.runs.base_pipeline`
(and diffusers' own LoRA / textual-inversion loaders to compose several runs), kept here so the web
UI holds no generation logic. It keeps one personalised and one base pipeline in memory and
rebuilds them only when the chosen runs change.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import StudioError

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


@dataclass
class Request:
    """One playground generation; ``init_image`` switches to img2img with ``strength``."""

    prompt: str
    negative_prompt: str = ""
    guidance: float = 7.5
    steps: int = 25
    seed: int = 0
    init_image: Any = None  # a PIL image or a path
    strength: float = 0.6
    compare_base: bool = True


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def strip_tokens(prompt: str, tokens: list[str]) -> str:
    """The prompt the base model gets: the subject's tokens removed ("a sks dog" -> "a dog")."""
    for token in tokens:
        prompt = re.sub(rf"(?<!\S){re.escape(token)}(?!\S)", " ", prompt)
    return " ".join(prompt.split())


class Playground:
    """Generates with finished runs; safe to call from several UI threads (one generation at a time)."""

    def __init__(self, device: str | None = None):
        self.device = device
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._pipe: Any = None
        self._base_key: str | None = None
        self._base: Any = None

    def _compose(self, run_dirs: list[Path], weights: list[float]) -> Any:
        from studio.runs import load_run, personalised_pipeline

        runs = [load_run(d) for d in run_dirs]
        for run in runs:
            run.require_finished()
        bases = {run.config.base for run in runs if run.method != "dreambooth"}
        if len(bases) > 1 or sum(run.method == "dreambooth" for run in runs) > 1:
            raise StudioError("These runs cannot be combined: pick runs trained on one base model, with at most one DreamBooth run.")
        runs.sort(key=lambda run: run.method != "dreambooth")  # a DreamBooth model is the pipeline others apply to
        pipe = personalised_pipeline(runs[0])
        adapters, adapter_weights = [], []
        for index, run in enumerate(runs):
            weight = weights[run_dirs.index(run.directory)] if run.directory in run_dirs else 1.0
            artifact = run.directory / run.result["artifact"]
            if run.method == "lora":
                if index:
                    pipe.load_lora_weights(str(artifact), weight_name=LORA_WEIGHTS, adapter_name=f"run{index}")
                    adapters.append(f"run{index}")
                else:
                    adapters.extend(a for a in pipe.get_active_adapters() if a not in adapters)
                adapter_weights.append(weight)
            elif run.method == "textual_inversion" and index:
                pipe.load_textual_inversion(str(artifact / "learned_embeds.safetensors"), token=run.result["token"])
        if adapters:
            pipe.set_adapters(adapters, adapter_weights[: len(adapters)])
        return pipe

    def _pipelines(self, run_dirs: list[Path], weights: list[float], need_base: bool) -> tuple[Any, Any]:
        from studio.runs import base_pipeline, load_run

        device = self.device or _device()
        stamps = tuple((str(d), (d / "result.json").stat().st_mtime) for d in run_dirs if (d / "result.json").is_file())
        key = (stamps, tuple(weights))
        if key != self._key:
            self._pipe = None
            self._pipe = self._compose(run_dirs, weights).to(device)
            self._pipe.set_progress_bar_config(disable=True)
            self._key = key
        if not need_base:
            return self._pipe, None
        first = load_run(run_dirs[0])
        if first.config.base != self._base_key:
            self._base = None
            self._base = base_pipeline(first).to(device)
            self._base.set_progress_bar_config(disable=True)
            self._base_key = first.config.base
        return self._pipe, self._base

    def generate(self, run_dirs: list[str | Path], request: Request, weights: list[float] | None = None) -> tuple[Any, Any]:
        """``(base_image or None, personalised_image)`` for ``request`` with the runs in ``run_dirs``."""
        import torch
        from PIL import Image

        from studio.runs import load_run

        if not run_dirs:
            raise StudioError("Choose at least one finished run to generate with.")
        if not request.prompt.strip():
            raise StudioError("Type a prompt first.")
        dirs = [Path(d).expanduser().resolve() for d in run_dirs]
        weights = list(weights or [1.0] * len(dirs)) + [1.0] * max(0, len(dirs) - len(weights or []))
        runs = [load_run(d) for d in dirs]
        size = runs[0].config.resolution
        init = request.init_image
        if init is not None and not isinstance(init, Image.Image):
            init = Image.open(init)
        if init is not None:
            init = init.convert("RGB").resize((size, size))
        with self._lock:
            pipe, base = self._pipelines(dirs, weights[: len(dirs)], request.compare_base)
            base_prompt = strip_tokens(request.prompt, [run.token for run in runs])
            images = []
            for model, prompt in ((base, base_prompt), (pipe, request.prompt)):
                if model is None:
                    images.append(None)
                    continue
                kwargs = dict(prompt=prompt, negative_prompt=request.negative_prompt or None,
                              guidance_scale=float(request.guidance), num_inference_steps=int(request.steps),
                              generator=torch.Generator("cpu").manual_seed(int(request.seed)))
                try:
                    if init is None:
                        image = model(height=size, width=size, **kwargs).images[0]
                    else:
                        from diffusers import AutoPipelineForImage2Image

                        img2img = AutoPipelineForImage2Image.from_pipe(model)
                        image = img2img(image=init, strength=float(request.strength), **kwargs).images[0]
                except torch.OutOfMemoryError as error:
                    raise StudioError("Out of memory while generating; lower the steps or stop a running job first.") from error
                images.append(image)
        return images[0], images[1]
