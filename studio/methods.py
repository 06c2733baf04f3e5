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
    with_embedding: bool = False  # a LORA result that also holds new token rows, applied with it (pivotal tuning)

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
        # LoRA and a textual-inversion token trained together; the LoRA and the token's rows are one result,
        # exported as the LoRA file plus the embedding file of each layout (the LoRA needs its token).
        MethodSpec(
            "pivotal", "Pivotal tuning (LoRA + textual inversion)", "pivotal-tuning", LORA, "adapter", ("diffusers", "kohya"),
            {"webui": "kohya", "a1111": "kohya", "comfyui": "kohya", "sd-scripts": "kohya"},
            with_embedding=True,
        ),
    )
}
METHOD_NAMES: tuple[str, ...] = tuple(METHOD_SPECS)


@dataclass(frozen=True)
class AdapterTypeSpec:
    """One kind of low-rank adapter a LoRA-producing method trains (the ``adapter_type`` setting).

    ``run_layout`` is how the run's result holds it: ``diffusers`` (``pytorch_lora_weights.safetensors``,
    which diffusers' ``load_lora_weights`` reads: LoRA and DoRA) or ``peft`` (``adapter/peft/<component>/``
    adapter folders, which peft reads: LoKr and LoHa, which diffusers' SD loaders do not). ``kohya_algo``
    names the LyCORIS algorithm in a kohya-layout file's ``ss_network_args`` (None: kohya's plain LoRA).
    ``stacks`` says whether adapters of this type on modules stacked on the output axis (Flux's and SD3's
    fused qkv) are again one adapter of the type: LoRA/DoRA (block-diagonal ups) and LoHa (a row-wise
    product) are; LoKr (a Kronecker product) is not, so it has no file in those families' fused layout.
    """

    name: str
    label: str
    peft_type: str  # peft's PeftType
    hub_tag: str
    run_layout: str  # "diffusers" | "peft"
    export_formats: tuple[str, ...]
    kohya_algo: str | None = None
    stacks: bool = True


ADAPTER_TYPES: dict[str, AdapterTypeSpec] = {
    spec.name: spec
    for spec in (
        AdapterTypeSpec("lora", "LoRA", "LORA", "lora", "diffusers", ("diffusers", "kohya", "peft")),
        AdapterTypeSpec("dora", "DoRA", "LORA", "dora", "diffusers", ("diffusers", "kohya", "peft"), "dora"),
        AdapterTypeSpec("lokr", "LoKr", "LOKR", "lokr", "peft", ("peft", "kohya"), "lokr", stacks=False),
        AdapterTypeSpec("loha", "LoHa", "LOHA", "loha", "peft", ("peft", "kohya"), "loha"),
    )
}
ADAPTER_TYPE_NAMES: tuple[str, ...] = tuple(ADAPTER_TYPES)


def adapter_type_spec(name: str | None) -> AdapterTypeSpec:
    """The description of adapter type ``name`` (a result without one is a plain LoRA)."""
    try:
        return ADAPTER_TYPES[name or "lora"]
    except KeyError:
        raise StudioError(
            f"'{name}' is not an adapter type Studio knows; the types are {', '.join(ADAPTER_TYPE_NAMES)}."
        ) from None


def export_formats_for(method: str, adapter_type: str | None = None) -> tuple[str, ...]:
    """The export formats of a run: its method's, narrowed to its adapter type's for a LoRA-producing run."""
    spec = method_spec(method)
    if spec.produces != LORA or not adapter_type or adapter_type == "lora":
        return spec.export_formats
    return tuple(f for f in spec.export_formats if f in adapter_type_spec(adapter_type).export_formats)


def method_spec(name: str) -> MethodSpec:
    """The description of method ``name``; an unknown name is an error that lists the known ones."""
    try:
        return METHOD_SPECS[name]
    except KeyError:
        raise StudioError(
            f"'{name}' is not a training method Studio knows; the methods are {', '.join(METHOD_NAMES)}."
        ) from None
