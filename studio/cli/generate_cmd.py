"""``studio generate``: images from a base model plus adapters (run dirs or exported files of any format):
txt2img, img2img, inpainting (--mask), ControlNet (--control) and instruction edits (--instruction), or
again from an image's recorded recipe (--recipe)."""

from __future__ import annotations

import argparse

from studio import limits
from studio.control import PREPROCESSORS, ControlSpec
from studio.errors import StudioError
from studio.generate import AdapterRef, GenerationRequest, Generator, check_request, infer_base
from studio.generation_images import output_paths, save_image
from studio.sampling import (
    CANNY_HIGH,
    CANNY_LOW,
    CONTROL_STRENGTH,
    GUIDANCE,
    IMAGE_GUIDANCE,
    IMG2IMG_STRENGTH,
    INPAINT_STRENGTH,
    STEPS,
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="Generate images with a base model and LoRAs / embeddings (txt2img, img2img, inpainting, ControlNet, "
        "instruction edits).",
        description="Adapters are run directories or exported files: diffusers or kohya/webui LoRA files, PEFT "
        "folders, diffusers or A1111 embeddings. A DreamBooth run directory can be the --base. Every PNG records "
        "its full recipe; --recipe IMAGE.png makes the same image again.",
    )
    parser.add_argument("--base", default=None,
                        help="Base model: built-in name, diffusers folder, .safetensors checkpoint, hub id, or a "
                        "DreamBooth run dir (default: the base of the first adapter run dir).")
    parser.add_argument("--adapter", "-a", action="append", default=[], metavar="PATH[:WEIGHT]",
                        help="A LoRA or embedding; repeat to compose several (LoRA weight default 1).")
    parser.add_argument("--prompt", "-p", default=None, help="What to generate (use the subject's token).")
    parser.add_argument("--negative", default=None, help="Negative prompt.")
    parser.add_argument("--guidance", type=float, default=GUIDANCE, help=f"Classifier-free guidance scale (default {GUIDANCE}).")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"Denoising steps (default {STEPS}).")
    parser.add_argument("--seed", type=int, default=None, help="Seed of the first image (image i uses seed+i).")
    parser.add_argument("--num-images", "-n", type=int, default=1,
                        help=f"How many images (default 1, at most {int(limits.NUM_IMAGES.maximum)}).")
    side = int(limits.IMAGE_SIDE.maximum)
    parser.add_argument("--width", type=int, default=None, help=f"Width in pixels (default: the model's; at most {side}).")
    parser.add_argument("--height", type=int, default=None, help=f"Height in pixels (default: the model's; at most {side}).")
    parser.add_argument("--init-image", default=None, help="Start from this image (img2img / SDEdit; what --mask or "
                        "--instruction edits).")
    parser.add_argument("--strength", type=float, default=None,
                        help=f"How much to change the start image, 0-1 (default {IMG2IMG_STRENGTH}; with --mask "
                        f"{INPAINT_STRENGTH}: the masked area is repainted from scratch).")
    inpaint = parser.add_argument_group("inpainting")
    inpaint.add_argument("--mask", default=None,
                         help="Inpaint: repaint where this image is white (or painted, in an image with transparency); "
                         "needs --init-image.")
    inpaint.add_argument("--inpaint-base", default=None,
                         help="An inpainting model (e.g. stable-diffusion-v1-5/stable-diffusion-inpainting) used "
                         "instead of the base, with the adapters on it; without it the mask blends on the base.")
    inpaint.add_argument("--keep-outside", action=argparse.BooleanOptionalAction, default=True,
                         help="Outside the mask keep the start image's own pixels (default); --no-keep-outside "
                         "returns the decoded image everywhere.")
    control = parser.add_argument_group("ControlNet")
    control.add_argument("--control", default=None, help="Control image: a photo to take canny edges from, or a "
                         "depth / pose / edge map (--control-type none).")
    control.add_argument("--controlnet", default=None,
                         help="ControlNet checkpoint for the base's family: hub id, diffusers folder, .safetensors "
                         "file or built-in name (e.g. lllyasviel/sd-controlnet-canny).")
    control.add_argument("--control-type", choices=PREPROCESSORS, default="canny",
                         help="canny: compute edges from --control (default); none: use it as given.")
    control.add_argument("--control-strength", type=float, default=CONTROL_STRENGTH,
                         help=f"How strongly the ControlNet steers, 0-2 (default {CONTROL_STRENGTH}; 0: not at all).")
    control.add_argument("--canny-low", type=float, default=CANNY_LOW, help=f"Canny low threshold (default {CANNY_LOW}).")
    control.add_argument("--canny-high", type=float, default=CANNY_HIGH, help=f"Canny high threshold (default {CANNY_HIGH}).")
    instruct = parser.add_argument_group("instruction edits")
    instruct.add_argument("--instruction", default=None,
                          help="Edit --init-image as told ('put the sks dog on the beach'), InstructPix2Pix-style; "
                          "needs an instruction-tuned base (--instruct-base or --base).")
    instruct.add_argument("--instruct-base", default=None,
                          help="Instruction-tuned base (e.g. timbrooks/instruct-pix2pix), with the adapters on it.")
    instruct.add_argument("--image-guidance", type=float, default=IMAGE_GUIDANCE,
                          help=f"How closely the edit keeps to the start image (default {IMAGE_GUIDANCE}).")
    parser.add_argument("--recipe", default=None, metavar="IMAGE_OR_JSON",
                        help="Make an image again from the recipe recorded in a generated PNG (or a .json recipe); "
                        "other generation options are then not given.")
    parser.add_argument("--out", "-o", required=True, help="An image file (.png/.jpg/.webp) or a folder.")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available).")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="Allow a pickle (.ckpt/.bin) base model; loading a pickle can run code, so only for sources you trust.")
    parser.set_defaults(func=run_generate)


def request_from_args(args: argparse.Namespace) -> GenerationRequest:
    spec = None
    if args.control is not None or args.controlnet is not None:
        spec = ControlSpec(args.controlnet or "", args.control, args.control_type, args.control_strength,
                           args.canny_low, args.canny_high)
    return GenerationRequest(
        prompt=args.prompt or "", negative_prompt=args.negative, guidance=args.guidance, steps=args.steps,
        seed=args.seed, num_images=args.num_images, width=args.width, height=args.height,
        init_image=args.init_image, strength=args.strength, mask=args.mask, keep_outside=args.keep_outside,
        inpaint_base=args.inpaint_base, control=spec, instruction=args.instruction, instruct_base=args.instruct_base,
        image_guidance=args.image_guidance,
    )


def run_generate(args: argparse.Namespace) -> int:
    if args.recipe:
        from studio.recipe import read_recipe, request_from_recipe

        if args.prompt or args.instruction or args.adapter or args.base:
            raise StudioError("--recipe replays a recorded image; give only --out (and --device) with it.")
        base, request, adapters, allow_pickle = request_from_recipe(read_recipe(args.recipe))
        allow_pickle = allow_pickle and args.allow_pickle  # a file cannot opt in for you
    else:
        adapters = [AdapterRef.parse(text) for text in args.adapter]
        request = request_from_args(args)
        allow_pickle = args.allow_pickle
        check_request(request, len(adapters), limits.CLI)  # before any model is touched
        base = args.base or infer_base(adapters)
    result = Generator(device=args.device).generate(base, request, adapters, show_progress=True, front=limits.CLI,
                                                    allow_pickle=allow_pickle)
    for image, seed, recipe, path in zip(result.images, result.seeds, result.recipes,
                                         output_paths(args.out, result.seeds), strict=True):
        save_image(image, path, recipe)
        print(f"{path}  (seed {seed})")
    if result.mode.endswith("-passthrough"):
        print("note: strength x steps < 1 denoising step, so the start image is returned unchanged.")
    return 0
