"""Each training method described once, without torch: what it produces, where the result sits in a
run, how it is applied to a pipeline and which export formats it has.

Adapters, the exporter, the playground, the model card and the optimizer ask this description
instead of comparing method names, so a new method that is not described here is refused by name
rather than silently treated as some other one. ``trainers.METHODS`` holds the code that trains
each described method; a test checks the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from studio.errors import StudioError

# What a method's result is, and so how it is applied to a pipeline:
LORA = "lora"  # low-rank weight deltas: loaded onto the base (load_lora_weights), weight-scalable
EMBEDDING = "embedding"  # new token rows for the text encoder(s): loaded with load_textual_inversion
MODEL = "model"  # a whole model: it *is* the base (loaded with from_pretrained)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    label: str
    hub_tag: str  # the model card's tag on the Hub
    produces: str  # LORA | EMBEDDING | MODEL
    artifact: str  # the result's folder inside the run: "adapter" or "model"
    export_formats: tuple[str, ...]
    export_aliases: dict[str, str] = field(default_factory=dict)
    trains_denoiser: bool = True
    prior_preservation: bool = True  # may a class prior be mixed into its batches?
    weight_decay: bool = True  # does the optimizer's weight decay apply (not to new embedding rows)?

    @property
    def is_adapter(self) -> bool:
        """Applied on top of a base model (a LoRA or an embedding), as opposed to replacing it."""
        return self.produces != MODEL

    @property
    def scalable(self) -> bool:
        """Whether a strength other than 1 means something when it is applied (LoRA scale)."""
        return self.produces == LORA


METHOD_SPECS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "lora", "LoRA", "lora", LORA, "adapter", ("diffusers", "kohya", "peft"),
            {"webui": "kohya", "a1111": "kohya", "comfyui": "kohya", "sd-scripts": "kohya"},
        ),
        MethodSpec(
            "dreambooth", "DreamBooth", "dreambooth", MODEL, "model", ("diffusers", "single-file", "lora"),
            {"single_file": "single-file", "singlefile": "single-file", "safetensors": "single-file",
             "ckpt": "single-file", "svd": "lora"},
        ),
        MethodSpec(
            "textual_inversion", "Textual inversion", "textual-inversion", EMBEDDING, "adapter", ("diffusers", "a1111"),
            {"webui": "a1111", "comfyui": "a1111", "kohya": "a1111"},
            trains_denoiser=False, prior_preservation=False, weight_decay=False,
        ),
    )
}
METHOD_NAMES: tuple[str, ...] = tuple(METHOD_SPECS)


def method_spec(name: str) -> MethodSpec:
    """The description of method ``name``; an unknown name is an error that lists the known ones."""
    try:
        return METHOD_SPECS[name]
    except KeyError:
        raise StudioError(
            f"'{name}' is not a training method Studio knows; the methods are {', '.join(METHOD_NAMES)}."
        ) from None
