"""One declaration per training setting.

Each field of :class:`TrainConfig` is declared once, with its type, default, allowed values or range,
help text and group (basic/advanced). YAML recipes, ``--set key=value`` overrides, the CLI and the web
UI's widgets are all generated from these declarations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from studio.methods import ADAPTER_TYPE_NAMES, METHOD_NAMES
from studio.sampling import GUIDANCE

BASIC = "basic"
ADVANCED = "advanced"

METHODS = METHOD_NAMES  # described once in studio.methods


def setting(
    default: Any,
    help: str,
    *,
    group: str = ADVANCED,
    choices: tuple[Any, ...] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    methods: tuple[str, ...] = METHODS,
    nullable: bool = False,
):
    """Declare a setting: a dataclass field carrying its metadata."""
    metadata = {
        "help": help,
        "group": group,
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "methods": methods,
        "nullable": nullable,
    }
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything a training run needs to be reproduced. Saved as the run's ``config.yaml``."""

    method: str = setting("lora", "What trains: LoRA adapters, the whole UNet (DreamBooth) or new token embeddings.", group=BASIC, choices=METHODS)
    base: str = setting("tiny-sd", "Base model: a built-in name, a diffusers folder, a .safetensors checkpoint or a hub id.", group=BASIC)
    base_config: str | None = setting(None, "For a single-file .safetensors base: a diffusers folder (or hub id) of the same architecture whose configs and tokenizers describe the file. Needed offline, where diffusers cannot fetch them; ignored for other bases.", nullable=True)
    resolution: int = setting(512, "Training resolution in pixels (a multiple of 8).", group=BASIC, minimum=8, maximum=4096)
    steps: int = setting(800, "Optimizer steps.", group=BASIC, minimum=1, maximum=1_000_000)
    batch_size: int = setting(1, "Instance images per step (class images are added on top with prior preservation).", group=BASIC, minimum=1, maximum=256)
    gradient_accumulation_steps: int = setting(1, "Micro-batches accumulated per optimizer step.", minimum=1, maximum=1024)
    learning_rate: float = setting(1e-4, "Learning rate of the UNet / LoRA / embedding parameters.", group=BASIC, minimum=0.0, maximum=1.0)
    text_encoder_learning_rate: float | None = setting(None, "Learning rate of the text encoder when it trains (empty: same as learning_rate).", minimum=0.0, maximum=1.0, nullable=True)
    lr_scheduler: str = setting("constant", "Learning-rate schedule.", choices=("constant", "constant_with_warmup", "linear", "cosine"))
    lr_warmup_steps: int = setting(0, "Warm-up steps of the learning-rate schedule.", minimum=0, maximum=1_000_000)
    optimizer: str = setting("adamw", "Optimizer; adamw8bit (bitsandbytes) keeps its state in 8 bits and saves memory; prodigy (prodigyopt) estimates the step size itself: set learning_rate 1.0; schedulefree_adamw (schedulefree) needs no decaying schedule: lr_scheduler constant, its warm-up is lr_warmup_steps.", group=BASIC, choices=("adamw", "adamw8bit", "prodigy", "schedulefree_adamw"))
    prodigy_d_coef: float = setting(1.0, "Prodigy: multiplier of its estimated step size (below 1 for gentler steps).", minimum=0.0, maximum=100.0)
    ema_decay: float = setting(0.0, "Keep an exponential moving average (EMA) of the trained weights with this decay per step (0: off; 0.999 is usual for long runs, 0.99 for short ones).", minimum=0.0, maximum=0.999999)
    ema_on_cpu: bool = setting(True, "Hold the EMA copy in CPU memory (no accelerator memory; it is updated every step from the device).")
    ema_weights: str = setting("ema", "With EMA on: which weights samples, validation and the run's result use (the other set is saved beside the result as RUN/<artifact>-raw or -ema, and export can take either).", choices=("ema", "raw"))
    weight_decay: float = setting(1e-2, "AdamW weight decay (textual inversion uses 0 on its embedding rows).", minimum=0.0, maximum=1.0)
    max_grad_norm: float = setting(1.0, "Gradient clipping norm (0 disables).", minimum=0.0, maximum=1e6)
    gradient_checkpointing: bool = setting(False, "Recompute activations in the backward pass: much less memory, about 20-30% slower.", group=BASIC)
    mixed_precision: str = setting("no", "Mixed precision on GPU (bf16 or fp16); CPU runs use fp32.", choices=("no", "fp16", "bf16"))
    frozen_weights_dtype: str = setting("auto", "Precision of weights that do not train (auto: bf16/fp16 with mixed precision, else fp32).", choices=("auto", "fp32", "bf16", "fp16"))
    base_quantization: str = setting("none", "Hold the frozen denoiser's Linear weights quantized (QLoRA): int8 (bitsandbytes, about half of bf16), nf4 (bitsandbytes 4-bit NormalFloat, about a quarter) or fp8 (torch float8_e4m3fn storage, half of bf16, upcast one layer at a time to the compute precision). The adapter or new embedding rows and their optimizer stay fp32, and the result is an ordinary adapter for the unquantized base. LoRA and textual inversion.", choices=("none", "int8", "nf4", "fp8"), methods=("lora", "textual_inversion"))
    blocks_to_swap: int = setting(0, "Block swapping (Flux and SD3): keep the frozen weights of the last N transformer blocks on the CPU and copy each to the accelerator just before it runs (forward, and its recompute in the backward pass), overlapping the copy with compute; the adapter's weights stay on the accelerator. Saves N blocks' weights at the cost of PCIe copies every step. Needs gradient_checkpointing; not with base_quantization int8 (0: off).", minimum=0, maximum=1000, methods=("lora", "textual_inversion"))
    offload_activations: bool = setting(False, "With gradient_checkpointing: the inputs each checkpointed block keeps for the backward pass wait in CPU memory and come back when the backward recomputes the block (FLUX.1-dev at 1024 px: 1.5 GiB off the accelerator). Same results; costs two copies of each block's input per step.")
    memory_check: bool = setting(True, "Before any work on a GPU, predict the run's peak memory (studio/memory_plan.py) and refuse a run that will not fit, naming the settings that would make it fit.")
    prior_preservation: bool = setting(False, "DreamBooth prior-preservation loss: train on generated class images too, against language drift.", group=BASIC, methods=("lora", "dreambooth", "pivotal"))
    num_class_images: int = setting(100, "Class images generated by the base model for prior preservation (cached and reused).", minimum=1, maximum=100_000, methods=("lora", "dreambooth", "pivotal"))
    prior_loss_weight: float = setting(1.0, "Weight λ of the prior-preservation loss.", minimum=0.0, maximum=100.0, methods=("lora", "dreambooth", "pivotal"))
    class_prompt: str | None = setting(None, "Prompt for class images (empty: the subject's class prompt, e.g. 'a dog').", nullable=True, methods=("lora", "dreambooth", "pivotal"))
    class_image_steps: int = setting(25, "Sampling steps used to generate class images.", minimum=1, maximum=1000, methods=("lora", "dreambooth", "pivotal"))
    class_image_guidance: float = setting(GUIDANCE, "Guidance scale used to generate class images.", minimum=0.0, maximum=50.0, methods=("lora", "dreambooth", "pivotal"))
    lora_rank: int = setting(4, "LoRA rank (dimension of the low-rank update).", group=BASIC, minimum=1, maximum=1024, methods=("lora", "pivotal"))
    lora_alpha: float = setting(4.0, "LoRA alpha; the update is scaled by alpha / rank.", minimum=0.0, maximum=4096.0, methods=("lora", "pivotal"))
    lora_target_modules: list[str] = setting(["to_q", "to_k", "to_v", "to_out.0"], "UNet modules that get LoRA adapters (attention projections by default).", methods=("lora", "pivotal"))
    lora_text_encoder_target_modules: list[str] = setting(["q_proj", "k_proj", "v_proj", "out_proj"], "Text-encoder modules that get LoRA adapters when the text encoder trains.", methods=("lora",))
    lora_dropout: float = setting(0.0, "Dropout on the LoRA path.", minimum=0.0, maximum=1.0, methods=("lora", "pivotal"))
    adapter_type: str = setting("lora", "Kind of low-rank adapter: lora; dora (LoRA plus a trained magnitude per output, DoRA); lokr (Kronecker product of two factors, LoKr); loha (Hadamard product of two low-rank pairs, LoHa). lora_rank, lora_alpha and the target modules apply to each.", group=BASIC, choices=ADAPTER_TYPE_NAMES, methods=("lora",))
    lokr_factor: int = setting(-1, "LoKr: size of the first Kronecker factor (-1: the most balanced split of each layer's dimensions).", minimum=-1, maximum=4096, methods=("lora",))
    train_text_encoder: bool = setting(False, "Also train the text encoder (LoRA on it, or full for DreamBooth).", group=BASIC, methods=("lora", "dreambooth"))
    num_vectors: int = setting(1, "Embedding vectors per placeholder token.", group=BASIC, minimum=1, maximum=75, methods=("textual_inversion", "pivotal"))
    initializer_token: str = setting("", "Word the new embedding starts from (empty: the subject's class noun).", methods=("textual_inversion", "pivotal"))
    embedding_learning_rate: float = setting(5e-4, "Pivotal tuning: learning rate of the new token's embedding rows (the LoRA trains at learning_rate).", minimum=0.0, maximum=1.0, methods=("pivotal",))
    embedding_stop_step: int = setting(0, "Pivotal tuning: the token's embedding trains for the first N steps and then stays fixed while the LoRA trains on (0: it trains to the end).", minimum=0, maximum=1_000_000, methods=("pivotal",))
    min_snr_gamma: float = setting(0.0, "Min-SNR-γ loss weighting (0 disables; 5 is the paper's value).", minimum=0.0, maximum=100.0)
    noise_offset: float = setting(0.0, "Offset noise strength (0 disables; about 0.05 helps very dark/bright images).", minimum=0.0, maximum=1.0)
    random_flip: bool = setting(False, "Random horizontal flips (the latent cache then holds both orientations).")
    aspect_ratio_buckets: bool = setting(True, "Train photos prepared with crop=bucket at their own shape, each in its aspect-ratio bucket of about resolution² pixels (one bucket per batch); off: center-crop every photo square.")
    captions: bool = setting(True, "Train each photo on its own caption when the subject has captions (photos without one use the instance prompt); off: the instance prompt for every photo.")
    caption_dropout: float = setting(0.0, "Share of instance examples whose caption is replaced, drawn per example and step (0: never).", minimum=0.0, maximum=1.0)
    caption_dropout_to: str = setting("instance_prompt", "What a dropped caption becomes: the subject's instance prompt (keeps the identifier) or the empty prompt (unconditional, as kohya's caption_dropout_rate).", choices=("instance_prompt", "empty"))
    masked_loss: bool = setting(True, "Weight the loss by the subject's masks when it has them (photos without a mask weigh 1 everywhere).")
    mask_background_weight: float = setting(0.1, "Loss weight of the background (mask black) relative to the subject (mask white, weight 1); 1 ignores the masks, 0 trains on the subject alone.", minimum=0.0, maximum=1.0)
    cache_latents: bool = setting(True, "Encode each training image with the VAE once, then free the VAE from training memory.")
    cache_text_embeddings: bool = setting(True, "Encode prompts once when the text encoder is frozen, then free it from training memory.")
    torch_compile: bool = setting(False, "Compile the UNet with torch.compile (slow first step, faster after; GPU).")
    seed: int = setting(42, "Seed for initialisation, noise, data order and samples.", minimum=0, maximum=2**32 - 1)
    checkpoint_every: int = setting(200, "Save a resumable checkpoint every N steps (0: only at the end).", minimum=0, maximum=1_000_000)
    checkpoints_to_keep: int = setting(2, "Keep the last K checkpoints.", minimum=1, maximum=1000)
    sample_every: int = setting(200, "Render validation samples every N steps, and at step 0 (0: never).", minimum=0, maximum=1_000_000)
    sample_prompts: list[str] = setting([], "Validation prompts (empty: the instance prompt and a prompt in a new context).")
    sample_steps: int = setting(25, "Sampling steps for validation samples.", minimum=1, maximum=1000)
    sample_guidance: float = setting(GUIDANCE, "Classifier-free guidance scale of validation samples.", minimum=0.0, maximum=50.0)
    log_every: int = setting(1, "Write a step event every N steps (loss is read from the device only then).", minimum=1, maximum=100_000)
    validation: bool = setting(True, "Score the model while it trains, at every checkpoint (and every validation_every steps), at step 0 (the untrained base) and at the end: validation loss with fixed noise, and a quick subject score (CLIP-I, DINO, CLIP-T, PRES). The best checkpoint is chosen from them. Runs only when there is something to choose from (checkpoint_every or validation_every set).", group=BASIC)
    validation_every: int = setting(0, "Also validate every N steps between checkpoints (0: at checkpoints only). Best-checkpoint candidates are steps that have a checkpoint, and the end.", minimum=0, maximum=1_000_000)
    validation_prompts: int = setting(2, "Prompts of the quick subject score: the instance prompt, then DreamBench templates for the class.", minimum=1, maximum=25)
    validation_images_per_prompt: int = setting(1, "Images per validation prompt (seeds 0, 1, ...; the same at every validation).", minimum=1, maximum=16)
    validation_steps: int = setting(20, "Sampling steps of the quick subject score's images.", minimum=1, maximum=1000)
    validation_budget: float = setting(0.15, "Most of the training time validation may take (0.15 = 15%). After step 0, a quick subject score runs only while all validation so far, plus it, stays within this share of the training time so far; otherwise that validation records the loss alone and says why.", minimum=0.0, maximum=100.0)
    validation_clip: str = setting("auto", "CLIP backbone of the quick subject score: auto (openai/clip-vit-base-patch32 when it can be loaded, else the built-in tiny-clip), a Hub id, a folder or tiny-clip.")
    validation_dino: str = setting("auto", "DINO backbone of the quick subject score: auto (facebook/dino-vits16 when it can be loaded, else the built-in tiny-dino), a Hub id, a folder or tiny-dino.")
    best_checkpoint_metric: str = setting("dino", "Score the best checkpoint maximises (among checkpoints whose CLIP-T stays within best_checkpoint_clip_t_margin of the base's); validation_loss: the lowest instance validation loss.", choices=("dino", "clip_i", "validation_loss"))
    best_checkpoint_clip_t_margin: float = setting(0.02, "How far CLIP-T may fall below the untrained base's before a checkpoint is no longer a candidate for best.", minimum=0.0, maximum=2.0)
    early_stop_patience: int = setting(0, "End training when the best checkpoint's score has not improved for K validations (0: never stop early).", minimum=0, maximum=10_000)
    overfit_clip_t_drop: float = setting(0.03, "Flag overfitting when CLIP-T falls this far below its best while DINO is still rising.", minimum=0.0, maximum=2.0)
    overfit_pres_rise: float = setting(0.05, "Flag overfitting when PRES (class images looking like the subject) rises this far above the base's while DINO is still rising.", minimum=0.0, maximum=2.0)
    report_to: str = setting("none", "Also log losses and scores to TensorBoard (RUN/tensorboard) or Weights & Biases through Accelerate's trackers; needs the tensorboard or wandb package.", choices=("none", "tensorboard", "wandb", "all"))
    allow_pickle: bool = setting(False, "Allow pickle files (.ckpt, .bin, .pt) as the base model or VAE. Loading a pickle can run arbitrary code: only for files whose source you trust; prefer .safetensors.")
    vae: str | None = setting(None, "VAE to use instead of the base model's (empty: its own): a VAE folder, .safetensors file or hub id. For SDXL in fp16 use madebyollin/sdxl-vae-fp16-fix (SDXL's own VAE overflows in fp16 and is kept in fp32).", nullable=True)


def declarations() -> list[dataclasses.Field]:
    """Every setting's declaration, in declaration order."""
    return list(dataclasses.fields(TrainConfig))


def declaration(name: str) -> dataclasses.Field:
    for item in declarations():
        if item.name == name:
            return item
    raise KeyError(name)


def default_value(item: dataclasses.Field) -> Any:
    if item.default is not dataclasses.MISSING:
        return item.default
    return item.default_factory()  # type: ignore[misc]
