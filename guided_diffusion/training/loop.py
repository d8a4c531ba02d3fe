"""The training loop shared by diffusion models, upsamplers and noisy classifiers.

One step: split the rank's batch into microbatches, backpropagate each (gradients averaged over
the batch unless the original's summing is asked for; DDP syncs on the last), apply the update
through `MixedPrecisionTrainer`, update the EMAs when a step was taken, log. The learning rate at
step k is lr * (1 - k / anneal_steps) when annealing. Checkpoints every `save_interval` steps and
at the end; SIGINT/SIGTERM finish the current step, save and stop.
"""
from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from guided_diffusion.data.dataset import ImageBatch
from guided_diffusion.data.stream import ImageStream
from guided_diffusion.runtime import distributed, logs
from guided_diffusion.runtime.atomic import remove_stale_temp_files
from guided_diffusion.runtime.autocast import autocast
from guided_diffusion.runtime.errors import SettingError, UserError
from guided_diffusion.runtime.logs import ProgressReporter
from guided_diffusion.runtime.rng import capture_rng_state, per_example_draws, restore_rng_state
from guided_diffusion.training import snapshots
from guided_diffusion.training.ema import parse_ema_rates, update_ema
from guided_diffusion.training.precision import INITIAL_LOG_LOSS_SCALE, MixedPrecisionTrainer, check_precision_choice
from guided_diffusion.training.timestep_sampling import LossAwareSampler, ScheduleSampler, UniformSampler
from guided_diffusion.weights.checkpoints import diagnose_mismatch


@dataclass
class TrainBatch:
    """A rank's batch on the training device: images, model kwargs, per-example seeds (or None
    when the data source has none; then the global generators are used, as the original)."""

    images: torch.Tensor
    cond: dict[str, torch.Tensor]
    seeds: torch.Tensor | None

    @classmethod
    def from_item(cls, item: ImageBatch | tuple[torch.Tensor, dict], *, labels: bool) -> TrainBatch:
        """A batch from a data source: an `ImageBatch` (its labels become `y` when `labels`), or the
        original's (images, cond) pair, used as given."""
        if isinstance(item, ImageBatch):
            return cls(images=item.images, cond={"y": item.labels} if labels else {}, seeds=item.seeds)
        images, cond = item
        return cls(images=images, cond=dict(cond), seeds=None)

    def to(self, device: torch.device) -> TrainBatch:
        """The batch on `device` (asynchronous copies on a GPU)."""
        non_blocking = device.type == "cuda"
        return TrainBatch(
            images=self.images.to(device, non_blocking=non_blocking),
            cond={k: v.to(device, non_blocking=non_blocking) for k, v in self.cond.items()},
            seeds=self.seeds,
        )

    def __len__(self) -> int:
        return self.images.shape[0]

    def slice(self, start: int, stop: int) -> TrainBatch:
        return TrainBatch(
            images=self.images[start:stop],
            cond={k: v[start:stop] for k, v in self.cond.items()},
            seeds=None if self.seeds is None else self.seeds[start:stop],
        )


@dataclass(frozen=True)
class LoopSettings:
    """The loop's settings a run chooses (the original's flag names where they exist): batch, optimizer,
    EMA rates, how often to log and save, when to stop, reduced precision and clipping."""

    batch_size: int = 1
    microbatch: int = -1
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema_rate: str | float = "0.9999"  # a number or a comma list (`parse_ema_rates`)
    log_interval: int = 10
    save_interval: int = 10000
    lr_anneal_steps: int = 0
    iterations: int = 0
    use_bf16: bool = False
    fp16_scale_growth: float = 1e-3
    min_lg_loss_scale: float = 0.0
    grad_clip: float = 0.0
    sum_microbatch_grads: bool = False
    keep_last: int = 0

    def check(self) -> None:
        """Raise a SettingError naming the first setting no run can have (the EMA rates are checked by
        the job, since classifiers keep none)."""
        for name in ("log_interval", "save_interval"):
            if getattr(self, name) <= 0:
                raise SettingError(name, f"{name} must be positive (got {getattr(self, name)})")
        if self.keep_last < 0:
            raise SettingError("keep_last", f"keep_last must be 0 (keep all) or positive (got {self.keep_last})")
        if self.grad_clip < 0:
            raise SettingError("grad_clip", f"grad_clip must be 0 (off) or positive (got {self.grad_clip})")
        if self.batch_size < 1:
            raise SettingError("batch_size", f"batch_size must be at least 1 (got {self.batch_size})")
        if not math.isfinite(self.fp16_scale_growth) or self.fp16_scale_growth < 0:
            raise SettingError("fp16_scale_growth", f"fp16_scale_growth must be a finite number >= 0 (got {self.fp16_scale_growth})")
        if self.iterations < 0:
            raise SettingError("iterations", "iterations must be 0 (stop at lr_anneal_steps, or never) or a positive step "
                                             f"count (got {self.iterations})")
        if self.lr_anneal_steps < 0:
            raise SettingError("lr_anneal_steps", f"lr_anneal_steps must be 0 (off) or positive (got {self.lr_anneal_steps})")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise SettingError(name, f"{name} must be a finite number >= 0 (got {value})")


@dataclass(frozen=True)
class LoopOptions(LoopSettings):
    """Everything the loop reads: the run's `LoopSettings` and what the run assembly derives from the
    network (precision, labels, the upsampler's input size) and from its caller (progress, signals, seed)."""

    use_fp16: bool = False
    initial_lg_loss_scale: float = INITIAL_LOG_LOSS_SCALE
    class_cond: bool = False
    class_dropout_prob: float = 0.0
    num_classes: int = 1000
    low_res_size: int = 0  # super-resolution: downsample the batch to this size as `low_res`
    progress: bool | None = True  # False: silent; else a bar in a terminal, plain lines outside one
    handle_signals: bool = False
    seed: int = 0

    def ema_rates(self) -> list[float]:
        return parse_ema_rates(self.ema_rate)

    def total_steps(self) -> int | None:
        """Where training stops (None: never, as the original without lr_anneal_steps)."""
        candidates = [n for n in (self.iterations, self.lr_anneal_steps) if n > 0]
        return min(candidates) if candidates else None


class _StopRequest:
    """Turns SIGINT/SIGTERM into a request to save and stop after the current step."""

    def __init__(self, enabled: bool):
        self.requested = False
        self.signal_name: str | None = None  # "SIGTERM" once one arrived
        self._previous: dict[int, Any] = {}
        if enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._previous[sig] = signal.signal(sig, self._handle)
                except ValueError:  # not the main thread
                    break

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        logs.log(f"received {self.signal_name}: finishing this step, saving a checkpoint and stopping (Ctrl-C again to abort)")

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class TrainerBase:
    """Optimizer, precision, DDP, checkpoints, logging and the loop; subclasses say what a
    microbatch's loss is."""

    kind = "model"
    has_ema = True
    # Set by the run assembly when asked for (None keeps the original behaviour): a
    # `training.monitor.TrainingMonitor` (grids, metrics, time budget) and a `training.ema.EMAWarmup`.
    monitor: Any = None
    ema_warmup: Any = None
    # Why the last `run()` stopped before its end: a signal's name ("SIGTERM"), "max_time", or None.
    stop_reason: str | None = None
    progress: ProgressReporter | None = None

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        diffusion: Any,
        data: Iterator[Any],
        options: LoopOptions,
        run_dir: str | os.PathLike | None = None,
        schedule_sampler: ScheduleSampler | None = None,
        device: torch.device | None = None,
    ):
        self.options = options
        self.diffusion = diffusion
        self.data = data
        self.device = device if device is not None else distributed.dev()  # default: this rank's GPU, else the CPU
        self.rank = distributed.get_rank()
        self.world_size = distributed.get_world_size()
        self.run_dir = Path(run_dir if run_dir is not None else logs.get_dir())
        self.schedule_sampler = schedule_sampler or UniformSampler(diffusion)
        check_precision_choice(options.use_fp16, options.use_bf16)
        self.model = model.to(self.device)
        self.mp_trainer = MixedPrecisionTrainer(
            model=self.model,
            use_fp16=options.use_fp16,
            fp16_scale_growth=options.fp16_scale_growth,
            initial_lg_loss_scale=options.initial_lg_loss_scale,
            min_lg_loss_scale=options.min_lg_loss_scale,
            max_grad_norm=options.grad_clip,
        )
        self.opt = torch.optim.AdamW(self.mp_trainer.master_params, lr=options.lr, weight_decay=options.weight_decay)
        self.ema_rate = options.ema_rates() if self.has_ema else []
        self.ema_params = [[p.detach().clone().float() for p in self.mp_trainer.master_params] for _ in self.ema_rate]
        self.step = 0
        self.resume_step = 0
        self.resumed_from: int | None = None
        self.seed = options.seed
        self._restored_rng: dict | None = None
        self._last_saved_step: int | None = None
        self.ddp_model: torch.nn.Module
        if self.world_size > 1:
            device_ids = [self.device] if self.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(
                self.model,
                device_ids=device_ids,
                output_device=device_ids[0] if device_ids else None,
                broadcast_buffers=False,
                bucket_cap_mb=128,
                find_unused_parameters=False,
            )
        else:
            self.ddp_model = self.model
        self.global_batch = options.batch_size * self.world_size

    # --- resume ---------------------------------------------------------------------------------

    def load_resume_point(self, point: snapshots.ResumePoint) -> None:
        """Restore weights, EMAs, optimizer and (when recorded) the exact training state. Every
        rank reads the files itself: no collective, no deadlock."""
        logs.log(point.describe())
        model_state, opt_state, ema_states = snapshots.load_resume_files(point, self.device)
        problems = diagnose_mismatch(model_state, self.model)
        if problems:
            raise UserError(f"{point.model} does not match the model settings: " + "; ".join(problems))
        self.mp_trainer.load_master_params(self.mp_trainer.state_dict_to_master_params(model_state))
        for rate, ema in zip(self.ema_rate, self.ema_params):
            state = ema_states.get(str(rate))
            values = self.mp_trainer.state_dict_to_master_params(state) if state is not None else self.mp_trainer.master_params
            if state is None:
                logs.log(f"no EMA file for rate {rate} at step {point.step}: the EMA starts from the model weights")
            with torch.no_grad():
                for target, value in zip(ema, values):
                    target.copy_(value.detach())
        if opt_state is not None:
            self._load_optimizer(opt_state, point)
        else:
            logs.log(f"no optimizer file {snapshots.opt_name(point.step)} beside {point.model.name}: the optimizer starts fresh")
        self.step = self.resume_step = self.resumed_from = point.step
        state = point.state
        if state is None:
            return
        self.mp_trainer.load_state_dict(state.get("precision", {}))
        self.schedule_sampler.load_state_dict(state.get("sampler", {}))
        self.seed = int(state.get("seed", self.seed))
        if hasattr(self.data, "load_state_dict") and "data" in state:
            self.data.load_state_dict(state["data"])
        self.load_extra_state(state)
        rng_states = state.get("rng", [])
        if self.rank < len(rng_states) and state.get("world_size") == self.world_size:
            self._restored_rng = rng_states[self.rank]
        else:
            logs.log(f"checkpoint has RNG states for {len(rng_states)} ranks, this run has {self.world_size}: "
                     "generators are reseeded")

    def _load_optimizer(self, opt_state: dict, point: snapshots.ResumePoint) -> None:
        saved_params = sum(len(group["params"]) for group in opt_state.get("param_groups", []))
        if saved_params != len(self.mp_trainer.master_params):
            converted = _unflatten_original_fp16_optimizer(opt_state, self.mp_trainer.master_params)
            if converted is None:
                logs.log(f"{snapshots.opt_name(point.step)} holds {saved_params} parameter tensors, the model has "
                         f"{len(self.mp_trainer.master_params)}: the optimizer starts fresh")
                return
            opt_state = converted
        self.opt.load_state_dict(opt_state)

    def load_extra_state(self, state: dict) -> None:
        """Restore subclass state recorded by `extra_state()`."""
        del state

    def extra_state(self) -> dict:
        """Subclass state for the training-state file."""
        return {}

    # --- the loop -------------------------------------------------------------------------------

    def current_lr(self) -> float:
        anneal = self.anneal_steps()
        if anneal <= 0:
            return self.options.lr
        return self.options.lr * max(0.0, 1.0 - self.step / anneal)

    def anneal_steps(self) -> int:
        return self.options.lr_anneal_steps

    def run(self) -> None:
        """Train until the stop condition (or a stop signal), saving along the way."""
        if self._restored_rng is not None:
            restore_rng_state(self._restored_rng)  # last, so nothing consumes draws before step one
            self._restored_rng = None
        total = self.options.total_steps()
        if total is None:
            how = " (Ctrl-C or SIGTERM saves a checkpoint and stops)" if self.options.handle_signals else ""
            logs.log(f"no iterations or lr_anneal_steps set: training runs until stopped{how}")
        stop = _StopRequest(self.options.handle_signals)
        test_mode = bool(os.environ.get("DIFFUSION_TRAINING_TEST", ""))
        self.stop_reason = None
        self.progress = ProgressReporter(total, "steps", progress=self.options.progress if self.rank == 0 else False,
                                         label="training", initial=self.step)
        finished = False
        try:
            while total is None or self.step < total:
                self.run_step(self.next_batch())
                if self.monitor is not None:
                    self.monitor.after_step(self, self.progress)
                self.progress.update(1)
                if self.step % self.options.log_interval == 0:
                    self.dump_logs()
                if self.step % self.options.save_interval == 0:
                    self.save()
                    if test_mode:  # DIFFUSION_TRAINING_TEST: stop after the first save, as the original
                        finished = True
                        return
                out_of_time = self.monitor is not None and self.monitor.out_of_time()
                if self._stop_requested(stop.requested or out_of_time):
                    self.stop_reason = stop.signal_name or ("max_time" if out_of_time else "stopped by another rank")
                    break
            if self._last_saved_step != self.step and self.step != self.resumed_from:
                self.save()
            if self.step % self.options.log_interval != 0:
                self.dump_logs()
            finished = True
        finally:
            stop.restore()
            self.progress.close(line=finished)  # no progress line between a failure and its message
            if isinstance(self.data, ImageStream):  # ours; a caller's generator stays usable
                self.data.close()

    def _stop_requested(self, local: bool) -> bool:
        if self.world_size == 1:
            return local
        flag = torch.tensor([1.0 if local else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def next_batch(self) -> TrainBatch:
        batch = TrainBatch.from_item(next(self.data), labels=self.options.class_cond).to(self.device)
        if self.options.low_res_size:
            batch.cond["low_res"] = F.interpolate(batch.images, self.options.low_res_size, mode="area")
        return batch

    def run_step(self, batch: TrainBatch) -> None:
        self.before_step()
        lr = self.current_lr()
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.forward_backward(batch)
        took_step = self.mp_trainer.optimize(self.opt)
        if took_step:
            self.update_ema()
        self.step += 1
        logs.logkv("step", self.step)
        logs.logkv("samples", self.step * self.global_batch)
        logs.logkv("lr", lr)

    def before_step(self) -> None:
        """Hook run before each step (validation for classifiers)."""

    def microbatches(self, batch: TrainBatch) -> Iterator[tuple[TrainBatch, bool, float]]:
        """(chunk, is_last, loss factor): the factor makes gradients the batch mean, or 1 to sum
        chunk means as the original did."""
        size = self.options.microbatch if self.options.microbatch > 0 else len(batch)
        for start in range(0, len(batch), size):
            chunk = batch.slice(start, start + size)
            last = start + size >= len(batch)
            factor = 1.0 if self.options.sum_microbatch_grads else len(chunk) / len(batch)
            yield chunk, last, factor

    def sync_context(self, last: bool):
        """Skip DDP's gradient all-reduce on all microbatches but the last."""
        if last or not isinstance(self.ddp_model, DistributedDataParallel):
            return nullcontext()
        return self.ddp_model.no_sync()

    def draws(self, chunk: TrainBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(timesteps, importance weights, label-dropout uniforms, noise) for a chunk."""
        if chunk.seeds is not None:
            u_t, u_drop, noise = per_example_draws(chunk.seeds, tuple(chunk.images.shape[1:]), self.device)
            t, weights = self.schedule_sampler.sample_from_uniform(u_t)
        else:
            t, weights = self.schedule_sampler.sample(len(chunk), self.device)
            u_drop = torch.rand(len(chunk), device=self.device)
            noise = torch.randn_like(chunk.images)
        return t, weights, u_drop, noise.to(chunk.images.dtype)

    def forward_backward(self, batch: TrainBatch) -> None:
        raise NotImplementedError

    def update_ema(self) -> None:
        """Move every EMA towards the master weights by its rate (or the warm-up's decay)."""
        masters = [p.detach() for p in self.mp_trainer.master_params]
        for rate, ema in zip(self.ema_rate, self.ema_params):
            update_ema(ema, masters, rate if self.ema_warmup is None else self.ema_warmup.decay(rate, self.step))

    def autocast(self) -> AbstractContextManager:
        """bfloat16 autocast on the training device when `use_bf16`, else a no-op."""
        return autocast(self.device, torch.bfloat16 if self.options.use_bf16 else None)

    def _beside_progress(self) -> AbstractContextManager:
        """A context for printing while the progress bar is drawn."""
        return self.progress.external_write() if self.progress is not None else nullcontext()

    def dump_logs(self) -> None:
        with self._beside_progress():
            values = logs.dumpkvs()
        if self.progress is not None and "loss" in values:
            extra = self.monitor.bar_fields(self.step) if self.monitor is not None else {}
            self.progress.set_postfix({**extra, "loss": f"{values['loss']:.4g}"})

    # --- saving ---------------------------------------------------------------------------------

    def save(self) -> None:
        """Write a checkpoint set for the current step (rank 0 writes; every rank contributes its
        RNG state)."""
        rng = capture_rng_state()
        if self.world_size > 1:
            all_rng: list[Any] = [None] * self.world_size
            dist.all_gather_object(all_rng, rng)
        else:
            all_rng = [rng]
        if self.rank == 0:
            start = time.time()
            train_state = {
                "kind": self.kind,
                "seed": self.seed,
                "world_size": self.world_size,
                "batch_size": self.options.batch_size,
                "precision": self.mp_trainer.state_dict(),
                "sampler": self.schedule_sampler.state_dict(),
                "rng": all_rng,
                "data": self.data.state_dict() if hasattr(self.data, "state_dict") else {},
            }
            train_state.update(self.extra_state())
            snapshots.save_checkpoint_files(
                self.run_dir,
                self.step,
                model_state=self.mp_trainer.master_params_to_state_dict(),
                opt_state=self.opt.state_dict(),
                ema_states={
                    str(rate): self.mp_trainer.master_params_to_state_dict(ema) for rate, ema in zip(self.ema_rate, self.ema_params)
                },
                train_state=train_state,
            )
            removed = snapshots.prune_checkpoints(self.run_dir, self.options.keep_last)
            note = f"; removed checkpoints of steps {removed} (keep_last {self.options.keep_last})" if removed else ""
            with self._beside_progress():
                logs.log(f"saved checkpoint {snapshots.model_name(self.step)} in {self.run_dir} ({time.time() - start:.1f}s){note}")
        self._last_saved_step = self.step
        distributed.barrier()

    def prepare_run_dir(self) -> None:
        """Create the run directory and remove temp files of writers that were killed."""
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            removed = remove_stale_temp_files(self.run_dir)
            if removed:
                logs.log(f"removed {len(removed)} partial files left by an interrupted save: {', '.join(removed[:3])}")
        distributed.barrier()


class DiffusionTrainer(TrainerBase):
    """Trains a denoising model (UNet or super-resolution UNet) with `diffusion.training_losses`."""

    kind = "diffusion"

    def forward_backward(self, batch: TrainBatch) -> None:
        self.mp_trainer.zero_grad()
        for chunk, last, factor in self.microbatches(batch):
            t, weights, u_drop, noise = self.draws(chunk)
            cond = dict(chunk.cond)
            if self.options.class_cond and self.options.class_dropout_prob > 0 and "y" in cond:
                # Classifier-free guidance: the null label is index num_classes.
                null = torch.full_like(cond["y"], self.options.num_classes)
                cond["y"] = torch.where(u_drop < self.options.class_dropout_prob, null, cond["y"])
            with self.sync_context(last):
                with self.autocast():
                    losses = self.diffusion.training_losses(self.ddp_model, chunk.images, t, model_kwargs=cond, noise=noise)
                if isinstance(self.schedule_sampler, LossAwareSampler):
                    self.schedule_sampler.update_with_local_losses(t, losses["loss"].detach())
                loss = (losses["loss"].float() * weights).mean()
                log_loss_dict(self.diffusion, t, {k: v.detach().float() * weights for k, v in losses.items()})
                self.mp_trainer.backward(loss * factor)


def log_loss_dict(diffusion: Any, ts: torch.Tensor, losses: dict[str, torch.Tensor]) -> None:
    """Log each loss's mean and its means over the four quarters of the timestep range
    (`{key}_q0`..`{key}_q3`), with one host transfer."""
    if not losses:
        return
    keys = list(losses)
    values = torch.stack([losses[k].reshape(-1).float() for k in keys])
    quartile = torch.clamp(4 * ts.reshape(-1) // diffusion.num_timesteps, 0, 3)
    onehot = F.one_hot(quartile, 4).to(values.dtype)
    sums = values @ onehot
    counts = onehot.sum(0)
    n = values.shape[1]
    flat = torch.cat([values.mean(1), sums.reshape(-1), counts]).tolist()
    means, quarter_sums, quarter_counts = flat[: len(keys)], flat[len(keys) : len(keys) * 5], flat[len(keys) * 5 :]
    for i, key in enumerate(keys):
        logs.logkv_mean(key, means[i], count=n)
        for q in range(4):
            if quarter_counts[q] > 0:
                logs.logkv_mean(f"{key}_q{q}", quarter_sums[i * 4 + q] / quarter_counts[q], count=quarter_counts[q])


def _unflatten_original_fp16_optimizer(opt_state: dict, master_params: Sequence[torch.Tensor]) -> dict | None:
    """Convert an `opt*.pt` of the original's fp16 mode (two flat groups: parameters with ndim <= 1,
    then the rest) to one entry per parameter; None when the layout does not fit."""
    groups = opt_state.get("param_groups", [])
    if len(groups) != 1 or len(groups[0]["params"]) != 2:
        return None
    order = [[i for i, p in enumerate(master_params) if p.ndim <= 1], [i for i, p in enumerate(master_params) if p.ndim > 1]]
    new_state: dict[int, dict[str, Any]] = {}
    for flat_id, indices in zip(groups[0]["params"], order):
        entry = opt_state["state"].get(flat_id)
        if entry is None:
            continue
        sizes = [master_params[i].numel() for i in indices]
        for key in ("exp_avg", "exp_avg_sq"):
            if key in entry and entry[key].numel() != sum(sizes):
                return None
        for position, index in enumerate(indices):
            start, shape = sum(sizes[:position]), master_params[index].shape
            new_state[index] = {
                key: value.reshape(-1)[start : start + sizes[position]].reshape(shape).clone() if key in ("exp_avg", "exp_avg_sq") else value
                for key, value in entry.items()
            }
    group = dict(groups[0])
    group["params"] = list(range(len(master_params)))
    return {"state": new_state, "param_groups": [group]}
