"""The one training loop, shared by every method, on Accelerate.

Data, caches, noise, loss (with prior preservation), optimizer, checkpoints and resume, samples and
events live here once; ``trainers/lora.py`` etc. only say what trains and how it is saved.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from studio.atomic import atomic_dir, remove_stale_temporaries, write_json
from studio.errors import ConfigError, StudioError
from studio.images import image_size
from studio.interrupts import sigterm_as_interrupt
from studio.methods import method_spec
from studio.models.vae import decode_in_fp32
from studio.run_layout import CANCEL_FILE, RESULT_FILE, SUBJECT_DIR, read_run_config
from studio.rundir import prepare_run_dir  # noqa: F401 - re-exported (tests, benchmarks)
from studio.runlock import run_lock
from studio.settings import TrainConfig
from studio.subjects import load_subject
from trainers import (
    activation_offload,
    block_swap,
    checkpoints,
    objectives,
    placement,
    quantize,
    t5_cache,
    trackers,
)
from trainers.batches import BatchPlan, load_pair, loss_weights, training_size
from trainers.data import LatentSource
from trainers.ema import ExponentialAverage
from trainers.events import EventLog
from trainers.method import Method
from trainers.optim import build_lr_scheduler, build_optimizer, set_weight_mode
from trainers.placement import frozen_dtype
from trainers.prior import class_images
from trainers.sample_embeddings import prepare_sample_embeddings
from trainers.samples import SAMPLES_DIR, default_sample_prompts, render_samples
from trainers.validation import Validator, rendered_prompts, validation_active


class TrainingCancelled(StudioError):
    """Training stopped on request; a resumable checkpoint was written."""


class TrainingFailed(StudioError):
    """Training stopped on an error; the run directory records why."""


class Trainer:
    """Runs ``method`` on a subject and writes the run directory."""

    def __init__(self, method_class: type[Method], config: TrainConfig, run_dir: Path, *, listener=None, show_progress: bool = False,
                 base=None):
        """``base``: an already-loaded :class:`~studio.models.BaseModel` to train instead of loading
        ``config.base`` (benchmarks build real architectures in memory); a DreamBooth run that must save
        still reloads released modules from ``config.base``."""
        from accelerate import Accelerator

        self.given_base = base
        self.config = config
        self.run_dir = Path(run_dir)
        self.show_progress = show_progress
        on_gpu = torch.cuda.is_available()
        tracking, self.tracker_notes = trackers.accelerator_kwargs(config, self.run_dir)
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision if on_gpu else "no", cpu=not on_gpu, **tracking)
        self.events = EventLog(self.run_dir, enabled=self.accelerator.is_main_process,
                               listener=trackers.TrackerBridge(self.accelerator, config, self.run_dir, listener))
        self.method_class = method_class
        self.step = 0
        self.loop_started = False  # set once setup is done; before that a failed start holds nothing of value

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        from studio.models import load_configured_base

        config, accelerator = self.config, self.accelerator
        torch.manual_seed(config.seed)
        self.device = accelerator.device
        self.subject = load_subject(self.run_dir / SUBJECT_DIR)
        if not self.subject.image_paths:
            raise ConfigError(f"The subject in {self.run_dir / SUBJECT_DIR} has no images; prepare it again with `studio prepare`.")
        if self.given_base is not None:
            self.base = self.given_base
        else:
            dtypes = placement.load_dtypes(config, frozen_denoiser=method_spec(config.method).is_adapter,
                                           cuda=self.device.type == "cuda")
            self.base = load_configured_base(config, torch_dtype=dtypes)
        self.family = self.base.family
        self.objective = self.family.objective(self.base.pipeline.scheduler.config)
        self.method = self.method_class(config, self.base, self.subject)
        # what each step trains on: buckets, captions, repeats, several subjects (trainers/batches.py)
        self.sizes = [training_size(image_size(p), config.resolution, config.aspect_ratio_buckets) for p in self.subject.image_paths]
        self.plan = BatchPlan(config, self.subject, self.sizes, prior=config.prior_preservation,
                              instance_prompt=self.method.training_prompt)
        self.class_paths: list[Path] = []
        if config.prior_preservation:
            if not all(self.plan.class_prompts):
                raise ConfigError("prior_preservation is on but the class prompt is empty; set class_prompt or the subject's class noun.")
            self.class_prompt = self.plan.class_prompts[0]
            with accelerator.main_process_first(), placement.generating_on_device(self.base.pipeline, self.device, accelerator.autocast):
                for concept, prompt, size, count in self.plan.class_requests():
                    self.plan.add_class_pool(concept, size, len(self.subject.image_paths) + len(self.class_paths), count)
                    self.class_paths += class_images(
                        self.base, prompt, count, resolution=size[0] if size[0] == size[1] == config.resolution else size,
                        steps=config.class_image_steps, guidance=config.class_image_guidance,
                        show_progress=self.show_progress and accelerator.is_main_process,
                    )
        self.method.setup()
        self.components = self.method.components
        self._set_dtypes_and_modes()
        self._build_caches()  # staged placement: see trainers/placement.py
        self._release_unneeded()
        def quantize_and_place() -> None:
            quantize.quantize_frozen_base(self)  # base_quantization (QLoRA): trainers/quantize.py
            placement.move_to_device(self.components, self.device, skip=self.released)

        self.swapper = block_swap.place_with_swapping(self, quantize_and_place)  # blocks_to_swap: trainers/block_swap.py
        self._build_optimizer()
        self.validator = Validator(self)

    def _set_dtypes_and_modes(self) -> None:
        placement.set_dtypes_and_modes(self.components, self.method.trainable_modules(), dtype=frozen_dtype(self.config),
                                       reduced_frozen_params_ok=self.method.reduced_frozen_params_ok)
        if self.config.gradient_checkpointing:  # every method backpropagates through the denoiser
            offloading = activation_offload.checkpointing_function(self.config, self.device)  # offload_activations
            self.components[self.family.denoiser_name].enable_gradient_checkpointing(offloading)
            if self.method.text_encoder_trains():
                for encoder in self.family.text_encoders(self.components):
                    # transformers 5 renamed it; older releases only have the first name
                    getattr(encoder, "activation_checkpointing_enable", encoder.gradient_checkpointing_enable)()

    def _build_caches(self) -> None:
        config = self.config
        disk_text_cache = config.cache_text_embeddings and not self.method.text_encoder_trains()  # trainers/t5_cache.py
        placement.move_to_device(self.components, self.device, ["vae"] if disk_text_cache else ["vae", *self.family.text_encoder_names])
        vae = self.components["vae"]
        compute_dtype = frozen_dtype(config)
        pairs = [load_pair(path, mask if config.masked_loss else None, config.resolution, config.aspect_ratio_buckets)
                 for path, mask in zip(self.subject.image_paths, self.subject.mask_paths, strict=True)]
        pairs += [load_pair(path, None, config.resolution, config.aspect_ratio_buckets) for path in self.class_paths]
        images = [image for image, _ in pairs]
        self.masks = [mask for _, mask in pairs]
        self.instance_count = len(self.subject.image_paths)
        uniform = len({tuple(image.shape) for image in images}) == 1
        self.latents = LatentSource(vae, torch.stack(images) if uniform else images, cache=config.cache_latents,
                                    random_flip=config.random_flip, device=self.device, dtype=compute_dtype)
        self.prompts = self.plan.prompts
        self.cached_embeddings = None
        if disk_text_cache:
            self.cached_embeddings = t5_cache.cached_prompt_embeddings(self.base, self.family, self.components, self.prompts, self.device)
        self.sample_prompts = [
            self.method.pipeline_prompt(p) for p in config.sample_prompts or default_sample_prompts(self.subject)
        ]
        # samples and validation images from cached embeddings where the base has T5 (trainers/sample_embeddings.py)
        rendered = (self.sample_prompts if config.sample_every else []) + rendered_prompts(self)
        self.sample_embeddings = prepare_sample_embeddings(self, rendered) if rendered else None

    def sampling_released(self) -> list[str]:
        """The released modules samples and validation images need back: not the text encoders when their
        prompts' embeddings are cached."""
        if self.sample_embeddings is None:
            return self.released
        return [name for name in self.released if name not in self.family.text_encoder_names]

    def _release_unneeded(self) -> None:
        """After caching, the VAE and text encoders the step no longer needs leave training memory."""
        unneeded = [] if self.latents.needs_vae else ["vae"]
        if self.cached_embeddings is not None:
            unneeded += self.family.text_encoder_names
        self.released = placement.release(self.components, self.base.pipeline, unneeded, self.device,
                                          keep_on_cpu=bool(self.config.sample_every) or validation_active(self.config))
        if "vae" not in self.components:
            self.latents.vae = None

    def _build_optimizer(self) -> None:
        config = self.config
        self.optimizer = build_optimizer(config, self.method.parameter_groups())
        self.lr_scheduler = build_lr_scheduler(config, self.optimizer)
        trainable = self.method.trainable_modules()
        names = list(trainable)
        # with block swapping the swapped blocks' frozen weights stay on the CPU: Accelerate must not move the model
        placement_kwargs = {} if self.swapper is None else {
            "device_placement": [name != self.family.denoiser_name for name in names] + [True]}
        prepared = self.accelerator.prepare(*trainable.values(), self.optimizer, **placement_kwargs)
        prepared = prepared if isinstance(prepared, tuple) else (prepared,)
        self.models = dict(zip(names, prepared[:-1], strict=True))
        self.optimizer = prepared[-1]
        denoiser = self.family.denoiser_name
        self.unet_forward = self.models.get(denoiser, self.components[denoiser])
        if config.torch_compile:
            self.unet_forward = torch.compile(self.unet_forward)
        self.generator = torch.Generator().manual_seed(config.seed + 1_000 * self.accelerator.process_index)
        # Read once, not per step: ModelMixin.dtype walks every submodule.
        self.unet_dtype = self.components[denoiser].dtype
        self.clip_params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.step_inputs: dict[tuple[int, int], Any] = {}  # per batch layout: selected embeddings or token ids
        set_weight_mode(self.optimizer, "train")  # schedule-free: step the training sequence
        self.ema = ExponentialAverage(self.method, config.ema_decay, config.ema_on_cpu) if config.ema_decay else None

    @contextmanager
    def evaluated_weights(self, *, ema: bool = True):
        """The weights to sample, validate and save: schedule-free's averaged ones, and (``ema`` and
        ``ema_weights: ema``) the EMA; the training weights come back exactly afterwards."""
        use_ema = ema and self.ema is not None and self.config.ema_weights == "ema"
        set_weight_mode(self.optimizer, "eval")
        try:
            with self.ema.applied() if use_ema else nullcontext():
                yield
        finally:
            set_weight_mode(self.optimizer, "train")

    # ------------------------------------------------------------------ one step
    def _embeddings(self, instance_rows: int, class_rows: int, rows: list[int] | None = None):
        """Conditioning for a batch; ``rows``: a prompt index per row (default: the first subject's instance
        prompt for instance rows, its class prompt for class rows)."""
        from studio.families import PromptEmbedding

        rows = rows or [0] * instance_rows + [1] * class_rows
        components = dict(self.components) | {n: m for n, m in self.models.items() if n.startswith("text_encoder")}
        layout = tuple(rows)
        if layout not in self.step_inputs:  # the prompts never change: select / tokenize once
            self.step_inputs[layout] = (
                self.cached_embeddings.select(rows) if self.cached_embeddings is not None
                else [t[rows].to(self.device) for t in self.family.tokenize(components, self.prompts)]
            )
        if self.cached_embeddings is not None:
            return self.step_inputs[layout]
        embedding: PromptEmbedding = self.family.encode(components, self.step_inputs[layout])
        return embedding

    def _micro_step(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        config, accelerator = self.config, self.accelerator
        position = step * config.gradient_accumulation_steps + micro
        world, rank = accelerator.num_processes, accelerator.process_index
        batch = self.plan.step(position, rank, world)
        indices = batch.indices
        latents = self.latents.latents(indices, self.generator)
        pixel_weights = loss_weights([self.masks[i] for i in indices], tuple(latents.shape[-2:]),
                                     config.mask_background_weight, self.latents.last_flips)
        noise = objectives.draw_noise(latents, self.generator, config.noise_offset)
        objective = self.objective
        timesteps = objective.sample_timesteps(len(indices), self.generator, latents.device,
                                               image_tokens=self.family.image_tokens(*latents.shape[-2:]))
        noisy, target = objective.noised(latents, noise, timesteps)
        embedding = self._embeddings(batch.instance_rows, len(indices) - batch.instance_rows, batch.prompt_rows)
        unet_dtype = self.unet_dtype
        height, width = self.latents.shape_of(indices[0])
        with accelerator.autocast():
            prediction = self.family.predict(self.unet_forward, noisy.to(unet_dtype), timesteps, embedding.to(dtype=unet_dtype),
                                             config.resolution if height == width == config.resolution else (height, width))
        weights = objective.weights(timesteps, config.min_snr_gamma)
        return objectives.diffusion_loss(
            prediction, target, weights=weights, instance_count=config.batch_size, prior_loss_weight=config.prior_loss_weight,
            pixel_weights=pixel_weights,
        )

    def _optimizer_step(self, step: int) -> torch.Tensor:
        config, accelerator = self.config, self.accelerator
        total = torch.zeros((), device=self.device)
        self.method.on_step(step)
        for micro in range(config.gradient_accumulation_steps):
            last = micro == config.gradient_accumulation_steps - 1
            sync = nullcontext() if last else accelerator.no_sync(*self.models.values())
            with sync:
                loss, _, _ = self._micro_step(step, micro)
                accelerator.backward(loss / config.gradient_accumulation_steps)
            total += loss.detach() / config.gradient_accumulation_steps
        if config.max_grad_norm:
            accelerator.clip_grad_norm_(self.clip_params, config.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        return total

    # ------------------------------------------------------------------ checkpoints, samples
    def _state(self) -> checkpoints.TrainingState:
        return checkpoints.TrainingState(
            step=self.step,
            trainable={k: v.cpu() for k, v in self.method.trainable_state().items()},
            optimizer=self.optimizer.state_dict(),
            lr_scheduler={k: v for k, v in self.lr_scheduler.state_dict().items() if k != "lr_lambdas"},
            generator=self.generator.get_state(),
            torch_rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            ema=self.ema.state() if self.ema is not None else None,
        )

    def _checkpoint(self) -> None:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            with self.evaluated_weights(ema=False):  # resume restores these and the optimizer's mode
                state = self._state()
            path = checkpoints.save_checkpoint(self.run_dir, state, self.config.checkpoints_to_keep,
                                               protect=self.validator.protected())
            self.events.emit("checkpoint", step=self.step, path=str(path.relative_to(self.run_dir)))
        self.accelerator.wait_for_everyone()

    def _resume_from_newest_intact(self) -> tuple[Path | None, list[dict[str, str]]]:
        """Restore the newest checkpoint that reads back whole; the damaged newer ones are reported."""
        skipped: list[dict[str, str]] = []
        found = checkpoints.checkpoint_dirs(self.run_dir)
        for directory in reversed(found):
            try:
                self._restore(directory)
                return directory, skipped
            except (checkpoints.CorruptCheckpointError, RuntimeError, ValueError, KeyError) as error:
                skipped.append({"path": str(directory.relative_to(self.run_dir)), "reason": str(error)})
        if found:
            listed = "; ".join(f"{item['path']} ({item['reason']})" for item in skipped)
            raise TrainingFailed(
                f"No checkpoint of {self.run_dir} can be read back: {listed}. Delete those folders to restart this run "
                f"from step 0 with `studio train --resume {self.run_dir}`, or start a new run."
            )
        return None, skipped

    def _restore(self, directory: Path) -> None:
        state = checkpoints.load_checkpoint(directory)
        self.method.load_trainable_state(state.trainable)
        self.optimizer.load_state_dict(state.optimizer)
        set_weight_mode(self.optimizer, "train")  # saved in schedule-free's eval mode: back to training weights
        if self.ema is not None:
            self.ema.load_state(state.ema or {})
        self.lr_scheduler.load_state_dict(state.lr_scheduler | {"lr_lambdas": [None] * len(self.optimizer.param_groups)})
        self.generator.set_state(state.generator)
        torch.set_rng_state(state.torch_rng)
        if state.cuda_rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state.cuda_rng)
        self.step = state.step

    def _sample(self) -> None:
        config = self.config
        if not config.sample_every or not self.accelerator.is_main_process:
            return
        directory = self.run_dir / SAMPLES_DIR / f"step-{self.step:06d}"
        unet = self.components[self.family.denoiser_name]
        was_training = unet.training
        unet.eval()
        embedded = None if self.sample_embeddings is None else self.sample_embeddings.pipeline_kwargs(
            self.sample_prompts, self.device, self.unet_dtype)
        with self.evaluated_weights(), placement.brought_back(self.components, self.sampling_released(), self.device), self.accelerator.autocast(), decode_in_fp32(getattr(self.base.pipeline, "vae", None)):
            paths = render_samples(
                self.base.pipeline, self.sample_prompts, seed=config.seed, steps=config.sample_steps,
                guidance=config.sample_guidance, resolution=config.resolution, directory=directory, prompt_kwargs=embedded,
            )
        unet.train(was_training)
        self.events.emit("sample", step=self.step, paths=[str(p.relative_to(self.run_dir)) for p in paths], prompts=self.sample_prompts)

    def _cancel_requested(self) -> bool:
        return (self.run_dir / CANCEL_FILE).exists()

    # ------------------------------------------------------------------ the loop
    def run(self, *, resume: bool = False) -> dict[str, Any]:
        """Train (or resume); the main process holds the run's lock for the whole run (see studio.runlock)."""
        if not self.accelerator.is_main_process:
            return self._run_guarded(resume)
        with run_lock(self.run_dir, "resume" if resume else "train"):
            remove_stale_temporaries(self.run_dir, recursive=True)  # a crash's leftovers; we hold the lock
            return self._run_guarded(resume)

    def _run_guarded(self, resume: bool) -> dict[str, Any]:
        try:
            with sigterm_as_interrupt():
                return self._run(resume)
        except KeyboardInterrupt:
            self._on_cancel()
            raise TrainingCancelled(f"Training cancelled at step {self.step}; resume with `studio train --resume {self.run_dir}`.") from None
        except TrainingCancelled:
            raise
        except torch.OutOfMemoryError as error:
            message = (
                f"Out of memory at step {self.step} ({error}). Try gradient_checkpointing=true, optimizer=adamw8bit, "
                "mixed_precision=bf16, a smaller batch_size or resolution."
            )
            self.events.emit("failed", step=self.step, reason=message)
            raise TrainingFailed(message) from error
        except Exception as error:
            self.events.emit("failed", step=self.step, reason=f"{type(error).__name__}: {error}")
            if isinstance(error, StudioError):
                raise
            raise TrainingFailed(f"Training failed at step {self.step}: {type(error).__name__}: {error}") from error

    def _on_cancel(self) -> None:
        (self.run_dir / CANCEL_FILE).unlink(missing_ok=True)
        if getattr(self, "optimizer", None) is not None and self.step > 0:
            last = checkpoints.latest_checkpoint(self.run_dir)
            if last is None or last.name != f"step-{self.step:06d}":
                self._checkpoint()
        self.events.emit("cancelled", step=self.step, reason="cancelled by the user")

    def _run(self, resume: bool) -> dict[str, Any]:
        config = self.config
        self._setup()
        if resume:
            last, skipped = self._resume_from_newest_intact()
            self.events.emit("resumed", step=self.step, total=config.steps, checkpoint=str(last) if last else None,
                             skipped=skipped)
            for item in skipped:
                self.events.emit("checkpoint_skipped", step=self.step, path=item["path"], reason=item["reason"],
                                 message=f"Skipped damaged checkpoint {item['path']} ({item['reason']}); "
                                         f"resumed from {last.name if last else 'the start'}.")
        else:
            self.events.emit("started", step=0, total=config.steps, method=config.method, base=config.base)
        self.loop_started = True
        for note in self.tracker_notes:
            self.events.emit("note", step=self.step, message=note)
        self.validator.start()
        if self.step == 0:
            self._sample()
            with self.evaluated_weights():
                self.validator.validate(0, candidate=False)
        start_step, started = self.step, time.perf_counter()
        # On a GPU a logged step's loss is read (a host sync) only after the next step is queued, so the
        # GPU never idles waiting for Python; on a CPU reading it costs nothing and happens at once.
        lagged = self.device.type == "cuda"
        pending = None
        while self.step < config.steps:
            if self._cancel_requested():
                pending = self._emit_step(pending)
                raise KeyboardInterrupt
            loss = self._optimizer_step(self.step)
            self.step += 1
            pending = self._emit_step(pending)
            checkpoint_due = bool(config.checkpoint_every and self.step % config.checkpoint_every == 0 and self.step < config.steps)
            sample_due = bool(config.sample_every and self.step % config.sample_every == 0)
            if self.step % config.log_every == 0 or self.step == config.steps:
                elapsed = time.perf_counter() - started
                pending = (self.step, loss, self.lr_scheduler.get_last_lr()[0], (self.step - start_step) / elapsed if elapsed > 0 else 0.0)
                if not lagged or checkpoint_due or sample_due or self.step == config.steps:
                    pending = self._emit_step(pending)
            if checkpoint_due:
                self._checkpoint()
            if sample_due:
                self._sample()
            if self.validator.due(self.step, checkpoint_due):
                with self.evaluated_weights():
                    self.validator.validate(self.step, candidate=checkpoint_due or self.step == config.steps)
                if self.validator.stop_reason:
                    break
        return self._finish()

    def _emit_step(self, pending: tuple | None) -> None:
        """Emit the step event of ``pending`` = (step, loss tensor, lr, it/s); returns None."""
        if pending is None:
            return None
        step, loss, lr, rate = pending
        value = float(self.accelerator.reduce(loss, "mean").item())
        if not math.isfinite(value):
            raise TrainingFailed(f"Loss became {value} at step {step}; lower learning_rate or use mixed_precision=no.")
        self.events.emit(
            "step", step=step, total=self.config.steps, loss=value, lr=lr,
            it_s=round(rate, 4), eta_s=round((self.config.steps - step) / rate, 1) if rate else None,
        )
        return None

    def _record_replica(self) -> None:
        """With several processes, each records a checksum of its trainable weights: they must agree."""
        if self.accelerator.num_processes == 1:
            return
        digest = hashlib.sha256()
        for name, tensor in sorted(self.method.trainable_state().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        (self.run_dir / "replicas").mkdir(exist_ok=True)
        write_json(self.run_dir / "replicas" / f"rank-{self.accelerator.process_index}.json",
                   {"rank": self.accelerator.process_index, "sha256": digest.hexdigest(), "step": self.step})

    def _finish(self) -> dict[str, Any]:
        self.accelerator.wait_for_everyone()
        self._record_replica()
        result: dict[str, Any] = {}
        if self.accelerator.is_main_process:
            target = self.run_dir / self.method.artifact
            with atomic_dir(target, replace=True) as tmp, self.evaluated_weights():
                extras = self.method.save_result(tmp)
            result = {
                "method": self.config.method, "base": self.config.base, "artifact": self.method.artifact,
                "token": self.method.token, "instance_prompt": self.method.instance_prompt(),
                "class_noun": self.subject.class_noun, "steps": self.step, "family": self.family.name, **extras,
                **self.validator.summary(),
            }
            if self.ema is not None:  # the other set of weights, as a finished run of its own
                from trainers.weights_view import write_other_weights

                result["other_weights"] = write_other_weights(self, result)
            write_json(self.run_dir / RESULT_FILE, result)
            self.events.emit("finished", step=self.step, artifact=self.method.artifact)
        self.accelerator.wait_for_everyone()
        if not result:  # the other processes read what the main process wrote
            result = json.loads((self.run_dir / RESULT_FILE).read_text())
        return result


def load_run_config(run_dir: Path) -> TrainConfig:
    return read_run_config(run_dir)
