"""`classifier_train` and `super_res_train` end to end (in-process, tiny networks)."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from helpers import make_blob_dataset

from guided_diffusion import logger
from guided_diffusion.cli import main

CLASSIFIER = [
    "--image_size", "8", "--classifier_width", "32", "--classifier_depth", "1", "--classifier_channel_mult", "1",
    "--classifier_attention_resolutions", "", "--classifier_num_head_channels", "32", "--diffusion_steps", "50",
    "--num_workers", "0", "--lr", "3e-3", "--batch_size", "8", "--num_classes", "2",
]


@pytest.fixture(autouse=True)
def _one_thread_and_fresh_logger(one_thread):
    yield
    logger.reset()


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_classifier_learns_and_validates_with_training_class_indices(tmp_path):
    train = make_blob_dataset(tmp_path / "train", count=32, size=10, layout="folder")
    val = make_blob_dataset(tmp_path / "val", count=16, size=10, layout="filename", seed=1)  # other layout, same classes
    run = tmp_path / "run"
    args = ["classifier_train", "--data_dir", str(train), "--val_data_dir", str(val), "--log_dir", str(run), "--noised", "False",
            "--iterations", "30", "--anneal_lr", "True", "--save_interval", "30", "--log_interval", "10", "--eval_interval", "2",
            "--seed", "3", *CLASSIFIER]
    assert main(args) == 0
    rows = _rows(run / "progress.csv")
    last = rows[-1]
    for key in ("train_loss", "train_acc@1", "train_acc@5", "val_loss", "val_acc@1", "val_acc@5", "train_loss_q0", "grad_norm"):
        assert last[key] != "", key
    assert float(last["val_acc@1"]) >= 0.9 and float(last["train_acc@1"]) >= 0.9
    assert float(last["val_acc@5"]) == 1.0  # two classes: always in the top 5
    assert float(last["lr"]) == pytest.approx(3e-3 * (1 - 29 / 30))  # --anneal_lr
    names = {p.name for p in run.iterdir()}
    assert {"model000030.pt", "opt000030.pt", "train_state000030.pt", "config.json", "classes.json"} <= names
    assert not any(n.startswith("ema_") for n in names)  # classifiers keep no EMA, as the original
    assert json.loads((run / "config.json").read_text())["kind"] == "classifier"
    state = torch.load(run / "train_state000030.pt", weights_only=True)
    assert state["kind"] == "classifier" and "val_data" in state


def test_noised_classifier_resumes_and_rejects_unknown_validation_classes(tmp_path, capsys):
    train = make_blob_dataset(tmp_path / "train", count=16, size=10)
    run = tmp_path / "run"
    base = ["classifier_train", "--data_dir", str(train), "--log_dir", str(run), "--save_interval", "2", "--log_interval", "2",
            "--seed", "4", *CLASSIFIER]
    assert main([*base, "--iterations", "2", "--classifier_use_fp16", "True"]) == 0
    assert main([*base, "--iterations", "4", "--classifier_use_fp16", "True", "--resume", "auto"]) == 0
    out = capsys.readouterr().out
    assert "model000002.pt at step 2 (exact resume)" in out
    # The classifier's initial scale 2^16 grew by 1e-3 per step and was carried over the resume:
    # steps 3 and 4 ran at 16.002 and 16.003 (logged mean), leaving 16.004.
    assert float(_rows(run / "progress.csv")[-1]["lg_loss_scale"]) == pytest.approx(16.0025)
    state = torch.load(run / "train_state000004.pt", weights_only=True)
    assert state["precision"]["lg_loss_scale"] == pytest.approx(16.004)
    other = make_blob_dataset(tmp_path / "val", count=8, size=10, classes=1)
    for path in other.iterdir():
        path.rename(path.with_name(path.name.replace("c0_", "dog_")))
    code = main([*base, "--iterations", "6", "--val_data_dir", str(other), "--log_dir", str(tmp_path / "run2")])
    err = capsys.readouterr().err
    assert code == 2 and "'dog', which is not among the 2 training classes" in err


def test_super_res_train_feeds_the_low_res_image(tmp_path):
    data = make_blob_dataset(tmp_path / "d", count=8, size=12)
    run = tmp_path / "run"
    args = [
        "super_res_train", "--data_dir", str(data), "--log_dir", str(run), "--large_size", "8", "--small_size", "4",
        "--num_channels", "32", "--num_res_blocks", "1", "--channel_mult", "1", "--attention_resolutions", "",
        "--diffusion_steps", "50", "--num_workers", "0", "--batch_size", "4", "--iterations", "2", "--save_interval", "2",
    ]
    assert main(args) == 0
    state = torch.load(run / "model000002.pt", weights_only=True)
    assert state["input_blocks.0.0.weight"].shape[1] == 6  # noisy image + upsampled low-res image
    assert json.loads((run / "config.json").read_text())["kind"] == "superres"
