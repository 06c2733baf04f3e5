"""Generating images with a base model plus any adapters: txt2img, img2img, inpainting, ControlNet and
instruction edits, LoRAs composed; every image with the recipe that makes it again.

:class:`Generator` keeps one loaded base pipeline per process and the adapters loaded into it, so a
UI that calls it repeatedly pays for loading once: changing LoRA weights only calls
``set_adapters``, adding an adapter loads just that adapter, and only a new base reloads the model.
Adapters are run directories or exported files of any format (see :mod:`studio.adapters`); a
DreamBooth run directory can be the base.

The task follows from the request (:meth:`GenerationRequest.task`): a mask inpaints (on an inpainting base
where one is given, by mask blending on a plain one), a control image adds a ControlNet (to txt2img, img2img
or inpainting), an instruction edits the start image with an instruction-tuned base (InstructPix2Pix). Each
task's pipeline is built from the loaded base's components (:mod:`studio.pipeline_tasks`), so the adapters
apply to all of them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from PIL import Image

from studio import limits
from studio.adapters import AdapterError, AdapterSource, load_adapter, resolve_adapter, resolve_base
from studio.control import ControlSpec, control_image
from studio.errors import StudioError
from studio.families import prompt_arguments
from studio.generation_images import load_init_image
from studio.inpaint import keep_outside, load_mask
from studio.pipeline_tasks import accepts, base_kind, family_tasks, pipeline_class
from studio.quiet import quiet_loaders
from studio.recipe import make_recipe
from studio.sampling import GUIDANCE, IMAGE_GUIDANCE, IMG2IMG_STRENGTH, INPAINT_STRENGTH, STEPS

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
    prompt: str  # instruction edits: may be empty (the instruction is the text)
    negative_prompt: str | None = None
    guidance: float = GUIDANCE
    steps: int = STEPS
    seed: int | None = None  # None: a random seed, reported in the result
    num_images: int = 1
    width: int | None = None  # None: the model's native size (with a start image: the start image's)
    height: int | None = None
    init_image: Any = None  # a path or PIL image: img2img (SDEdit), or what a mask or an instruction edits
    strength: float | None = None  # None: IMG2IMG_STRENGTH for img2img, INPAINT_STRENGTH for inpainting
    mask: Any = None  # with init_image, a path or PIL image: inpaint where it is white (or painted)
    keep_outside: bool = True  # inpainting: outside the mask, the start image's own pixels exactly
    inpaint_base: str | None = None  # an inpainting model to use instead of the base (the adapters on it)
    control: ControlSpec | None = None  # a ControlNet and its control image
    instruction: str | None = None  # with init_image: an instruction edit ("make it snowy")
    instruct_base: str | None = None  # the instruction-tuned base (None: the base must be one)
    image_guidance: float = IMAGE_GUIDANCE  # instruction edits: how closely to keep to the start image

    def task(self) -> str:
        """txt2img, img2img, inpaint, control, control-img2img, control-inpaint or instruct."""
        if self.instruction is not None:
            return "instruct"
        if self.mask is not None:
            return "control-inpaint" if self.control else "inpaint"
        if self.init_image is not None:
            return "control-img2img" if self.control else "img2img"
        return "control" if self.control else "txt2img"

    def effective_strength(self) -> float:
        if self.strength is not None:
            return float(self.strength)
        return INPAINT_STRENGTH if self.mask is not None else IMG2IMG_STRENGTH

    def text(self) -> str:
        """What the text encoder reads: the instruction for an instruction edit, else the prompt."""
        return self.instruction if self.instruction is not None else self.prompt

    def model(self, base: str) -> str:
        """The base this request runs on: the instruction-tuned or inpainting base where one is given."""
        if self.instruction is not None and self.instruct_base:
            return self.instruct_base
        if self.mask is not None and self.inpaint_base:
            return self.inpaint_base
        return base


@dataclass
class GenerationResult:
    images: list[Image.Image]
    seeds: list[int]
    # the task (see GenerationRequest.task), or "img2img-passthrough" / "inpaint-passthrough": strength x steps
    # < 1 denoising step, so the (resized) start image is returned unchanged
    mode: str
    adapters: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)  # embedding tokens usable in the prompt
    recipes: list[dict[str, Any]] = field(default_factory=list)  # one per image: what makes it again


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
        self._tasks: dict[tuple, Any] = {}  # (task, ControlNet ref) -> pipeline built from the base's components
        self._controlnets: dict[str, Any] = {}  # ControlNet ref -> model (the last one used)
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
            if source.companion is not None:  # a pivotal LoRA's own token: loaded while the LoRA is chosen
                companion = _adapter_key(source.companion)
                if companion not in self._embeddings:
                    self._embeddings[companion] = load_adapter(pipe, source.companion, "", token=source.companion.token)
                wanted_embeddings.add(companion)
                tokens += self._embeddings[companion][:1]
                source = replace(source, companion=None)
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
        self._loras, self._embeddings, self._tasks, self._controlnets = {}, {}, {}, {}
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
        at most ``limits.GENERATION_BATCH`` at a time. Each comes with its recipe (:mod:`studio.recipe`).
        """
        check_request(request, len(adapters), front)
        refs = [a if isinstance(a, AdapterRef) else AdapterRef.parse(a) for a in adapters]
        model = request.model(base)
        if model != base and resolve_base(base) != base:
            raise StudioError(
                "A DreamBooth model is a whole model of its own and cannot move onto another inpainting or "
                "instruction-tuned base; leave --inpaint-base / --instruct-base out (a mask then blends on the "
                "DreamBooth model), or use a LoRA or textual-inversion run.",
                browser="A DreamBooth run is a whole model and cannot move onto another inpainting or instruction-tuned "
                        "base; clear that base (a mask then blends on the DreamBooth model), or choose a LoRA or "
                        "textual-inversion run.")
        seed = int(request.seed) if request.seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item())
        seeds = [seed + i for i in range(request.num_images)]
        batches = [seeds[i:i + limits.GENERATION_BATCH] for i in range(0, len(seeds), limits.GENERATION_BATCH)]
        images: list[Image.Image] = []
        with self._lock:
            pipe, names, tokens = self._prepare(model, refs, allow_pickle)
            task = request.task()
            _check_base_fits(task, base_kind(pipe), model, front)
            inputs = self._inputs(pipe, request)
            mode = task
            steps_run = int(request.steps * request.effective_strength())
            if inputs.get("strength") is not None and steps_run < 1:
                # diffusers would run int(steps * strength) = 0 steps and fail; no denoising means no
                # change, so the start image itself is the answer (not its lossy VAE reconstruction).
                images, mode = [inputs["image"].copy() for _ in seeds], f"{task}-passthrough"
            else:
                runner = pipe if task == "txt2img" else self._task_pipeline(task, request, allow_pickle)
                runner.set_progress_bar_config(disable=not show_progress)
                inputs = {k: v for k, v in inputs.items() if k not in ("width", "height") or accepts(runner, k)}
                for batch in _control_batches(runner, task, batches):
                    with _seeded_global_rng(runner, task, batch):
                        noise = _control_noise(runner, task, batch, inputs)
                        images += runner(**inputs, **noise, **self._common_kwargs(runner, request, batch, progress)).images
            if request.mask is not None and request.keep_outside:
                images = [keep_outside(image, inputs["image"], inputs["mask_image"]) for image in images]
        recipe = {"allow_pickle": allow_pickle, "device": self.device, "dtype": str(self.dtype).removeprefix("torch.")}
        recipes = [make_recipe(base, request, refs, seed=s, size=image.size, mode=mode, **recipe)
                   for s, image in zip(seeds, images, strict=True)]
        return GenerationResult(list(images), seeds, mode, names, tokens, recipes)

    def _inputs(self, pipe: Any, request: GenerationRequest) -> dict[str, Any]:
        """The task's image arguments (start image, mask, control image) at the size generated."""
        task = request.task()
        if request.init_image is None:
            size = (request.width or _native_side(pipe), request.height or _native_side(pipe))
            inputs: dict[str, Any] = {"width": size[0], "height": size[1]}
        else:
            init = load_init_image(request.init_image, request.width, request.height)
            size = init.size
            inputs = {"image": init, "width": size[0], "height": size[1]}  # sizes dropped where not taken
            if task != "instruct":
                inputs["strength"] = request.effective_strength()
            if request.mask is not None:
                inputs["mask_image"] = load_mask(request.mask, *size)
        if request.control is not None:
            family = _family_name(pipe)
            spec = request.control
            argument = family_tasks(family).control_image_argument if task == "control" else "control_image"
            inputs[argument] = control_image(spec, *size)
            inputs["controlnet_conditioning_scale"] = float(spec.strength)
        if task == "instruct":
            inputs["image_guidance_scale"] = float(request.image_guidance)
        return inputs

    def _common_kwargs(self, runner: Any, request: GenerationRequest, seeds: list[int], progress: Progress | None) -> dict:
        count = len(seeds)
        kwargs: dict[str, Any] = {
            **prompt_arguments(runner, [request.text()] * count),
            "guidance_scale": float(request.guidance),
            "num_inference_steps": int(request.steps),
            "generator": [torch.Generator("cpu").manual_seed(s) for s in seeds],
        }
        if request.negative_prompt and accepts(runner, "negative_prompt"):  # Flux's ControlNet img2img/inpaint take none
            kwargs["negative_prompt"] = [request.negative_prompt] * count
        if progress is not None and accepts(runner, "callback_on_step_end"):
            def on_step(pipe, step, timestep, callback_kwargs):
                progress(step + 1, pipe.num_timesteps)
                return callback_kwargs

            kwargs["callback_on_step_end"] = on_step
        elif progress is not None and accepts(runner, "callback"):  # older pipelines (SDXL InstructPix2Pix)
            total = int(request.steps)
            kwargs |= {"callback": lambda step, timestep, latents: progress(step + 1, total), "callback_steps": 1}
        return kwargs

    def _task_pipeline(self, task: str, request: GenerationRequest, allow_pickle: bool) -> Any:
        """The pipeline for ``task`` built from the loaded base's components (plus the ControlNet)."""
        if task == "img2img":
            return self._img2img_pipeline()
        control_ref = request.control.model if request.control else None
        key = (task, control_ref)
        if key not in self._tasks:
            extra = {"controlnet": self._controlnet(control_ref, allow_pickle)} if control_ref else {}
            with quiet_loaders():
                self._tasks = {k: v for k, v in self._tasks.items() if k[1] is None}  # one ControlNet at a time
                # from_pipe casts the shared components to fp32 unless told the dtype: keep the base's
                self._tasks[key] = pipeline_class(_family_name(self._pipe), task).from_pipe(
                    self._pipe, torch_dtype=self.dtype, **extra)
        return self._tasks[key]

    def _controlnet(self, ref: str, allow_pickle: bool) -> Any:
        if ref not in self._controlnets:
            from studio.models.controlnet import check_fits, load_controlnet

            with quiet_loaders():
                controlnet = load_controlnet(ref, _family_name(self._pipe), allow_pickle=allow_pickle)
            check_fits(controlnet, self._pipe, ref)
            if self.device != "cpu" or self.dtype != torch.float32:
                controlnet.to(self.device, self.dtype)
            self._controlnets = {ref: controlnet}
        return self._controlnets[ref]

    def _img2img_pipeline(self) -> Any:
        if self._img2img is None:
            from studio.families import family_for

            img2img_class = family_for(self._pipe).pipeline_classes()[1]
            self._img2img = img2img_class.from_pipe(self._pipe, torch_dtype=self.dtype)  # not fp32 (from_pipe's default)
        return self._img2img

    def clear(self) -> None:
        """Drop the cached pipeline (frees its memory)."""
        with self._lock:
            self._pipe = self._img2img = self._base_key = None
            self._loras, self._embeddings, self._tasks, self._controlnets = {}, {}, {}, {}


def check_request(request: GenerationRequest, adapter_count: int = 0, front: str = limits.API) -> None:
    """Refuse a request outside :mod:`studio.limits` (before any model loads); messages name ``front``'s controls."""
    if request.instruction is not None:
        if not request.instruction.strip():
            _refuse(front, "The instruction is empty; say how to change the start image (--instruction).",
                    "The instruction is empty; say how to change the start image.")
        limits.check_text(limits.PROMPT_CHARS, request.instruction, front)
    elif not request.prompt or not request.prompt.strip():
        raise StudioError(f"The prompt is empty; type what to generate ({limits.PROMPT_CHARS.label(front)}).")
    limits.check_text(limits.PROMPT_CHARS, request.prompt, front)
    limits.check_text(limits.NEGATIVE_CHARS, request.negative_prompt, front)
    limits.GENERATION_STEPS.check(request.steps, front)
    limits.NUM_IMAGES.check(request.num_images, front)
    limits.GUIDANCE.check(request.guidance, front)
    limits.STRENGTH.check(request.effective_strength(), front)
    limits.ADAPTERS.check(adapter_count, front)
    if request.seed is not None:
        limits.SEED.check(request.seed, front)
    limits.check_image_size(request.width, request.height, front)
    _check_combination(request, front)
    if request.control is not None:
        limits.CONTROL_STRENGTH.check(request.control.strength, front)
        limits.CANNY_THRESHOLD.check(request.control.canny_low, front)
        limits.CANNY_THRESHOLD.check(request.control.canny_high, front)
    if request.instruction is not None:
        limits.IMAGE_GUIDANCE.check(request.image_guidance, front)


def _refuse(front: str, cli: str, browser: str) -> None:
    raise StudioError(cli if front == limits.CLI else browser, browser=browser)


def _check_combination(request: GenerationRequest, front: str) -> None:
    """Refuse inputs that do not go together (each message says what to add or drop)."""
    if request.mask is not None and request.init_image is None:
        _refuse(front, "--mask needs --init-image: the image whose masked area is repainted.",
                "A mask needs a start image: upload the image to paint on.")
    if request.instruction is not None:
        if request.init_image is None:
            _refuse(front, "--instruction needs --init-image: the image to edit.",
                    "An instruction needs a start image: upload the image to edit.")
        if request.mask is not None or request.control is not None:
            _refuse(front, "An instruction edit takes no --mask or --control; drop them or the instruction.",
                    "An instruction edit takes no mask or control image; clear them or the instruction.")
    if request.inpaint_base and request.mask is None:
        _refuse(front, "--inpaint-base is used for inpainting only; give --mask too, or drop it.",
                "An inpainting base is used only with a mask; paint a mask or clear the inpainting base.")
    if request.instruct_base and request.instruction is None:
        _refuse(front, "--instruct-base is used for instruction edits only; give --instruction too, or drop it.",
                "An instruction-tuned base is used only with an instruction; type one or clear that base.")
    control = request.control
    if control is not None and (not str(control.model or "").strip() or control.image is None):
        _refuse(front, "ControlNet needs both a ControlNet (--controlnet) and a control image (--control).",
                "ControlNet needs both a ControlNet model and a control image.")


def _check_base_fits(task: str, kind: str, model: str, front: str) -> None:
    """An inpainting base takes masks, an instruction-tuned one instructions; say so before diffusers fails."""
    if kind == "instruct" and task != "instruct":
        _refuse(front, f"{model} is an instruction-tuned model: give --instruction and --init-image, or use a plain "
                       "base (and --instruct-base for this one).",
                f"{model} is an instruction-tuned model: type an instruction and give a start image, or use a plain base.")
    if task == "instruct" and kind != "instruct":
        _refuse(front, f"{model} is not instruction-tuned; instruction edits need a base such as "
                       "timbrooks/instruct-pix2pix (SD1.x) or diffusers/sdxl-instructpix2pix-768 (SDXL): --instruct-base.",
                f"{model} is not instruction-tuned; instruction edits need an instruction-tuned base such as "
                "timbrooks/instruct-pix2pix (SD1.x) or diffusers/sdxl-instructpix2pix-768 (SDXL).")
    if kind == "inpaint" and task not in ("inpaint", "control-inpaint"):
        _refuse(front, f"{model} is an inpainting model: give --init-image and --mask, or use a plain base (and "
                       "--inpaint-base for this one).",
                f"{model} is an inpainting model: paint a mask on a start image, or use a plain base.")


def _family_name(pipe: Any) -> str:
    from studio.families import family_for

    return family_for(pipe).name


def _control_noise(runner: Any, task: str, seeds: list[int], inputs: dict[str, Any]) -> dict[str, Any]:
    """``latents``, where the family's txt2img ControlNet pipeline would otherwise start from other noise than
    the plain pipeline for the same seeds (see ``ModelFamily.control_noise``)."""
    if task != "control":
        return {}
    from studio.families import family_for

    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    noise = family_for(runner).control_noise(runner, generators, inputs["width"], inputs["height"])
    return {} if noise is None else {"latents": noise}


def _uses_global_rng(runner: Any, task: str) -> bool:
    from studio.families import family_for

    return task.startswith("control") and family_for(runner).control_uses_global_rng


def _control_batches(runner: Any, task: str, batches: list[list[int]]) -> list[list[int]]:
    """The batches to render: one image each where the family's ControlNet pipeline draws from torch's global RNG."""
    return [[seed] for batch in batches for seed in batch] if _uses_global_rng(runner, task) else batches


@contextmanager
def _seeded_global_rng(runner: Any, task: str, seeds: list[int]):
    """Where the family's ControlNet pipeline draws from torch's global RNG (SD3 samples the control image's VAE
    latents there, not from the seed's generator), that RNG seeded from the image's seed, and restored after."""
    if not _uses_global_rng(runner, task):
        yield
        return
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        torch.manual_seed(seeds[0])
        yield


def _native_side(pipe: Any) -> int:
    unet = getattr(pipe, "unet", None)
    if unet is not None:
        return int(unet.config.sample_size) * int(getattr(pipe, "vae_scale_factor", 8))
    return int(getattr(pipe, "default_sample_size", 128)) * int(getattr(pipe, "vae_scale_factor", 8))


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

