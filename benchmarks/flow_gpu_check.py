"""Studio's own training loop on a GPU with real-width Flux.1 and SD3.5 transformers (reduced depth).

The CPU test suite runs the tiny models in fp32; this runs what only a GPU exercises: Accelerate's bf16
mixed precision, bf16 frozen weights loaded as such, gradient checkpointing, the family's ``predict``
and objective under autocast, checkpoints, resume and the saved result reloading, at 512 px with
FLUX.1-dev's / SD3.5-medium's widths (text encoders one layer deep, real widths; Flux's 16-channel VAE).
``python -m benchmarks.flow_gpu_check --out DIR`` writes ``flow_gpu_check.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

RESOLUTION = 512


def vae_16_channels(scaling: float, shift: float):
    """The 16-channel VAE layout Flux.1 and SD3.5 share (random weights)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         layers_per_block=2, scaling_factor=scaling, shift_factor=shift, use_quant_conv=False,
                         use_post_quant_conv=False)


def flux_pipeline(tokenizers_from: Path):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
        T5Tokenizer,
    )

    from benchmarks.flow_arch import FLUX_DEV
    from studio.models.tiny_flux import FLUX_DEV_SCHEDULER

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(**FLUX_DEV | {"num_layers": 2, "num_single_layers": 4})
    clip = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=1, num_attention_heads=12))
    tokenizer_2 = T5Tokenizer.from_pretrained(str(tokenizers_from / "tokenizer_2"))
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=4096, d_kv=64, d_ff=10240, num_layers=1, num_heads=64,
                                 feed_forward_proj="gated-gelu", is_encoder_decoder=False))
    vae = vae_16_channels(0.3611, 0.1159)
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_config(FLUX_DEV_SCHEDULER), vae=vae, text_encoder=clip,
                        tokenizer=CLIPTokenizer.from_pretrained(str(tokenizers_from / "tokenizer")), text_encoder_2=t5,
                        tokenizer_2=tokenizer_2, transformer=transformer)


def sd3_pipeline(tokenizers_from: Path):
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
        T5Tokenizer,
    )

    from benchmarks.flow_arch import SD35_MEDIUM

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(**SD35_MEDIUM | {"num_layers": 4, "dual_attention_layers": (0, 1)})
    clip_l = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=2,
                                                        num_attention_heads=12, projection_dim=768))
    clip_g = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=2,
                                                        num_attention_heads=20, projection_dim=1280, hidden_act="gelu"))
    tokenizer_3 = T5Tokenizer.from_pretrained(str(tokenizers_from / "tokenizer_3"))
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_3), d_model=4096, d_kv=64, d_ff=10240, num_layers=1, num_heads=64,
                                 feed_forward_proj="gated-gelu", is_encoder_decoder=False))
    vae = vae_16_channels(1.5305, 0.0609)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler.from_config({"shift": 3.0}), vae=vae,
        text_encoder=clip_l, tokenizer=CLIPTokenizer.from_pretrained(str(tokenizers_from / "tokenizer")),
        text_encoder_2=clip_g, tokenizer_2=CLIPTokenizer.from_pretrained(str(tokenizers_from / "tokenizer_2")),
        text_encoder_3=t5, tokenizer_3=tokenizer_3)


def run(name: str, build, builtin: str, method: str, subject: Path, out: Path) -> dict:
    import trainers
    from studio.config import load_config
    from studio.models import builtin_path
    from trainers import METHODS
    from trainers.base import Trainer, prepare_run_dir

    pipe = build(builtin_path(builtin))
    folder = out / f"{name}-base"
    pipe.save_pretrained(str(folder), safe_serialization=True)  # a plain folder: DreamBooth's save reloads from it
    del pipe
    values = {"method": method, "base": str(folder), "resolution": RESOLUTION, "steps": 6, "batch_size": 1,
              "learning_rate": 1e-4, "mixed_precision": "bf16", "gradient_checkpointing": True, "checkpoint_every": 3,
              "sample_every": 0, "validation": False, "log_every": 1, "lora_rank": 16, "lora_alpha": 16}
    config = load_config(None, values)
    run_dir = out / name
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    prepare_run_dir(config, subject, run_dir)
    trainer = Trainer(METHODS[method], config, run_dir, base=None)
    result = trainer.run()
    elapsed = time.perf_counter() - started
    loaded = {n: str(getattr(trainer.base.pipeline, n).dtype) for n in ("transformer", "vae") if getattr(trainer.base.pipeline, n, None) is not None}
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["type"] == "step"]
    peak = torch.cuda.max_memory_allocated() / 2**30
    # resume: a copy stopped after its first checkpoint ends where the straight run did
    resumed_dir = out / f"{name}-resumed"

    def stop(event):
        if event["type"] == "checkpoint" and event["step"] == 3:
            (resumed_dir / "cancel.request").touch()

    try:
        trainers.train(config, subject, resumed_dir, listener=stop)
    except trainers.TrainingCancelled:
        pass
    trainers.resume(resumed_dir)
    from safetensors.torch import load_file

    artifact = "adapter/pytorch_lora_weights.safetensors" if method == "lora" else "model/transformer/diffusion_pytorch_model.safetensors"
    if (run_dir / artifact).is_file():
        a, b = load_file(str(run_dir / artifact)), load_file(str(resumed_dir / artifact))
        resume_max_diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    else:
        resume_max_diff = None
    return {"name": name, "method": method, "steps": result["steps"], "losses": losses, "seconds": round(elapsed, 1),
            "peak_gib": round(peak, 2), "loaded_dtypes": loaded, "resume_max_abs_diff": resume_max_diff}


def main() -> None:
    import os

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    work = Path("/tmp/flow_gpu_check")
    os.environ.setdefault("STUDIO_DATA_DIR", str(work / "data"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.backends.cuda.enable_cudnn_sdp(False)  # see benchmarks/flow_memory.py
    from studio.subjects import prepare_subject

    images = sorted(p for p in (Path(__file__).resolve().parents[1] / "datasets" / "sample_subject").iterdir()
                    if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"})
    subject = work / "subject"
    prepare_subject(images, "sks", "toy", subject, resolution=RESOLUTION)
    rows = []
    for name, build, builtin, method in (("flux-lora", flux_pipeline, "tiny-flux", "lora"),
                                         ("sd3-lora", sd3_pipeline, "tiny-sd3", "lora"),
                                         ("sd3-dreambooth", sd3_pipeline, "tiny-sd3", "dreambooth")):
        try:
            rows.append(run(name, build, builtin, method, subject, work))
        except Exception as error:  # report and go on: one family's failure must not hide the others'
            import traceback

            rows.append({"name": name, "error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()[-2000:]})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "trace"}), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "flow_gpu_check.json").write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
