"""GPU check (issue 22): 256x256 ADM-G, classifier-guided DDIM-25, random weights of the released
architectures (presets 256x256_diffusion + 256x256_classifier), the original-style path against ours.

Paths (same weights, noise and labels; timed runs interleaved round by round):
  original fp16   the original's sampling: fp16 UNet torso (`convert_to_fp16`, the preset's precisions),
                  explicit-formula attention (`attention_backend("math")`), schedule arrays uploaded from
                  NumPy at every lookup, the original cond_fn, `GaussianDiffusion.ddim_sample_loop`
  fp16            ours at the same precisions: SDPA attention on token-major heads, channels-last
  bf16            ours with `--bf16`: both networks prepared by `prepare_for_bf16` (bf16 torso, NHWC)
  bf16 + compile  bf16 and `optimize_model(compile=True, compile_mode="reduce-overhead")` (inductor and
                  CUDA graphs); compiled last, skipped when less than `--compile_estimate` s are left

Reported for each: images/s and seconds per DDIM-25 run at `--batch`, speed-up over the original, peak
GPU memory, host syncs per sampling step (counted by a dispatch mode, and on CUDA by
`torch.cuda.set_sync_debug_mode`), agreement with the original (PSNR of the uint8 images), and the
largest batch for which one guided step fits in memory (doubling, then bisection; bounded by
`--max_batch`). After every measurement the JSON file (`--out`) is rewritten, and the markdown table is
printed at the end, also when the time budget (`--budget`, enforced by an alarm) runs out or a path fails.

    PYTHONPATH=$PWD python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json   # one GPU, about 5-7 min
    PYTHONPATH=$PWD python3 benchmarks/gpu_check.py --tiny --out /tmp/gpu_check.json   # CPU, tiny nets, seconds
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import signal
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from bench_guided_ddim_step import PlainDiffusion
from common import randomise
from torch.utils._python_dispatch import TorchDispatchMode

from guided_diffusion.config import DiffusionConfig
from guided_diffusion.config.presets import PRESETS
from guided_diffusion.diffusion.schedules import get_named_beta_schedule
from guided_diffusion.models.attention import attention_backend
from guided_diffusion.runtime.atomic import atomic_write_bytes
from guided_diffusion.runtime.performance import optimize_model, prepare_for_bf16
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn
from guided_diffusion.sampling.output import to_uint8
from guided_diffusion.weights.checkpoints import preset_network_config

MODEL, CLASSIFIER = "256x256_diffusion", "256x256_classifier"
BASELINE = "original fp16"
PATHS = (BASELINE, "fp16", "fp16 NCHW", "bf16", "bf16 NCHW", "bf16 + compile", "bf16 NCHW + compile")
# Tiny mode: the released layouts (learned sigma, scale-shift norm, resblock up/down, attention pooling,
# the 64-channel heads' slicing) at a size a CPU samples in well under a second.
TINY_MODEL = dict(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="4",
                  num_head_channels=16, num_classes=10)
TINY_CLASSIFIER = dict(image_size=8, classifier_width=32, classifier_depth=1, classifier_channel_mult="1,2",
                       classifier_attention_resolutions="4", classifier_num_head_channels=16, num_classes=10)
SYNC_OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.is_nonzero", "aten.equal",
            "aten._unique", "aten.unique")


class BudgetExhausted(BaseException):
    """The --budget alarm fired. A BaseException, like KeyboardInterrupt, so that no `except Exception` on
    the way (ours or a library's) swallows it and lets the check run on past its budget."""


# -- results: always on disk, always printable --------------------------------------------------------


class Report:
    """What was measured so far; `save()` rewrites the JSON atomically after every measurement."""

    def __init__(self, out: Path, settings: dict[str, Any]):
        self.out = out
        self.started = time.monotonic()
        self.data: dict[str, Any] = {
            "check": "256x256 ADM-G guided DDIM-25 (issue 22)",
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "settings": settings,
            "machine": machine(),
            "paths": {},
            "notes": [],
            "finished": False,
        }

    def path(self, name: str) -> dict[str, Any]:
        return self.data["paths"].setdefault(name, {})

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Time a part of the check into `sections_s` (what a tighter budget would have to drop)."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.data.setdefault("sections_s", {})[name] = round(time.monotonic() - start, 1)
            self.save()

    def note(self, text: str) -> None:
        print(f"note: {text}", flush=True)
        self.data["notes"].append(text)
        self.save()

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.started, 1)
        atomic_write_bytes(self.out, (json.dumps(self.data, indent=1, default=str) + "\n").encode())

    def table(self) -> str:
        rows = ["| path | images/s | s per run | speed-up | peak GiB | host syncs / step | largest batch (peak GiB) "
                "| PSNR vs original | note |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        base = self.data["paths"].get(BASELINE, {}).get("images_per_s")
        for name, p in self.data["paths"].items():
            speed = p.get("images_per_s")
            largest = p.get("largest_batch", {})
            fits = largest.get("fits")
            cells = [
                name, fmt(speed, "{:.3f}"), fmt(p.get("seconds_per_run"), "{:.2f}"),
                fmt(speed / base if speed and base else None, "{:.2f}x"), fmt(p.get("peak_gib"), "{:.1f}"),
                fmt(p.get("host_syncs_per_step"), "{:.2f}"),
                "" if fits is None else f"{fits}{'+' if largest.get('capped') else ''} ({fmt(largest.get('peak_gib'), '{:.1f}')})",
                fmt(p.get("psnr_vs_original_db"), "{:.1f} dB"), p.get("error") or p.get("skipped") or "",
            ]
            rows.append("| " + " | ".join(str(c) for c in cells) + " |")
        return "\n".join(rows)


def fmt(value: Any, pattern: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isinf(value):
        return "identical"
    return pattern.format(value)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))))
    else:
        info["gpu"] = None
    return info


# -- the networks and the paths ------------------------------------------------------------------------


def network(name: str, seed: int, device: torch.device, tiny: bool, fp16: bool) -> torch.nn.Module:
    """The preset's architecture (shrunk in tiny mode) with random weights, built on `device`."""
    cfg = preset_network_config(PRESETS[name])
    if tiny:
        cfg = cfg.replace(**(TINY_MODEL if name == MODEL else TINY_CLASSIFIER))
    cfg = cfg.replace(**({"use_fp16": fp16} if name == MODEL else {"classifier_use_fp16": fp16}))
    with torch.device(device):
        net = cfg.build()
    return randomise(net, seed).eval()


@dataclass
class Path_:
    """A way of sampling: the process, the model as samplers call it, the guidance, the attention backend."""

    diffusion: Any
    model_fn: Callable[..., torch.Tensor]
    cond_fn: Callable[..., torch.Tensor]
    attention: str


class StepMarked(torch.nn.Module):
    """A CUDA-graph-compiled network whose outputs are cloned and whose calls each start a graph step, so a
    sampler may keep a result across calls (graph replays reuse their output buffers)."""

    def __init__(self, compiled: torch.nn.Module):
        super().__init__()
        self.module = compiled  # `module`: runtime.autocast.network_dtype looks through it

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        out: torch.Tensor = self.module(*args, **kwargs)
        return out.clone()


def build_paths(args: argparse.Namespace, device: torch.device, report: Report) -> dict[str, Callable[[], Path_]]:
    """Factories of the paths (the compiled one is built only when reached)."""
    preset = PRESETS[MODEL]
    scale = preset.classifier_scale
    clf_fp16 = bool(preset_network_config(PRESETS[CLASSIFIER]).classifier_use_fp16)
    start = time.monotonic()
    unet16 = network(MODEL, 0, device, args.tiny, fp16=True)
    clf = network(CLASSIFIER, 1, device, args.tiny, fp16=clf_fp16)
    unet_bf16 = prepare_for_bf16(copy.deepcopy(unet16))  # weights cast once; use_fp16's dtype replaced by bf16
    clf_bf16 = prepare_for_bf16(copy.deepcopy(clf))
    unet_fast16 = copy.deepcopy(unet16)
    unet16.convert_to_fp16()
    unet_fast16.convert_to_fp16()
    clf_fast = copy.deepcopy(clf)
    if clf_fp16:
        clf.convert_to_fp16()
        clf_fast.convert_to_fp16()
    unet_nchw16, clf_nchw = copy.deepcopy(unet_fast16), copy.deepcopy(clf_fast)  # SDPA, the original's layout
    unet_fast16 = optimize_model(unet_fast16, channels_last=True)
    clf_fast = optimize_model(clf_fast, channels_last=True)
    unet_bf16_nchw = prepare_for_bf16(copy.deepcopy(unet_nchw16).float(), channels_last=False)
    clf_bf16_nchw = prepare_for_bf16(copy.deepcopy(clf_nchw).float(), channels_last=False)
    report.data["settings"]["networks_built_s"] = round(time.monotonic() - start, 1)
    report.data["settings"]["parameters"] = {"unet": sum(p.numel() for p in unet16.parameters()),
                                             "classifier": sum(p.numel() for p in clf.parameters())}

    diff_cfg = DiffusionConfig.from_dict({**preset.flags, "timestep_respacing": f"ddim{args.steps}"})
    fast = diff_cfg.build()
    plain = PlainDiffusion(
        use_timesteps=fast.timestep_map,
        betas=get_named_beta_schedule(diff_cfg.noise_schedule, diff_cfg.diffusion_steps),
        model_mean_type=fast.model_mean_type, model_var_type=fast.model_var_type, loss_type=fast.loss_type,
        rescale_timesteps=fast.rescale_timesteps,
    )
    bf16 = torch.bfloat16

    def compiled(nchw: bool = False) -> Path_:
        backend = "eager" if args.tiny else "inductor"  # tiny mode traces only: the same calls in seconds
        wrap = StepMarked if device.type == "cuda" else (lambda m: m)
        unet_in, clf_in = (unet_bf16_nchw, clf_bf16_nchw) if nchw else (unet_bf16, clf_bf16)
        unet = wrap(optimize_model(unet_in, compile=True, compile_mode="reduce-overhead", compile_backend=backend))
        classifier = wrap(optimize_model(clf_in, compile=True, compile_mode="reduce-overhead", compile_backend=backend))
        return Path_(fast, GuidedModel(unet, class_cond=True, autocast_dtype=bf16),
                     classifier_cond_fn(classifier, scale, autocast_dtype=bf16), "sdpa")

    return {
        BASELINE: lambda: Path_(plain, unet16, classifier_cond_fn(clf, scale), "math"),
        "fp16": lambda: Path_(fast, GuidedModel(unet_fast16, class_cond=True), classifier_cond_fn(clf_fast, scale), "sdpa"),
        "fp16 NCHW": lambda: Path_(fast, GuidedModel(unet_nchw16, class_cond=True), classifier_cond_fn(clf_nchw, scale),
                                   "sdpa"),
        "bf16": lambda: Path_(fast, GuidedModel(unet_bf16, class_cond=True, autocast_dtype=bf16),
                              classifier_cond_fn(clf_bf16, scale, autocast_dtype=bf16), "sdpa"),
        "bf16 NCHW": lambda: Path_(fast, GuidedModel(unet_bf16_nchw, class_cond=True, autocast_dtype=bf16),
                                   classifier_cond_fn(clf_bf16_nchw, scale, autocast_dtype=bf16), "sdpa"),
        "bf16 + compile": compiled,
        "bf16 NCHW + compile": lambda: compiled(nchw=True),
    }


# -- measuring -----------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def inputs(batch: int, size: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, 3, size, size, generator=generator)
    labels = torch.randint(0, 10, (batch,), generator=generator)
    return noise.to(device), labels.to(device)


def sample(path: Path_, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One guided DDIM run from `noise` to images."""
    with torch.no_grad(), attention_backend(path.attention):
        return path.diffusion.ddim_sample_loop(path.model_fn, noise.shape, noise=noise, cond_fn=path.cond_fn,
                                               model_kwargs={"y": labels}, device=noise.device)


def guided_step(path: Path_, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One guided DDIM step at the noisiest level (what the largest-batch search runs)."""
    t = torch.full((len(noise),), path.diffusion.num_timesteps - 1, device=noise.device, dtype=torch.long)
    with torch.no_grad(), attention_backend(path.attention):
        return path.diffusion.ddim_sample(path.model_fn, noise, t, cond_fn=path.cond_fn, model_kwargs={"y": labels})["sample"]


class SyncCounter(TorchDispatchMode):
    """Counts operations that make the host wait for the device: reading a value (`.item()`, `bool()`),
    outputs whose size depends on values, and copies from the device to the host."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = str(func)
        if name.startswith(SYNC_OPS):
            self.count += 1
        elif self.device.type != "cpu" and name.startswith(("aten._to_copy", "aten.copy_")):
            source = args[1] if name.startswith("aten.copy_") else args[0]
            target = kwargs.get("device") if kwargs and "device" in kwargs else args[0].device
            if isinstance(source, torch.Tensor) and source.device.type != "cpu" and torch.device(target or "cpu").type == "cpu":
                self.count += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def cuda_sync_warnings(device: torch.device) -> Iterator[list[warnings.WarningMessage]]:
    """On CUDA, the synchronizing calls PyTorch itself reports (`set_sync_debug_mode("warn")`)."""
    if device.type != "cuda":
        yield []
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield caught
        finally:
            torch.cuda.set_sync_debug_mode(0)


def count_syncs(path: Path_, noise: torch.Tensor, labels: torch.Tensor, steps: int, dispatch: bool) -> dict[str, Any]:
    counter = SyncCounter(noise.device)
    with cuda_sync_warnings(noise.device) as caught:
        if dispatch:
            with counter:
                sample(path, noise, labels)
        else:
            sample(path, noise, labels)
    synchronize(noise.device)  # outside: this sync is the check's own
    reported = [w for w in caught if "synchroniz" in str(w.message)]
    result: dict[str, Any] = {}
    if dispatch:
        result["host_syncs_per_step"] = counter.count / steps
    if noise.device.type == "cuda":
        result["cuda_reported_syncs_per_step"] = len(reported) / steps
        result.setdefault("host_syncs_per_step", len(reported) / steps)
        where = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in reported})[:8]
        result["cuda_reported_sync_sites"] = where
    return result


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def largest_batch(path: Path_, size: int, device: torch.device, start: int, cap: int,
                  deadline: float) -> dict[str, Any]:
    """Largest batch whose guided step fits: doubling from `start` to the first failure or `cap`, then up
    to three bisection probes between the last fit and the first failure."""
    fits, fails, peak = 0, None, None
    limits: list[str] = []  # errors other than out-of-memory that ended a probe (e.g. a kernel's index range)

    def probe(batch: int) -> bool:
        nonlocal peak
        noise, labels = inputs(batch, size, device, seed=batch)
        reset_peak(device)
        try:
            guided_step(path, noise, labels)
            synchronize(device)
        except Exception as exc:  # an OOM is the answer; another error at a batch that large is a limit too
            if not is_oom(exc):
                limits.append(f"{type(exc).__name__} at batch {batch}: {exc}".splitlines()[0][:160])
            del noise, labels
            reset_peak(device)
            return False
        peak = peak_gib(device)
        return True

    batch = start
    while batch <= cap and time.monotonic() < deadline:
        if probe(batch):
            fits = batch
            batch *= 2
        else:
            fails = batch
            break
    if fails is not None:
        lo, hi = fits, fails
        for _ in range(3):
            if hi - lo <= max(1, lo // 8) or time.monotonic() >= deadline:
                break
            mid = (lo + hi) // 2
            if probe(mid):
                lo = mid
            else:
                hi = mid
        fits = lo
    reset_peak(device)
    return {"fits": fits, "first_failure": fails, "capped": fails is None and fits * 2 > cap,
            "peak_gib": peak, "probe": "one guided DDIM step (UNet forward + classifier forward and backward)",
            **({"limits": limits} if limits else {})}


def psnr_db(images: torch.Tensor, reference: torch.Tensor) -> float:
    a, b = to_uint8(images.float().cpu()).numpy(), to_uint8(reference.float().cpu()).numpy()
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


# -- the check -----------------------------------------------------------------------------------------


def run_check(args: argparse.Namespace, device: torch.device, report: Report) -> None:
    deadline = report.started + args.budget
    with report.section("build networks"):
        factories = build_paths(args, device, report)
    size = int(report.data["settings"]["image_size"])
    noise, labels = inputs(args.batch, size, device, seed=args.seed)
    wanted = [name for name in PATHS if name in args.paths]
    eager = [name for name in wanted if not name.endswith("+ compile")]

    # Speed: one warm-up run each, then rounds of one run per path, interleaved.
    paths: dict[str, Path_] = {}
    outputs: dict[str, torch.Tensor] = {}
    with report.section("speed"):
        times = timed_runs(args, device, report, factories, eager, paths, outputs, noise, labels, deadline)

    # Host syncs per sampling step (they do not depend on the batch: counted at batch 1).
    one_noise, one_label = noise[:1], labels[:1]
    with report.section("host syncs"):
        for name in times:
            report.path(name).update(count_syncs(paths[name], one_noise, one_label, args.steps, dispatch=True))
            report.save()

    # The largest batch that fits, fastest path first.
    with report.section("largest batch"):
        for name in ("bf16", "fp16", BASELINE):
            if name not in times or time.monotonic() >= deadline:
                continue
            try:
                found = largest_batch(paths[name], size, device, start=args.batch * 2, cap=args.max_batch,
                                      deadline=deadline)
            except BudgetExhausted:
                raise
            except Exception as exc:
                report.path(name)["largest_batch"] = {"error": one_line(exc)}
            else:
                report.path(name)["largest_batch"] = found
            report.save()

    # Last, as it may take minutes: torch.compile with CUDA graphs, in whatever budget is left.
    for name in wanted:
        if name.endswith("+ compile"):
            with report.section(f"compile ({name})"):
                compiled_path(name, args, device, report, factories, outputs, noise, labels, deadline)


def timed_runs(args: argparse.Namespace, device: torch.device, report: Report, factories: dict[str, Callable[[], Path_]],
               eager: list[str], paths: dict[str, Path_], outputs: dict[str, torch.Tensor], noise: torch.Tensor,
               labels: torch.Tensor, deadline: float) -> dict[str, list[float]]:
    """Warm-up run of each path, then `args.repeats` rounds of one timed run per path; returns the times."""
    for name in eager:
        try:
            paths[name] = factories[name]()
            start = time.monotonic()
            outputs[name] = sample(paths[name], noise, labels)
            synchronize(device)
            report.path(name)["warmup_s"] = round(time.monotonic() - start, 2)
        except BudgetExhausted:
            raise
        except Exception as exc:
            fail(report, name, exc)
        report.save()
    times: dict[str, list[float]] = {name: [] for name in paths if "error" not in report.path(name)}
    for _ in range(args.repeats):
        slowest = max((report.path(n).get("warmup_s", 0.0) for n in times), default=0.0)
        if time.monotonic() + len(times) * slowest > deadline:
            report.note("budget: fewer timed rounds than --repeats")
            break
        for name in times:
            reset_peak(device)
            start = time.monotonic()
            sample(paths[name], noise, labels)
            synchronize(device)
            times[name].append(time.monotonic() - start)
            entry = report.path(name)
            entry["seconds_per_run"] = statistics.median(times[name])
            entry["runs"] = [round(t, 3) for t in times[name]]
            entry["images_per_s"] = args.batch / entry["seconds_per_run"]
            entry["peak_gib"] = peak_gib(device)
            report.save()
    for name, out in outputs.items():
        if BASELINE in outputs:
            report.path(name)["psnr_vs_original_db"] = psnr_db(out, outputs[BASELINE])
    report.save()
    return times


def compiled_path(name: str, args: argparse.Namespace, device: torch.device, report: Report,
                  factories: dict[str, Callable[[], Path_]], outputs: dict[str, torch.Tensor], noise: torch.Tensor,
                  labels: torch.Tensor, deadline: float) -> None:
    """bf16 + torch.compile (CUDA graphs): compile in a first run, then `args.repeats` timed runs."""
    entry = report.path(name)
    if not args.tiny and time.monotonic() + args.compile_estimate > deadline:
        entry["skipped"] = f"budget: compiling needs about {args.compile_estimate:.0f} s"
        report.save()
        return
    try:
        path = factories[name]()
        start = time.monotonic()
        out = sample(path, noise, labels)  # compiles (and records the CUDA graphs)
        synchronize(device)
        entry["compile_and_first_run_s"] = round(time.monotonic() - start, 1)
        report.save()
        runs: list[float] = []
        for _ in range(args.repeats):
            reset_peak(device)
            start = time.monotonic()
            sample(path, noise, labels)
            synchronize(device)
            runs.append(time.monotonic() - start)
            entry.update(seconds_per_run=statistics.median(runs), runs=[round(t, 3) for t in runs],
                         images_per_s=args.batch / statistics.median(runs), peak_gib=peak_gib(device))
            report.save()
        if BASELINE in outputs:
            entry["psnr_vs_original_db"] = psnr_db(out, outputs[BASELINE])
        # On CUDA a dispatch mode would step into the compiled graphs: CUDA's own sync report counts there.
        # (At the timed batch: another batch would compile and record graphs again.)
        entry.update(count_syncs(path, noise, labels, args.steps, dispatch=device.type == "cpu"))
        report.save()
    except BudgetExhausted:
        raise
    except Exception as exc:
        fail(report, name, exc)


def one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def fail(report: Report, name: str, exc: BaseException) -> None:
    entry = report.path(name)
    entry["error"] = one_line(exc)
    entry["traceback"] = traceback.format_exc(limit=6)[-2000:]
    print(f"{name}: {entry['error']}", flush=True)
    if is_oom(exc) and torch.cuda.is_available():
        reset_peak(torch.device("cuda", 0))
    report.save()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file, rewritten after every measurement")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the whole check (an alarm stops it)")
    parser.add_argument("--batch", type=int, default=None, help="batch of the timed runs (default 16; tiny: 2)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps (ddimN respacing)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per path after the warm-up")
    parser.add_argument("--max_batch", type=int, default=None, help="cap of the largest-batch search (default 1024; tiny: 8)")
    parser.add_argument("--compile_estimate", type=float, default=150.0,
                        help="seconds compiling is expected to take; skipped when the budget has less left")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS, metavar="PATH",
                        help=f"which paths to run (default all: {', '.join(PATHS)})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="tiny networks on the CPU: the same code paths in seconds")
    args = parser.parse_args(argv)
    args.batch = args.batch or (1 if args.tiny else 16)
    args.max_batch = args.max_batch or (2 if args.tiny else 1024)
    if args.tiny:
        args.steps = min(args.steps, 2)
    device = torch.device("cpu") if args.tiny or not torch.cuda.is_available() else torch.device("cuda", 0)
    size = TINY_MODEL["image_size"] if args.tiny else 256
    report = Report(Path(args.out), {**{k: v for k, v in vars(args).items() if k != "out"}, "device": str(device),
                                     "image_size": size, "model": MODEL, "classifier": CLASSIFIER})
    if device.type != "cuda" and not args.tiny:
        report.note("no CUDA device: running the full-size check on the CPU (slow); use --tiny for a quick run")
    report.save()

    stopped = {"caught": False}

    def on_alarm(signum: int, frame: Any) -> None:
        if stopped["caught"]:
            return
        # Re-armed first: raised inside a weakref callback or a __del__ the exception is printed and
        # dropped, so the alarm repeats until it lands where it stops the check.
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        raise BudgetExhausted

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(args.budget, 0.01))
    try:
        run_check(args, device, report)
        report.data["finished"] = True
    except BudgetExhausted:
        stopped["caught"] = True
        signal.setitimer(signal.ITIMER_REAL, 0)
        report.note(f"budget of {args.budget:g} s exhausted: the results above are what was measured")
    except Exception as exc:  # anything unexpected: keep what was measured
        report.data["error"] = one_line(exc)
        report.data["traceback"] = traceback.format_exc(limit=8)[-3000:]
        print(f"check stopped: {report.data['error']}", flush=True)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        report.save()
        print(f"\n256x256 ADM-G guided DDIM-{args.steps}, batch {args.batch}, {report.data['machine'].get('gpu') or 'CPU'}, "
              f"torch {torch.__version__} ({report.data['elapsed_s']} s; JSON: {args.out})\n")
        print(report.table(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
