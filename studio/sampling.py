"""Sampler defaults shared by generation, the playground, evaluation and export checks, declared once.

Importable without torch: the CLI builds its parsers and the web UI its widgets from these.
"""

GUIDANCE = 7.5  # classifier-free guidance scale (SD1.x's usual value)
STEPS = 30  # denoising steps for generation and evaluation
PLAYGROUND_STEPS = 25  # interactive: with the base-model comparison every request renders twice
IMG2IMG_STRENGTH = 0.6  # how far img2img moves from the start image (1: ignore it)
