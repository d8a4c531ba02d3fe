"""The sampling subcommands end to end on CPU with tiny random-weight checkpoints."""
from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    ARCH,
    CFG,
    CLASSIFIER,
    COMPAT,
    COND,
    REPO,
    SR,
    UNCOND,
    assert_same_images,
    load_npz,
    make_checkpoints,
    parse_sample_flags,
    run,
    sample,
)
from PIL import Image

from guided_diffusion.cli.sample import _build_parser
from guided_diffusion.config import DiffusionConfig, ModelConfig
from guided_diffusion.script_util import (
    args_to_dict,
    classifier_defaults,
    create_classifier,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
    sr_create_model_and_diffusion,
    sr_model_and_diffusion_defaults,
)
from guided_diffusion.weights.checkpoints import save_model_with_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> dict[str, Path]:
    return make_checkpoints(tmp_path_factory.mktemp("ckpt"))


# -- image_sample ---------------------------------------------------------------------------------------


def test_image_sample_writes_the_original_npz_and_a_grid(ckpt, tmp_path):
    out = tmp_path / "out"
    assert run("image_sample", COND, out, "--model_path", str(ckpt["cond"]), "--num_samples", "5",
               "--batch_size", "2", "--steps", "3", "--seed", "0") == 0
    images, labels = load_npz(out / "samples_5x8x8x3.npz")
    assert images.shape == (5, 8, 8, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.shape == (5,) and ((0 <= labels) & (labels < 10)).all()
    assert images.std() > 0 and len({images[i].tobytes() for i in range(5)}) == 5
    grid = np.asarray(Image.open(out / "samples_5x8x8x3.png"))
    rows = [np.flatnonzero(labels == c) for c in sorted(set(labels.tolist()))]  # one row per class
    cols = max(len(row) for row in rows)
    zoom = math.ceil((512 - cols - 1) / (cols * 8))  # the smallest whole factor that reaches 512 pixels, borders included
    size = 8 * zoom + 1  # an image and its 1-pixel border
    assert grid.shape == (len(rows) * size + 1, cols * size + 1, 3) and grid.shape[1] >= 512
    first = rows[-1][0]  # the first sample of the last class, at the start of the last row
    top = 1 + (len(rows) - 1) * size
    assert np.array_equal(grid[top:top + 8 * zoom:zoom, 1:1 + 8 * zoom:zoom], images[first])  # nearest neighbour
    assert np.array_equal(grid[top + zoom - 1:top + 8 * zoom:zoom, zoom::zoom][:8, :8], images[first])
    assert (out / "log.txt").is_file()
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("sampler", ["ddpm", "dpm++2m"])
def test_same_seed_same_samples_at_batch_size_1_3_and_8(ckpt, tmp_path, sampler):
    common = ("--model_path", str(ckpt["cond"]), "--num_samples", "8", "--steps", "3", "--seed", "42", "--sampler", sampler)
    runs = [sample(tmp_path, f"b{b}", "image_sample", COND, *common, "--batch_size", str(b)) for b in (1, 3, 8)]
    for images, labels in runs[1:]:
        assert_same_images(images, runs[0][0])
        assert np.array_equal(labels, runs[0][1])
    other, _ = sample(tmp_path, "other", "image_sample", COND, *common[:-4], "--seed", "43", "--sampler", sampler,
                      "--batch_size", "8")
    assert np.abs(other.astype(int) - runs[0][0].astype(int)).mean() > 5


def test_unconditional_samples_have_no_labels_and_go_to_openai_logdir(ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_LOGDIR", str(tmp_path / "logdir"))
    assert run("image_sample", UNCOND, None, "--model_path", str(ckpt["uncond"]), "--num_samples", "2",
               "--steps", "2", "--use_ddim", "True") == 0
    arrays = load_npz(tmp_path / "logdir" / "samples_2x8x8x3.npz")
    assert len(arrays) == 1 and arrays[0].shape == (2, 8, 8, 3)


def test_fixed_class_labels_cycle_over_samples(ckpt, tmp_path):
    _, labels = sample(tmp_path, "o", "image_sample", COND, "--model_path", str(ckpt["cond"]), "--num_samples", "5",
                       "--steps", "2", "--class_labels", "3,7")
    assert labels.tolist() == [3, 7, 3, 7, 3]


def test_bf16_autocast_runs_on_cpu_close_to_fp32(ckpt, tmp_path, capsys):
    common = ("--model_path", str(ckpt["cond"]), "--num_samples", "2", "--steps", "2", "--seed", "4", "--sampler", "ddim")
    fp32, _ = sample(tmp_path, "fp32", "image_sample", COND, *common)
    bf16, _ = sample(tmp_path, "bf16", "image_sample", COND, *common, "--bf16", "--use_fp16", "True")
    assert "running in fp32" not in capsys.readouterr().err  # --bf16 replaces fp16 weights: nothing to warn about
    assert not np.array_equal(bf16, fp32)
    assert np.abs(bf16.astype(int) - fp32.astype(int)).mean() < 8


# -- classifier_sample ------------------------------------------------------------------------------------


def test_classifier_sample_guides_and_always_writes_labels(ckpt, tmp_path):
    flags = f"{UNCOND} {CLASSIFIER}"
    common = ("--model_path", str(ckpt["uncond"]), "--classifier_path", str(ckpt["classifier"]), "--num_samples", "3",
              "--steps", "3", "--seed", "1", "--sampler", "ddim")
    unguided, labels0 = sample(tmp_path, "s0", "classifier_sample", flags, *common, "--classifier_scale", "0")
    guided, labels = sample(tmp_path, "s20", "classifier_sample", flags, *common, "--classifier_scale", "20")
    assert labels.dtype == np.int64 and np.array_equal(labels, labels0)
    assert np.abs(guided.astype(int) - unguided.astype(int)).mean() > 1
    thresholded, _ = sample(tmp_path, "thr", "classifier_sample", flags, *common, "--classifier_scale", "20",
                            "--dynamic_threshold", "0.9")
    assert not np.array_equal(thresholded, guided)


def test_classifier_and_classifier_free_guidance_combine(ckpt, tmp_path):
    flags = f"{CFG} {CLASSIFIER}"
    common = ("--model_path", str(ckpt["cfg"]), "--classifier_path", str(ckpt["classifier"]), "--num_samples", "2",
              "--steps", "3", "--seed", "1", "--sampler", "dpm++2m", "--class_labels", "4")
    plain, _ = sample(tmp_path, "c1", "classifier_sample", flags, *common, "--cfg_scale", "1")
    cfg, labels = sample(tmp_path, "c3", "classifier_sample", flags, *common, "--cfg_scale", "3")
    assert labels.tolist() == [4, 4]
    assert np.abs(cfg.astype(int) - plain.astype(int)).mean() > 1


# -- super_res_sample -------------------------------------------------------------------------------------


@pytest.fixture()
def base_samples(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "base.npz"
    np.savez(path, rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8), np.array([9, 1, 5, 0, 3], dtype=np.int64))
    return path


def test_super_res_keeps_order_and_labels_and_honours_use_ddim(ckpt, tmp_path, base_samples):
    common = ("--model_path", str(ckpt["sr"]), "--base_samples", str(base_samples), "--num_samples", "5",
              "--timestep_respacing", "3", "--seed", "2")
    by2, labels = sample(tmp_path, "b2", "super_res_sample", SR, *common, "--batch_size", "2")
    by5, labels5 = sample(tmp_path, "b5", "super_res_sample", SR, *common, "--batch_size", "5")
    assert by2.shape == (5, 8, 8, 3) and labels.tolist() == [9, 1, 5, 0, 3] == labels5.tolist()
    assert_same_images(by2, by5)
    use_ddim, _ = sample(tmp_path, "ud", "super_res_sample", SR, *common, "--batch_size", "5", "--use_ddim", "True")
    ddim, _ = sample(tmp_path, "sd", "super_res_sample", SR, *common, "--batch_size", "5", "--sampler", "ddim")
    assert np.array_equal(use_ddim, ddim)
    assert np.abs(use_ddim.astype(int) - by5.astype(int)).mean() > 1


def test_super_res_needs_labels_for_a_class_conditional_upsampler(ckpt, tmp_path, capsys):
    path = tmp_path / "nolabels.npz"
    np.savez(path, np.zeros((2, 4, 4, 3), dtype=np.uint8))
    assert run("super_res_sample", SR, tmp_path / "o", "--model_path", str(ckpt["sr"]), "--base_samples", str(path)) == 2
    assert "arr_1" in capsys.readouterr().err


# -- image_nll --------------------------------------------------------------------------------------------


def test_image_nll_writes_terms_and_bits_per_dim_with_use_fp16(ckpt, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(data / f"{i % 2}_img{i}.png")
    out = tmp_path / "nll"
    assert run("image_nll", COND, out, "--model_path", str(ckpt["cond"]), "--data_dir", str(data), "--num_samples", "2",
               "--timestep_respacing", "4", "--use_fp16", "True", "--seed", "0") == 0
    captured = capsys.readouterr()
    assert "running in fp32" in captured.err  # README flags on a CPU: a one-line warning, not a crash (B14)
    bpd = float(captured.out.split("bits/dim:")[1].split()[0])
    assert 0 < bpd < 100
    for name in ("vb", "mse", "xstart_mse"):
        [terms] = load_npz(out / f"{name}_terms.npz")
        assert terms.shape == (4,) and np.isfinite(terms).all()


# -- errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command,flags,needle",
    [
        ("image_sample", f"{COND} --num_channels 64", "num_channels"),
        ("image_sample", f"{COND} --class_cond False", "class_cond"),
        ("image_sample", f"{COND} --eta 0.5", "--eta"),
        ("image_sample", f"{COND} --steps 3 --timestep_respacing 4", "both choose the steps"),
        ("image_sample", f"{COND} --steps 1", "--steps must be >= 2"),
        ("image_sample", f"{COND} --steps 100", "--steps must be <= the model's 40 diffusion steps, got 100"),
        ("image_sample", f"{COND} --step_grid karras", "--step_grid needs steps"),
        ("image_sample", f"{COND} --use_ddim True --sampler dpm++2m", "--use_ddim"),
        ("image_sample", f"{COND} --cfg_scale 2", "null label"),
        ("image_sample", f"{COND} --class_labels 12", "class_labels"),
        ("image_sample", f"{UNCOND} --class_labels 1", "class-conditional"),
        ("image_sample", f"{COND} --timestep_respacing 41", "timestep_respacing"),
        ("image_sample", f"{COND} --preset no_such_model", "no_such_model"),
        ("image_sample", f"{COND} --preset 64x64_classifier", "classifier"),
        ("super_res_sample", f"{SR} --preset 64x64_diffusion", "upsampler"),
        ("classifier_sample", f"{COND} --preset lsun_bedroom", "no classifier"),
        ("image_sample", f"{COND} --preset 64x64_diffusion --num_channels 32", "does not fit preset"),
    ],
    ids=lambda value: value.split(ARCH)[-1].strip() if isinstance(value, str) and ARCH in value else None,
)
def test_bad_flags_give_one_line_errors(ckpt, tmp_path, capsys, monkeypatch, command, flags, needle):
    monkeypatch.setattr("guided_diffusion.config.presets.BASE_URL", "http://127.0.0.1:9/unreachable")  # never the internet
    monkeypatch.setenv("GUIDED_DIFFUSION_CACHE", str(tmp_path / "cache"))
    model_path = () if "--preset" in flags else ("--model_path", str(ckpt["cond"]))
    assert run(command, flags, tmp_path / "o", *model_path, "--num_samples", "1") == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err


def test_missing_checkpoint_is_a_one_line_error(tmp_path, capsys):
    assert run("image_sample", COND, tmp_path / "o") == 2
    assert "--model_path" in capsys.readouterr().err
    assert run("image_sample", COND, tmp_path / "o", "--model_path", str(tmp_path / "nope.pt")) == 2
    assert "does not exist" in capsys.readouterr().err


def test_flags_come_from_the_config_saved_with_a_checkpoint(ckpt, tmp_path):
    args = parse_sample_flags("image_sample", COND)
    config = ModelConfig.from_flags(args)
    model = config.build()
    model.load_state_dict(torch.load(ckpt["cond"], weights_only=True))
    path = save_model_with_config(tmp_path / "run" / "ema_0.9999_000100.pt", model, config, DiffusionConfig.from_flags(args))
    images, labels = sample(tmp_path, "cfg", "image_sample", "", "--model_path", str(path), "--num_samples", "2",
                            "--steps", "2", "--seed", "3")
    reference, _ = sample(tmp_path, "ref", "image_sample", COND, "--model_path", str(ckpt["cond"]),
                          "--num_samples", "2", "--steps", "2", "--seed", "3")
    assert np.array_equal(images, reference) and labels.shape == (2,)


# -- the README's flag strings ----------------------------------------------------------------------------

SAMPLE_FLAGS = "--batch_size 4 --num_samples 100 --timestep_respacing 250"
DDIM25_SAMPLE_FLAGS = "--batch_size 4 --num_samples 50000 --timestep_respacing ddim25 --use_ddim True"
README_COMMANDS = [  # (script, checkpoint whose MODEL_FLAGS come first, the rest of the README line, classifier)
    ("classifier_sample", "64x64_diffusion", "--classifier_scale 1.0 --classifier_path models/64x64_classifier.pt "
     f"--classifier_depth 4 --model_path models/64x64_diffusion.pt {SAMPLE_FLAGS}", "64x64_classifier"),
    ("classifier_sample", "128x128_diffusion", "--classifier_scale 0.5 --classifier_path models/128x128_classifier.pt "
     f"--model_path models/128x128_diffusion.pt {SAMPLE_FLAGS}", "128x128_classifier"),
    ("classifier_sample", "256x256_diffusion", "--classifier_scale 1.0 --classifier_path models/256x256_classifier.pt "
     f"--model_path models/256x256_diffusion.pt {SAMPLE_FLAGS}", "256x256_classifier"),
    ("classifier_sample", "256x256_diffusion_uncond", "--classifier_scale 10.0 --classifier_path "
     f"models/256x256_classifier.pt --model_path models/256x256_diffusion_uncond.pt {SAMPLE_FLAGS}", "256x256_classifier"),
    ("classifier_sample", "512x512_diffusion", "--classifier_scale 4.0 --classifier_path models/512x512_classifier.pt "
     f"--model_path models/512x512_diffusion.pt {SAMPLE_FLAGS}", "512x512_classifier"),
    ("super_res_sample", "64_256_upsampler",
     f"--model_path models/64_256_upsampler.pt --base_samples 64_samples.npz {SAMPLE_FLAGS}", None),
    ("super_res_sample", "128_512_upsampler",
     f"--model_path models/128_512_upsampler.pt --base_samples 128_samples.npz {SAMPLE_FLAGS}", None),
    ("image_sample", "lsun_bedroom", f"--model_path models/lsun_bedroom.pt {SAMPLE_FLAGS}", None),
    ("image_nll", "lsun_bedroom", f"--model_path models/lsun_bedroom.pt --data_dir images {SAMPLE_FLAGS}", None),
    ("classifier_sample", "128x128_diffusion", "--classifier_scale 1.0 --classifier_use_fp16 True "
     "--classifier_attention_resolutions 32,16,8 --classifier_depth 2 --classifier_width 128 --classifier_pool attention "
     "--classifier_resblock_updown True --classifier_use_scale_shift_norm True --model_path models/128x128_diffusion.pt "
     f"--classifier_path models/128x128_classifier.pt {DDIM25_SAMPLE_FLAGS}", "128x128_classifier"),
]


def _keys_and_shapes(network: torch.nn.Module) -> list[list]:
    return [[k, list(v.shape)] for k, v in network.state_dict().items()]


@pytest.mark.parametrize("command,name,script_flags,classifier_name", README_COMMANDS, ids=lambda v: str(v)[:24])
def test_readme_flag_strings_parse_and_build_the_released_architectures(command, name, script_flags, classifier_name):
    compat = json.loads((COMPAT / f"{name}.json").read_text())
    args = _build_parser(command).parse_args(shlex.split(f"{compat['flags']} {script_flags}"))
    with torch.device("meta"):
        if command == "super_res_sample":
            model, diffusion = sr_create_model_and_diffusion(**args_to_dict(args, sr_model_and_diffusion_defaults().keys()))
        else:
            model, diffusion = create_model_and_diffusion(**args_to_dict(args, model_and_diffusion_defaults().keys()))
        assert _keys_and_shapes(model) == compat["keys"]
        if classifier_name is not None:
            classifier = create_classifier(**args_to_dict(args, classifier_defaults().keys()))
            assert _keys_and_shapes(classifier) == json.loads((COMPAT / f"{classifier_name}.json").read_text())["keys"]
    assert diffusion.num_timesteps == (25 if "ddim25" in script_flags else 250)


# -- several processes ------------------------------------------------------------------------------------


def test_two_processes_write_the_same_file_as_one(ckpt, tmp_path):
    common = ["--model_path", str(ckpt["cond"]), "--num_samples", "5", "--batch_size", "2", "--steps", "3",
              "--seed", "9", "--sampler", "ddim", "--eta", "1"]
    single, single_labels = sample(tmp_path, "one", "image_sample", COND, *common)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = tmp_path / "two"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "guided_diffusion", "image_sample", *shlex.split(COND), *common, "--out_dir", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    images, labels = load_npz(out / "samples_5x8x8x3.npz")
    assert np.array_equal(images, single) and np.array_equal(labels, single_labels)


def test_channels_last_sampling_matches_default_layout(ckpt, tmp_path):
    """--channels_last is a pure speed option: the guided samples agree with the default layout."""
    flags = f"{UNCOND} {CLASSIFIER}"
    common = ("--model_path", str(ckpt["uncond"]), "--classifier_path", str(ckpt["classifier"]), "--num_samples", "3",
              "--steps", "3", "--seed", "1", "--sampler", "ddim", "--classifier_scale", "5")
    plain, labels = sample(tmp_path, "nchw", "classifier_sample", flags, *common)
    fast, fast_labels = sample(tmp_path, "nhwc", "classifier_sample", flags, *common, "--channels_last")
    assert np.array_equal(labels, fast_labels)
    assert_same_images(fast, plain)
