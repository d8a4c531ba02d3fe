"""What the training commands tell their user (issue 20 items 16, 18, 19, 20): one-line flag errors
that leave nothing behind, progress that reads outside a terminal, and every stop printing the command
that continues the run."""
from __future__ import annotations

import errno
import re
import shlex
from pathlib import Path

import pytest
from helpers import error_of, make_blob_dataset

from guided_diffusion import logger
from guided_diffusion.cli import main
from guided_diffusion.cli.train import build_parser

TINY = ["--image_size", "8", "--num_channels", "32", "--num_res_blocks", "1", "--channel_mult", "1",
        "--attention_resolutions", "", "--diffusion_steps", "50", "--num_workers", "0", "--batch_size", "4",
        "--ema_rate", "0.9", "--seed", "3"]


@pytest.fixture(autouse=True)
def _one_thread_and_fresh_logger(one_thread):
    yield
    logger.reset()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_blob_dataset(tmp_path_factory.mktemp("blobs"), count=8, size=8)


def _train(data_dir: Path, run: Path, *flags: str) -> list[str]:
    return ["image_train", "--data_dir", str(data_dir), "--log_dir", str(run), *TINY, *flags]


# -- item 19: one CLI convention ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["image_train", "classifier_train", "super_res_train"])
@pytest.mark.parametrize("typo", [["--iteration", "5"], ["--iter", "5"], ["--save_interva", "5"]])
def test_a_misspelled_or_abbreviated_flag_is_one_line(command, typo, capsys):
    message = error_of(capsys, [command, *typo])
    assert f"unrecognized arguments: {typo[0]}" in message and f"(see `guided-diffusion {command} --help`)" in message


def test_bare_progress_and_bf16_and_the_earlier_spelling_of_bf16():
    parser = build_parser("image_train")
    assert parser.parse_args([]).progress is None  # the terminal decides
    assert parser.parse_args(["--progress"]).progress is True
    assert parser.parse_args(["--progress", "false"]).progress is False
    assert parser.parse_args(["--bf16"]).use_bf16 is True
    assert parser.parse_args(["--use_bf16", "True"]).use_bf16 is True
    assert parser.parse_args([]).use_bf16 is False


def test_bf16_with_fp16_names_the_flag_as_typed(data_dir, tmp_path, capsys):
    message = error_of(capsys, _train(data_dir, tmp_path / "run", "--use_fp16", "True", "--bf16"))
    assert message.startswith("error: --bf16") and "use_fp16" in message


@pytest.mark.parametrize("command", ["image_train", "classifier_train", "super_res_train"])
def test_help_shows_defaults_and_whole_sentences(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    description = text.split(" options: ")[0]
    assert "flags (same" not in text and description.rstrip().endswith(".")
    assert "--save_interval SAVE_INTERVAL (default: 10000)" in text
    assert "--max_time MAX_TIME wall-time budget in hours" in text and "(default: 0.0)" in text


# -- item 18: bad input writes nothing ------------------------------------------------------------------------


BAD_AFTER_LOGGING = [
    (["--schedule_sampler", "bogus"], "--schedule_sampler"),
    (["--class_cond", "True", "--num_classes", "1"], "--num_classes"),
    (["--dropout", "2"], "--dropout"),
    (["--batch_size", "0"], "--batch_size"),
    (["--label_mode", "bogus"], "--label_mode"),
    (["--data_dir", "/nonexistent/images"], "--data_dir"),
    (["--num_heads", "0"], "--num_heads"),
    (["--num_channels", "0"], "--num_channels"),
    (["--num_res_blocks", "-1"], "--num_res_blocks"),
    (["--diffusion_steps", "0"], "--diffusion_steps"),
    (["--num_workers", "-5"], "--num_workers"),
    (["--fp16_scale_growth", "-1"], "--fp16_scale_growth"),
    (["--resume_checkpoint", "/etc/hostname"], "is not a checkpoint"),
    (["--eval_interval", "2", "--eval_features", "classifier:/nonexistent.pt"], "--eval_features"),
]


@pytest.mark.parametrize(("flags", "named"), BAD_AFTER_LOGGING, ids=[" ".join(f) for f, _ in BAD_AFTER_LOGGING])
def test_a_flag_error_is_one_line_and_leaves_no_run_directory(flags, named, data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    extra = ["--eval_data_dir", str(data_dir)] if "--eval_interval" in flags else []
    message = error_of(capsys, [*_train(data_dir, run, "--iterations", "2", "--save_interval", "2", *extra), *flags])
    assert named in message
    assert not run.exists(), sorted(p.name for p in run.iterdir())


def test_a_flag_error_in_an_existing_empty_folder_leaves_it_empty(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    error_of(capsys, [*_train(data_dir, run, "--iterations", "2"), "--schedule_sampler", "bogus"])
    assert run.is_dir() and not list(run.iterdir())


def test_disk_full_during_training_is_one_line_with_the_resume_command(data_dir, tmp_path, capsys, monkeypatch):
    from guided_diffusion.training import snapshots

    real_save = snapshots.atomic_torch_save

    def full_disk(obj, path):
        if "000004" in Path(path).name:  # the second checkpoint set does not fit
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path)

    monkeypatch.setattr(snapshots, "atomic_torch_save", full_disk)
    run = tmp_path / "run"
    argv = _train(data_dir, run, "--iterations", "6", "--save_interval", "2", "--progress", "false")
    assert main(argv) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: disk full") and "resume with: " in lines[0], lines[0]
    command = shlex.split(lines[0].split("resume with: ", 1)[1])
    assert command[:2] == ["guided-diffusion", "image_train"] and command[-2:] == ["--resume", "auto"]
    assert sorted(p.name for p in run.glob("model*.pt")) == ["model000002.pt"]
    monkeypatch.setattr(snapshots, "atomic_torch_save", real_save)
    assert main(command[1:]) == 0  # the printed command continues the run
    assert (run / "model000006.pt").is_file()
    assert "at step 2 (exact resume)" in capsys.readouterr().out


# -- item 20: progress outside a terminal ---------------------------------------------------------------------


def test_outside_a_terminal_plain_progress_lines_also_in_log_txt(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train(data_dir, run, "--iterations", "10", "--save_interval", "10")) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = [line for line in err.splitlines() if line.startswith("training: ")]
    assert len(lines) == 10, err
    assert re.fullmatch(r"training: 1/10 steps \(10%\), elapsed \d+:\d\d, ETA \d+:\d\d.*", lines[0]), lines[0]
    assert lines[-1].startswith("training: 10/10 steps (100%), elapsed ")
    log = (run / "log.txt").read_text()
    assert all(line in log for line in lines)


def test_progress_in_a_terminal_draws_a_bar_but_log_txt_gets_plain_lines(data_dir, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    run = tmp_path / "run"
    assert main(_train(data_dir, run, "--iterations", "10", "--save_interval", "10", "--progress")) == 0
    assert "\r" in capsys.readouterr().err  # tqdm's bar
    log = (run / "log.txt").read_text()
    assert "\r" not in log and "\x1b" not in log
    assert "training: 10/10 steps (100%)" in log


def test_progress_false_prints_no_progress(data_dir, tmp_path, capsys):
    assert main(_train(data_dir, tmp_path / "run", "--iterations", "4", "--save_interval", "4", "--progress", "false")) == 0
    assert "training: " not in capsys.readouterr().err


def test_max_time_stop_prints_the_resume_command(data_dir, tmp_path, capsys, monkeypatch):
    from guided_diffusion.training import monitor

    monkeypatch.setattr(monitor.RunClock, "out_of_time", lambda self, now=None: True)
    run = tmp_path / "run"
    assert main(_train(data_dir, run, "--iterations", "100", "--save_interval", "50", "--max_time", "1")) == 0
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if "--max_time" in line]
    assert line.startswith("stopped by --max_time 1h at step 1: saved a checkpoint in ") and "resume with: " in line, line
    assert shlex.split(line.split("resume with: ", 1)[1])[-2:] == ["--resume", "auto"]
    assert (run / "model000001.pt").is_file()


@pytest.mark.parametrize(("left", "needed"), [(2.96, 3.04), (59.6, 60.2), (0.2, 0.4), (3599.7, 3600.4), (7199.0, 7201.0)])
def test_max_time_message_never_shows_the_time_left_as_enough(left, needed):
    from guided_diffusion.training.monitor import budget_texts

    left_text, needed_text = budget_texts(left, needed)
    assert left_text != needed_text, (left_text, needed_text)


# -- item 16: the offline Inception error gives advice image_train takes --------------------------------------


def test_offline_inception_error_advises_a_flag_image_train_takes_and_that_flag_works(data_dir, tmp_path, capsys, monkeypatch):
    from helpers import write_random_weights

    from guided_diffusion.evaluation import weights
    from guided_diffusion.runtime.errors import UserError

    def offline(url, dest, **kwargs):
        raise UserError(f"download of {url} failed: network is unreachable")

    monkeypatch.setenv("GUIDED_DIFFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "download", offline)
    watch = ["--iterations", "2", "--save_interval", "2", "--eval_interval", "2", "--eval_data_dir", str(data_dir),
             "--eval_num_samples", "4", "--eval_batch_size", "4", "--sample_steps", "2"]
    message = error_of(capsys, _train(data_dir, tmp_path / "offline", *watch))
    assert "--inception_weights PATH" in message and "classifier:PATH" in message, message
    assert "network is unreachable" in message
    assert not (tmp_path / "offline").exists()

    inception = write_random_weights(tmp_path / "pt_inception.pth")
    assert main(_train(data_dir, tmp_path / "given", *watch, "--inception_weights", str(inception))) == 0
    assert "fid" in (tmp_path / "given" / "metrics.csv").read_text()


def test_inception_weights_that_would_be_ignored_or_missing_are_refused(data_dir, tmp_path, capsys):
    missing = tmp_path / "missing.pth"
    message = error_of(capsys, _train(data_dir, tmp_path / "a", "--iterations", "2", "--inception_weights", str(missing)))
    assert message.startswith("error: --inception_weights") and "eval_interval" in message
    message = error_of(capsys, _train(data_dir, tmp_path / "b", "--iterations", "2", "--eval_interval", "2",
                                      "--eval_data_dir", str(data_dir), "--inception_weights", str(missing)))
    assert message.startswith("error: --inception_weights") and "missing.pth" in message
