"""Editing acceptance on the demo's digits, with the demo's networks trained on a reduced recipe.

Marked slow (about 140 s on two shared cores, 118 s of it training the three small networks; then a few hundred model
evaluations per check); `benchmarks/bench_editing.py` measures the same on the full demo models. Checked
on held-out digits: inversion round trip at 50 steps >= 30 dB, class editing towards another class read by
the judge, inpainting the lower half far above the unguided chance level with the known half unchanged,
and DPS 2x super-resolution from 4x4 beating bicubic upsampling in PSNR.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("sklearn")

from guided_diffusion.demo.data import InMemoryBatches, load_digits_dataset
from guided_diffusion.demo.judge import JudgeFeatures
from guided_diffusion.demo.settings import StudySettings
from guided_diffusion.demo.train import TrainSpec, train_network
from guided_diffusion.editing import (
    DownsampleOperator,
    X0Predictor,
    ddim_invert,
    measurement_cond_fn,
    psnr,
    repaint,
    sdedit,
)
from guided_diffusion.editing.io import to_model_input, to_uint8_images
from guided_diffusion.runtime.rng import SampleNoise, mix_seed
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn
from guided_diffusion.sampling.samplers import SAMPLERS
from guided_diffusion.sampling.settings import SamplerSettings

pytestmark = pytest.mark.slow

RECIPE = StudySettings(
    unet_training=TrainSpec(steps=400, batch_size=64, lr=2e-3, ema_rate=0.99),
    guide_training=TrainSpec(steps=300, batch_size=64, lr=2e-3),
    judge_training=TrainSpec(steps=200, batch_size=64, lr=2e-3, weight_decay=0.05, noised=False),
)
HELD_OUT = 60


@pytest.fixture(scope="module")
def digits_models(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small networks: extra threads only contend with the rest of the machine
    root = tmp_path_factory.mktemp("digits")
    digits = load_digits_dataset()
    images, labels = digits.subset(digits.train)
    nets = {}
    for tag, (name, config, spec, with_labels) in enumerate(
        [("diffusion", RECIPE.unet, RECIPE.unet_training, False), ("classifier", RECIPE.guide, RECIPE.guide_training, True),
         ("judge", RECIPE.judge, RECIPE.judge_training, True)], start=1):
        data = InMemoryBatches(images, labels, spec.batch_size, seed=mix_seed(0, tag, 0), with_labels=with_labels)
        nets[name] = train_network(config, RECIPE.diffusion, data, spec, run_dir=root / name, seed=mix_seed(0, tag, 1),
                                   progress=False).model
    test_images, test_labels = digits.subset(digits.test)
    pick = np.linspace(0, len(test_labels) - 1, HELD_OUT).astype(int)  # every class, spread over the split
    model = GuidedModel(nets["diffusion"], class_cond=False)
    diffusion = RECIPE.diffusion.build()
    yield {"model": model, "diffusion": diffusion, "guide": nets["classifier"], "judge": JudgeFeatures(nets["judge"]),
            "images": test_images[pick], "labels": test_labels[pick]}
    torch.set_num_threads(threads)


def test_inversion_round_trip_at_50_steps(digits_models):
    m = digits_models
    denoiser = SamplerSettings(steps=50).denoiser(m["model"], m["diffusion"])
    x = to_model_input(m["images"])
    back = SAMPLERS["ddim"](denoiser, ddim_invert(denoiser, x, refine=6), clip_denoised=False)
    values = psnr(to_uint8_images(back), m["images"])
    assert float(values.clamp(max=100).mean()) >= 30 and float((values >= 30).float().mean()) >= 0.95, values


def test_class_editing_reaches_the_target_class(digits_models):
    m = digits_models
    denoiser = SamplerSettings(steps=20).denoiser(m["model"], m["diffusion"])
    targets = (m["labels"] + 1) % 10
    edited = sdedit(denoiser, to_model_input(m["images"]), strength=0.8, noise=SampleNoise(0, range(HELD_OUT)),
                    cond_fn=classifier_cond_fn(m["guide"], 8.0), model_kwargs={"y": torch.as_tensor(targets)})
    read = m["judge"].predict(to_uint8_images(edited))
    assert np.mean(read == targets) >= 0.6, np.mean(read == targets)


def test_inpainting_the_lower_half_beats_chance_and_keeps_the_top(digits_models):
    m = digits_models
    denoiser = SamplerSettings(steps=20).denoiser(m["model"], m["diffusion"])
    x = to_model_input(m["images"])
    keep = torch.zeros(HELD_OUT, 1, 8, 8)
    keep[:, :, :4] = 1
    noise = SampleNoise(0, range(HELD_OUT))
    start = noise.randn(x.shape)
    unguided = to_uint8_images(SAMPLERS["ddim"](denoiser, start))
    filled = to_uint8_images(repaint(denoiser, start, known=x, mask=keep, jump_length=5, jump_n_sample=3, noise=noise))
    chance = np.mean(m["judge"].predict(unguided) == m["labels"])
    accuracy = np.mean(m["judge"].predict(filled) == m["labels"])
    assert np.array_equal(filled[:, :4], m["images"][:, :4])
    assert accuracy >= chance + 0.25, (accuracy, chance)


def test_dps_super_resolution_beats_bicubic(digits_models):
    m = digits_models
    denoiser = SamplerSettings(steps=50).denoiser(m["model"], m["diffusion"])
    x = to_model_input(m["images"])
    down = DownsampleOperator(2)
    low = down(x)
    bicubic = to_uint8_images(F.interpolate(low, scale_factor=2, mode="bicubic", align_corners=False).clamp(-1, 1))
    noise = SampleNoise(0, range(HELD_OUT))
    cond = measurement_cond_fn(down, low, 4.0, predict_x0=X0Predictor(m["model"], m["diffusion"]))
    restored = to_uint8_images(SAMPLERS["ddpm"](denoiser, noise.randn(x.shape), noise=noise, cond_fn=cond))
    assert float(psnr(restored, m["images"]).mean()) > float(psnr(bicubic, m["images"]).mean())
