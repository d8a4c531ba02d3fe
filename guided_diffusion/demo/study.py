"""The guided-diffusion study on scikit-learn digits, end to end: train the diffusion model, the noisy
classifier that guides it and an independent judge; sample at each guidance scale with each sampler;
score every setting in the judge's feature space; write checkpoints, grids, plot, metrics and report."""
from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from guided_diffusion.demo.data import InMemoryBatches, load_digits_dataset, require_demo_extras, to_model_input
from guided_diffusion.demo.generate import balanced_labels, sample_images
from guided_diffusion.demo.judge import JudgeFeatures
from guided_diffusion.demo.metrics import Reference, SettingMetrics, score_samples
from guided_diffusion.demo.report import setting_name, write_grid, write_metrics, write_plot, write_report
from guided_diffusion.demo.result import StudyResult
from guided_diffusion.demo.settings import StudySettings
from guided_diffusion.demo.train import TrainedNetwork, train_network
from guided_diffusion.runtime.errors import SettingError
from guided_diffusion.runtime.logs import ProgressReporter
from guided_diffusion.runtime.rng import mix_seed
from guided_diffusion.sampling.output import save_npz

__all__ = ["run_study", "classifier_sample_command"]

# Stage tags keep the seeds of the stages independent of each other.
_UNET, _GUIDE, _JUDGE = 1, 2, 3


def classifier_sample_command(unet: TrainedNetwork, guide: TrainedNetwork, *, scale: float, sampler: str, respacing: str,
                              num_samples: int, batch_size: int, seed: int, num_classes: int, out_dir: Path) -> str:
    """The `guided-diffusion classifier_sample` line that redraws one setting of the study from its
    checkpoints (architecture flags come from the config.json beside each checkpoint)."""
    args = [
        "guided-diffusion", "classifier_sample",
        "--model_path", str(unet.checkpoint), "--classifier_path", str(guide.checkpoint),
        "--classifier_scale", f"{scale:g}", "--sampler", sampler, "--timestep_respacing", respacing,
        "--num_samples", str(num_samples), "--batch_size", str(batch_size),
        "--class_labels", ",".join(str(c) for c in range(num_classes)), "--seed", str(seed),
        "--out_dir", str(out_dir),
    ]
    return shlex.join(args)


def _noisy_accuracy(guide: torch.nn.Module, diffusion, images: torch.Tensor, labels: torch.Tensor, t: int, seed: int) -> float:
    """The guidance classifier's accuracy on held-out images noised to timestep t."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=generator).to(images.device)  # the same noise on any device
    steps = torch.full((len(images),), t, dtype=torch.long, device=images.device)
    with torch.no_grad():
        logits = guide(diffusion.q_sample(images, steps, noise=noise), steps)
    return float((logits.argmax(1) == labels.to(logits.device)).float().mean())


def run_study(out_dir: str | Path, *, seed: int, settings: StudySettings, progress: bool | None = False,
              echo: Callable[[str], None] = print, overwrite: bool = False, device: torch.device | None = None) -> StudyResult:
    """Run the whole study into `out_dir` and return its results (also written there). A previous
    run's files there are replaced only with `overwrite`: an `out_dir` that is not empty is refused
    otherwise, so no earlier checkpoints go silently. `progress`: False silent, else a bar in a
    terminal and plain lines outside one (`runtime.logs.ProgressReporter`). `device`: where the networks
    train, sample and score (None: they train on the GPU, else the CPU, and sample on the CPU)."""
    start = time.perf_counter()
    require_demo_extras()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SettingError("out_dir", f"out_dir {out_dir} is a file, not a directory: pass a directory to write the study to")
    if out_dir.is_dir() and not overwrite and any(out_dir.iterdir()):
        raise SettingError("out_dir", f"out_dir {out_dir} is not empty: the study would replace its files; set overwrite, "
                                      "or choose an empty or new out_dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    stage_seconds: dict[str, float] = {}
    digits = load_digits_dataset()
    train_images, train_labels = digits.subset(digits.train)
    test_images, test_labels = digits.subset(digits.test)
    s = settings
    echo(f"data: {len(digits.labels)} scikit-learn digits, 8x8, 10 classes "
         f"({len(digits.train)} for training, {len(digits.test)} held out)")

    def train(name: str, config, spec, tag: int, with_labels: bool) -> TrainedNetwork:
        begin = time.perf_counter()
        params = sum(p.numel() for p in config.build().parameters())
        echo(f"training {name}: {params / 1e6:.2f}M parameters, {spec.steps} steps of {spec.batch_size} images")
        data = InMemoryBatches(train_images, train_labels, spec.batch_size, seed=mix_seed(seed, tag, 0), with_labels=with_labels)
        net = train_network(config, s.diffusion, data, spec, run_dir=out_dir / "checkpoints" / name,
                            seed=mix_seed(seed, tag, 1), progress=progress, device=device)
        stage_seconds[name] = time.perf_counter() - begin
        return net

    unet = train("diffusion", s.unet, s.unet_training, _UNET, with_labels=False)
    guide = train("classifier", s.guide, s.guide_training, _GUIDE, with_labels=True)
    judge_net = train("judge", s.judge, s.judge_training, _JUDGE, with_labels=True)

    judge = JudgeFeatures(judge_net.model)
    judge_accuracy = float(np.mean(judge.predict(test_images) == test_labels))
    diffusion = s.diffusion.build()
    held_out = to_model_input(test_images) if device is None else to_model_input(test_images).to(device)
    held_labels = torch.as_tensor(test_labels)
    guide_accuracy = {t: _noisy_accuracy(guide.model, diffusion, held_out, held_labels, t, mix_seed(seed, _GUIDE, 2))
                      for t in (0, 250, 500, 750)}
    echo(f"held-out accuracy: judge {judge_accuracy:.3f}; noisy classifier "
         + ", ".join(f"{acc:.2f} at t={t}" for t, acc in guide_accuracy.items()))

    begin = time.perf_counter()
    reference = Reference.of(judge.extract(test_images))
    sampling_diffusion = s.diffusion.replace(timestep_respacing=s.respacing)
    labels = balanced_labels(s.num_samples, s.unet.num_classes)
    metrics: list[SettingMetrics] = []
    files: dict[str, Path] = {}
    settings_list = [(sampler, scale) for sampler in s.samplers for scale in s.scales]
    echo(f"sampling {s.num_samples} images ({s.samples_per_class} per class) with {', '.join(s.samplers)} in "
         f"{s.sampling_steps} steps at classifier scales {', '.join(f'{v:g}' for v in s.scales)}")
    reporter = ProgressReporter(len(settings_list), "settings", progress=progress, label="sampling")
    for sampler, scale in settings_list:
        images = sample_images(unet.model, s.unet, sampling_diffusion, guide.model, s.guide, labels=labels, scale=scale,
                               sampler=sampler, seed=seed, batch_size=s.sample_batch_size)
        name = setting_name(sampler, scale)
        files[f"samples {name}"] = save_npz(out_dir / "samples" / f"{name}.npz", images, labels)
        files[f"grid {name}"] = write_grid(out_dir / "grids" / f"{name}.png", images, labels, s.unet.num_classes)
        metrics.append(score_samples(judge, reference, images, labels, sampler=sampler, scale=scale))
        reporter.update()
    reporter.close()
    stage_seconds["sampling and scoring"] = time.perf_counter() - begin

    cli_scale = 4.0 if 4.0 in s.scales else max(s.scales)
    command = classifier_sample_command(
        unet, guide, scale=cli_scale, sampler=s.samplers[-1], respacing=s.respacing, num_samples=s.num_samples,
        batch_size=s.sample_batch_size, seed=seed, num_classes=s.unet.num_classes, out_dir=out_dir / "cli_samples",
    )
    seconds = time.perf_counter() - start
    result = StudyResult(out_dir=out_dir, metrics=metrics, seconds=seconds, judge_test_accuracy=judge_accuracy,
                         guide_test_accuracy=guide_accuracy, command=command, num_test_images=len(test_labels),
                         checkpoints={"diffusion": unet.checkpoint, "classifier": guide.checkpoint, "judge": judge_net.checkpoint},
                         files=files, stage_seconds=stage_seconds)
    files["plot"] = write_plot(out_dir / "guidance_plot.png", metrics)
    files["metrics"] = write_metrics(out_dir / "metrics.json", metrics, seconds)
    files["report"] = write_report(out_dir / "report.md", result, settings, seed)
    return result
