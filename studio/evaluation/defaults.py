"""Default backbone ids, importable without torch (the CLI builds its parser from them)."""

# The paper names DINO ViT-S/16 but not its CLIP; follow-up code uses CLIP ViT-B/32.
DEFAULT_CLIP = "openai/clip-vit-base-patch32"
DEFAULT_DINO = "facebook/dino-vits16"

# The protocol's own defaults (the sampler's come from studio.sampling).
IMAGES_PER_PROMPT = 4
GENERATION_BATCH_SIZE = 4
