"""Generating images with a base model plus any adapters: txt2img with guidance, img2img, LoRAs composed.

:class:`Generator` keeps one loaded base pipeline per process and the adapters loaded into it, so a
UI that calls it repeatedly pays for loading once: changing LoRA weights only calls
``set_adapters``, adding an adapter loads just that adapter, and only a new base reloads the model.
Adapters are run directories or exported files of any format (see :mod:`studio.adapters`); a
DreamBooth run directory can be the base.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from studio import limits
from studio.adapters import AdapterError, AdapterSource, load_adapter, resolve_adapter, resolve_base
from studio.errors import StudioError
from studio.generation_images import load_init_image
from studio.quiet import quiet_loaders
from studio.sampling import GUIDANCE, IMG2IMG_STRENGTH, STEPS

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class AdapterRef:
    """An adapter path and its weight (LoRA scale; embeddings take 1 only)."""

    path: str
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> AdapterRef:
        """``PATH`` or ``PATH:WEIGHT`` (a Windows drive letter is not mistaken for a weight)."""
        head, sep, tail = text.rpartition(":")
        if sep and head:
            try:
                return cls(head, float(tail))
            except ValueError:
                pass
        return cls(text, 1.0)


@dataclass
class GenerationRequest:
    prompt: str
    negative_prompt: str | None = None
    guidance: float = GUIDANCE
    steps: int = STEPS
    seed: int | None = None  # None: a random seed, reported in the result
    num_images: int = 1
    width: int | None = None  # None: the model's native size (img2img: the init image's)
    height: int | None = None
    init_image: Any = None  # a path or PIL image switches to img2img (SDEdit)
    strength: float = IMG2IMG_STRENGTH


@dataclass
class GenerationResult:
    images: list[Image.Image]
    seeds: list[int]
    # "txt2img" | "img2img" | "img2img-passthrough": strength x steps < 1 denoising step, so the
    # (resized) init image is returned unchanged
    mode: str
    adapters: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)  # embedding tokens usable in the prompt


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _adapter_key(source: AdapterSource) -> tuple:
    stat = source.path.stat()
    return (str(source.path.resolve()), stat.st_mtime_ns, stat.st_size, source.token)


class Generator:
    """A pipeline cache plus generation; thread-safe (one generation at a time)."""

    MAX_IDLE_LORAS = 8

    def __init__(self, device: str | None = None, dtype: torch.dtype | None = None):
        self.device = device or _default_device()
        self.dtype = dtype or (torch.float16 if self.device.startswith("cuda") else torch.float32)
        self._lock = threading.Lock()
        self._base_key: str | None = None
        self._pipe: Any = None
        self._img2img: Any = None
        self._loras: dict[tuple, str] = {}  # adapter key -> adapter name, in load order
        self._embeddings: dict[tuple, list[str]] = {}  # adapter key -> tokens
        self._counter = 0
        self.loads = 0  # base loads so far (for tests and UIs)

    # ---------------------------------------------------------------- pipeline cache
    def pipeline(self, base: str, adapters: Sequence[AdapterRef | str] = ()) -> Any:
        """The base pipeline with exactly ``adapters`` active (loaded now only if new)."""
        with self._lock:
            return self._prepare(base, [a if isinstance(a, AdapterRef) else AdapterRef.parse(a) for a in adapters])[0]

    def _prepare(self, base: str, refs: list[AdapterRef], allow_pickle: bool = False) -> tuple[Any, list[str], list[str]]:
        sources = [resolve_adapter(ref.path) for ref in refs]
        if len({_adapter_key(s) for s in sources}) != len(sources):
            raise AdapterError("The same adapter is listed twice; give it once (with one weight).")
        with quiet_loaders():
            return self._prepare_loaded(base, refs, sources, allow_pickle)

    def _prepare_loaded(self, base: str, refs: list[AdapterRef], sources: list[AdapterSource], allow_pickle: bool = False):
        self._load_base(resolve_base(base), allow_pickle)
        pipe = self._pipe
        names, weights, tokens, wanted_embeddings = [], [], [], set()
        for ref, source in zip(refs, sources, strict=True):
            key = _adapter_key(source)
            if source.kind == "embedding":
                if ref.weight != 1.0:
                    raise AdapterError(f"{ref.path} is an embedding; weights apply to LoRAs only (drop ':{ref.weight}').")
                if key not in self._embeddings:
                    self._embeddings[key] = load_adapter(pipe, source, "", token=source.token)
                wanted_embeddings.add(key)
                tokens += self._embeddings[key][:1]
                continue
            if key not in self._loras:
                self._counter += 1
                name = f"lora{self._counter}"
                load_adapter(pipe, source, name)
                self._loras[key] = name
            names.append(self._loras[key])
            weights.append(float(ref.weight))
        for key in [k for k in self._embeddings if k not in wanted_embeddings]:
            pipe.unload_textual_inversion(self._embeddings.pop(key))
        self._activate(names, weights)
        return pipe, names, tokens

    def _load_base(self, ref: str, allow_pickle: bool = False) -> None:
        if ref == self._base_key and self._pipe is not None:
            return
        from studio.models import load_base

        self._pipe = self._img2img = None
        self._loras, self._embeddings = {}, {}
        pipe = load_base(ref, allow_pickle=allow_pickle).pipeline
        if self.device != "cpu" or self.dtype != torch.float32:
            pipe.to(self.device, self.dtype)
        self._pipe, self._base_key = pipe, ref
        self.loads += 1

    def _activate(self, names: list[str], weights: list[float]) -> None:
        pipe = self._pipe
        if not self._loras:
            return
        if names:
            pipe.enable_lora()
            pipe.set_adapters(names, adapter_weights=weights)
        else:
            pipe.disable_lora()
        idle = [key for key, name in self._loras.items() if name not in names]
        for key in idle[: max(0, len(idle) - self.MAX_IDLE_LORAS)]:
            pipe.delete_adapters(self._loras.pop(key))

    # ---------------------------------------------------------------- generation
    def generate(
        self,
        base: str,
        request: GenerationRequest,
        adapters: Sequence[AdapterRef | str] = (),
        *,
        progress: Progress | None = None,
        show_progress: bool = False,
        front: str = limits.API,
        allow_pickle: bool = False,
    ) -> GenerationResult:
        """Generate ``request.num_images`` images; image ``i`` uses seed ``seed + i`` whatever the batch.

        The request is checked against :mod:`studio.limits` before anything loads; ``front`` says which
        names the message uses (CLI flags, web controls or these parameter names). Images are rendered
        at most ``limits.GENERATION_BATCH`` at a time.
        """
        check_request(request, len(adapters), front)
        refs = [a if isinstance(a, AdapterRef) else AdapterRef.parse(a) for a in adapters]
        seed = int(request.seed) if request.seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item())
        seeds = [seed + i for i in range(request.num_images)]
        batches = [seeds[i:i + limits.GENERATION_BATCH] for i in range(0, len(seeds), limits.GENERATION_BATCH)]
        images: list[Image.Image] = []
        with self._lock:
            pipe, names, tokens = self._prepare(base, refs, allow_pickle)
            pipe.set_progress_bar_config(disable=not show_progress)
            if request.init_image is None:
                for batch in batches:
                    kwargs = self._common_kwargs(request, batch, progress)
                    images += pipe(height=request.height, width=request.width, **kwargs).images
                mode = "txt2img"
            else:
                init = load_init_image(request.init_image, request.width, request.height)
                if int(request.steps * request.strength) < 1:
                    # diffusers would run int(steps * strength) = 0 steps and fail; no denoising means no
                    # change, so the init image itself is the answer (not its lossy VAE reconstruction).
                    images, mode = [init.copy() for _ in seeds], "img2img-passthrough"
                else:
                    img2img = self._img2img_pipeline()
                    img2img.set_progress_bar_config(disable=not show_progress)
                    for batch in batches:
                        kwargs = self._common_kwargs(request, batch, progress)
                        images += img2img(image=init, strength=float(request.strength), **kwargs).images
                    mode = "img2img"
        return GenerationResult(list(images), seeds, mode, names, tokens)

    def _common_kwargs(self, request: GenerationRequest, seeds: list[int], progress: Progress | None) -> dict:
        count = len(seeds)
        kwargs: dict[str, Any] = {
            "prompt": [request.prompt] * count,
            "guidance_scale": float(request.guidance),
            "num_inference_steps": int(request.steps),
            "generator": [torch.Generator("cpu").manual_seed(s) for s in seeds],
        }
        if request.negative_prompt:
            kwargs["negative_prompt"] = [request.negative_prompt] * count
        if progress is not None:
            def on_step(pipe, step, timestep, callback_kwargs):
                progress(step + 1, pipe.num_timesteps)
                return callback_kwargs

            kwargs["callback_on_step_end"] = on_step
        return kwargs

    def _img2img_pipeline(self) -> Any:
        if self._img2img is None:
            from studio.families import family_for

            img2img_class = family_for(self._pipe).pipeline_classes()[1]
            self._img2img = img2img_class.from_pipe(self._pipe)
        return self._img2img

    def clear(self) -> None:
        """Drop the cached pipeline (frees its memory)."""
        with self._lock:
            self._pipe = self._img2img = self._base_key = None
            self._loras, self._embeddings = {}, {}


def check_request(request: GenerationRequest, adapter_count: int = 0, front: str = limits.API) -> None:
    """Refuse a request outside :mod:`studio.limits` (before any model loads); messages name ``front``'s controls."""
    if not request.prompt or not request.prompt.strip():
        raise StudioError(f"The prompt is empty; type what to generate ({limits.PROMPT_CHARS.label(front)}).")
    limits.check_text(limits.PROMPT_CHARS, request.prompt, front)
    limits.check_text(limits.NEGATIVE_CHARS, request.negative_prompt, front)
    limits.GENERATION_STEPS.check(request.steps, front)
    limits.NUM_IMAGES.check(request.num_images, front)
    limits.GUIDANCE.check(request.guidance, front)
    limits.STRENGTH.check(request.strength, front)
    limits.ADAPTERS.check(adapter_count, front)
    if request.seed is not None:
        limits.SEED.check(request.seed, front)
    limits.check_image_size(request.width, request.height, front)


_DEFAULT: Generator | None = None


def default_generator() -> Generator:
    """A process-wide generator, so repeated calls (web UI, notebooks) share one loaded pipeline."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Generator()
    return _DEFAULT


def generate(base: str, request: GenerationRequest, adapters: Sequence[AdapterRef | str] = (), **kwargs) -> GenerationResult:
    return default_generator().generate(base, request, adapters, **kwargs)


def infer_base(adapters: Sequence[AdapterRef | str]) -> str:
    """The base a run-directory adapter was trained on, for callers that give no --base."""
    for adapter in adapters:
        path = adapter.path if isinstance(adapter, AdapterRef) else AdapterRef.parse(adapter).path
        source = resolve_adapter(path)
        if source.base:
            return source.base
    raise StudioError("Give --base: none of the adapters is a run directory that records its base model.")

