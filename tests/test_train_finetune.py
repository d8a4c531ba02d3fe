"""`--init_from`: fine-tuning a checkpoint on data with another number of classes, and the EMA warm-up
(`--ema_warmup`) against its closed form."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import make_blob_dataset, run_cli

from guided_diffusion.training.ema import EMAWarmup, warmup_decay

ARCH = ["--image_size", "8", "--num_channels", "32", "--num_res_blocks", "1", "--channel_mult", "1",
        "--attention_resolutions", "", "--learn_sigma", "True", "--diffusion_steps", "50", "--noise_schedule", "cosine"]
COMMON = ["--num_workers", "0", "--batch_size", "4", "--lr", "1e-3", "--seed", "2", "--progress", "False", "--log_interval", "1"]


def _load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("base")
    data = make_blob_dataset(root / "data", count=8, size=8, classes=2)
    run = root / "run"
    result = run_cli(["image_train", "--data_dir", str(data), "--log_dir", str(run), "--iterations", "2", "--save_interval", "2",
                      "--class_cond", "True", "--num_classes", "2", *ARCH, *COMMON])
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def test_finetune_with_other_classes_reinitialises_only_the_label_embedding(base_run, tmp_path):
    data = make_blob_dataset(tmp_path / "data3", count=9, size=8, classes=3)
    run = tmp_path / "finetune"
    # No architecture flags: they come from the checkpoint.
    result = run_cli(["image_train", "--data_dir", str(data), "--log_dir", str(run), "--iterations", "2", "--save_interval", "2",
                      "--init_from", str(base_run / "model000002.pt"), "--num_classes", "3", "--class_cond", "True",
                      *COMMON])
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "label embedding is initialised afresh" in output
    base = _load(base_run / "model000002.pt")
    config = json.loads((run / "config.json").read_text())["model"]
    assert config["num_classes"] == 3 and config["num_channels"] == 32 and config["learn_sigma"] is True
    assert json.loads((run / "config.json").read_text())["diffusion"]["noise_schedule"] == "cosine"
    tuned = _load(run / "model000002.pt")
    assert tuned["label_emb.weight"].shape == (3, base["label_emb.weight"].shape[1])
    changed = [k for k in base if k != "label_emb.weight" and not torch.equal(base[k], tuned[k])]
    assert changed, "fine-tuning did not train"
    progress = (run / "progress.csv").read_text().splitlines()
    header = progress[0].split(",")
    losses = [float(line.split(",")[header.index("loss")]) for line in progress[1:]]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)


def test_finetune_step_zero_weights_equal_the_checkpoint(base_run, tmp_path):
    """The EMA starts from the step-0 weights, so after one step it is 0.999 w0 + 0.001 w1: the closed
    form with w0 = the checkpoint's weights (a random init would be off by 0.999 (init - w0))."""
    data = make_blob_dataset(tmp_path / "data3", count=9, size=8, classes=3)
    run = tmp_path / "finetune0"
    result = run_cli(["image_train", "--data_dir", str(data), "--log_dir", str(run), "--iterations", "1", "--save_interval", "1",
                      "--init_from", str(base_run / "model000002.pt"), "--num_classes", "3", "--ema_rate", "0.999",
                      *COMMON])
    assert result.returncode == 0, result.stderr[-3000:]
    base, w1, ema = _load(base_run / "model000002.pt"), _load(run / "model000001.pt"), _load(run / "ema_0.999_000001.pt")
    for key, w0 in base.items():
        if key == "label_emb.weight":
            continue
        expected = 0.999 * w0 + 0.001 * w1[key]
        torch.testing.assert_close(ema[key], expected, rtol=0, atol=1e-6, msg=key)
    # the label embedding started from a fresh init, not the checkpoint's 2 rows
    assert ema["label_emb.weight"].shape[0] == 3


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--init_from", "/nonexistent/model.pt"], "neither a checkpoint file nor a released preset"),
        (["--num_channels", "64"], "--num_channels 64 disagrees"),
    ],
)
def test_init_from_errors(base_run, tmp_path, flags, message):
    data = make_blob_dataset(tmp_path / "data", count=4, size=8, classes=2)
    argv = ["image_train", "--data_dir", str(data), "--log_dir", str(tmp_path / "run"), "--iterations", "1", *COMMON]
    if flags[0] != "--init_from":
        argv += ["--init_from", str(base_run / "model000002.pt")]
    result = run_cli(argv + flags)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr


# --- EMA warm-up ----------------------------------------------------------------------------------

def test_warmup_decay_closed_form():
    for power in (2.0 / 3.0, 0.75, 1.0):
        for step in (0, 1, 2, 10, 1000, 31622):
            expected = min(0.9999, 1.0 - (1.0 + step) ** -power)
            assert warmup_decay(step, 0.9999, power=power) == pytest.approx(expected, rel=0, abs=1e-15)
    assert warmup_decay(0, 0.9999) == 0.0  # the first update copies the weights
    assert warmup_decay(1, 0.9999, power=1.0) == 0.5  # power 1, inv_gamma 1: a running mean
    assert warmup_decay(3, 0.9999, power=1.0) == 0.75
    assert warmup_decay(10**9, 0.999) == 0.999  # capped at the rate
    assert warmup_decay(4, 0.9999, power=1.0, inv_gamma=2.0) == pytest.approx(1 - 3.0**-1)
    assert EMAWarmup(power=0.75).decay(0.9999, 9999) == pytest.approx(1 - 10000**-0.75)
    # 2/3 reaches 0.999 after about 31.6k steps, as k-diffusion documents
    assert warmup_decay(31622, 1.0) == pytest.approx(0.999, abs=1e-6)
    with pytest.raises(ValueError):
        EMAWarmup(power=0.0)


def test_ema_warmup_in_training_follows_the_formula(tmp_path):
    data = make_blob_dataset(tmp_path / "data", count=8, size=8, classes=2)
    run = tmp_path / "run"
    result = run_cli(["image_train", "--data_dir", str(data), "--log_dir", str(run), "--iterations", "3", "--save_interval", "1",
                      "--ema_rate", "0.9999", "--ema_warmup", "True", "--ema_warmup_power", "0.75", *ARCH, *COMMON])
    assert result.returncode == 0, result.stderr[-3000:]
    models = [_load(run / f"model{k:06d}.pt") for k in (1, 2, 3)]
    emas = [_load(run / f"ema_0.9999_{k:06d}.pt") for k in (1, 2, 3)]
    for key in models[0]:
        assert torch.equal(emas[0][key], models[0][key])  # decay(0) = 0: the EMA starts at the weights
        for k in (1, 2):  # update after step k+1 uses decay(k) = 1 - (1 + k)^-0.75
            decay = 1.0 - (1.0 + k) ** -0.75
            torch.testing.assert_close(emas[k][key], decay * emas[k - 1][key] + (1 - decay) * models[k][key], rtol=0, atol=1e-6)
