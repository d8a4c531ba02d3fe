"""The editing commands as a user meets them (issue 20): options they would ignore are refused in one line,
wrong checkpoints are named as such, flags follow the shared conventions, invert needs no seed and can
keep its round trip, the output sheet shows each input beside its output, and the README's example inputs
come from `guided-diffusion make_inputs`. Each test runs through the command line on tiny saved networks."""
from __future__ import annotations

import itertools
import json
import shlex
import shutil

import numpy as np
import pytest
from helpers import REPO, read_samples
from PIL import Image
from test_editing import _run, checkpoints  # noqa: F401  (the tiny saved networks and inputs)

from guided_diffusion.editing.inputs import blurred, downsampled
from guided_diffusion.editing.io import read_latents
from guided_diffusion.editing.sheet import edit_sheet
from guided_diffusion.sampling.output import save_npz
from guided_diffusion.weights.checkpoints import write_config_json

pytestmark = pytest.mark.usefixtures("one_thread")


def _base(c, command, out):
    return [command, "--model_path", c["unet"], "--input", str(c["root"] / "images.npz"), "--out_dir", str(out),
            "--steps", "3", "--progress", "False"]


def _refused(capsys, argv, message, out):
    assert _run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and len(err.splitlines()) == 1, err
    assert not out.exists(), "a refused run wrote its output folder"


# -- item 2 and 14: options an edit would ignore -------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "extra", "message"),
    [
        ("img2img", ["--classifier_scale", "4"],
         "--classifier_scale 4 would be ignored: there is no classifier to guide with (classifier_path)"),
        ("img2img", ["--class_labels", "3"],
         "--class_labels would be ignored: the model is not class-conditional and no classifier guides the edit"),
        ("img2img", ["--guidance_interval", "0,50"], "--guidance_interval (0.0, 50.0) would be ignored"),
        ("img2img", ["--cfg_interval", "0,50"], "--cfg_interval would be ignored"),
        ("inpaint", ["--mask", "{root}/mask.png", "--method", "dps", "--sampler", "ddim", "--jump_length", "5"],
         "--jump_length 5 would be ignored: RePaint's resampling jumps apply to method repaint, not dps"),
        ("inpaint", ["--mask", "{root}/mask.png", "--dps_scale", "2"],
         "--dps_scale 2.0 would be ignored: the DPS step applies to method dps, not repaint"),
        ("restore", ["--task", "deblur", "--factor", "2"],
         "--factor 2 would be ignored: the downsampling factor applies to task super_res, not deblur"),
        ("restore", ["--task", "deblur", "--mask", "{root}/mask.png"],
         "--mask: the mask would be ignored: restore --task deblur reads none"),
        ("restore", ["--task", "inpaint", "--mask", "{root}/mask.png", "--blur_sigma", "2"],
         "--blur_sigma 2.0 would be ignored: the blur applies to task deblur, not inpaint"),
        ("invert", ["--seed", "3"], "--seed 3 would be ignored: invert is deterministic: it draws no noise"),
    ],
)
def test_an_option_the_edit_would_ignore_is_refused_in_one_line(checkpoints, tmp_path, capsys, command, extra, message):  # noqa: F811
    root = str(checkpoints["root"])
    out = tmp_path / "out"
    _refused(capsys, [*_base(checkpoints, command, out), *(part.format(root=root) for part in extra)], message, out)


def test_a_classifier_trained_on_clean_images_gets_a_warning(checkpoints, tmp_path, capsys):  # noqa: F811
    c = checkpoints
    clean = tmp_path / "clean_guide"
    shutil.copytree(c["root"] / "guide", clean)
    saved = json.loads((clean / "config.json").read_text())
    write_config_json(clean, {**saved, "noised": False})
    argv = [*_base(c, "img2img", tmp_path / "out"), "--seed", "0", "--classifier_path", str(clean / "model.pt")]
    assert _run(argv) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "trained on clean images" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: ") and "--noised True" in warning[0], warning
    assert _run([*argv[:-1], str(c["guide"]), "--out_dir", str(tmp_path / "noised")]) == 0
    assert "trained on clean images" not in capsys.readouterr().err


# -- item 15 and 18: the wrong file, named as such; nothing written on bad input -----------------------


def test_a_checkpoint_of_the_wrong_kind_or_an_empty_file_is_named_before_any_flag(checkpoints, tmp_path, capsys):  # noqa: F811
    c = checkpoints
    out = tmp_path / "out"
    argv = _base(c, "img2img", out)
    _refused(capsys, [*argv[:2], c["guide"], *argv[3:]], f"{c['guide']} is a classifier checkpoint, not a diffusion model", out)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    _refused(capsys, [*argv[:2], str(empty), *argv[3:]], f"checkpoint {empty} is empty (0 bytes)", out)


def test_weights_that_do_not_fit_their_config_stop_before_log_txt_exists(checkpoints, tmp_path, capsys):  # noqa: F811
    c = checkpoints
    broken = tmp_path / "broken"
    shutil.copytree(c["root"] / "unet", broken)
    saved = json.loads((broken / "config.json").read_text())
    saved["model"]["num_channels"] = 64
    write_config_json(broken, saved)
    out = tmp_path / "out"
    argv = _base(c, "img2img", out)
    assert _run([*argv[:2], str(broken / "model.pt"), *argv[3:], "--seed", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --model_path {broken / 'model.pt'} does not fit the config saved with it: checkpoint "
                          "has num_channels 32: use num_channels 32; fix its config.json") and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_class_folders_take_the_training_runs_class_indices(checkpoints, tmp_path):  # noqa: F811
    c = checkpoints
    run_dir = tmp_path / "run"
    shutil.copytree(c["root"] / "unet", run_dir)
    (run_dir / "classes.json").write_text(json.dumps({"label_mode": "folder", "classes": ["zebra", "apple"]}))
    for name, image in (("apple", c["images"][0]), ("zebra", c["images"][1])):
        (tmp_path / "in" / name).mkdir(parents=True)
        Image.fromarray(image).save(tmp_path / "in" / name / "x.png")
    assert _run(["invert", "--model_path", str(run_dir / "model.pt"), "--input", str(tmp_path / "in"), "--steps", "3",
                 "--out_dir", str(tmp_path / "out"), "--progress", "False"]) == 0
    # sorted folder names would say apple = 0; the run that trained the model said zebra = 0, apple = 1
    assert read_latents(tmp_path / "out" / "latents.npz")[1].tolist() == [1, 0]


# -- items 19, 20, 24: one flag convention -------------------------------------------------------------


@pytest.mark.parametrize("command", ["invert", "img2img", "inpaint", "restore"])
def test_a_misspelled_or_abbreviated_flag_is_one_line(checkpoints, tmp_path, capsys, command):  # noqa: F811
    out = tmp_path / "out"
    abbreviation = "--refi" if command == "invert" else "--batch"
    task = ["--task", "deblur"] if command == "restore" else []
    _refused(capsys, [*_base(checkpoints, command, out), *task, abbreviation, "2"],
             f"unrecognized arguments: {abbreviation} 2 (see `guided-diffusion {command} --help`)", out)


def _help(capsys, command):
    with pytest.raises(SystemExit) as info:
        _run([command, "--help"])
    assert info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_shows_the_defaults_and_what_restore_task_means(capsys):
    text = _help(capsys, "inpaint")
    assert "levels to jump back up when resampling (default: 1)" in text and "(default: 1, no resampling)" in text
    text = _help(capsys, "restore")
    assert "deblur: undo a Gaussian blur of --blur_sigma" in text
    assert "standard deviation of the Gaussian blur in pixels (default: 1)" in text
    text = _help(capsys, "invert")
    assert "(default: 6)" in text and "--seed SEED" not in text and "takes no --seed" in text


def test_bare_progress_and_bf16_run_and_progress_reads_outside_a_terminal(checkpoints, tmp_path, capsys):  # noqa: F811
    c = checkpoints
    argv = [part for part in _base(c, "img2img", tmp_path / "out") if part not in ("--progress", "False")]
    assert _run([*argv, "--seed", "0", "--progress", "--bf16"]) == 0
    err = capsys.readouterr().err
    assert "img2img: 5/5 images (100%)" in err and "\r" not in err, err
    assert len(read_samples(tmp_path / "out")[0]) == 5


# -- item 21: invert needs no seed and keeps its round trip on request ----------------------------------


def test_invert_can_write_the_round_trip_images(checkpoints, tmp_path, capsys):  # noqa: F811
    c = checkpoints
    assert _run([*_base(c, "invert", tmp_path / "out"), "--write_round_trip"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("round trip"))
    images, labels = read_samples(tmp_path / "out")
    assert images.shape == (5, 8, 8, 3) and labels.tolist() == [0, 1, 2, 3, 4]
    error = (images.astype(np.float64) - c["images"]) ** 2
    mean = np.mean([min(100.0, 10 * np.log10(255**2 / e.mean())) if e.mean() else 100.0 for e in error])
    assert f"PSNR {mean:.2f} dB mean" in line, (line, mean)
    assert (tmp_path / "out" / "latents.npz").is_file() and (tmp_path / "out" / "samples_5x8x8x3.png").is_file()


# -- item 22: the sheet shows each input beside its output ----------------------------------------------


def test_the_sheet_puts_each_input_beside_its_output_with_one_pixel_lines_and_no_black_filler():
    inputs = np.full((5, 8, 8, 3), 10, np.uint8)
    outputs = np.full((5, 8, 8, 3), 240, np.uint8)
    sheet = edit_sheet([inputs, outputs])
    # 5 edits: rows of ceil(sqrt(5)) = 3 edits of two images, each image enlarged by one factor
    zoom = (sheet.shape[1] - 7) // 48
    assert sheet.shape == (2 * 8 * zoom + 3, 6 * 8 * zoom + 7, 3) and sheet.shape[1] >= 512
    first_row = sheet[1 + 4 * zoom, :, 0]  # across the middle of the first row of edits
    runs = [(int(value), len(list(group))) for value, group in itertools.groupby(first_row)]
    assert runs == [(90, 1)] + [(10, 8 * zoom), (200, 1), (240, 8 * zoom), (90, 1)] * 3, runs
    filler = sheet[-2, -2]  # inside the empty sixth place of the second row
    assert filler.tolist() == [200, 200, 200] and not (sheet == 0).all(axis=-1).any()


def test_edit_outputs_come_with_a_sheet_of_input_beside_output(checkpoints, tmp_path):  # noqa: F811
    c = checkpoints
    assert _run([*_base(c, "img2img", tmp_path / "out"), "--seed", "0", "--strength", "0.5"]) == 0
    images, _ = read_samples(tmp_path / "out")
    sheet = np.asarray(Image.open(tmp_path / "out" / "samples_5x8x8x3.png").convert("RGB"))
    assert np.array_equal(sheet, edit_sheet([c["images"], images]))


# -- item 23: inputs for the README's commands, and restore from clean images ---------------------------


def test_restore_simulates_its_measurement_from_clean_images(checkpoints, tmp_path):  # noqa: F811
    c = checkpoints
    for task, measure in (("super_res", lambda x: downsampled(x, 2)), ("deblur", lambda x: blurred(x, 1.0))):
        argv = ["restore", "--task", task, "--model_path", c["unet"], "--steps", "3", "--seed", "0", "--progress", "False"]
        save_npz(tmp_path / f"{task}.npz", measure(c["images"]))
        assert _run([*argv, "--input", str(tmp_path / f"{task}.npz"), "--out_dir", str(tmp_path / task)]) == 0
        assert _run([*argv, "--input", str(c["root"] / "images.npz"), "--simulate", "--out_dir",
                     str(tmp_path / f"{task}_sim")]) == 0
        assert np.array_equal(read_samples(tmp_path / task)[0], read_samples(tmp_path / f"{task}_sim")[0])
        sheet = np.asarray(Image.open(tmp_path / f"{task}_sim" / "samples_5x8x8x3.png").convert("RGB"))
        assert np.array_equal(sheet, edit_sheet([c["images"], measure(c["images"]), read_samples(tmp_path / task)[0]]))



def _editing_guide() -> str:
    """The editing guide (docs/editing.md, linked from the README): its first bash block is the command
    walk-through, its first python block the EditJob example."""
    return (REPO / "docs" / "editing.md").read_text()


def _npz(path):
    with np.load(path) as data:
        return [data[name] for name in sorted(data.files)]


@pytest.mark.parametrize("steps", [pytest.param(None, marks=pytest.mark.slow, id="as-written"), pytest.param(4, id="4-steps")])
def test_make_inputs_writes_the_inputs_and_every_readme_editing_command_runs(checkpoints, tmp_path, monkeypatch,  # noqa: F811
                                                                            capsys, steps):
    """The editing guide's command block (docs/editing.md), line by line, on the tiny networks standing in for
    the demo's (the same 8x8 digits): as written (slow: 50 steps), or with --steps 4 added so the flags are
    checked quickly."""
    pytest.importorskip("sklearn")
    c = checkpoints
    monkeypatch.chdir(tmp_path)
    block = _editing_guide().split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    commands = [line for line in commands if line]
    assert commands[0].startswith("guided-diffusion demo") and commands[1].startswith("guided-diffusion make_inputs")
    assert _run(shlex.split(commands[1])[1:]) == 0
    variables = {"$M": c["unet"], "$C": c["guide"]}
    for line in commands[2:]:
        if "=" in line.split()[0]:
            continue
        for name, value in variables.items():
            line = line.replace(name, value)
        argv = shlex.split(line)
        assert argv[0] == "guided-diffusion", line
        assert _run([*argv[1:], "--progress", "False", *(["--steps", str(steps)] if steps else [])]) == 0, line
    images, labels = _npz(tmp_path / "inputs" / "digits.npz")
    assert images.shape == (64, 8, 8, 3) and sorted(set(labels.tolist())) == list(range(10))
    assert np.array_equal(_npz(tmp_path / "inputs" / "small_4x4.npz")[0], downsampled(images, 2))
    assert np.array_equal(_npz(tmp_path / "inputs" / "blurred.npz")[0], blurred(images, 1.0))
    mask = np.asarray(Image.open(tmp_path / "inputs" / "top_half.png"))
    assert mask.shape == (8, 8) and (mask[:4] == 255).all() and (mask[4:] == 0).all()
    for out in ("inverted", "edited", "inpainted", "sr", "sharp", "sr_sim"):
        assert (tmp_path / out / "samples_64x8x8x3.npz").is_file(), out
    assert read_samples(tmp_path / "edited")[1].tolist() == [8] * 64
    code = _editing_guide().split("```python\n", 1)[1].split("```", 1)[0]  # the EditJob example
    assert "run_edit(job)" in code
    exec(code.replace("steps=50", f"steps={steps}") if steps else code, {"M": c["unet"], "C": c["guide"]})
    edited, labels = _npz(tmp_path / "edited" / "samples_64x8x8x3.npz")
    assert edited.shape == (64, 8, 8, 3) and labels.tolist() == [8] * 64
    capsys.readouterr()
