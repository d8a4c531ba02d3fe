"""Editing as a library: an `EditJob` built in Python and run with `run_edit` makes what the commands
make, its checks speak in the job's own terms (SettingError naming the option), and nothing under
editing/ sees the command line."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import read_samples
from test_editing import _run, checkpoints  # noqa: F401  (the tiny saved networks and inputs)

import guided_diffusion.editing as editing_package
from guided_diffusion.editing import (
    EditInputs,
    EditJob,
    Img2Img,
    Inpaint,
    Invert,
    Restore,
    checkpoint_configs,
    run_edit,
)
from guided_diffusion.editing.io import load_mask
from guided_diffusion.editing.output import save_edit
from guided_diffusion.runtime.errors import SettingError
from guided_diffusion.sampling.settings import SamplerSettings

pytestmark = pytest.mark.usefixtures("one_thread")


def _job(c, task, *, settings=None, mask=None, labels=None, **fields):
    model, diffusion, classifier = checkpoint_configs(c["unet"], fields.pop("classifier_path", ""))
    images = fields.pop("images", c["images"])
    return EditJob(task=task, inputs=EditInputs(images, labels, mask), model=model, diffusion=diffusion,
                   settings=settings or SamplerSettings("ddim", steps=4), model_path=c["unet"],
                   classifier=classifier, **fields)


def test_a_job_built_in_python_edits_as_the_command_does(checkpoints, tmp_path):  # noqa: F811
    c = checkpoints
    assert _run(["img2img", "--model_path", c["unet"], "--input", str(c["root"] / "images.npz"), "--steps", "4",
                 "--strength", "0.5", "--seed", "7", "--out_dir", str(tmp_path / "cli"), "--progress", "False"]) == 0
    job = _job(c, Img2Img(strength=0.5), seed=7, batch_size=2)
    result = run_edit(job, device=torch.device("cpu"))
    assert np.array_equal(result.images, read_samples(tmp_path / "cli")[0])
    assert result.labels is None  # an unconditional, unguided edit is of no class
    written = save_edit(job, result, tmp_path / "py")
    assert [p.name for p in written] == ["samples_5x8x8x3.npz", "samples_5x8x8x3.png"]


def test_invert_returns_latents_round_trip_and_psnr(checkpoints):  # noqa: F811
    c = checkpoints
    result = run_edit(_job(c, Invert(refine=2), labels=np.arange(5)), device=torch.device("cpu"))
    assert result.latents.shape == (5, 3, 8, 8) and result.latents.dtype == np.float32
    assert result.images.shape == (5, 8, 8, 3) and result.psnr.shape == (5,)
    assert result.labels.tolist() == [0, 1, 2, 3, 4]  # latents keep the labels of what they came from
    plain = run_edit(_job(c, Invert(refine=2, round_trip=False)), device=torch.device("cpu"))
    assert plain.images is None and plain.psnr is None and np.array_equal(plain.latents, result.latents)


def test_simulated_restoration_restores_from_the_measurement_of_clean_images(checkpoints):  # noqa: F811
    c = checkpoints
    simulated = run_edit(_job(c, Restore(task="super_res", simulate=True), seed=0,
                              settings=SamplerSettings("ddpm", steps=3)), device=torch.device("cpu"))
    low = c["images"][:, ::2, ::2]  # not the box-downsampled measurement: the run must make its own
    assert simulated.measurement.shape == (5, 4, 4, 3) and not np.array_equal(simulated.measurement, low)
    from guided_diffusion.editing.inputs import downsampled

    given = run_edit(_job(c, Restore(task="super_res"), seed=0, settings=SamplerSettings("ddpm", steps=3),
                          images=downsampled(c["images"], 2)), device=torch.device("cpu"))
    assert np.array_equal(given.images, simulated.images)


@pytest.mark.parametrize(
    ("build", "setting", "message"),
    [
        (lambda c: _job(c, Inpaint(method="dps", jump_length=5), seed=0), "jump_length",
         "jump_length 5 would be ignored: RePaint's resampling jumps apply to method repaint, not dps"),
        (lambda c: _job(c, Inpaint(dps_scale=2.0), seed=0), "dps_scale",
         "dps_scale 2.0 would be ignored: the DPS step applies to method dps, not repaint"),
        (lambda c: _job(c, Restore(task="deblur", factor=2), seed=0), "factor",
         "factor 2 would be ignored: the downsampling factor applies to task super_res, not deblur"),
        (lambda c: _job(c, Restore(task="super_res", blur_sigma=1.0), seed=0), "blur_sigma",
         "blur_sigma 1.0 would be ignored"),
        (lambda c: _job(c, Img2Img(), seed=0, classifier_scale=4.0), "classifier_scale",
         "classifier_scale 4 would be ignored: there is no classifier"),
        (lambda c: _job(c, Img2Img(), seed=0, class_labels=(3,)), "class_labels",
         "class_labels would be ignored: the model is not class-conditional and no classifier guides the edit"),
        (lambda c: _job(c, Invert(), seed=3), "seed", "seed 3 would be ignored: invert is deterministic"),
        (lambda c: _job(c, Img2Img()), "seed", "img2img draws noise: give a seed"),
        (lambda c: _job(c, Img2Img(), seed=0, settings=SamplerSettings("ddim", steps=4, cfg_interval=(0, 500))),
         "cfg_interval", "cfg_interval would be ignored"),
        (lambda c: _job(c, Img2Img(), seed=0, settings=SamplerSettings("ddim", steps=4, guidance_schedule="cosine")),
         "guidance_schedule", "guidance_schedule cosine would be ignored: it steers classifier guidance"),
        (lambda c: _job(c, Img2Img(), seed=0, mask=load_mask(c["root"] / "mask.png", 5, 8)), "mask",
         "the mask would be ignored: img2img reads none"),
        (lambda c: _job(c, Inpaint(), seed=0, settings=SamplerSettings("ddpm", steps=4)), "mask", "inpainting needs a mask"),
        (lambda c: _job(c, Inpaint(), seed=0, settings=SamplerSettings("ddim", steps=4),
                        mask=load_mask(c["root"] / "mask.png", 5, 8)), "sampler", "method repaint makes its own DDPM steps"),
        (lambda c: _job(c, Restore(task="inpaint", simulate=True), seed=0), "simulate", "simulate would be ignored"),
        (lambda c: _job(c, Img2Img(strength=0.0), seed=0), "strength", "strength must be in (0, 1]"),
    ],
)
def test_a_job_refuses_what_it_would_ignore_or_cannot_do_naming_the_option(checkpoints, build, setting, message):  # noqa: F811
    with pytest.raises(SettingError) as info:
        build(checkpoints)
    assert info.value.setting == setting and message in str(info.value), str(info.value)


def test_nothing_under_editing_sees_the_command_line():
    root = Path(editing_package.__file__).parent
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "argparse" not in imported and not any(m.startswith("guided_diffusion.cli") for m in imported), path.name
        assert "Namespace" not in path.read_text(), path.name
    edit_cli = root.parent / "cli" / "edit.py"
    assert len(edit_cli.read_text().splitlines()) < 300


def test_networks_already_in_memory_edit_as_the_loaded_ones(checkpoints):  # noqa: F811
    from guided_diffusion.editing.networks import networks_from_modules
    from guided_diffusion.sampling.networks import load_network

    job = _job(checkpoints, Img2Img(strength=0.5), seed=7, batch_size=2)
    model = load_network(job.model, job.model_path, torch.device("cpu"))
    in_memory = run_edit(job, networks=networks_from_modules(job, model))
    assert np.array_equal(in_memory.images, run_edit(job, device=torch.device("cpu")).images)
