"""Tuned step grids: the dynamic programme finds the cheapest path, the refinement never makes the grid
worse on its warm-up samples, grid files are read and checked, and `tune_steps` writes one that the
sampling commands take with --step_grid (and --steps must agree with it)."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from helpers import (
    CLASSIFIER,
    UNCOND,
    make_checkpoints,
    one_line_error,
    randomise_zero_layers,
    read_samples,
    run,
    tiny_adm,
)

from guided_diffusion.diffusion.grids import grid_file_document, make_grid, read_grid_file
from guided_diffusion.runtime.errors import SettingError
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn
from guided_diffusion.sampling.settings import SamplerSettings
from guided_diffusion.sampling.tuning import _dynamic_programme, tune_grid, tuning_reference
from guided_diffusion.script_util import create_classifier

GUIDED = f"{UNCOND} {CLASSIFIER}"


def test_dynamic_programme_finds_the_cheapest_path_with_k_levels():
    rng = np.random.default_rng(0)
    n, levels = 9, 4
    cost = np.triu(rng.uniform(0.1, 5.0, (n, n)), 1).T  # cost[i, j] for i > j
    final = rng.uniform(0.1, 5.0, n)
    best_total, best_path = np.inf, None
    for inner in itertools.combinations(range(n - 1), levels - 1):
        path = [n - 1, *sorted(inner, reverse=True)]
        total = sum(cost[a, b] for a, b in zip(path, path[1:])) + final[path[-1]]
        if total < best_total:
            best_total, best_path = total, path
    assert _dynamic_programme(cost, final, levels) == best_path


@pytest.fixture(scope="module")
def guided_model():
    model, diffusion = tiny_adm(learn_sigma=True, class_cond=False, diffusion_steps=40)
    torch.manual_seed(5)
    classifier = create_classifier(8, False, 32, 1, "4", True, True, "attention", classifier_channel_mult="1,1",
                                   classifier_num_head_channels=8, num_classes=10).eval()
    randomise_zero_layers(classifier, 5)
    return GuidedModel(model.requires_grad_(False), class_cond=False), diffusion, classifier


def test_tuning_starts_at_the_top_level_and_never_ends_worse_than_it_began(guided_model):
    model_fn, diffusion, classifier = guided_model
    reference = tuning_reference(model_fn, diffusion, image_shape=(3, 8, 8), cond_fn=classifier_cond_fn(classifier, 3.0),
                                 labels=lambda idx: np.array(idx) % 10, warmup=6, reference_levels=30)
    result = tune_grid(model_fn, diffusion, reference, sampler="dpm++2m", levels=4, max_trials=12)
    top = make_grid("karras", 30, diffusion.timestep_table()[1])
    top_sigma = float(np.sqrt((1 - top.alphas_cumprod[-1]) / top.alphas_cumprod[-1]))
    assert len(result.sigmas) == 4 and np.all(np.diff(result.sigmas) < 0)
    assert result.sigmas[0] == pytest.approx(top_sigma) == result.start_sigmas[0]
    assert result.distance <= result.start_distance and result.history == sorted(result.history, reverse=True)
    assert 1 <= result.trials <= 12
    assert result.evaluations == 30 * 6 + result.trials * 4 * 6
    # One reference serves every sampler and step count.
    other = tune_grid(model_fn, diffusion, reference, sampler="ddim", levels=3, max_trials=4)
    assert len(other.sigmas) == 3 and other.distance <= other.start_distance


def test_tuning_refuses_what_it_cannot_tune(guided_model):
    model_fn, diffusion, _ = guided_model
    with pytest.raises(SettingError) as info:
        tuning_reference(model_fn, diffusion, image_shape=(3, 8, 8), warmup=0, reference_levels=30)
    assert info.value.setting == "warmup"
    reference = tuning_reference(model_fn, diffusion, image_shape=(3, 8, 8), warmup=2, reference_levels=12)
    for kwargs, setting in ((dict(sampler="dpm++2m_sde", levels=4), "sampler"),
                            (dict(sampler="ddim", levels=12), "steps")):
        with pytest.raises(SettingError) as info:
            tune_grid(model_fn, diffusion, reference, **kwargs)
        assert info.value.setting == setting


def test_grid_files_are_checked_when_read_and_their_levels_used(tmp_path):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(grid_file_document(np.array([20.0, 3.0, 0.5, 0.1]), sampler="ddim")))
    assert np.allclose(read_grid_file(str(path)), [20.0, 3.0, 0.5, 0.1])
    _, diffusion = tiny_adm(diffusion_steps=40)
    grid = SamplerSettings(sampler="ddim", steps=4, step_grid=str(path)).grid(diffusion)
    assert np.allclose(np.sqrt((1 - grid.alphas_cumprod) / grid.alphas_cumprod)[::-1], [20.0, 3.0, 0.5, 0.1])
    with pytest.raises(SettingError, match="pass --steps 4") as info:
        SamplerSettings(steps=5, step_grid=str(path))
    assert info.value.setting == "steps"
    bad = tmp_path / "bad.json"
    for content, needle in (("{", "is not a grid file"), (json.dumps({"sigmas": [1, 2]}), "is not a grid file"),
                            (json.dumps(grid_file_document(np.array([1.0, 2.0]))), "decreasing")):
        bad.write_text(content)
        with pytest.raises(SettingError, match=needle):
            SamplerSettings(steps=2, step_grid=str(bad))
    with pytest.raises(SettingError, match="no such file"):
        SamplerSettings(steps=2, step_grid=str(tmp_path / "missing.json"))
    far = tmp_path / "far.json"
    far.write_text(json.dumps(grid_file_document(np.array([1e6, 1.0, 0.5, 0.1]))))
    with pytest.raises(SettingError, match="tuned for another model"):
        SamplerSettings(steps=4, step_grid=str(far)).grid(diffusion)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("tune_ckpt"))


def test_tune_steps_writes_a_grid_the_sampling_commands_take(ckpt, tmp_path, capsys):
    grid = tmp_path / "grid.json"
    common = ["--model_path", str(ckpt["uncond"]), "--classifier_path", str(ckpt["classifier"]),
              "--classifier_scale", "2"]
    assert run("tune_steps", GUIDED, None, *common, "--sampler", "dpm++2m", "--steps", "4", "--warmup", "4",
               "--reference_steps", "20", "--max_trials", "6", "--out", str(grid)) == 0
    out = capsys.readouterr().out
    assert "sample on it with: --sampler dpm++2m --steps 4 --step_grid" in out
    document = json.loads(grid.read_text())
    assert document["sampler"] == "dpm++2m" and document["steps"] == 4 and len(document["sigmas"]) == 4
    assert document["distance"] <= document["start_distance"]
    assert run("classifier_sample", GUIDED, tmp_path / "s", *common, "--sampler", "dpm++2m", "--steps", "4",
               "--step_grid", str(grid), "--num_samples", "3", "--seed", "0") == 0
    assert read_samples(tmp_path / "s")[0].shape == (3, 8, 8, 3)
    capsys.readouterr()
    assert run("classifier_sample", GUIDED, tmp_path / "t", *common, "--steps", "5", "--step_grid", str(grid),
               "--num_samples", "3") == 2
    one_line_error(capsys, "--steps 5 does not agree with the grid file", "pass --steps 4")


@pytest.mark.parametrize("extra,needle", [
    ((), "pass --steps K"),
    (("--steps", "4"), "pass --sampler NAME"),
    (("--steps", "4", "--sampler", "dpm++2m_sde"), "tune a deterministic sampler"),
    (("--steps", "4", "--sampler", "ddim", "--step_grid", "karras"), "--step_grid does not apply"),
])
def test_tune_steps_refuses_bad_requests_in_one_line(ckpt, tmp_path, capsys, extra, needle):
    argv = ["--model_path", str(ckpt["uncond"]), "--classifier_path", str(ckpt["classifier"]), "--warmup", "2",
            "--reference_steps", "12", "--max_trials", "2", "--out", str(tmp_path / "g.json"), *extra]
    assert run("tune_steps", GUIDED, None, *argv) == 2
    one_line_error(capsys, needle)
    assert not (tmp_path / "g.json").exists()
