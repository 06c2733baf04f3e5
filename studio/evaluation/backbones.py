"""The two scoring backbones: a CLIP model (CLIP-I, CLIP-T) and a DINO ViT (DINO, PRES, DIV).

A reference is a built-in name (``tiny-clip``, ``tiny-dino``), a local transformers folder, or a
Hugging Face Hub id; all load through ``from_pretrained``. Embeddings are computed here directly
from the model's parts (not through ``get_image_features``, whose return type changed between
transformers 4 and 5), after Studio's own explicit preprocessing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from studio.errors import ModelLoadError
from studio.evaluation.defaults import DEFAULT_CLIP, DEFAULT_DINO
from studio.evaluation.preprocessing import Transform, clip_transform, dino_transform
from studio.models.builtin import builtin_path, builtins, get_builtin
from studio.models.loader import HUB_ID, hub_offline

_TINY = {"clip": "tiny-clip", "dino": "tiny-dino"}
_FLAG = {"clip": "--clip", "dino": "--dino"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass
class Backbone:
    """A loaded backbone. ``fingerprint`` identifies its weights (embedding-cache keys use it)."""

    kind: str  # "clip" or "dino"
    ref: str
    source: str  # "builtin" | "folder" | "hub"
    fingerprint: str
    model: Any = field(repr=False)
    transform: Transform
    tokenizer: Any = field(default=None, repr=False)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def describe(self) -> dict[str, Any]:
        """What a report records: the reference as given, the exact weights, class and preprocessing."""
        return {
            "ref": self.ref,
            "id": self.fingerprint,
            "source": self.source,
            "class": type(self.model).__name__,
            "preprocessing": self.transform.describe(),
        }

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed (N, 3, H, W) pixels -> raw (unnormalised) float32 embeddings on the CPU."""
        pixels = pixels.to(self.device, dtype=self.model.dtype)
        if self.kind == "clip":
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output
            features = self.model.visual_projection(pooled)
        else:
            features = self.model(pixel_values=pixels).last_hidden_state[:, 0]  # DINO's CLS token
        return features.float().cpu()

    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        return self.embed_pixels(self.transform.batch(images))

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """CLIP text embeddings (raw float32, CPU); only a CLIP backbone has a text tower."""
        if self.kind != "clip":
            raise ValueError("only a CLIP backbone embeds text")
        limit = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        pooled = self.model.text_model(
            input_ids=tokens.input_ids.to(self.device), attention_mask=tokens.attention_mask.to(self.device)
        ).pooler_output
        return self.model.text_projection(pooled).float().cpu()


def _not_found(kind: str, ref: str, why: str) -> ModelLoadError:
    browser_why = why.split("; it may only have pickle")[0]
    return ModelLoadError(
        f"{kind.upper()} backbone '{ref}' {why}. Fix: pass {_FLAG[kind]} with a local folder "
        f"(a downloaded copy, or one written by `studio models materialize {_TINY[kind]} DIR`), a Hub id "
        f"that is cached or reachable, or {_FLAG[kind]} {_TINY[kind]} for an offline smoke test "
        "(its scores are not meaningful).",
        browser=f"{kind.upper()} backbone '{ref}' {browser_why}. Fix: in the evaluation settings, choose a local "
                f"folder with its weights, a Hub id that is cached or reachable, or {_TINY[kind]} (built in, offline; "
                "it compares runs here but not with the paper's figures).",
    )


def _folder_fingerprint(path: Path) -> str:
    """Config contents plus each weight file's name, size and mtime: cheap, changes when weights do."""
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for weights in sorted(p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES):
        stat = weights.stat()
        digest.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"folder:{path.resolve()}:{digest.hexdigest()[:16]}"


def resolve_backbone(ref: str, kind: str) -> tuple[str, str, str | None]:
    """``ref`` -> (what to pass to from_pretrained, source, fingerprint or None until loaded)."""
    if ref in builtins():
        model = get_builtin(ref)
        if model.kind != kind:
            raise ModelLoadError(
                f"'{ref}' is a built-in {model.kind} model, not a {kind.upper()} backbone; "
                f"use {_FLAG[kind]} {_TINY[kind]} or a real {kind.upper()} checkpoint."
            )
        return str(builtin_path(ref)), "builtin", f"builtin:{ref}-v{model.version}"
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise _not_found(kind, ref, f"is a folder without config.json ({path}), not a transformers model")
        return str(path), "folder", _folder_fingerprint(path)
    if path.exists():
        raise _not_found(kind, ref, "is a file; a backbone must be a transformers model folder")
    if HUB_ID.match(ref):
        return ref, "hub", None
    raise _not_found(kind, ref, "is not a built-in name, an existing folder, or a Hub id ('owner/name')")


def _load(kind: str, ref: str, allow_pickle: bool) -> tuple[Any, Any, str, str]:
    from transformers import AutoConfig, AutoModel, CLIPModel, CLIPTokenizer, ViTModel

    location, source, fingerprint = resolve_backbone(ref, kind)
    kwargs: dict[str, Any] = {} if allow_pickle else {"use_safetensors": True}
    try:
        config = AutoConfig.from_pretrained(location)
        if kind == "clip":
            if config.model_type != "clip":
                raise _not_found(kind, ref, f"is a '{config.model_type}' model, not a CLIP model")
            model = CLIPModel.from_pretrained(location, **kwargs)
            tokenizer = CLIPTokenizer.from_pretrained(location)
        elif config.model_type == "vit":
            model, tokenizer = ViTModel.from_pretrained(location, add_pooling_layer=False, **kwargs), None
        else:
            model, tokenizer = AutoModel.from_pretrained(location, **kwargs), None
    except ModelLoadError:
        raise
    except Exception as error:
        if source == "hub":
            where = "is offline (HF_HUB_OFFLINE=1) and not in the local cache" if hub_offline() else "could not be downloaded"
            why = f"{where} ({type(error).__name__})"
        else:
            why = f"could not be loaded from {location} ({type(error).__name__}: {error})"
        if not allow_pickle and "safetensors" in str(error).lower():
            why += "; it may only have pickle .bin weights: pass --allow-pickle if you trust its source"
        raise _not_found(kind, ref, why) from error
    if fingerprint is None:
        fingerprint = f"hub:{ref}@{getattr(model.config, '_commit_hash', None) or 'unknown'}"
    return model, tokenizer, source, fingerprint


def _image_size(kind: str, model: Any) -> int:
    config = model.config.vision_config if kind == "clip" else model.config
    size = getattr(config, "image_size", 224)
    return int(size[0] if isinstance(size, list | tuple) else size)


def load_backbone(
    kind: str, ref: str, *, device: str | torch.device | None = None, allow_pickle: bool = False
) -> Backbone:
    """Load a ``"clip"`` or ``"dino"`` backbone by built-in name, folder or Hub id (offline-aware)."""
    if kind not in _TINY:
        raise ValueError(f"kind must be 'clip' or 'dino', not {kind!r}")
    model, tokenizer, source, fingerprint = _load(kind, ref, allow_pickle)
    target = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(target).eval()
    size = _image_size(kind, model)
    transform = clip_transform(size) if kind == "clip" else dino_transform(size)
    return Backbone(kind, ref, source, fingerprint, model, transform, tokenizer, target)


def load_clip(ref: str = DEFAULT_CLIP, **kwargs: Any) -> Backbone:
    """CLIP backbone; the default is the id DreamBooth follow-ups use, ``openai/clip-vit-base-patch32``."""
    return load_backbone("clip", ref, **kwargs)


def load_dino(ref: str = DEFAULT_DINO, **kwargs: Any) -> Backbone:
    """DINO backbone; the default is the paper's DINO ViT-S/16, ``facebook/dino-vits16``."""
    return load_backbone("dino", ref, **kwargs)
