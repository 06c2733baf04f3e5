"""A VAE that replaces the base model's own (the ``vae`` setting).

Why: SDXL's VAE overflows in float16 (its config says ``force_upcast``), so in fp16 it must run in
fp32, which costs memory and time. A VAE fine-tuned to stay in range, such as
``madebyollin/sdxl-vae-fp16-fix``, decodes the same latents and can run in fp16. Any AutoencoderKL
with the base model's latent layout works.

A reference is a diffusers VAE folder (``config.json`` + weights), a pipeline folder or built-in
whose ``vae/`` is used, a hub id (a bare VAE repo, or a pipeline repo's ``vae`` subfolder) or a
single ``.safetensors`` file in the original layout.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

from studio.errors import ModelLoadError


def _vae_folder(folder: Path) -> Path | None:
    for candidate in (folder, folder / "vae"):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def load_vae(ref: str, *, torch_dtype=None, allow_pickle: bool = False, config_folder: Path | None = None) -> Any:
    """Load the AutoencoderKL named by ``ref``; ``config_folder`` (the base model's folder) gives a
    single file its configuration offline."""
    from diffusers import AutoencoderKL

    from studio.models.builtin import builtin_path, is_builtin
    from studio.models.loader import HUB_ID, refuse_pickle

    kwargs: dict[str, Any] = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
    path = Path(ref).expanduser()
    if is_builtin(ref) or path.is_dir():
        root = builtin_path(ref) if is_builtin(ref) else path
        folder = _vae_folder(root)
        if folder is None:
            raise ModelLoadError(f"vae: {root} has no VAE (no config.json there or in vae/); give a diffusers VAE folder.")
        return AutoencoderKL.from_pretrained(str(folder), use_safetensors=None if allow_pickle else True, **kwargs)
    if path.is_file():
        refuse_pickle(path, allow_pickle)
        if config_folder is not None and (Path(config_folder) / "vae" / "config.json").is_file():
            kwargs |= {"config": str(config_folder), "subfolder": "vae"}
        try:
            return AutoencoderKL.from_single_file(str(path), **kwargs)
        except Exception as error:
            raise ModelLoadError(f"vae: could not load the single-file VAE {path}: {error}") from error
    if HUB_ID.match(ref):
        errors = []
        for subfolder in (None, "vae"):
            try:
                return AutoencoderKL.from_pretrained(ref, subfolder=subfolder, use_safetensors=None if allow_pickle else True, **kwargs)
            except Exception as error:
                errors.append(f"{type(error).__name__}: {error}")
        raise ModelLoadError(
            f"vae: could not load '{ref}' from the Hugging Face Hub ({errors[-1]}). Offline, download it first "
            "or give a local VAE folder."
        )
    raise ModelLoadError(f"vae: '{ref}' is neither a VAE folder, a .safetensors file, a built-in nor a hub id 'owner/name'.")


def replace_vae(pipeline: Any, vae: Any) -> None:
    """Put ``vae`` into ``pipeline`` in the dtype and on the device of the VAE it replaces."""
    current = getattr(pipeline, "vae", None)
    if current is not None:
        vae = vae.to(device=current.device, dtype=current.dtype)
    pipeline.register_modules(vae=vae.eval())


@contextmanager
def decode_in_fp32(vae: Any):
    """While active, a VAE whose config says ``force_upcast`` (SDXL's) decodes in its own dtype (fp32,
    where the trainer keeps such VAEs) even inside an fp16/bf16 autocast region, which would otherwise
    run its convolutions in half precision and overflow. Other VAEs are left alone."""
    if vae is None or not getattr(vae.config, "force_upcast", False):
        yield
        return
    import torch

    original = vae.decode

    def decode(latents, *args, **kwargs):
        with torch.autocast(latents.device.type, enabled=False):
            return original(latents.to(vae.dtype), *args, **kwargs)

    vae.decode = decode
    try:
        yield
    finally:
        del vae.decode
