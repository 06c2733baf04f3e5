"""``tiny-blip`` (an image captioner) and ``tiny-clipseg`` (a text-prompted segmenter), for offline tests.

Each is the real transformers class (``BlipForConditionalGeneration`` with a BERT WordPiece tokenizer,
``CLIPSegForImageSegmentation`` with CLIP's tokenizer), tiny and randomly initialised, saved as an
ordinary folder that ``from_pretrained`` loads exactly like ``Salesforce/blip-image-captioning-base`` or
``CIDAS/clipseg-rd64-refined``. Their captions and masks are deterministic but mean nothing: they prove
the code path, not the quality.
"""

from __future__ import annotations

from pathlib import Path

import torch

from studio.models.builtin import BuiltinModel, register
from studio.models.tiny_backbones import _quiet_image_processor
from studio.models.tokenizer import write_clip_tokenizer

IMAGE_SIZE = 64
WORDS = ("a", "photo", "of", "dog", "cat", "toy", "on", "the", "grass", "beach", "table", "red", "blue", "small",
         "sitting", "in", "front", "with", "and", "white", "brown", "park", "room", "wooden")


def build_tiny_blip(directory: Path) -> None:
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *WORDS]
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}, do_lower_case=True, bos_token="[DEC]",
                              model_max_length=40)
    text = {"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "encoder_hidden_size": 32, "max_position_embeddings": 64,
            "bos_token_id": vocab.index("[DEC]"), "pad_token_id": 0, "sep_token_id": vocab.index("[SEP]"),
            "eos_token_id": vocab.index("[SEP]")}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": IMAGE_SIZE, "patch_size": 16}
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=16)
    torch.manual_seed(21)
    model = BlipForConditionalGeneration(config).eval()
    with torch.no_grad():  # never emit a special token: the captions are words (and stop at the length limit)
        model.text_decoder.cls.predictions.bias[: vocab.index("[DEC]") + 1] = -1e4
    model.generation_config.max_new_tokens = 12
    model.save_pretrained(str(directory), safe_serialization=True)
    image_processor = _quiet_image_processor("BlipImageProcessor", size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(directory))


def build_tiny_clipseg(directory: Path) -> None:
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, CLIPTokenizer

    text = {"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 77}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
              "image_size": IMAGE_SIZE, "patch_size": 16}
    config = CLIPSegConfig(text_config=text, vision_config=vision, projection_dim=16, reduce_dim=16,
                           extract_layers=[1, 2], decoder_num_attention_heads=4, decoder_intermediate_size=32)
    torch.manual_seed(22)
    model = CLIPSegForImageSegmentation(config).eval()
    model.save_pretrained(str(directory), safe_serialization=True)
    write_clip_tokenizer(directory)
    image_processor = _quiet_image_processor("ViTImageProcessor", size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    CLIPSegProcessor(image_processor=image_processor, tokenizer=CLIPTokenizer.from_pretrained(str(directory))).save_pretrained(str(directory))


register(BuiltinModel(name="tiny-blip", kind="captioner", version="4", build=build_tiny_blip,
                      description="BLIP captioning architecture, tiny and random: deterministic captions that mean nothing "
                                  "(tests the automatic-caption path offline)."))
register(BuiltinModel(name="tiny-clipseg", kind="segmenter", version="1", build=build_tiny_clipseg,
                      description="CLIPSeg architecture, tiny and random: deterministic masks that mean nothing "
                                  "(tests the automatic-mask path offline)."))
