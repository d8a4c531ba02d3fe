"""The training job as a library: every flag of the three training commands lands in a frozen `TrainingJob`,
the job is checked when built, `run_training` trains a job made in Python exactly as the command trains
its flags, and fine-tuning resolves its settings through the one resolver (`config.resolve`)."""
from __future__ import annotations

import dataclasses
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from helpers import make_blob_dataset

from guided_diffusion.cli import main
from guided_diffusion.cli.train import build_parser
from guided_diffusion.config import ClassifierConfig, DiffusionConfig, ModelConfig, SuperResConfig
from guided_diffusion.config.resolve import typed_flags
from guided_diffusion.runtime import logs
from guided_diffusion.runtime.errors import SettingError
from guided_diffusion.training import (
    ClassifierOptions,
    TrainingJob,
    TrainingOptions,
    resolve_training_job,
    run_training,
)
from guided_diffusion.training.finetune import FineTuneSource
from guided_diffusion.training.monitor import WatchOptions

COMMANDS = {"image_train": "diffusion", "super_res_train": "superres", "classifier_train": "classifier"}
# Flags that say how to run a job rather than what it is, and the fine-tuning source (`job.init_from`).
RUN_FLAGS = {"progress", "device", "init_from"}
SMALL_NET = dict(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1", attention_resolutions="", learn_sigma=True)
SMALL_FLAGS = ["--image_size", "8", "--num_channels", "32", "--num_res_blocks", "1", "--channel_mult", "1",
               "--attention_resolutions", "", "--learn_sigma", "True"]


def _parts(job: TrainingJob) -> list[object]:
    # a classifier's own options first: its eval_interval is not the metrics' of `watch`
    return [job.network, job.diffusion, job.options, *([job.classifier_options] if job.classifier_options else []), job.watch]


def _field_value(job: TrainingJob, name: str) -> object:
    for part in _parts(job):
        if name in {f.name for f in dataclasses.fields(part)}:
            return getattr(part, name)
    raise AssertionError(f"flag {name} is in no part of the job")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_of_a_training_command_lands_in_its_job(command):
    parser = build_parser(command)
    argv = ["--data_dir", "d", "--seed", "5", "--max_time", "2"]
    args = vars(parser.parse_args(argv))
    job = resolve_training_job(COMMANDS[command], args, typed_flags(parser, argv))
    assert job.kind == COMMANDS[command]
    for name, value in args.items():
        if name not in RUN_FLAGS:
            assert _field_value(job, name) == value, name
    assert job.options.seed == 5 and job.watch.max_time == 2.0
    # a negative seed means "draw one"
    assert resolve_training_job(COMMANDS[command], vars(parser.parse_args(["--seed", "-1"]))).options.seed is None
    # the classifier's eval_interval is its validation interval, not the metrics'
    if command == "classifier_train":
        assert job.classifier_options == ClassifierOptions(eval_interval=5) and job.watch == WatchOptions(max_time=2.0)


def test_a_job_is_frozen_and_checked_when_built(monkeypatch):
    monkeypatch.delenv("OPENAI_LOGDIR", raising=False)
    job = TrainingJob(network=ModelConfig(**SMALL_NET), diffusion=DiffusionConfig(learn_sigma=True))
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.options = TrainingOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.options.lr = 1.0
    cases = [
        (dict(options=TrainingOptions(log_interval=0)), "log_interval"),
        (dict(options=TrainingOptions(ema_rate="1.5")), "ema_rate"),
        (dict(options=TrainingOptions(use_bf16=True), network=ModelConfig(**SMALL_NET, use_fp16=True)), "use_bf16"),
        (dict(options=TrainingOptions(resume="auto")), "resume"),  # no run directory to continue in
        (dict(network=ModelConfig(**{**SMALL_NET, "image_size": 10, "channel_mult": "1,2,4"})), "image_size"),
        (dict(network=ModelConfig(**SMALL_NET, class_dropout_prob=0.1)), "class_dropout_prob"),
        (dict(watch=WatchOptions(sample_interval=-1)), "sample_interval"),
        (dict(classifier_options=ClassifierOptions()), "classifier_options"),
    ]
    for changes, setting in cases:
        with pytest.raises(SettingError) as caught:
            dataclasses.replace(job, **changes)
        assert caught.value.setting == setting, (changes, caught.value)
    classifier = TrainingJob(network=ClassifierConfig(image_size=8, classifier_channel_mult="1,2"), diffusion=DiffusionConfig())
    assert classifier.kind == "classifier" and classifier.classifier_options == ClassifierOptions()
    with pytest.raises(SettingError, match="sample_interval 5 would be ignored: a classifier run draws no samples"):
        dataclasses.replace(classifier, watch=WatchOptions(sample_interval=5))
    assert classifier.saved_config()["noised"] is True
    assert "noised" not in job.saved_config()


def test_a_job_built_in_python_trains_exactly_as_the_command(tmp_path):
    data = make_blob_dataset(tmp_path / "data", count=8, size=8)
    common = ["--data_dir", str(data), "--batch_size", "4", "--iterations", "2", "--save_interval", "2", "--seed", "3",
              "--num_workers", "0", "--dropout", "0.1", "--ema_rate", "0.9", "--diffusion_steps", "50", "--progress", "False"]
    assert main(["image_train", "--log_dir", str(tmp_path / "cli"), *SMALL_FLAGS, *common]) == 0
    job = TrainingJob(
        network=ModelConfig(**SMALL_NET, dropout=0.1),
        diffusion=DiffusionConfig(learn_sigma=True, diffusion_steps=50),
        options=TrainingOptions(data_dir=str(data), log_dir=str(tmp_path / "api"), batch_size=4, iterations=2, save_interval=2,
                                seed=3, num_workers=0, ema_rate="0.9"),
    )
    printed = io.StringIO()
    with logs.scoped_configure(dir=str(tmp_path / "caller"), format_strs=["log"]) as caller, redirect_stdout(printed):
        outcome = run_training(job, progress=False, console=False)
        assert logs.get_current() is caller  # the caller's logger is back
    assert printed.getvalue() == ""  # console=False: the log lines went to the run's files only
    assert outcome.run_dir == tmp_path / "api" and outcome.step == 2 and outcome.stop is None
    assert "training..." in (tmp_path / "api" / "log.txt").read_text()
    for name in ("model000002.pt", "ema_0.9_000002.pt", "opt000002.pt", "config.json"):
        assert (tmp_path / "api" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name


def test_a_classifier_run_records_whether_it_was_noised(tmp_path):
    data = make_blob_dataset(tmp_path / "data", count=8, size=8)
    job = TrainingJob(
        network=ClassifierConfig(image_size=8, classifier_width=32, classifier_depth=1, classifier_attention_resolutions="",
                                 classifier_channel_mult="1,2", classifier_pool="adaptive", num_classes=2),
        diffusion=DiffusionConfig(diffusion_steps=50),
        options=TrainingOptions(data_dir=str(data), log_dir=str(tmp_path / "run"), batch_size=4, iterations=1,
                                save_interval=1, seed=0, num_workers=0),
        classifier_options=ClassifierOptions(noised=False),
    )
    run_training(job, progress=False, console=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["kind"] == "classifier" and saved["noised"] is False and saved["model"]["num_classes"] == 2


# -- fine-tuning through the one resolver ------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small class-conditional run's checkpoint, with its config.json (dropout 0.1, 2 classes)."""
    root = tmp_path_factory.mktemp("base")
    data = make_blob_dataset(root / "data", count=8, size=8)
    assert main(["image_train", "--data_dir", str(data), "--log_dir", str(root / "run"), *SMALL_FLAGS, "--class_cond", "True",
                 "--num_classes", "2", "--dropout", "0.1", "--diffusion_steps", "50", "--noise_schedule", "cosine",
                 "--iterations", "1", "--save_interval", "1", "--batch_size", "4", "--num_workers", "0",
                 "--progress", "False"]) == 0
    return root / "run" / "model000001.pt"


def _image_train(argv: list[str]) -> TrainingJob:
    parser = build_parser("image_train")
    return resolve_training_job("diffusion", vars(parser.parse_args(argv)), typed_flags(parser, argv))


def test_fine_tuning_takes_the_architecture_from_the_checkpoint_and_typed_labels_win(checkpoint):
    job = _image_train(["--init_from", str(checkpoint), "--num_classes", "5"])
    assert job.init_from == FineTuneSource(str(checkpoint), None, checkpoint)
    assert job.network.num_classes == 5 and job.network.class_cond is True  # typed; from the checkpoint
    assert (job.network.image_size, job.network.num_channels, job.network.channel_mult) == (8, 32, "1")
    assert (job.diffusion.diffusion_steps, job.diffusion.noise_schedule, job.diffusion.learn_sigma) == (50, "cosine", True)
    # dropout is a choice of the run, not a property of the weights: the checkpoint's does not carry over
    assert job.network.dropout == 0.0
    assert _image_train(["--init_from", str(checkpoint), "--dropout", "0.1"]).network.dropout == 0.1
    with pytest.raises(SettingError, match=r"^num_channels 64 disagrees with model000001.pt's 32") as caught:
        _image_train(["--init_from", str(checkpoint), "--num_channels", "64"])
    assert caught.value.setting == "num_channels"
    assert _image_train(["--init_from", str(checkpoint), "--num_channels", "32"]).network.num_channels == 32


def test_fine_tuning_a_preset_resolves_its_flags_without_downloading(monkeypatch, tmp_path):
    from guided_diffusion.weights import fetch

    monkeypatch.setenv("GUIDED_DIFFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fetch, "fetch", lambda *a, **k: pytest.fail("a job is built without downloading"))
    job = _image_train(["--init_from", "64x64_diffusion", "--num_classes", "5"])
    assert job.init_from is not None and job.init_from.preset is not None and job.init_from.local is None
    assert job.init_from.path == tmp_path / "cache" / "64x64_diffusion.pt"
    network = job.network
    assert (network.num_channels, network.num_res_blocks, network.use_new_attention_order, network.num_classes) == (192, 3, True, 5)
    assert (job.diffusion.noise_schedule, job.diffusion.learn_sigma) == ("cosine", True)
    with pytest.raises(SettingError, match="init_from 64_256_upsampler: that preset is an upsampler, not a diffusion model"):
        _image_train(["--init_from", "64_256_upsampler"])
    parser = build_parser("super_res_train")
    upsampler = resolve_training_job("superres", vars(parser.parse_args(["--init_from", "64_256_upsampler"])), {"init_from"})
    assert isinstance(upsampler.network, SuperResConfig) and upsampler.network.large_size == 256


def test_fine_tuning_refuses_a_checkpoint_of_another_kind(tmp_path, checkpoint):
    parser = build_parser("super_res_train")
    with pytest.raises(SettingError, match="is a diffusion model checkpoint, not a super-resolution model") as caught:
        resolve_training_job("superres", vars(parser.parse_args(["--init_from", str(checkpoint)])), {"init_from"})
    assert caught.value.setting == "init_from"


# -- where and how precisely a run trains ------------------------------------------------------------------


def test_device_and_bf16_on_this_machine(tmp_path, capsys, monkeypatch):
    from guided_diffusion.runtime import autocast

    data = make_blob_dataset(tmp_path / "data", count=4, size=8)
    argv = ["image_train", "--data_dir", str(data), *SMALL_FLAGS, "--batch_size", "4", "--iterations", "1",
            "--save_interval", "1", "--num_workers", "0", "--diffusion_steps", "50", "--progress", "False"]
    assert main([*argv, "--log_dir", str(tmp_path / "cpu"), "--device", "cpu"]) == 0
    assert "rank(s) on cpu;" in (tmp_path / "cpu" / "log.txt").read_text()
    capsys.readouterr()
    assert main([*argv, "--log_dir", str(tmp_path / "none"), "--device", "quantum"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --device 'quantum' is not a device name") and "\n" not in err
    assert not (tmp_path / "none").exists()
    # bf16 where it is only emulated: one warning, and the run still trains
    monkeypatch.setattr(autocast, "bf16_slowness", lambda device: f"bf16 is emulated on {device}")
    job = TrainingJob(network=ModelConfig(**SMALL_NET), diffusion=DiffusionConfig(learn_sigma=True, diffusion_steps=50),
                      options=TrainingOptions(data_dir=str(data), log_dir=str(tmp_path / "bf16"), batch_size=4, iterations=1,
                                              save_interval=1, num_workers=0, use_bf16=True))
    with pytest.warns(RuntimeWarning, match="bf16 is emulated on cpu"):
        assert run_training(job, device="cpu", progress=False, console=False).step == 1
