"""Training-time samples from cached prompt embeddings (trainers/sample_embeddings.py): with the prompt cache on,
a tiny-flux run that renders samples never runs its T5 encoder once training has started, and the samples
are the images the pipeline makes from the prompts' text."""

from __future__ import annotations

import uuid

import numpy as np
from conftest import tiny_config
from PIL import Image

from studio.models import load_base
from trainers import METHODS
from trainers.base import Trainer, prepare_run_dir
from trainers.samples import generate_seeded


def test_flux_samples_never_run_t5_after_caching(sample_subject, tmp_path):
    base = load_base("tiny-flux")
    calls: list[str] = []
    base.pipeline.text_encoder_2.register_forward_hook(lambda *_: calls.append("t5"))  # the real T5 module
    base.pipeline.transformer.register_forward_hook(lambda *_: calls.append("transformer"))
    prompt = f"a sks toy in a field {uuid.uuid4().hex[:8]}"  # not cached yet: the run must embed it
    config = tiny_config("lora", base="tiny-flux", steps=2, batch_size=1, sample_every=2, sample_steps=2,
                         sample_prompts=[prompt], train_text_encoder=False, validation=False)
    directory = tmp_path / "run"
    prepare_run_dir(config, sample_subject, directory)
    trainer = Trainer(METHODS["lora"], config, directory, base=base)
    trainer.run()
    assert "t5" in calls, "the sample prompt was embedded before training"
    first = calls.index("transformer")
    assert "t5" not in calls[first:], "T5 ran after training started"
    assert calls.count("transformer") > 2 * config.sample_steps  # the samples did run (step 0 and step 2)
    assert trainer.sample_embeddings is not None and prompt in trainer.sample_embeddings
    # the samples are what the pipeline renders from the text itself (same weights, seed and steps)
    sample = np.asarray(Image.open(directory / "samples" / "step-000002" / "00.png"), dtype=np.float32)
    with trainer.evaluated_weights():
        image = generate_seeded(base.pipeline, [prompt], [config.seed], steps=config.sample_steps,
                                guidance=config.sample_guidance, resolution=config.resolution)[0]
    assert np.abs(np.asarray(image, dtype=np.float32) - sample).max() <= 2
