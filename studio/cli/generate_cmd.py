"""``studio generate``: images from a base model plus adapters (run dirs or exported files of any format)."""

from __future__ import annotations

import argparse

from studio import limits
from studio.generate import AdapterRef, GenerationRequest, Generator, check_request, infer_base
from studio.generation_images import output_paths, save_image
from studio.sampling import GUIDANCE, IMG2IMG_STRENGTH, STEPS


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="Generate images with a base model and LoRAs / embeddings (txt2img or img2img).",
        description="Adapters are run directories or exported files: diffusers or kohya/webui LoRA files, PEFT "
        "folders, diffusers or A1111 embeddings. A DreamBooth run directory can be the --base.",
    )
    parser.add_argument("--base", default=None,
                        help="Base model: built-in name, diffusers folder, .safetensors checkpoint, hub id, or a "
                        "DreamBooth run dir (default: the base of the first adapter run dir).")
    parser.add_argument("--adapter", "-a", action="append", default=[], metavar="PATH[:WEIGHT]",
                        help="A LoRA or embedding; repeat to compose several (LoRA weight default 1).")
    parser.add_argument("--prompt", "-p", required=True, help="What to generate (use the subject's token).")
    parser.add_argument("--negative", default=None, help="Negative prompt.")
    parser.add_argument("--guidance", type=float, default=GUIDANCE, help=f"Classifier-free guidance scale (default {GUIDANCE}).")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"Denoising steps (default {STEPS}).")
    parser.add_argument("--seed", type=int, default=None, help="Seed of the first image (image i uses seed+i).")
    parser.add_argument("--num-images", "-n", type=int, default=1,
                        help=f"How many images (default 1, at most {int(limits.NUM_IMAGES.maximum)}).")
    side = int(limits.IMAGE_SIDE.maximum)
    parser.add_argument("--width", type=int, default=None, help=f"Width in pixels (default: the model's; at most {side}).")
    parser.add_argument("--height", type=int, default=None, help=f"Height in pixels (default: the model's; at most {side}).")
    parser.add_argument("--init-image", default=None, help="Start from this image (img2img / SDEdit).")
    parser.add_argument("--strength", type=float, default=IMG2IMG_STRENGTH,
                        help=f"img2img: how much to change the init image, 0-1 (default {IMG2IMG_STRENGTH}).")
    parser.add_argument("--out", "-o", required=True, help="An image file (.png/.jpg/.webp) or a folder.")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available).")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="Allow a pickle (.ckpt/.bin) base model; loading a pickle can run code, so only for sources you trust.")
    parser.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    adapters = [AdapterRef.parse(text) for text in args.adapter]
    request = GenerationRequest(
        prompt=args.prompt, negative_prompt=args.negative, guidance=args.guidance, steps=args.steps,
        seed=args.seed, num_images=args.num_images, width=args.width, height=args.height,
        init_image=args.init_image, strength=args.strength,
    )
    check_request(request, len(adapters), limits.CLI)  # before any model is touched
    base = args.base or infer_base(adapters)
    result = Generator(device=args.device).generate(base, request, adapters, show_progress=True, front=limits.CLI,
                                                    allow_pickle=args.allow_pickle)
    parameters = {"base": base, "adapters": [f"{a.path}:{a.weight}" for a in adapters], "prompt": args.prompt,
                  "negative": args.negative, "guidance": args.guidance, "steps": args.steps, "mode": result.mode}
    for image, seed, path in zip(result.images, result.seeds, output_paths(args.out, result.seeds), strict=True):
        save_image(image, path, parameters | {"seed": seed})
        print(f"{path}  (seed {seed})")
    if result.mode == "img2img-passthrough":
        print("note: strength x steps < 1 denoising step, so the init image is returned unchanged.")
    return 0
