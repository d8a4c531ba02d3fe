"""What the sampling commands make of their input, through the command line and the Python API: how many
images an upsampler draws, warnings for measured failures, refusals of options they would ignore, the
checkpoint's kind read before the flags, image_nll on the README's class folders, nothing written for bad
input, the shared flag conventions and progress lines (issue 20 items 3, 4, 14, 15, 17, 18, 19, 20, 22, 24)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    CLASSIFIER,
    COND,
    SR,
    UNCOND,
    load_npz,
    make_checkpoints,
    one_line_error,
    run,
)
from PIL import Image

from guided_diffusion.cli import main
from guided_diffusion.config import ClassifierConfig, config_to_dict
from guided_diffusion.runtime.errors import UserError
from guided_diffusion.sampling import load_pipeline
from guided_diffusion.sampling.samplers import SAMPLERS
from guided_diffusion.weights.checkpoints import write_config_json

GUIDED = f"{UNCOND} {CLASSIFIER}"
FAST = ("--num_samples", "2", "--steps", "3", "--sampler", "ddim", "--seed", "0", "--progress", "false")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> dict[str, Path]:
    return make_checkpoints(tmp_path_factory.mktemp("ckpt"))


def _guided(ckpt) -> tuple[str, ...]:
    return ("--model_path", str(ckpt["uncond"]), "--classifier_path", str(ckpt["classifier"]))


# -- item 3: an upsampler draws each base image once -------------------------------------------------------


def test_super_res_without_num_samples_upsamples_each_base_image_once(ckpt, tmp_path):
    base = tmp_path / "base.npz"
    np.savez(base, np.random.default_rng(0).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8), np.array([4, 0, 9]))
    out = tmp_path / "sr"
    assert run("super_res_sample", SR, out, "--model_path", str(ckpt["sr"]), "--base_samples", str(base),
               "--steps", "3", "--sampler", "ddim", "--progress", "false") == 0
    images, labels = load_npz(out / "samples_3x8x8x3.npz")
    assert images.shape == (3, 8, 8, 3) and labels.tolist() == [4, 0, 9]
    assert run("super_res_sample", SR, tmp_path / "sr5", "--model_path", str(ckpt["sr"]), "--base_samples", str(base),
               "--steps", "3", "--sampler", "ddim", "--progress", "false", "--num_samples", "5") == 0
    assert load_npz(tmp_path / "sr5" / "samples_5x8x8x3.npz")[1].tolist() == [4, 0, 9, 4, 0]  # more: cycled


# -- item 4: settings measured to fail warn ----------------------------------------------------------------


def test_a_setting_measured_to_fail_warns_in_one_line(ckpt, tmp_path, capsys):
    common = (*_guided(ckpt), "--classifier_scale", "2", "--num_samples", "1", "--progress", "false")
    assert run("classifier_sample", GUIDED, tmp_path / "a", *common, "--sampler", "ipndm", "--steps", "6",
               "--step_grid", "logsnr") == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "ipndm on the logsnr grid" in warned[0] and "measured to fail" in warned[0], warned
    assert run("classifier_sample", GUIDED, tmp_path / "b", *common, "--sampler", "ipndm", "--steps", "15",
               "--step_grid", "logsnr") == 0
    assert "measured to fail" not in capsys.readouterr().err
    # The issue's own case no longer fails (guidance split from dpm++2m's data prediction): no warning.
    assert run("classifier_sample", GUIDED, tmp_path / "c", *common, "--sampler", "dpm++2m", "--steps", "6",
               "--step_grid", "logsnr") == 0
    assert "measured to fail" not in capsys.readouterr().err


# -- item 14: options the command would ignore are refused -------------------------------------------------


@pytest.mark.parametrize("extra,fragments", [
    (("--classifier_scale", "2", "--guidance_interval", "1500,3000"), ("--guidance_interval", "0..39")),
    (("--classifier_scale", "2", "--guidance_interval", "10,300"), ("--guidance_interval", "0..39")),
    (("--classifier_scale", "0", "--guidance_interval", "0,10"), ("--guidance_interval", "classifier guidance")),
    (("--classifier_scale", "0", "--guidance_schedule", "cosine"), ("--guidance_schedule", "off")),
    (("--classifier_scale", "0", "--guidance_scaling", "entropy"), ("--guidance_scaling", "off")),
    (("--cfg_interval", "0,10"), ("--cfg_interval", "cfg_scale 1")),
])
def test_guidance_steering_that_would_do_nothing_is_refused(ckpt, tmp_path, capsys, extra, fragments):
    out = tmp_path / "o"
    assert run("classifier_sample", GUIDED, out, *_guided(ckpt), *FAST, *extra) == 2
    one_line_error(capsys, *fragments)
    assert not out.exists()


def test_class_labels_on_an_unconditional_model_without_a_classifier_are_refused(ckpt, tmp_path, capsys):
    assert run("image_sample", UNCOND, tmp_path / "o", "--model_path", str(ckpt["uncond"]), *FAST,
               "--class_labels", "3") == 2
    one_line_error(capsys, "--class_labels", "class-conditional")


# -- item 15: the checkpoint's kind before the flags ---------------------------------------------------------


def test_a_checkpoint_of_the_wrong_kind_is_named_before_any_flag(ckpt, tmp_path, capsys):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    cases = [
        ("image_sample", COND, ("--model_path", str(ckpt["classifier"])), ("--model_path", "is a classifier checkpoint, not a diffusion model")),
        ("classifier_sample", GUIDED, ("--model_path", str(ckpt["uncond"]), "--classifier_path", str(ckpt["uncond"])),
         ("--classifier_path", "is a diffusion model checkpoint, not a classifier")),
        ("super_res_sample", SR, ("--model_path", str(ckpt["cond"]), "--base_samples", "x.npz"),
         ("--model_path", "not a super-resolution model")),
        ("image_sample", "--image_size 8", ("--model_path", str(empty)), ("--model_path", "is empty")),
        ("image_nll", COND, ("--model_path", str(ckpt["classifier"]), "--data_dir", str(tmp_path)),
         ("--model_path", "is a classifier checkpoint")),
        ("image_sample", COND, ("--model_path", str(ckpt["cond"]), "--num_channels", "64"), ("use --num_channels 32",)),
    ]
    for command, flags, extra, fragments in cases:
        assert run(command, flags, tmp_path / "o", *extra) == 2
        line = one_line_error(capsys, *fragments)
        assert "channel_mult" not in line
    assert not (tmp_path / "o").exists()


def test_load_pipeline_reads_the_files_kind_and_takes_classifier_flags(ckpt):
    with pytest.raises(UserError, match="is a classifier checkpoint; pass it as classifier="):
        load_pipeline(ckpt["classifier"], device="cpu", progress=False, flags="--image_size 8")
    with pytest.raises(UserError, match="is a diffusion model checkpoint, not a classifier"):
        load_pipeline(ckpt["uncond"], classifier=ckpt["uncond"], device="cpu", progress=False, flags=UNCOND)
    # the README's way: the argument says the file is a classifier, the flags are a classifier's
    pipe = load_pipeline(ckpt["uncond"], classifier=ckpt["classifier"], device="cpu", progress=False, flags=UNCOND,
                         classifier_flags=f"--image_size 8 {CLASSIFIER} --num_classes 10")
    assert isinstance(pipe.classifier_config, ClassifierConfig) and pipe.classifier_config.classifier_depth == 1
    images, labels = pipe.sample(2, sampler="ddim", steps=3, guidance_scale=1.0, return_labels=True)
    assert images.shape == (2, 8, 8, 3) and labels.shape == (2,)
    with pytest.raises(UserError, match="use --num_channels 32"):  # a shape mismatch names the setting
        load_pipeline(ckpt["uncond"], device="cpu", progress=False, flags=UNCOND.replace("--num_channels 32", "--num_channels 64"))


# -- item 17: image_nll on the README's class folders ------------------------------------------------------


def _class_folders(root: Path, names=("cat", "dog")) -> Path:
    rng = np.random.default_rng(0)
    for i in range(4):
        folder = root / names[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return root


def test_image_nll_reads_class_folders_and_the_runs_classes_json(ckpt, tmp_path, capsys):
    data = _class_folders(tmp_path / "data")
    common = ("--model_path", str(ckpt["cond"]), "--data_dir", str(data), "--num_samples", "2",
              "--timestep_respacing", "4", "--seed", "0", "--progress", "false")
    assert run("image_nll", COND, tmp_path / "nll", *common) == 0
    assert "bits/dim:" in capsys.readouterr().out
    assert "2 classes (labels from sub-folders)" in (tmp_path / "nll" / "log.txt").read_text()
    assert run("image_nll", COND, tmp_path / "o", *common, "--label_mode", "filename") == 2
    one_line_error(capsys, "has no CLASS_ prefix")
    # a run's classes.json beside the checkpoint decides the indices (and refuses classes it does not know)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "model.pt").write_bytes(Path(ckpt["cond"]).read_bytes())
    (run_dir / "classes.json").write_text(json.dumps({"label_mode": "folder", "classes": ["cat", "cow"]}))
    assert run("image_nll", COND, tmp_path / "o2", *common[2:], "--model_path", str(run_dir / "model.pt")) == 2
    one_line_error(capsys, "'dog'", "not among the 2 training classes")


# -- item 18: bad input writes nothing; truncated inputs are one line --------------------------------------


def test_a_flag_error_found_late_leaves_the_out_dir_as_it_was(ckpt, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    for extra in (("--num_channels", "64"), ("--classifier_scale", "2", "--guidance_interval", "0,500")):
        assert run("classifier_sample", GUIDED, out, *_guided(ckpt), *FAST, *extra) == 2
        one_line_error(capsys)
        assert list(out.iterdir()) == []  # no log.txt, no .partial, no job.json


def test_a_truncated_init_noise_npz_is_one_line(ckpt, tmp_path, capsys):
    path = tmp_path / "noise.npz"
    np.savez(path, np.zeros((2, 3, 8, 8), np.float32))
    path.write_bytes(path.read_bytes()[:300])
    assert run("image_sample", COND, tmp_path / "o", "--model_path", str(ckpt["cond"]), *FAST, "--init_noise", str(path)) == 2
    one_line_error(capsys, "--init_noise")
    assert not (tmp_path / "o").exists()


# -- items 19, 20, 24: one convention, progress lines, exact help ------------------------------------------


def test_help_lists_every_sampler_and_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["image_sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text.split("Samplers:", 1)[1].split(".", 1)[0] for name in SAMPLERS)
    assert "--num_samples NUM_SAMPLES (default: 10000)" in text and "--progress [BOOL]" in text


def test_misspelled_flags_are_one_line_and_progress_is_bare(ckpt, tmp_path, capsys):
    assert main(["classifier_sample", "--classifier_scal", "2"]) == 2
    one_line_error(capsys, "--classifier_scal", "see `guided-diffusion classifier_sample --help`")
    out = tmp_path / "p"
    assert run("image_sample", COND, out, "--model_path", str(ckpt["cond"]), *FAST[:-2], "--num_samples", "4",
               "--batch_size", "1", "--progress") == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("sampling: ")]  # stderr is no terminal here
    assert lines and lines[-1].startswith("sampling: 4/4 images (100%), elapsed"), err
    assert "\x1b" not in err and "\r" not in err  # no bar outside a terminal, per-step bars included
    assert "sampling: 4/4 images (100%)" in (out / "log.txt").read_text()


def test_bf16_on_a_cpu_without_bf16_instructions_warns_once(ckpt, tmp_path, capsys, monkeypatch):
    from guided_diffusion.runtime import autocast

    monkeypatch.setattr(autocast, "_cpu_has_native_bf16", lambda: False)
    assert run("image_sample", COND, tmp_path / "o", "--model_path", str(ckpt["cond"]), *FAST, "--bf16") == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "--bf16" in warned[0] and "slower than float32" in warned[0], warned


# -- item 22: grids readable for small images --------------------------------------------------------------


def test_the_grid_beside_the_npz_has_one_row_per_class(ckpt, tmp_path):
    out = tmp_path / "g"
    assert run("image_sample", COND, out, "--model_path", str(ckpt["cond"]), *FAST[:-4], "--num_samples", "5",
               "--class_labels", "3,8", "--progress", "false") == 0
    grid = np.asarray(Image.open(out / "samples_5x8x8x3.png"))
    images, _ = load_npz(out / "samples_5x8x8x3.npz")
    zoom = 22  # 3 columns (class 3: samples 0, 2, 4) of 8 pixels and 4 borders: ceil((512 - 4) / 24)
    size = 8 * zoom + 1
    assert grid.shape == (2 * size + 1, 3 * size + 1, 3)
    assert np.array_equal(grid[1:size:zoom, 1 + size:2 * size:zoom], images[2])  # class 3's second sample
    assert np.array_equal(grid[1 + size:2 * size:zoom, 1 + size:2 * size:zoom], images[3])  # class 8's second
    assert (grid[1 + size:2 * size, 1 + 2 * size:3 * size] == grid[0, 0]).all() and grid[0, 0, 0] > 128  # no black


def test_config_saved_as_a_run_directorys_classifier_section_is_used(ckpt, tmp_path):
    """The resolver reads a classifier's own section of a run directory's config.json (one precedence)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "classifier.pt").write_bytes(Path(ckpt["classifier"]).read_bytes())
    saved = config_to_dict(ClassifierConfig(image_size=8, classifier_width=32, classifier_depth=1,
                                            classifier_attention_resolutions="4", classifier_channel_mult="1,1",
                                            classifier_num_head_channels=8, num_classes=10))
    write_config_json(run_dir, saved)
    out = tmp_path / "o"
    assert run("classifier_sample", UNCOND, out, "--model_path", str(ckpt["uncond"]), "--classifier_path",
               str(run_dir / "classifier.pt"), *FAST, "--classifier_scale", "1") == 0
    assert "classifier_depth" in (out / "log.txt").read_text()


def test_device_is_a_flag_and_a_missing_device_is_one_line(ckpt, tmp_path, capsys):
    assert run("image_sample", COND, tmp_path / "cpu", "--model_path", str(ckpt["cond"]), *FAST, "--device", "cpu") == 0
    if not torch.cuda.is_available():
        assert run("image_sample", COND, tmp_path / "o", "--model_path", str(ckpt["cond"]), *FAST, "--device", "cuda") == 2
        one_line_error(capsys, "--device", "cpu")
        assert not (tmp_path / "o").exists()
    assert run("image_sample", COND, tmp_path / "o", "--model_path", str(ckpt["cond"]), *FAST, "--device", "tpu9") == 2
    one_line_error(capsys, "--device")
