"""On-disk cache of reference-image embeddings, so a subject's photos are embedded once per backbone.

A cache file is keyed by the backbone's weight fingerprint, the preprocessing settings (which
carry ``PREPROCESSING_VERSION``) and the sha256 of every image file in order; any change to one of
them is a different file, never a stale hit. Files live under ``$STUDIO_DATA_DIR/embeddings/``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from studio.atomic import save_safetensors
from studio.evaluation.backbones import Backbone
from studio.evaluation.embedding import Embedder, Embeddings
from studio.evaluation.preprocessing import load_image
from studio.paths import data_dir

CACHE_DIRNAME = "embeddings"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_path(backbone: Backbone, hashes: Sequence[str]) -> Path:
    key = json.dumps([backbone.fingerprint, backbone.transform.describe(), list(hashes)], sort_keys=True)
    name = hashlib.sha256(key.encode()).hexdigest()[:40]
    return data_dir() / CACHE_DIRNAME / f"{backbone.kind}-{name}.safetensors"


def _read(path: Path, count: int) -> torch.Tensor | None:
    from safetensors.torch import load_file

    try:
        tensor = load_file(str(path))["embeddings"]
    except Exception:  # a damaged cache file is recomputed, never trusted
        return None
    return tensor if tensor.shape[0] == count else None


def reference_embeddings(embedder: Embedder, paths: Sequence[Path]) -> Embeddings:
    """Embeddings of the reference images, read from the cache where possible and stored after."""
    paths = [Path(p) for p in paths]
    hashes = [file_sha256(p) for p in paths]
    found: dict[str, torch.Tensor] = {}
    for backbone in (embedder.clip, embedder.dino):
        path = cache_path(backbone, hashes)
        cached = _read(path, len(paths)) if path.is_file() else None
        if cached is not None:
            found[backbone.kind] = cached
    if len(found) == 2:
        return Embeddings(found["clip"], found["dino"])
    missing = [b for b in (embedder.clip, embedder.dino) if b.kind not in found]
    images = [load_image(p) for p in paths]
    for backbone in missing:
        rows = [backbone.embed_images(images[i : i + embedder.batch_size]) for i in range(0, len(images), embedder.batch_size)]
        found[backbone.kind] = torch.cat(rows)
        metadata = {"backbone": backbone.fingerprint, "files": json.dumps([p.name for p in paths]), "sha256": json.dumps(hashes)}
        try:
            save_safetensors({"embeddings": found[backbone.kind]}, cache_path(backbone, hashes), metadata)
        except OSError:
            pass  # a read-only data dir only costs the next run the same work
    return Embeddings(found["clip"], found["dino"])
