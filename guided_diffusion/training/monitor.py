"""Watching a training run: sample grids and sample-quality metrics every N steps, a wall-time budget,
and the progress bar's time to the next save.

Nothing here may change what training computes. Samples are drawn by a private copy of the network
(the training model is never put in eval mode or given other weights), from per-sample noise streams
(`SampleNoise`), and every global generator (Python, NumPy, torch CPU and CUDA) is captured before and
restored after, so a run with grids and metrics has bit-identical weights and losses to one without.

Files in the run directory:
- `samples/STEP_ema_RATE.png`, `samples/STEP_raw.png`: grids of the fixed samples (sample i has seed
  (--sample_seed, i) and class i mod num_classes), with the uint8 images and labels in the `.npz` beside.
- `metrics.csv`: step, weights, FID, precision, recall, feature space, samples; the rows also go to the
  log (`eval_fid`, `eval_precision`, `eval_recall` in progress.csv and TensorBoard).
- `eval_reference.npz`: the held-out folder's feature statistics, computed once.
"""
from __future__ import annotations

import copy
import csv
import io
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from guided_diffusion.runtime import logs
from guided_diffusion.runtime.atomic import atomic_write_bytes, atomic_write_path
from guided_diffusion.runtime.errors import SettingError, UserError
from guided_diffusion.runtime.rng import capture_rng_state, mix_seed, restore_rng_state

__all__ = ["METRICS_FILE", "SAMPLES_DIR", "MissingInceptionWeights", "RunClock", "TrainingMonitor", "WatchOptions", "image_grid", "isolated_rng"]

METRICS_FILE = "metrics.csv"
SAMPLES_DIR = "samples"
REFERENCE_FILE = "eval_reference.npz"
METRIC_COLUMNS = ("step", "weights", "fid", "precision", "recall", "features", "num_samples", "seconds")
_REFERENCE_ROWS = 10_000  # reference features kept for precision/recall, as the released batches
_EVAL_STREAM = 0xE7A1  # the metrics' samples use other noise than the grids


@dataclass(frozen=True)
class WatchOptions:
    """What to watch during a run (flags of `guided_diffusion.training.watch_flags`)."""

    sample_interval: int = 0
    sample_num: int = 16
    sample_steps: int = 25
    sample_sampler: str = "dpm++2m"
    sample_seed: int = 0
    eval_interval: int = 0
    eval_data_dir: str = ""
    eval_num_samples: int = 256
    eval_features: str = "inception"
    eval_batch_size: int = 64
    inception_weights: str = ""  # a local copy of the Inception weights ("" = the cache, downloaded once)
    max_time: float = 0.0  # hours; 0 = no budget

    def validate(self) -> None:
        """Raise a SettingError naming the setting at fault."""
        from guided_diffusion.sampling.samplers import SAMPLERS

        for name in ("sample_interval", "eval_interval"):
            if getattr(self, name) < 0:
                raise SettingError(name, f"{name} must be 0 (off) or positive (got {getattr(self, name)})")
        if self.max_time < 0:
            raise SettingError("max_time", f"max_time must be 0 (no limit) or a positive number of hours (got {self.max_time})")
        if self.sample_interval or self.eval_interval:
            if self.sample_steps < 2:
                raise SettingError("sample_steps", f"sample_steps must be >= 2 (got {self.sample_steps})")
            if self.sample_sampler not in SAMPLERS:
                raise SettingError("sample_sampler", f"sample_sampler {self.sample_sampler!r} is unknown: choose one of {', '.join(SAMPLERS)}")
        if self.sample_interval and self.sample_num < 1:
            raise SettingError("sample_num", f"sample_num must be positive (got {self.sample_num})")
        if self.eval_interval:
            if not self.eval_data_dir:
                raise SettingError("eval_data_dir", "eval_interval needs eval_data_dir, a folder of held-out images to compare samples with")
            if not Path(self.eval_data_dir).is_dir():
                raise SettingError("eval_data_dir", f"eval_data_dir {self.eval_data_dir!r} is not a folder")
            if self.eval_num_samples < 2:
                raise SettingError("eval_num_samples", f"eval_num_samples must be >= 2 for FID statistics (got {self.eval_num_samples})")
            if self.eval_batch_size < 1:
                raise SettingError("eval_batch_size", f"eval_batch_size must be positive (got {self.eval_batch_size})")
            from guided_diffusion.evaluation.features import parse_feature_spec

            try:
                kind, path = parse_feature_spec(self.eval_features)
            except ValueError as exc:
                raise SettingError("eval_features", f"eval_features: {exc}") from None
            if kind == "classifier" and path is not None and not Path(path).is_file():
                raise SettingError("eval_features", f"eval_features {self.eval_features!r}: {path} is not a file; "
                                                    "give the path of one of your classifier checkpoints")
        if self.inception_weights:
            if not self.eval_interval or self.eval_features.strip() != "inception":
                raise SettingError("inception_weights", "inception_weights is only read by eval_interval's metrics "
                                                        "with eval_features 'inception': drop it, or set those")
            if not Path(self.inception_weights).expanduser().is_file():
                raise SettingError("inception_weights", f"inception_weights {self.inception_weights} is not a file; give "
                                                        "the path of pytorch-fid's pt_inception-2015-12-05-6726825d.pth")

    @property
    def draws_samples(self) -> bool:
        return bool(self.sample_interval or self.eval_interval)


@contextmanager
def isolated_rng() -> Iterator[None]:
    """Run a block without disturbing the global generators: their states are restored afterwards."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


def _duration(seconds: float) -> str:
    whole = max(0, round(seconds))
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    if whole >= 60:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole}s"


class MissingInceptionWeights(SettingError):
    """The metrics need the Inception weights, which are neither cached nor downloadable. The ways out
    (a local copy, other features) are the command line's to name."""


def budget_texts(left: float, needed: float) -> tuple[str, str]:
    """`left` and `needed` seconds as texts that differ when the numbers do: whole units first, more
    digits only when rounding would print "3s left, less than ... (3s)"."""
    formats = (_duration, lambda x: f"{x:.0f}s", lambda x: f"{x:.1f}s", lambda x: f"{x:.2f}s", lambda x: f"{x:.3f}s")
    for text in formats:
        if text(left) != text(needed):
            break
    return text(left), text(needed)


class RunClock:
    """Step timing for the progress bar and the wall-time budget.

    The run stops before step k+1 when what is left of the budget is less than the longest time one
    step has taken so far (which includes any save, sample grid or evaluation it triggered) plus the
    estimated time of the final save, so the last checkpoint is written before the limit.
    """

    def __init__(self, *, max_time_hours: float = 0.0, save_interval: int = 0, final_save_seconds: float = 0.0,
                 start: float | None = None):
        self.start = time.monotonic() if start is None else start
        self.limit = max_time_hours * 3600.0 if max_time_hours > 0 else None
        self.save_interval = save_interval
        self.final_save_seconds = final_save_seconds
        self._last: float | None = None
        self.longest_step = 0.0
        self.recent_step: float | None = None  # running mean of plain steps

    def tick(self, now: float | None = None) -> None:
        """Record the end of a step."""
        now = time.monotonic() if now is None else now
        gap = now - (self._last if self._last is not None else self.start)
        if self._last is not None:  # the first gap includes start-up, not a step
            self.recent_step = gap if self.recent_step is None else 0.9 * self.recent_step + 0.1 * min(gap, 3 * self.recent_step)
        self.longest_step = max(self.longest_step, gap)
        self._last = now

    def remaining(self, now: float | None = None) -> float | None:
        if self.limit is None:
            return None
        now = time.monotonic() if now is None else now
        return self.limit - (now - self.start)

    def out_of_time(self, now: float | None = None) -> bool:
        left = self.remaining(now)
        return left is not None and left < self.longest_step + self.final_save_seconds

    def next_save_text(self, step: int) -> str | None:
        if self.recent_step is None or self.save_interval <= 0:
            return None
        steps_left = self.save_interval - step % self.save_interval
        return _duration(steps_left * self.recent_step)


def image_grid(images: np.ndarray, columns: int, zoom: int = 1, pad: int = 1) -> np.ndarray:
    """uint8 NHWC images tiled row by row (sample i at row i // columns) with `pad` white pixels
    between tiles, each tile enlarged `zoom` times (nearest neighbour)."""
    if zoom > 1:
        images = images.repeat(zoom, axis=1).repeat(zoom, axis=2)
    n, h, w, c = images.shape
    rows = math.ceil(n / columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        top, left = pad + (i // columns) * (h + pad), pad + (i % columns) * (w + pad)
        grid[top : top + h, left : left + w] = image
    return grid


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    atomic_write_path(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub types the keywords as allow_pickle
    atomic_write_bytes(path, buffer.getvalue())


def read_metric_rows(run_dir: str | Path) -> list[dict[str, str]]:
    """The rows of RUN_DIR/metrics.csv (none when absent)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [row for row in csv.DictReader(handle) if row.get("step")]


class TrainingMonitor:
    """Grids, metrics, the wall-time budget and the bar's time to the next save for one run.

    The trainer calls `after_step(trainer, bar)` after every step (before logging and saving) and
    asks `out_of_time()` before the next one. Only rank 0 draws and writes.
    """

    def __init__(
        self,
        options: WatchOptions,
        *,
        run_dir: str | Path,
        diffusion_config: Any = None,
        image_shape: tuple[int, int, int] = (3, 64, 64),
        class_cond: bool = False,
        num_classes: int = 0,
        save_interval: int = 0,
        final_save_seconds: float = 0.0,
        rank: int = 0,
        start: float | None = None,
    ):
        self.options = options
        self.run_dir = Path(run_dir)
        self.diffusion_config = diffusion_config
        self.image_shape = tuple(image_shape)
        self.class_cond = class_cond
        self.num_classes = num_classes
        self.rank = rank
        self.clock = RunClock(max_time_hours=options.max_time, save_interval=save_interval,
                              final_save_seconds=final_save_seconds, start=start)
        self._network: torch.nn.Module | None = None
        self._sampling_diffusion: Any = None
        self._extractor: Any = None
        self._reference: dict[str, np.ndarray] | None = None
        self.announced_stop = False
        # Super-resolution runs: (image folder, small size) of the fixed low-resolution inputs.
        self.low_res_source: tuple[str, int] | None = None
        self._low_res: torch.Tensor | None = None

    # --- set-up -----------------------------------------------------------------------------------

    def prepare(self, device: torch.device) -> None:
        """Build the feature extractor and the held-out statistics now, so a missing Inception file or
        an empty folder is reported before training starts (and costs no generator draws)."""
        if not self.options.eval_interval or self.rank != 0:
            return
        from guided_diffusion.evaluation.features import feature_extractor_from_spec
        from guided_diffusion.evaluation.weights import InceptionWeightsUnavailable

        with isolated_rng():
            try:
                self._extractor = feature_extractor_from_spec(self.options.eval_features, device=device,
                                                              batch_size=self.options.eval_batch_size, progress=False,
                                                              inception_weights=self.options.inception_weights or None)
            except InceptionWeightsUnavailable as exc:  # neither cached nor downloadable (a given file is not looked up)
                raise MissingInceptionWeights("eval_features", f"eval_features 'inception' needs the Inception weights: {exc}") from None
            self._reference = self._load_or_compute_reference()

    def _reference_meta(self, files: int) -> str:
        return json.dumps({"data_dir": str(Path(self.options.eval_data_dir).resolve()), "files": files,
                           "image_size": self.image_shape[1], "features": self.options.eval_features.strip()},
                          sort_keys=True)

    def _load_or_compute_reference(self) -> dict[str, np.ndarray]:
        from guided_diffusion.data.files import list_image_files
        from guided_diffusion.data.transforms import center_crop_arr, load_rgb
        from guided_diffusion.evaluation.metrics import statistics

        paths = list_image_files(self.options.eval_data_dir)
        if len(paths) < 2:
            raise SettingError("eval_data_dir", f"eval_data_dir {self.options.eval_data_dir} holds {len(paths)} images: FID needs at least 2")
        meta = self._reference_meta(len(paths))
        cache = self.run_dir / REFERENCE_FILE
        if cache.is_file():
            with np.load(cache, allow_pickle=False) as stored:
                if str(stored["meta"]) == meta:
                    logs.log(f"held-out statistics from {cache}")
                    return {key: stored[key] for key in ("mu", "sigma", "pool")}
        start = time.time()
        pools = []
        size = self.image_shape[1]
        for first in range(0, len(paths), self._extractor.batch_size):
            batch = np.stack([center_crop_arr(load_rgb(p), size) for p in paths[first : first + self._extractor.batch_size]])
            pools.append(np.asarray(self._extractor.extract(batch).pool, dtype=np.float64))
        pool = np.concatenate(pools)
        mu, sigma = statistics(pool)
        if len(pool) > _REFERENCE_ROWS:
            pool = pool[np.sort(np.random.default_rng(0).choice(len(pool), _REFERENCE_ROWS, replace=False))]
        reference = {"mu": mu, "sigma": sigma, "pool": pool}
        if self.rank == 0:
            _write_npz(cache, meta=np.array(meta), **reference)
        logs.log(f"held-out statistics of {len(paths)} images in {self.options.eval_data_dir} ({self.options.eval_features}, "
                   f"{time.time() - start:.1f}s) cached in {cache}")
        return reference

    # --- hooks ------------------------------------------------------------------------------------

    def after_step(self, trainer: Any, bar: Any = None) -> None:
        """Grids and metrics when their intervals come round; bar fields every step."""
        step = trainer.step
        sample = self.options.sample_interval > 0 and step % self.options.sample_interval == 0
        evaluate = self.options.eval_interval > 0 and step % self.options.eval_interval == 0
        if (sample or evaluate) and self.rank == 0:
            with isolated_rng(), torch.no_grad():
                if sample:
                    self.write_grids(trainer)
                if evaluate:
                    self.evaluate(trainer)
        self.clock.tick()
        if bar is not None:
            bar.set_postfix(self.bar_fields(step))

    def out_of_time(self) -> bool:
        """True when the wall-time budget leaves no room for another step and the final save."""
        if not self.clock.out_of_time():
            return False
        if not self.announced_stop:
            left, needed = budget_texts(self.clock.remaining() or 0.0, self.clock.longest_step + self.clock.final_save_seconds)
            logs.log(f"max_time {self.options.max_time:g}h: {left} left, less than one step plus the final save "
                     f"({needed}): saving and stopping")
            self.announced_stop = True
        return True

    def bar_fields(self, step: int) -> dict[str, str]:
        """Progress-bar fields: the running loss and the time to the next checkpoint."""
        values: dict[str, str] = {}
        loss = logs.getkvs().get("loss")
        if isinstance(loss, (int, float)):
            values["loss"] = f"{loss:.4g}"
        next_save = self.clock.next_save_text(step)
        if next_save is not None:
            values["next save"] = next_save
        left = self.clock.remaining()
        if left is not None:
            values["time left"] = _duration(left)
        return values

    # --- sampling ---------------------------------------------------------------------------------

    def weights(self, trainer: Any) -> list[tuple[str, list[torch.Tensor]]]:
        """(tag, parameters) of each EMA rate, then the raw weights."""
        named = [(f"ema_{rate}", ema) for rate, ema in zip(trainer.ema_rate, trainer.ema_params)]
        return named + [("raw", trainer.mp_trainer.master_params)]

    def network_with(self, trainer: Any, params: list[torch.Tensor]) -> torch.nn.Module:
        """The private sampling copy of the network holding `params` (master order)."""
        if self._network is None:
            self._network = copy.deepcopy(trainer.model).eval().requires_grad_(False)
        own = dict(self._network.named_parameters())
        for name, value in zip(trainer.mp_trainer.param_names, params):
            own[name].copy_(value.detach())
        return self._network

    def _diffusion(self) -> Any:
        if self._sampling_diffusion is None:
            steps = self.options.sample_steps
            total = self.diffusion_config.diffusion_steps
            respacing = str(steps) if steps < total else ""
            self._sampling_diffusion = self.diffusion_config.replace(timestep_respacing=respacing).build()
        return self._sampling_diffusion

    def labels_for(self, indices: list[int]) -> np.ndarray | None:
        """Sample i shows class i mod num_classes (None for an unconditional model)."""
        if not self.class_cond or self.num_classes <= 0:
            return None
        return np.asarray(indices, dtype=np.int64) % self.num_classes

    def low_res_inputs(self, indices: list[int], device: torch.device) -> torch.Tensor:
        """Upsampler grids: sample i upsamples the i-th image of the training folder (sorted, cycled),
        center-cropped and area-downsampled to the small size as in training."""
        from guided_diffusion.data.files import list_image_files
        from guided_diffusion.data.transforms import (
            center_crop_arr,
            load_rgb,
            to_model_input,
        )

        assert self.low_res_source is not None
        if self._low_res is None:
            data_dir, small = self.low_res_source
            paths = sorted(list_image_files(data_dir))
            if not paths:
                raise UserError(f"no images in {data_dir} to take the upsampler grids' low-resolution inputs from")
            count = max(indices) + 1
            large = self.image_shape[1]
            images = torch.stack([torch.from_numpy(to_model_input(center_crop_arr(load_rgb(paths[i % len(paths)]), large)))
                                  for i in range(count)])
            self._low_res = torch.nn.functional.interpolate(images, small, mode="area")
        return self._low_res[indices].to(device)

    def draw(self, network: torch.nn.Module, indices: list[int], seed: int, device: torch.device) -> np.ndarray:
        """uint8 NHWC samples `indices` of noise run `seed`."""
        from guided_diffusion.sampling.draw import draw, to_numpy_uint8
        from guided_diffusion.sampling.guidance import GuidedModel
        from guided_diffusion.sampling.settings import SamplerSettings

        labels = self.labels_for(indices)
        kwargs = {"low_res": self.low_res_inputs(indices, device)} if self.low_res_source is not None else None
        x = draw(GuidedModel(network, class_cond=self.class_cond), self._diffusion(), indices=indices, seed=seed,
                 image_shape=self.image_shape, device=device, settings=SamplerSettings(sampler=self.options.sample_sampler),
                 labels=labels, model_kwargs=kwargs)
        return to_numpy_uint8(x)

    def _grid_columns(self, count: int) -> int:
        if self.class_cond and 0 < self.num_classes <= 16 and count >= self.num_classes:
            return self.num_classes  # one column per class
        return max(1, math.ceil(math.sqrt(count)))

    def write_grids(self, trainer: Any) -> list[Path]:
        """samples/STEP_TAG.png (+ .npz) for every EMA rate and the raw weights."""
        start = time.time()
        indices = list(range(self.options.sample_num))
        labels = self.labels_for(indices)
        zoom = max(1, 64 // self.image_shape[1])
        written = []
        for tag, params in self.weights(trainer):
            images = self.draw(self.network_with(trainer, params), indices, self.options.sample_seed, trainer.device)
            grid = image_grid(images, self._grid_columns(len(images)), zoom=zoom)
            stem = f"{trainer.step:06d}_{tag}"  # not Path.with_suffix: rates like 0.9 have a dot
            extra = {"labels": labels} if labels is not None else {}
            _write_npz(self.run_dir / SAMPLES_DIR / f"{stem}.npz", images=images, **extra)
            _write_png(self.run_dir / SAMPLES_DIR / f"{stem}.png", grid)
            self._to_tensorboard(f"samples/{tag}", grid, trainer.step)
            written.append(self.run_dir / SAMPLES_DIR / f"{stem}.png")
        logs.logkv("sample_seconds", time.time() - start)
        return written

    def _to_tensorboard(self, tag: str, grid: np.ndarray, step: int) -> None:
        for output in getattr(logs.get_current(), "output_formats", []):
            writer = getattr(output, "writer", None)
            if writer is not None and hasattr(writer, "add_image"):
                writer.add_image(tag, grid, step, dataformats="HWC")
                writer.flush()

    # --- metrics ----------------------------------------------------------------------------------

    def evaluate(self, trainer: Any) -> dict[str, Any]:
        """FID, precision and recall of --eval_num_samples samples from the first EMA rate (the raw
        weights when there is none) against the held-out statistics; a metrics.csv row and log keys."""
        from guided_diffusion.evaluation.metrics import (
            frechet_distance,
            precision_recall,
            statistics,
        )

        if self._reference is None:
            self.prepare(trainer.device)
        start = time.time()
        tag, params = self.weights(trainer)[0]
        network = self.network_with(trainer, params)
        seed = mix_seed(self.options.sample_seed, _EVAL_STREAM)
        pools = []
        total = self.options.eval_num_samples
        for first in range(0, total, self.options.eval_batch_size):
            indices = list(range(first, min(first + self.options.eval_batch_size, total)))
            images = self.draw(network, indices, seed, trainer.device)
            pools.append(np.asarray(self._extractor.extract(images).pool, dtype=np.float64))
        pool = np.concatenate(pools)
        mu, sigma = statistics(pool)
        reference = self._reference
        assert reference is not None and self._extractor is not None  # prepare() ran
        fid = frechet_distance(reference["mu"], reference["sigma"], mu, sigma, method="eigh")
        precision, recall = precision_recall(reference["pool"], pool, k=3, device=self._extractor.device)
        row = {"step": trainer.step, "weights": tag, "fid": f"{fid:.6g}", "precision": f"{precision:.6g}",
               "recall": f"{recall:.6g}", "features": self.options.eval_features.strip(), "num_samples": total,
               "seconds": f"{time.time() - start:.2f}"}
        self._append_metric_row(row)
        logs.logkv("eval_fid", fid)
        logs.logkv("eval_precision", precision)
        logs.logkv("eval_recall", recall)
        best = best_metric_row(read_metric_rows(self.run_dir), features=self.options.eval_features.strip())
        note = f"; best FID {best['fid']} at step {best['step']}" if best is not None else ""
        logs.log(f"step {trainer.step}: FID {fid:.4g}, precision {precision:.3f}, recall {recall:.3f} "
                   f"({total} samples, {tag}, {self.options.eval_features.strip()} features){note}")
        return row

    def _append_metric_row(self, row: dict[str, Any]) -> None:
        # A resumed run may redo a step it evaluated before it was stopped: the new row replaces it.
        rows = [r for r in read_metric_rows(self.run_dir) if int(r["step"]) != int(row["step"])]
        rows.append({key: str(value) for key, value in row.items()})
        rows.sort(key=lambda r: int(r["step"]))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(METRIC_COLUMNS), restval="")
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in METRIC_COLUMNS} for r in rows)
        atomic_write_bytes(self.run_dir / METRICS_FILE, buffer.getvalue().encode())


def best_metric_row(rows: list[dict[str, str]], features: str | None = None) -> dict[str, str] | None:
    """The row with the lowest FID (None without rows), among the rows of feature space `features`
    when given: FIDs in different feature spaces are different quantities, and a run resumed with
    other eval_features starts a series of its own."""
    if features is not None:
        rows = [r for r in rows if r.get("features", "") == features]
    scored = [r for r in rows if r.get("fid") not in (None, "", "nan")]
    return min(scored, key=lambda r: float(r["fid"])) if scored else None


def estimated_save_seconds(num_params: int, num_ema: int, bytes_per_second: float = 50e6) -> float:
    """A pessimistic time for one checkpoint set: model (4 B/param), Adam state (8 B/param) and each
    EMA (4 B/param) written at `bytes_per_second`, plus a second."""
    return 1.0 + num_params * 4 * (3 + num_ema) / bytes_per_second
