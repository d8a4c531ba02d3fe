"""Bad input to the training subcommands: one line naming the problem and the fix, exit code 2."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import error_of, make_blob_dataset, write_image

from guided_diffusion import logger
from guided_diffusion.cli import main

TINY = ["--image_size", "8", "--num_channels", "32", "--num_res_blocks", "1", "--channel_mult", "1", "--attention_resolutions", "",
        "--diffusion_steps", "50", "--num_workers", "0", "--iterations", "2", "--save_interval", "2"]


@pytest.fixture(autouse=True)
def _one_thread_and_fresh_logger(one_thread):
    yield
    logger.reset()


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    message = error_of(capsys, ["image_train", "--data_dir", str(tmp_path / "empty"), "--log_dir", str(tmp_path / "run"), *TINY])
    assert "no images found under" in message and ".png" in message


def test_unreadable_image(tmp_path, capsys):
    data = make_blob_dataset(tmp_path / "d", count=3, size=8)
    (data / "c1_bad.png").write_bytes(b"garbage")
    message = error_of(capsys, ["image_train", "--data_dir", str(data), "--log_dir", str(tmp_path / "run"), "--batch_size", "4",
                                 "--random_flip", "False", *TINY])
    assert "cannot read image" in message and "c1_bad.png" in message and "--skip_bad_images True" in message
    # With the flag the run skips it and finishes.
    assert main(["image_train", "--data_dir", str(data), "--log_dir", str(tmp_path / "run2"), "--batch_size", "4",
                 "--skip_bad_images", "True", *TINY]) == 0
    assert "skipping unreadable image" in capsys.readouterr().out


def test_shard_smaller_than_batch(tmp_path, capsys):
    data = make_blob_dataset(tmp_path / "d", count=3, size=8)
    message = error_of(capsys, ["image_train", "--data_dir", str(data), "--log_dir", str(tmp_path / "run"), "--batch_size", "4", *TINY])
    assert "has 3 images but one step needs 4" in message and "lower --batch_size" in message


def test_labels_missing_for_class_cond(tmp_path, capsys):
    for i in range(4):
        write_image(tmp_path / "d" / f"img{i}.png", np.zeros((8, 8, 3), dtype=np.uint8))
    message = error_of(capsys, ["image_train", "--data_dir", str(tmp_path / "d"), "--log_dir", str(tmp_path / "run"), "--class_cond", "True", *TINY])
    assert "no CLASS_ prefix" in message and "one sub-folder per class" in message


def test_resume_path_missing(tmp_path, capsys):
    data = make_blob_dataset(tmp_path / "d", count=4, size=8)
    message = error_of(capsys, ["image_train", "--data_dir", str(data), "--log_dir", str(tmp_path / "run"),
                                 "--resume_checkpoint", str(tmp_path / "model000100.pt"), *TINY])
    assert "model000100.pt does not exist" in message and "--resume_checkpoint" in message


def test_inconsistent_flags(tmp_path, capsys):
    data = make_blob_dataset(tmp_path / "d", count=4, size=8)
    base = ["image_train", "--data_dir", str(data), "--log_dir", str(tmp_path / "run"), *TINY]
    assert "--bf16: bf16 autocast and use_fp16 True exclude each other" in error_of(capsys, [*base, "--use_fp16", "True", "--use_bf16", "True"])
    assert "--class_dropout_prob needs class_cond True" in error_of(capsys, [*base, "--class_dropout_prob", "0.1"])
    assert "--num_classes: " in (message := error_of(capsys, [*base, "--class_cond", "True", "--num_classes", "1"]))
    assert "use num_classes 2" in message
    assert "unknown schedule sampler" in error_of(capsys, [*base, "--schedule_sampler", "bogus"])


def test_resuming_weights_of_another_architecture_names_the_flag(tmp_path, capsys):
    data = make_blob_dataset(tmp_path / "d", count=4, size=8)
    run = tmp_path / "run"
    assert main(["image_train", "--data_dir", str(data), "--log_dir", str(run), "--batch_size", "2", *TINY]) == 0
    capsys.readouterr()
    message = error_of(capsys, ["image_train", "--data_dir", str(data), "--log_dir", str(tmp_path / "run2"), "--batch_size", "2",
                                 "--learn_sigma", "True", "--resume_checkpoint", str(run / "model000002.pt"), *TINY])
    assert "model000002.pt does not match the model settings" in message and "learn_sigma" in message
