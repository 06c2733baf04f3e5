"""Sampler defaults shared by generation, the playground, evaluation and export checks, declared once.

Importable without torch: the CLI builds its parsers and the web UI its widgets from these.
"""

GUIDANCE = 7.5  # classifier-free guidance scale (SD1.x's usual value)
STEPS = 30  # denoising steps for generation and evaluation
PLAYGROUND_STEPS = 25  # interactive: with the base-model comparison every request renders twice
IMG2IMG_STRENGTH = 0.6  # how far img2img moves from the start image (1: ignore it)
INPAINT_STRENGTH = 1.0  # inpainting: repaint the masked area from noise (below 1: start from what is there)
CONTROL_STRENGTH = 1.0  # ControlNet conditioning scale (0: the control image has no effect)
IMAGE_GUIDANCE = 1.5  # instruction edits: how closely to keep to the input image (InstructPix2Pix's default)
CANNY_LOW, CANNY_HIGH = 100, 200  # canny hysteresis thresholds, as ControlNet's canny annotator uses them
