"""What a run costs is said where it starts: the sampling and editing commands name the sampler, its
levels and the model evaluations they make (issue 19 item 5), counted from the sampler registry."""
from __future__ import annotations

import pytest
from helpers import CLASSIFIER, UNCOND, make_checkpoints, run
from test_editing import _run, checkpoints  # noqa: F401  (the editing tests' tiny saved networks and inputs)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("evaluations_ckpt"))


@pytest.mark.parametrize("sampler,levels,evaluations", [("heun", 4, 7), ("dpm++2m", 4, 4)])
def test_the_sampling_line_names_levels_and_model_evaluations(ckpt, tmp_path, capsys, sampler, levels, evaluations):
    assert run("classifier_sample", f"{UNCOND} {CLASSIFIER}", tmp_path / "s", "--model_path", str(ckpt["uncond"]),
               "--classifier_path", str(ckpt["classifier"]), "--sampler", sampler, "--steps", str(levels),
               "--num_samples", "1", "--seed", "0", "--progress", "false") == 0
    out = capsys.readouterr().out
    assert f"sampling 1 images with {sampler} ({levels} levels, {evaluations} model evaluations)" in out, out
    assert f"with {sampler} ({levels} levels, {evaluations} model evaluations)" in (tmp_path / "s" / "log.txt").read_text()


def test_the_editing_line_names_levels_and_model_evaluations(checkpoints, tmp_path, capsys):  # noqa: F811
    argv = ["img2img", "--model_path", checkpoints["unet"], "--input", str(checkpoints["root"] / "images.npz"),
            "--out_dir", str(tmp_path / "e"), "--steps", "6", "--strength", "0.5", "--sampler", "heun", "--seed", "0",
            "--progress", "False"]
    assert _run(argv) == 0
    # strength 0.5 of 6 levels: 3 levels walked, heun spends 2 * 3 - 1 evaluations
    assert "with heun (3 of 6 levels, 5 model evaluations)" in capsys.readouterr().out
