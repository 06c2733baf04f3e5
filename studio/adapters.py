"""The one place that puts trained results onto a pipeline: run dirs and exported files of every format.

:func:`resolve_adapter` looks at a path (a run directory, a LoRA file in diffusers or kohya/webui
layout, a PEFT folder, a textual-inversion file in diffusers or A1111 layout) and says what it is;
:func:`load_adapter` loads it through diffusers' own loaders. Files are identified by their tensor
keys, never by name, and pickle files are refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from studio.errors import StudioError
from studio.export.lora_kohya import is_kohya_state
from studio.export.lora_peft import is_peft_folder
from studio.export.lora_weights import COMPONENTS, LORA_WEIGHTS_FILE
from studio.export.ti import DIFFUSERS_FILE as EMBEDDINGS_FILE
from studio.export.ti import SDXL_KEYS, a1111_name, embedding_kind
from studio.methods import EMBEDDING, LORA, MODEL, MethodSpec, adapter_type_spec, method_spec
from studio.run_layout import RESULT_FILE

PICKLE_SUFFIXES = {".ckpt", ".bin", ".pt", ".pth", ".pkl"}


class AdapterError(StudioError):
    """An adapter path is missing, unreadable or not a LoRA/embedding we know."""


@dataclass(frozen=True)
class AdapterSource:
    """What an adapter path holds and how to load it."""

    path: Path
    kind: str  # "lora" | "embedding"
    format: str  # "diffusers" | "kohya" | "peft" | "a1111" | "a1111-sdxl" | "per-encoder" (an SDXL TI run)
    token: str | None = None  # embeddings: what to type in a prompt
    base: str | None = None  # run directories: the base model they were trained on
    companion: AdapterSource | None = None  # a LoRA's own token embedding, loaded with it (pivotal tuning)

    def describe(self) -> str:
        what = "LoRA" if self.kind == "lora" else f"embedding '{self.token}'"
        return f"{what} ({self.format}) from {self.path}"


def read_result(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise AdapterError(f"{path} is not valid JSON ({error}); the run directory is damaged.") from error


def _spec(result: dict[str, Any], run_dir: Path) -> MethodSpec:
    """The description of the method a run's result says it came from (an unknown one is refused)."""
    try:
        return method_spec(str(result.get("method")))
    except StudioError as error:
        raise AdapterError(f"{run_dir}: {error} Was it made by a newer Studio?") from None


def resolve_base(ref: str) -> str:
    """A base-model reference, with a DreamBooth run directory standing for its ``model/`` folder."""
    path = Path(ref).expanduser()
    result = read_result(path) if path.is_dir() else None
    if result is None:
        return ref
    if _spec(result, path).is_adapter:
        raise AdapterError(
            f"{path} is a {result.get('method')} run: it is an adapter, not a base model. Pass it with --adapter "
            f"and use its base ('{result.get('base')}') as --base."
        )
    return str(path / result.get("artifact", "model"))


def resolve_adapter(path: str | Path) -> AdapterSource:
    """Identify the adapter at ``path`` (run directory, exported file or folder)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise AdapterError(f"Adapter {path} does not exist.")
    if path.is_dir():
        return _resolve_folder(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise AdapterError(
            f"{path} is a pickle file ({path.suffix}); loading it could run arbitrary code. Use a .safetensors "
            "adapter (kohya's and A1111's tools convert .pt/.ckpt files)."
        )
    return _resolve_file(path)


def _resolve_folder(path: Path) -> AdapterSource:
    result = read_result(path)
    if result is not None:
        artifact = path / result.get("artifact", "adapter")
        produces = _spec(result, path).produces
        if produces == LORA:
            companion = _embedding_source(artifact, result) if _spec(result, path).with_embedding else None
            if _held_in_peft_folders(result):  # LoKr, LoHa
                return AdapterSource(artifact, "lora", "peft", base=result.get("base"))
            return AdapterSource(artifact / LORA_WEIGHTS_FILE, "lora", "diffusers", base=result.get("base"),
                                 companion=companion)
        if produces == EMBEDDING:  # one file, or one per text encoder (SDXL: learned_embeds_text_encoder[_2])
            return _embedding_source(artifact, result)
        raise AdapterError(f"{path} is a DreamBooth run (a whole model): pass it as --base, not as --adapter.")
    if (path / "model_index.json").is_file():
        raise AdapterError(f"{path} is a full diffusers model folder: pass it as --base, not as --adapter.")
    if (path / LORA_WEIGHTS_FILE).is_file() and (path / EMBEDDINGS_FILE).is_file():  # a pivotal export
        return replace(_resolve_file(path / LORA_WEIGHTS_FILE), companion=_resolve_file(path / EMBEDDINGS_FILE))
    per_encoder = sorted(path.glob("learned_embeds_*.safetensors"))
    if (path / LORA_WEIGHTS_FILE).is_file() and per_encoder:  # an SDXL pivotal export: one file per text encoder
        token = _resolve_file(per_encoder[0]).token
        return replace(_resolve_file(path / LORA_WEIGHTS_FILE),
                       companion=AdapterSource(path, "embedding", "per-encoder", token=token))
    for candidate in (path / LORA_WEIGHTS_FILE, path / EMBEDDINGS_FILE):
        if candidate.is_file():
            return _resolve_file(candidate)
    for folder in (path, path / "peft"):
        if folder.is_dir() and is_peft_folder(folder):
            return AdapterSource(folder, "lora", "peft")
    raise AdapterError(
        f"{path} is a folder without a run result, {LORA_WEIGHTS_FILE}, {EMBEDDINGS_FILE} or PEFT adapter_config.json; "
        "give the adapter file itself."
    )


def _resolve_file(path: Path) -> AdapterSource:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
    except Exception as error:
        raise AdapterError(
            f"{path} is not a readable safetensors file ({type(error).__name__}: {str(error)[:120]}). It may be truncated "
            "(download it again) or not an adapter at all."
        ) from error
    if is_kohya_state(keys):
        return AdapterSource(path, "lora", "kohya")
    if keys and all(k.split(".", 1)[0] in COMPONENTS and ("lora" in k or k.endswith(".alpha")) for k in keys):
        return AdapterSource(path, "lora", "diffusers")
    kind = embedding_kind(keys)
    if kind == "diffusers":
        return AdapterSource(path, "embedding", kind, token=keys[0])
    if kind in ("a1111", "a1111-sdxl"):
        return AdapterSource(path, "embedding", kind, token=a1111_name(path.stem))
    if keys and all(k.startswith("base_model.model.") for k in keys):
        raise AdapterError(f"{path} is a bare PEFT weights file; give the folder that also holds adapter_config.json.")
    raise AdapterError(
        f"{path} holds neither LoRA weights (lora_down/lora_up, lora_A/lora_B) nor a textual-inversion embedding "
        f"(emb_params, or one token -> tensor); its keys start {keys[:3]}. Is it a base model or another tool's file?"
    )


def load_adapter(pipe, source: AdapterSource, adapter_name: str, *, token: str | None = None) -> list[str]:
    """Load ``source`` into ``pipe`` under ``adapter_name``; returns the prompt tokens it added (embeddings)."""
    try:
        if source.kind == "lora":
            _load_lora(pipe, source, adapter_name)
            return _load_embedding(pipe, source.companion, source.companion.token) if source.companion else []
        return _load_embedding(pipe, source, token or source.token)
    except StudioError:
        raise
    except (ValueError, RuntimeError, KeyError, OSError) as error:
        if "already in tokenizer vocabulary" in str(error):
            raise AdapterError(
                f"Cannot load {source.describe()}: its token is already taken (by another embedding, or a word the "
                "tokenizer knows). Load only one embedding per token."
            ) from error
        raise AdapterError(
            f"Could not load {source.describe()} onto this base model: {error}. Was it trained for another model family?"
        ) from error


def _held_in_peft_folders(result: dict[str, Any]) -> bool:
    """Whether a LoRA-producing run's result is peft adapter folders (its adapter type says: LoKr, LoHa)."""
    return adapter_type_spec(result.get("adapter_type")).run_layout == "peft"


def _load_lora(pipe, source: AdapterSource, adapter_name: str) -> None:
    from studio.peft_files import load_peft_adapters, needs_peft_loader

    if source.format == "peft" and needs_peft_loader(source.path):  # LoKr, LoHa, DoRA: peft's own layers
        load_peft_adapters(pipe, source.path, adapter_name)
    elif source.format == "peft":
        from studio.export.lora_peft import read_peft_folders
        from studio.export.lora_weights import diffusers_lora_state
        from studio.families import family_for

        # peft's A/B per component, keyed as a diffusers LoRA state dict (scale folded into B)
        state = diffusers_lora_state(read_peft_folders(source.path), family_for(pipe))
        pipe.load_lora_weights(state, adapter_name=adapter_name)
    elif source.format == "kohya" and getattr(pipe, "transformer", None) is not None and \
            type(pipe.transformer).__name__ == "SD3Transformer2DModel":
        # diffusers reads no SD3 keys from SAI's fused kohya layout: Studio splits it back itself
        from safetensors.torch import load_file

        from studio.families import family_for
        from studio.families.sd3.names import diffusers_state_from_kohya

        state = diffusers_state_from_kohya(load_file(str(source.path)), pipe, family_for(pipe))
        pipe.load_lora_weights(state, adapter_name=adapter_name)
    else:
        pipe.load_lora_weights(str(source.path), adapter_name=adapter_name, use_safetensors=True)


def _load_embedding(pipe, source: AdapterSource, token: str | None) -> list[str]:
    """diffusers reads both layouts from the file: a one-key file's tensor becomes ``token``."""
    from safetensors.torch import load_file

    if source.format == "per-encoder":
        files = sorted(source.path.glob("learned_embeds_*.safetensors"))
        _load_per_encoder_embeddings(pipe, files, token)
        count = next(iter(load_file(str(files[0])).values())).shape[0]
    elif source.format == "a1111-sdxl":
        state = load_file(str(source.path))
        for key, encoder in zip(SDXL_KEYS, ("text_encoder", "text_encoder_2"), strict=True):  # SDXL's and SD3's CLIPs
            tokenizer = getattr(pipe, encoder.replace("text_encoder", "tokenizer"))
            if hasattr(pipe, "load_textual_inversion"):
                pipe.load_textual_inversion(state[key], token=token, text_encoder=getattr(pipe, encoder), tokenizer=tokenizer)
            else:  # SD3: no textual-inversion loader
                add_token_rows(tokenizer, getattr(pipe, encoder), token, state[key])
        count = state[SDXL_KEYS[0]].shape[0]
    else:
        pipe.load_textual_inversion(str(source.path), token=token)
        rows = next(iter(load_file(str(source.path)).values()))
        count = rows.shape[0] if rows.ndim == 2 else 1
    return [token] + [f"{token}_{i}" for i in range(1, count)]


def apply_run_result(run_dir: Path, result: dict[str, Any], config):
    """Load the run's base (as ``config`` names it) and apply its adapter, or load a DreamBooth model folder."""
    from studio.models import load_base, load_configured_base

    artifact = Path(run_dir) / result["artifact"]
    produces = _spec(result, Path(run_dir)).produces
    if produces == MODEL:
        return load_base(str(artifact)).pipeline
    pipeline = load_configured_base(config).pipeline
    if produces == LORA and _held_in_peft_folders(result):
        from studio.peft_files import load_peft_adapters

        load_peft_adapters(pipeline, artifact, "run")
    elif produces == LORA:
        pipeline.load_lora_weights(str(artifact), weight_name=LORA_WEIGHTS_FILE, use_safetensors=True)
    if produces == EMBEDDING or (produces == LORA and _spec(result, Path(run_dir)).with_embedding):
        source = _embedding_source(artifact, result)
        _load_embedding(pipeline, source, source.token)
    return pipeline


def _embedding_source(artifact: Path, result: dict[str, Any]) -> AdapterSource:
    """The token rows a run's ``artifact`` folder holds: one diffusers file, or one per text encoder (SDXL)."""
    if (artifact / EMBEDDINGS_FILE).is_file():
        return AdapterSource(artifact / EMBEDDINGS_FILE, "embedding", "diffusers", token=result.get("token"),
                             base=result.get("base"))
    return AdapterSource(artifact, "embedding", "per-encoder", token=result.get("token"), base=result.get("base"))


def _load_per_encoder_embeddings(pipeline, files: list[Path], token: str) -> None:
    from safetensors.torch import load_file

    for path in files:
        encoder = path.stem.removeprefix("learned_embeds_")
        tokenizer = encoder.replace("text_encoder", "tokenizer")
        rows = load_file(str(path))[token]
        if hasattr(pipeline, "load_textual_inversion"):
            pipeline.load_textual_inversion(
                rows, token=token, text_encoder=getattr(pipeline, encoder), tokenizer=getattr(pipeline, tokenizer)
            )
        else:  # pipelines without diffusers' textual-inversion loader (SD3): the same rows, added directly
            add_token_rows(getattr(pipeline, tokenizer), getattr(pipeline, encoder), token, rows)


def add_token_rows(tokenizer, encoder, token: str, rows) -> None:
    """Add ``token`` (and ``token_1``… for more rows) to ``tokenizer`` and their rows to ``encoder``'s
    embedding, as diffusers' ``load_textual_inversion`` does."""
    import torch

    rows = rows if rows.ndim == 2 else rows[None]
    tokens = [token] + [f"{token}_{i}" for i in range(1, rows.shape[0])]
    if tokenizer.add_tokens(tokens) != len(tokens):
        raise AdapterError(f"Cannot add embedding '{token}': the tokenizer already knows one of {tokens}.")
    ids = tokenizer.convert_tokens_to_ids(tokens)
    encoder.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():
        weight = encoder.get_input_embeddings().weight
        weight[ids] = rows.to(weight.device, weight.dtype)
