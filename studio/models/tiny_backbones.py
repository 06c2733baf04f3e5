"""``tiny-clip`` and ``tiny-dino``: the evaluation backbones' architectures, shrunk, for offline use.

Each is the real transformers class (``CLIPModel`` with CLIP's tokenizer and vocabulary,
``ViTModel`` shaped like DINO ViT-S/16), saved as an ordinary folder that ``from_pretrained`` loads
exactly like ``openai/clip-vit-base-patch32`` or ``facebook/dino-vits16``. Their image towers are
*constructed* (see :mod:`studio.models.constructed_vision`): fixed colour, edge and texture filters,
pooled per image region, so their image cosine follows what images look like (colour, layout,
texture). They know nothing of objects or identity, and ``tiny-clip``'s text tower is random: its
CLIP-T is deterministic but says nothing about whether an image follows its prompt.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from studio.models.builtin import BuiltinModel, register
from studio.models.constructed_vision import construct_clip_vision, construct_vit
from studio.models.tokenizer import CLIP_MAX_LENGTH, CLIP_VOCAB_SIZE, write_clip_tokenizer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 224
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, the value image-processor configs store
CLIP_GRID = 2  # tiny-clip pools colour over 2 x 2 image regions (7 x 7 patches of 32 px)
DINO_GRID = 3  # tiny-dino over 3 x 3 (14 x 14 patches of 16 px): finer layout, as DINO is the stricter score


def _quiet_image_processor(cls_name: str, **kwargs):
    """An image-processor config object; its torchvision-missing fallback notice is expected here.

    Only the saved config matters (other tools read it); Studio preprocesses explicitly.
    """
    import transformers
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return getattr(transformers, cls_name)(**kwargs)
    finally:
        hf_logging.set_verbosity(level)


def build_tiny_clip(directory: Path) -> None:
    """Write a CLIPModel folder with tokenizer and CLIP image-processor config (a CLIPProcessor folder)."""
    from transformers import CLIPConfig, CLIPModel

    text = {
        "vocab_size": CLIP_VOCAB_SIZE,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": CLIP_MAX_LENGTH,
        "hidden_act": "quick_gelu",
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }
    vision = {
        "hidden_size": 64,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": IMAGE_SIZE,
        "patch_size": 32,
        "hidden_act": "quick_gelu",
    }
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        model = CLIPModel(config).eval()
    construct_clip_vision(model, grid=CLIP_GRID)
    model.save_pretrained(str(directory), safe_serialization=True)
    write_clip_tokenizer(directory)
    processor = _quiet_image_processor(
        "CLIPImageProcessor",
        do_resize=True,
        size={"shortest_edge": IMAGE_SIZE},
        resample=BICUBIC,
        do_center_crop=True,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_normalize=True,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        do_convert_rgb=True,
    )
    processor.save_pretrained(str(directory))


def build_tiny_dino(directory: Path) -> None:
    """Write a ViTModel folder shaped like DINO ViT-S/16 (patch 16, 224 px), narrower and shallower."""
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=16,
        hidden_size=96,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=192,
        qkv_bias=True,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12)
        model = ViTModel(config, add_pooling_layer=False).eval()
    construct_vit(model, grid=DINO_GRID)
    model.save_pretrained(str(directory), safe_serialization=True)
    processor = _quiet_image_processor(
        "ViTImageProcessor",
        do_resize=True,
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        resample=BICUBIC,
        do_normalize=True,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )
    processor.save_pretrained(str(directory))


register(
    BuiltinModel(
        name="tiny-clip",
        kind="clip",
        description="CLIP architecture (ViT-B/32 layout), tiny; constructed colour/edge/texture image tower, "
        "random text tower: offline CLIP-I (CLIP-T runs but is not meaningful).",
        version="2",
        build=build_tiny_clip,
    )
)
register(
    BuiltinModel(
        name="tiny-dino",
        kind="dino",
        description="DINO ViT-S/16 layout, tiny, constructed colour-layout/edge/texture weights: offline DINO/PRES/DIV.",
        version="2",
        build=build_tiny_dino,
    )
)
