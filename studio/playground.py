"""A prompt playground: the untrained base and the personalised model side by side.

A thin layer over :class:`studio.generate.Generator` (which caches pipelines and composes
adapters): it turns a selection of finished runs into a base plus weighted adapters (a DreamBooth
run is the base; LoRA and textual-inversion runs are adapters) and renders the same request twice,
once personalised and once with the base model and the prompt without the subject's tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import StudioError
from studio.methods import method_spec
from studio.sampling import GUIDANCE, IMAGE_GUIDANCE, IMG2IMG_STRENGTH, PLAYGROUND_STEPS


@dataclass
class Request:
    """One playground generation; ``init_image`` (a path or PIL image) switches to img2img, and with ``mask`` to
    inpainting, with ``instruction`` to an instruction edit; ``control`` adds a ControlNet (see
    :class:`studio.generate.GenerationRequest`, whose fields these are)."""

    prompt: str
    negative_prompt: str = ""
    guidance: float = GUIDANCE
    steps: int = PLAYGROUND_STEPS
    seed: int = 0
    init_image: Any = None
    strength: float | None = IMG2IMG_STRENGTH  # None: the task's default (inpainting repaints from scratch)
    compare_base: bool = True
    width: int | None = None  # None: the run's training resolution (img2img too: the start image is resized)
    height: int | None = None
    mask: Any = None
    inpaint_base: str | None = None
    control: Any = None  # studio.control.ControlSpec
    instruction: str | None = None
    instruct_base: str | None = None
    image_guidance: float = IMAGE_GUIDANCE
    keep_outside: bool = True


def strip_tokens(prompt: str, tokens: list[str]) -> str:
    """The prompt the base model gets: the subject's tokens removed ("a sks dog" -> "a dog")."""
    for token in tokens:
        prompt = re.sub(rf"(?<!\S){re.escape(token)}(?!\S)", " ", prompt)
    return " ".join(prompt.split())


@dataclass
class Selection:
    """Finished runs resolved to what the generator needs."""

    base: str  # personalised base: the original base, or a DreamBooth run directory
    original_base: str  # the untrained base, for the comparison image
    adapters: list[Any]  # studio.generate.AdapterRef
    tokens: list[str]  # what stands for the subject in prompts (identifiers, TI placeholders)
    resolution: int
    allow_pickle: bool = False  # the runs were trained with the allow_pickle setting on


def select_runs(run_dirs: list[str | Path], weights: list[float] | None = None) -> Selection:
    """Turn finished runs (and one weight each) into a base and adapters; refuse mixes that cannot combine."""
    from studio.generate import AdapterRef
    from studio.runs import load_run

    if not run_dirs:
        raise StudioError("Choose at least one finished run to generate with.")
    weights = list(weights or []) + [1.0] * len(run_dirs)
    runs = [load_run(d) for d in run_dirs]
    for run in runs:
        run.require_finished()
    dreambooth = [run for run in runs if not method_spec(run.method).is_adapter]
    if len(dreambooth) > 1:
        raise StudioError("Only one DreamBooth run can be the base at a time; choose one of them.")
    originals = {run.config.base for run in runs}
    if len(originals) > 1:
        raise StudioError(f"These runs were trained on different bases ({', '.join(sorted(originals))}); choose runs of one base.")
    adapters = [
        AdapterRef(str(run.directory), float(weight) if method_spec(run.method).scalable else 1.0)
        for run, weight in zip(runs, weights, strict=False) if method_spec(run.method).is_adapter
    ]
    base = str(dreambooth[0].directory) if dreambooth else runs[0].config.base
    return Selection(base, runs[0].config.base, adapters, [run.token for run in runs], runs[0].config.resolution,
                     any(getattr(run.config, "allow_pickle", False) for run in runs))


class Playground:
    """Side-by-side generation; pipelines are cached by :mod:`studio.generate`'s generators."""

    def __init__(self, device: str | None = None):
        from studio.generate import Generator

        self.personalised = Generator(device)
        self._base_generator: Any = None
        self.device = device

    def _base(self, selection: Selection) -> Any:
        """The generator for the untrained base: the same one unless a DreamBooth model replaced the base."""
        if selection.base == selection.original_base:
            return self.personalised
        if self._base_generator is None:
            from studio.generate import Generator

            self._base_generator = Generator(self.device)
        return self._base_generator

    def generate(self, run_dirs: list[str | Path], request: Request, weights: list[float] | None = None, *,
                 front: str = "api") -> tuple[Any, Any]:
        """``(base image or None, personalised image)`` for ``request`` with the chosen runs (checked against
        :mod:`studio.limits`; ``front`` says whose control names the messages use)."""
        made = {role: image for role, image, _ in self.generate_each(run_dirs, request, weights, front=front)}
        return made.get("base"), made["personalised"]

    def generate_each(self, run_dirs: list[str | Path], request: Request, weights: list[float] | None = None, *,
                      front: str = "api", progress: Callable[[str, int, int], None] | None = None,
                      ) -> Iterator[tuple[str, Any, dict[str, Any]]]:
        """Yield ``("personalised", image, recipe)`` and then, when asked for, ``("base", image, recipe)``, each as
        soon as it is made (the recipe: :mod:`studio.recipe`); ``progress(role, step, steps)`` follows the
        denoising steps."""
        import torch

        from studio.generate import GenerationRequest, check_request

        def ask(prompt: str, instruction: str | None, side: int | None = None) -> GenerationRequest:
            return GenerationRequest(
                prompt=prompt, negative_prompt=request.negative_prompt or None, guidance=float(request.guidance),
                steps=int(request.steps), seed=int(request.seed), init_image=request.init_image,
                strength=None if request.strength is None else float(request.strength),
                width=int(request.width or side) if request.width or side else None,
                height=int(request.height or side) if request.height or side else None,
                mask=request.mask, keep_outside=bool(request.keep_outside), inpaint_base=request.inpaint_base or None,
                control=request.control, instruction=instruction, instruct_base=request.instruct_base or None,
                image_guidance=float(request.image_guidance),
            )

        # limits first: nothing loads for a request that will be refused
        check_request(ask(request.prompt, request.instruction), len(run_dirs), front)
        selection = select_runs(run_dirs, weights)

        def steps_of(role: str):
            return None if progress is None else (lambda step, total: progress(role, step, total))

        try:
            options = {"front": front, "allow_pickle": selection.allow_pickle}
            made = self.personalised.generate(
                selection.base, ask(request.prompt, request.instruction, selection.resolution), selection.adapters,
                progress=steps_of("personalised"), **options,
            )
            yield "personalised", made.images[0], made.recipes[0]
            if request.compare_base:
                plain = strip_tokens(request.prompt, selection.tokens) or request.prompt
                instruction = request.instruction
                if instruction is not None:
                    instruction = strip_tokens(instruction, selection.tokens) or instruction
                made = self._base(selection).generate(
                    selection.original_base, ask(plain, instruction, selection.resolution), [],
                    progress=steps_of("base"), **options,
                )
                yield "base", made.images[0], made.recipes[0]
        except torch.OutOfMemoryError as error:
            raise StudioError("Out of memory while generating; lower the size or the steps, or wait for the running "
                              "job to finish.") from error
