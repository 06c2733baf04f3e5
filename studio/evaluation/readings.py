"""What each score means, in one line, and where the scores come from: torch-free, for every front.

The paper's figures are DreamBench's (the DreamBooth paper, Ruiz et al. 2023; see docs/evaluation.md):
they hold for the real backbones only, so a report scored with Studio's built-in offline backbones
carries a badge saying its numbers compare runs on this machine and nothing else.
"""

from __future__ import annotations

from typing import Any

READINGS = {
    "clip_i": ("CLIP-I", "how alike the generated images and your photos look to CLIP (cosine, higher is closer)",
               "paper, real CLIP: DreamBooth on Stable Diffusion 0.803, real photos against each other 0.885"),
    "clip_t": ("CLIP-T", "how well the images follow their prompts (cosine of image and prompt text, higher is better)",
               "paper, real CLIP: DreamBooth on Stable Diffusion 0.305, textual inversion 0.255"),
    "dino": ("DINO", "how alike the subject looks to DINO, which tells instances apart better than CLIP (higher is closer)",
             "paper, real DINO: DreamBooth on Stable Diffusion 0.668, real photos against each other 0.774"),
    "pres": ("PRES", "how much plain class images now look like your subject (lower is better: the class is kept)",
             "paper (Imagen): 0.493 with prior preservation, 0.664 without"),
    "div": ("DIV", "how different images of one prompt are from each other (higher is more varied)",
            "paper (Imagen, LPIPS): 0.391 with prior preservation; Studio measures 1 - DINO cosine instead"),
}
SCALE = "cosine similarity, from -1 to 1"
BUILTIN_SOURCE = "builtin"


def reading_lines(metrics: tuple[str, ...] = tuple(READINGS)) -> list[str]:
    """``CLIP-I: what it means. Paper: ...`` for each metric."""
    return [f"{READINGS[m][0]}: {READINGS[m][1]}. {READINGS[m][2][0].upper()}{READINGS[m][2][1:]}." for m in metrics]


def builtin_backbones(report: dict[str, Any] | None) -> list[str]:
    """The backbones of a report that are Studio's built-in offline ones (e.g. ``["tiny-clip"]``)."""
    backbones = (report or {}).get("backbones") or {}
    return [str(b.get("ref")) for b in backbones.values() if isinstance(b, dict) and b.get("source") == BUILTIN_SOURCE]


def backbone_badge(report: dict[str, Any] | None) -> str:
    """One plain sentence on where the numbers come from ("" for real backbones)."""
    builtin = builtin_backbones(report)
    if not builtin:
        return ""
    return (f"Scored with the built-in offline backbones ({', '.join(builtin)}), not real CLIP and DINO: the numbers "
            "compare runs on this machine with each other, and cannot be compared with the paper's figures. "
            "Choose real backbones in the evaluation settings for scores that mean what the paper's do.")
