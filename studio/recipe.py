"""The full recipe of one generated image, recorded in its PNG and read back to make it again.

A recipe is plain JSON: the base (and the inpainting or instruction-tuned base), each adapter and its
weight, the prompt or instruction, seed, steps, guidance, size, strength, the ControlNet with its control
image, type and strength, the mask, plus the device and precision it was made with. Input images (start
image, mask, control image) are recorded by path and by the SHA-256 of their content: a recipe replays only
with the very same inputs, and says which one is missing or changed. Same recipe, same device and precision:
the same pixels.

It is stored as the PNG text chunk ``parameters`` (where webuis keep theirs), so ``studio generate
--recipe IMAGE.png`` regenerates an image from the image alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image

from studio.errors import StudioError

RECIPE_VERSION = 1
PNG_KEY = "parameters"


def image_ref(image: Any) -> dict[str, Any] | None:
    """``{"path", "sha256"}`` of an input image: the file's bytes, or a PIL image's pixels (no path)."""
    if image is None:
        return None
    if isinstance(image, Image.Image):
        digest = hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()
        return {"path": None, "sha256": digest}
    path = Path(image).expanduser().resolve()
    return {"path": str(path), "sha256": _file_sha256(path)}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _resolve_ref(ref: dict[str, Any] | None, what: str) -> str | None:
    """The recorded input image's path, once its content is checked against the recorded hash."""
    if ref is None:
        return None
    path = ref.get("path")
    if not path:
        raise StudioError(f"The recipe's {what} was given as an image in memory, not a file, so it cannot be replayed "
                          "from the recipe alone.")
    if not Path(path).is_file():
        raise StudioError(f"The recipe's {what} {path} is missing; it is needed to make the image again.")
    if _file_sha256(Path(path)) != ref.get("sha256"):
        raise StudioError(f"The recipe's {what} {path} has changed since the image was made (its SHA-256 differs), "
                          "so the same image cannot be made from it.")
    return path


def make_recipe(base: str, request: Any, adapters: list[Any], *, seed: int, size: tuple[int, int], mode: str,
                allow_pickle: bool, device: str, dtype: str) -> dict[str, Any]:
    """The recipe of one image (``request`` is a :class:`studio.generate.GenerationRequest`)."""
    control = request.control
    return {
        "studio_recipe": RECIPE_VERSION,
        "mode": mode,
        "base": base,
        "inpaint_base": request.inpaint_base,
        "instruct_base": request.instruct_base,
        "adapters": [{"path": str(Path(a.path).expanduser().resolve()), "weight": float(a.weight)} for a in adapters],
        "prompt": request.prompt,
        "negative": request.negative_prompt,
        "instruction": request.instruction,
        "seed": int(seed),
        "steps": int(request.steps),
        "guidance": float(request.guidance),
        "width": int(size[0]),
        "height": int(size[1]),
        "init_image": image_ref(request.init_image),
        "strength": float(request.effective_strength()),
        "mask": image_ref(request.mask),
        "keep_outside": bool(request.keep_outside),
        "control": None if control is None else asdict(control) | {"image": image_ref(control.image)},
        "image_guidance": float(request.image_guidance),
        "allow_pickle": bool(allow_pickle),
        "device": device,
        "dtype": dtype,
    }


def read_recipe(source: str | Path) -> dict[str, Any]:
    """The recipe in a generated PNG (its ``parameters`` text) or in a ``.json`` file."""
    path = Path(source).expanduser()
    try:
        if path.suffix.lower() == ".json":
            text = path.read_text()
        else:
            with Image.open(path) as image:
                text = getattr(image, "text", {}).get(PNG_KEY) or image.info.get(PNG_KEY)
    except (OSError, ValueError) as error:
        raise StudioError(f"--recipe {path} cannot be read ({error}).") from error
    try:
        recipe = json.loads(text) if text else None
    except ValueError:
        recipe = None
    if not isinstance(recipe, dict) or recipe.get("studio_recipe") != RECIPE_VERSION:
        raise StudioError(f"--recipe {path} holds no Studio recipe (images made by `studio generate` or the Generate "
                          "tab carry one in their PNG text).")
    return recipe


def request_from_recipe(recipe: dict[str, Any]) -> tuple[str, Any, list[Any], bool]:
    """``(base, request, adapters, allow_pickle)`` that make the recipe's image again."""
    from studio.control import ControlSpec
    from studio.generate import AdapterRef, GenerationRequest

    control = recipe.get("control")
    spec = None
    if control:
        spec = ControlSpec(**{**control, "image": _resolve_ref(control.get("image"), "control image")})
    request = GenerationRequest(
        prompt=recipe.get("prompt") or "", negative_prompt=recipe.get("negative"), guidance=recipe["guidance"],
        steps=recipe["steps"], seed=recipe["seed"], width=recipe["width"], height=recipe["height"],
        init_image=_resolve_ref(recipe.get("init_image"), "start image"), strength=recipe.get("strength"),
        mask=_resolve_ref(recipe.get("mask"), "mask"), keep_outside=recipe.get("keep_outside", True),
        inpaint_base=recipe.get("inpaint_base"), control=spec, instruction=recipe.get("instruction"),
        instruct_base=recipe.get("instruct_base"), image_guidance=recipe.get("image_guidance", 1.5),
    )
    adapters = [AdapterRef(a["path"], float(a["weight"])) for a in recipe.get("adapters", [])]
    return recipe["base"], request, adapters, bool(recipe.get("allow_pickle"))
