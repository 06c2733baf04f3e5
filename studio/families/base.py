"""The per-model-family seam: everything that differs between SD1.x/2.x and SDXL (and later
families) lives behind this small interface, never as ``if sdxl:`` branches in the loop."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class PromptEmbedding:
    """Text conditioning for a batch: per-token states and (for SDXL) the pooled embedding."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None

    def to(self, device=None, dtype=None) -> PromptEmbedding:
        return PromptEmbedding(
            self.hidden.to(device=device, dtype=dtype),
            None if self.pooled is None else self.pooled.to(device=device, dtype=dtype),
        )

    def select(self, index: torch.Tensor | list[int]) -> PromptEmbedding:
        index = torch.as_tensor(index, device=self.hidden.device)
        return PromptEmbedding(
            self.hidden.index_select(0, index), None if self.pooled is None else self.pooled.index_select(0, index)
        )

    @staticmethod
    def cat(parts: list[PromptEmbedding]) -> PromptEmbedding:
        pooled = [p.pooled for p in parts]
        return PromptEmbedding(
            torch.cat([p.hidden for p in parts]), None if pooled[0] is None else torch.cat(pooled)  # type: ignore[arg-type]
        )

    def state(self) -> dict[str, torch.Tensor]:
        return {"hidden": self.hidden} | ({} if self.pooled is None else {"pooled": self.pooled})

    @staticmethod
    def from_state(state: dict[str, torch.Tensor]) -> PromptEmbedding:
        return PromptEmbedding(state["hidden"], state.get("pooled"))


# CLIP text encoders: transformers 4 names every module under ``text_model.``; transformers 5 dropped
# that root on ``CLIPTextModel`` (not on ``CLIPTextModelWithProjection``). Files other tools read use the
# rooted names; ``text_projection`` sits beside the root.
CLIP_ROOT = "text_model."
CLIP_BESIDE_ROOT = ("text_projection",)


def is_instance_named(component: Any, class_name: str) -> bool:
    """Whether ``component`` is of the class named so (detection without importing every model class)."""
    return component is not None and type(component).__name__ == class_name


def clip_rooted_path(path: str) -> str:
    """A CLIP text-encoder module or parameter path with transformers 4's ``text_model.`` root."""
    if path.startswith(CLIP_ROOT) or path.split(".")[0] in CLIP_BESIDE_ROOT:
        return path
    return CLIP_ROOT + path


@dataclass(frozen=True)
class FusedPlace:
    """Where a denoiser module lands in a fused kohya layout (Flux's BFL names, SD3's MMDiT names): the
    original module ``name``, the diffusers ``members`` fused there (output order), this module's ``slot``
    among them, each member's output rows (``sizes``; None: one member) and whether the original holds
    its output halves swapped."""

    name: str
    members: tuple[str, ...]
    slot: int
    sizes: tuple[int, ...] | None
    swapped: bool


def clip_rootless_path(path: str) -> str:
    """The same path as transformers 5's ``CLIPTextModel`` names it (no ``text_model.`` root)."""
    return path.removeprefix(CLIP_ROOT)


class ModelFamily(ABC):
    """What a trainer, exporter or generator must know about one family of diffusion models.

    The family owns the model's shape: its components and denoiser, how it is recognised (from a
    pipeline's components and from a single file's keys), prompt encoding, the denoiser's inputs, the
    training objective, and the names each export format uses. Adding a family is one folder here
    (a subpackage declaring ``FAMILY_CLASSES``), found by :mod:`studio.families.discovery` and listed in
    :data:`studio.families.FAMILIES`; nothing outside asks which family it is.
    """

    name: str
    # Where family_for/family_for_keys ask this family, lowest first: a family whose detect would also accept
    # another's pipelines comes after it. Each class sets its own (subclasses too); no two families share one.
    detection_order: int
    label: str = ""
    default_resolution: int
    denoiser_name: str = "unet"
    text_encoder_names: tuple[str, ...]
    tokenizer_names: tuple[str, ...]
    hub_tags: tuple[str, ...] = ("stable-diffusion",)  # the Hub's model-family tags for a model card
    supports_single_file: bool = False  # can a full model be written in the original single-file layout?
    # A module that writes and proves this family's single file itself (``export_single_file(ctx)``, ``usage(stem)``);
    # None: the SD layout's generic writer (studio.export.full_model) with single_file_state.
    single_file_writer: str | None = None
    supports_kohya_lora: bool = True  # does this family name its LoRA modules for kohya/webui files?
    fused_kohya_layout: bool = False  # do kohya files fuse several modules into one (kohya_state/read_kohya_state)?
    kohya_network_module: str = "networks.lora"  # sd-scripts' network module, recorded in ss_network_module
    kohya_v2: bool = False  # sd-scripts' ss_v2 flag (SD2.x's OpenCLIP text encoder and v-prediction)
    kohya_base_model_version: str
    modelspec_architecture: str
    # Prefix of each component's modules in kohya/webui LoRA files (``lora_unet_…``, ``lora_te_…``).
    kohya_prefixes: dict[str, str]
    # Generation tasks beyond txt2img/img2img (studio.pipeline_tasks): task -> diffusers pipeline class name
    # (inpaint, control, control-img2img, control-inpaint, instruct; a task left out has no pipeline), the
    # ControlNet model classes its ControlNet pipelines take (the first loads hub ids and single files) and
    # how the txt2img ControlNet pipeline names its control image.
    task_pipelines: dict[str, str] = {}
    controlnet_classes: tuple[str, ...] = ()
    control_image_argument: str = "control_image"
    # Its ControlNet pipeline samples the control image's VAE latents from torch's global RNG, not the seed's
    # generator (diffusers' SD3): Studio renders one image per call with that RNG seeded from the image's seed.
    control_uses_global_rng: bool = False
    # The denoiser's repeated transformer blocks, as the attribute names of its ModuleLists in forward order
    # (block swapping, trainers/block_swap.py, keeps some of them on the CPU); empty: nothing to swap.
    swappable_block_lists: tuple[str, ...] = ()

    def kohya_lora_name(self, component: str, path: str, unet_config: Any = None) -> str:
        """A module's name in a kohya/webui LoRA file: prefix + the module path with ``_`` for ``.``.

        The UNet keeps diffusers' module names (what sd-scripts trains on SD1.x/2.x); text encoders are
        named from CLIP's ``text_model.`` root. Families whose tools use other names override this.
        """
        if component not in self.kohya_prefixes:
            from studio.errors import StudioError

            raise StudioError(f"The kohya format has no place for a LoRA on '{component}' of a {self.name} model.")
        if component != self.denoiser_name:
            path = clip_rooted_path(path)
        return self.kohya_prefixes[component] + path.replace(".", "_")

    def kohya_place(self, path: str, denoiser_config: Any) -> FusedPlace:
        """A denoiser module's place in a fused kohya layout (families with ``fused_kohya_layout``)."""
        raise NotImplementedError(f"{self.name} has no fused kohya layout")

    def diffusers_lora_key(self, component: str, path: str) -> str:
        """A module's key stem in a diffusers LoRA file, as ``save_lora_weights`` writes it under
        transformers 4 (``text_encoder.text_model.encoder.layers.0.self_attn.q_proj``): diffusers accepts
        that root under transformers 4 and 5, and it is the spelling other tools match."""
        return f"{component}.{path if component == self.denoiser_name else clip_rooted_path(path)}"

    # --- shape -------------------------------------------------------------------------------------
    @property
    def component_names(self) -> tuple[str, ...]:
        """The pipeline components training and export use (safety checkers and the like are not)."""
        return (self.denoiser_name, "vae", *self.text_encoder_names, *self.tokenizer_names, "scheduler")

    def swappable_blocks(self, denoiser: Any) -> list[Any]:
        """The denoiser's swappable blocks in the order its forward runs them (see ``swappable_block_lists``)."""
        return [block for name in self.swappable_block_lists for block in getattr(denoiser, name)]

    @property
    def weighted_component_names(self) -> tuple[str, ...]:
        """Components holding weights that a full-model export must carry."""
        return (self.denoiser_name, "vae", *self.text_encoder_names)

    @property
    def lora_text_encoder_names(self) -> tuple[str, ...]:
        """Text encoders a LoRA may adapt (those the pipeline's ``save_lora_weights`` accepts)."""
        return self.text_encoder_names

    @property
    def clip_text_encoder_names(self) -> tuple[str, ...]:
        """The CLIP text encoders (their files and LoRA keys use CLIP's ``text_model.`` root; T5's do not)."""
        return self.text_encoder_names

    @property
    def embedding_text_encoder_names(self) -> tuple[str, ...]:
        """Text encoders textual inversion adds tokens to (with their tokenizers, in the same order)."""
        return self.clip_text_encoder_names

    @property
    def text_only_encoder_names(self) -> tuple[str, ...]:
        """Text encoders that read a prompt as text but get no embedding (T5): they see a placeholder's spelling."""
        return tuple(n for n in self.text_encoder_names if n not in self.embedding_text_encoder_names)

    def tokenizer_of(self, text_encoder_name: str) -> str:
        return self.tokenizer_names[self.text_encoder_names.index(text_encoder_name)]

    # --- detection -----------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def detect(cls, components: dict[str, Any]) -> bool:
        """Whether a pipeline's components are this family's (asked most specific family first)."""

    @classmethod
    def detect_keys(cls, keys: list[str]) -> bool:
        """Whether a single-file checkpoint's tensor names are this family's full model."""
        return False

    # --- the denoiser and the objective ---------------------------------------------------------
    def objective(self, scheduler_config: Any):
        """The training objective (:mod:`studio.families.objective`); DDPM from the scheduler config by default."""
        from studio.families.objective import DDPMObjective

        return DDPMObjective(scheduler_config)

    def image_tokens(self, latent_height: int, latent_width: int) -> int:
        """Positions the denoiser sees per image (a resolution-dependent timestep shift reads it)."""
        return latent_height * latent_width

    def predict(self, denoiser, noisy: torch.Tensor, timesteps: torch.Tensor, embedding: PromptEmbedding,
                resolution: int) -> torch.Tensor:
        """The denoiser's prediction, shaped like ``noisy`` (latents [B, C, H, W])."""
        return denoiser(noisy, timesteps, **self.unet_kwargs(embedding, resolution)).sample

    def unet_kwargs(self, embedding: PromptEmbedding, resolution: int) -> dict[str, Any]:
        """Keyword arguments for ``unet(latents, t, **kwargs)`` beyond the first two (UNet families)."""
        raise NotImplementedError(f"{self.name} has no UNet; ask predict() instead.")

    # --- export names -------------------------------------------------------------------------
    def single_file_state(self, pipe) -> dict[str, torch.Tensor]:
        """Every weight of ``pipe`` in the original single-file layout A1111/ComfyUI load."""
        from studio.errors import StudioError

        raise StudioError(
            f"Single-file export supports SD1.x and SDXL checkpoints; this is {self.label or self.name}. "
            "Export --format diffusers instead.",
            browser=f"The single-file format supports SD1.x and SDXL checkpoints; this is {self.label or self.name}. "
                    "Tick the diffusers format instead.",
        )

    # --- LoRA files -----------------------------------------------------------------------------
    def save_lora_kwargs(self, states: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments for the pipeline class's ``save_lora_weights``: ``<component>_lora_layers``
        and ``<component>_lora_adapter_metadata`` for each adapted component."""
        kwargs: dict[str, Any] = {}
        for name, state in states.items():
            kwargs[f"{name}_lora_layers"] = state
            if metadata.get(name) is not None:
                kwargs[f"{name}_lora_adapter_metadata"] = metadata[name]
        return kwargs

    def text_encoders(self, components: dict[str, Any]) -> list[Any]:
        return [components[name] for name in self.text_encoder_names]

    def tokenizers(self, components: dict[str, Any]) -> list[Any]:
        return [components[name] for name in self.tokenizer_names]

    def tokenize(self, components: dict[str, Any], prompts: list[str]) -> list[torch.Tensor]:
        """Token ids per text encoder, padded to each tokenizer's max length."""
        return [
            tokenizer(
                self.encoder_prompts(components, name, prompts), padding="max_length",
                max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids
            for name, tokenizer in zip(self.text_encoder_names, self.tokenizers(components), strict=True)
        ]

    # --- textual-inversion placeholders (studio.families.placeholders) --------------------------------
    # The pipeline's prompt argument for each text encoder, in text_encoder_names' order.
    prompt_argument_names: tuple[str, ...] = ("prompt",)

    def placeholders(self, components: dict[str, Any]) -> dict[str, list[str]]:
        """Multi-vector placeholders the CLIP tokenizers hold (``<tok>`` -> its N tokens)."""
        from studio.families.placeholders import multi_vector_placeholders

        return multi_vector_placeholders(components.get(self.tokenizer_of(name))
                                         for name in self.embedding_text_encoder_names)

    def encoder_prompts(self, components: dict[str, Any], encoder_name: str, prompts: list[str]) -> list[str]:
        """What text encoder ``encoder_name`` reads for ``prompts``: a CLIP encoder every vector of a placeholder
        (as training prompts spell them), a text-only encoder (T5) the placeholder once, as typed."""
        if encoder_name not in self.text_only_encoder_names:
            return prompts
        from studio.families.placeholders import collapse_placeholders

        placeholders = self.placeholders(components)
        return [collapse_placeholders(p, placeholders) for p in prompts] if placeholders else prompts

    def prompt_arguments(self, pipeline: Any, prompts: list[str]) -> dict[str, list[str]]:
        """``pipeline``'s prompt arguments for ``prompts`` as a user types them (a placeholder once): the prompt
        itself where the pipeline expands placeholders (diffusers' ``maybe_convert_prompt``: SD, SDXL, Flux
        txt2img); else (SD3, Flux img2img) each CLIP encoder's argument gets every vector and each text-only
        encoder's (T5) the prompt as typed."""
        expands = hasattr(pipeline, "maybe_convert_prompt")
        placeholders = {} if expands else self.placeholders(getattr(pipeline, "components", pipeline))
        if not placeholders:
            return {"prompt": prompts}
        import inspect

        from studio.families.placeholders import expand_placeholders

        taken = inspect.signature(type(pipeline).__call__).parameters
        return {argument: prompts if name in self.text_only_encoder_names
                else [expand_placeholders(p, placeholders) for p in prompts]
                for name, argument in zip(self.text_encoder_names, self.prompt_argument_names, strict=True)
                if argument == "prompt" or argument in taken}

    @abstractmethod
    def encode(self, components: dict[str, Any], token_ids: list[torch.Tensor]) -> PromptEmbedding:
        """Run the text encoder(s); gradients flow when they train."""

    def encode_prompts(self, components: dict[str, Any], prompts: list[str], device=None) -> PromptEmbedding:
        ids = [t.to(device) if device is not None else t for t in self.tokenize(components, prompts)]
        return self.encode(components, ids)

    def control_noise(self, pipe, generators: list[torch.Generator], width: int, height: int) -> torch.Tensor | None:
        """The starting latents for the txt2img ControlNet pipeline ``pipe``, or None: it draws the seeds' noise
        itself exactly as the plain pipeline does (so control strength 0 gives the plain image)."""
        return None

    @abstractmethod
    def pipeline_classes(self) -> tuple[type, type]:
        """(txt2img, img2img) diffusers pipeline classes."""
