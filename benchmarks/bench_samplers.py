"""Solvers, step grids and guidance against cost, on the demo's trained digits models.

    python benchmarks/bench_samplers.py --models /path/to/demo_output    # a `guided-diffusion demo` folder
    python benchmarks/bench_samplers.py                                  # trains the demo once into --cache

For every setting, 500 samples (50 per class, sample i from seed stream i, so every setting starts
from the same noise) are scored with the demo's judge: accuracy on the intended class, FID, precision
and recall in the judge's features (`guided_diffusion/demo/metrics.py`). Deterministic solvers also get
their RMS error against a reference solution of the same guided ODE from the same noise (UniPC-3 on
`--ref_steps` log-SNR levels from the same start level, first `--ref_samples` samples).

Stages: (1) dpm++2m and heun on every grid; (2) the grid with the best scale-4 FID there becomes every
other solver's grid (ddim and ddpm keep `leading`, the original's ddimN, as the baseline); (3) every
solver at every NFE in `--nfe`; (4) the guidance interval on and off for the best solver at scale 4.
NFE counts model evaluations (heun: 2K - 1 on K levels); a guided evaluation also runs the classifier
forward and backward. Writes a JSON of all rows, markdown tables and the plot (quality vs NFE).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from guided_diffusion.demo.data import load_digits_dataset
from guided_diffusion.demo.judge import JudgeFeatures
from guided_diffusion.demo.metrics import Reference, score_samples
from guided_diffusion.diffusion.grids import GRIDS
from guided_diffusion.runtime.rng import SampleNoise
from guided_diffusion.sampling.generate import SamplerSettings, draw
from guided_diffusion.sampling.guidance import (
    GuidedModel,
    classifier_cond_fn,
)
from guided_diffusion.sampling.output import to_uint8
from guided_diffusion.sampling.samplers import unipc
from guided_diffusion.weights.checkpoints import load_model

ALL_NFE = (4, 6, 8, 10, 15, 20, 35, 50)
DETERMINISTIC = {"ddim", "euler", "heun", "dpm++2m", "unipc"}
SOLVERS = ("ddpm", "ddim", "euler", "heun", "dpm++2m", "dpm++2m_sde", "dpm++3m_sde", "unipc")


def _checkpoint(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise SystemExit(f"no {pattern} in {folder}: pass --models a folder written by `guided-diffusion demo`")
    return found[-1]


def demo_models(models: str | None, cache: Path) -> Path:
    """The demo output folder to use: --models, or a cached run of the demo's own training (made once)."""
    if models:
        return Path(models)
    if not (cache / "checkpoints" / "judge").is_dir():
        from guided_diffusion.demo.settings import default_settings
        from guided_diffusion.demo.study import run_study

        print(f"training the demo's models once into {cache} (about five minutes on 2 idle cores)")
        run_study(cache, seed=0, settings=default_settings(), echo=print)
    return cache


def levels_for(nfe: int, sampler: str) -> int:
    """Grid levels that spend at most `nfe` model evaluations (heun: 2K - 1)."""
    return max(2, (nfe + 1) // 2) if sampler == "heun" else nfe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=None, help="output folder of `guided-diffusion demo` (its checkpoints/)")
    parser.add_argument("--cache", default="benchmarks/.cache/digits_demo", help="where to train the demo once")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--nfe", default=",".join(map(str, ALL_NFE)), help="NFE of the solver curves")
    parser.add_argument("--grid_nfe", default=",".join(map(str, ALL_NFE)), help="NFE of the grid sweep")
    parser.add_argument("--scale0_nfe", default=",".join(map(str, ALL_NFE)), help="NFE of the unguided curves")
    parser.add_argument("--scales", default="0,4")
    parser.add_argument("--grid_scales", default=None, help="scales of the grid sweep (default: --scales)")
    parser.add_argument("--baseline_nfe", default=None, help="NFE of the ddim/ddpm curves (default: --nfe)")
    parser.add_argument("--interval", default="0,600;300,999",
                        help="guidance intervals LO,HI tried in stage 4, separated by ';'")
    parser.add_argument("--ref_samples", type=int, default=100)
    parser.add_argument("--ref_steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/samplers.json")
    parser.add_argument("--plot", default="docs/images/samplers_nfe.png")
    parser.add_argument("--replot", default=None, help="only redraw the plot and tables from a saved --out JSON")
    args = parser.parse_args()
    if args.replot:
        summary = json.loads(Path(args.replot).read_text())
        plot(summary["rows"], summary["best_grid"], max(r["scale"] for r in summary["rows"]), Path(args.plot))
        print(tables(summary))
        return
    torch.set_num_threads(args.threads)
    begin = time.perf_counter()
    load_before = os.getloadavg()

    root = demo_models(args.models, Path(args.cache)) / "checkpoints"
    unet = load_model(_checkpoint(root / "diffusion", "ema_*.pt")).eval()
    guide = load_model(_checkpoint(root / "classifier", "model*.pt")).eval()
    judge = JudgeFeatures(load_model(_checkpoint(root / "judge", "model*.pt")).eval())
    from guided_diffusion.config import DiffusionConfig
    from guided_diffusion.weights.checkpoints import read_config_json

    config = read_config_json(_checkpoint(root / "diffusion", "ema_*.pt"))
    diffusion = DiffusionConfig.from_dict(config["diffusion"]).replace(timestep_respacing="").build()
    model_fn = GuidedModel(unet, class_cond=bool(getattr(unet, "num_classes", None)))
    digits = load_digits_dataset()
    test_images, _ = digits.subset(digits.test)
    reference = Reference.of(judge.extract(test_images))
    indices = list(range(args.samples))
    labels = np.arange(args.samples, dtype=np.int64) % 10
    scales = [float(s) for s in args.scales.split(",")]
    nfes = [int(v) for v in args.nfe.split(",")]
    grid_nfes = [int(v) for v in args.grid_nfe.split(",")]
    scale0_nfes = [int(v) for v in args.scale0_nfe.split(",")]
    grid_scales = [float(s) for s in (args.grid_scales or args.scales).split(",")]
    baseline_nfes = [int(v) for v in (args.baseline_nfe or args.nfe).split(",")]
    intervals = [tuple(float(v) for v in part.split(",")) for part in args.interval.split(";")]
    device = torch.device("cpu")
    rows: list[dict] = []
    references: dict[tuple[float, float], torch.Tensor] = {}

    def reference_solution(start_abar: float, scale: float) -> torch.Tensor:
        """UniPC-3 on `ref_steps` log-SNR levels from the run's start level down to the model's sigma_min."""
        key = (round(start_abar, 12), scale)
        if key not in references:
            sigma_start = math.sqrt((1 - start_abar) / start_abar)
            settings = SamplerSettings(sampler="unipc", steps=args.ref_steps, step_grid="logsnr", sigma_max=sigma_start)
            denoiser = settings.denoiser(model_fn, diffusion)
            ref_idx = indices[: args.ref_samples]
            x = SampleNoise(args.seed, ref_idx).randn((len(ref_idx), 3, 8, 8))
            cond = classifier_cond_fn(guide, scale) if scale else None
            references[key] = unipc(denoiser, x, cond_fn=cond, model_kwargs={"y": torch.as_tensor(labels[: len(ref_idx)])})
        return references[key]

    def measure(stage: str, sampler: str, grid: str, nfe: int, scale: float, steer: tuple | None = None) -> dict:
        start = time.perf_counter()
        levels = levels_for(nfe, sampler)
        settings = SamplerSettings(sampler=sampler, steps=levels, step_grid=grid, guidance_interval=steer)
        cond = classifier_cond_fn(guide, scale) if scale else None
        calls = {"classifier": 0}
        if cond is not None:
            inner = cond

            def cond(x, t, _inner=inner, **kw):  # count the classifier passes the run makes
                calls["classifier"] += 1
                return _inner(x, t, **kw)

        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = draw(model_fn, diffusion, indices=indices, seed=args.seed, image_shape=(3, 8, 8), device=device,
                     settings=settings, labels=labels, cond_fn=cond)
        images = to_uint8(x).cpu().numpy()
        metrics = score_samples(judge, reference, images, labels, sampler=sampler, scale=scale)
        row = {"stage": stage, "sampler": sampler, "grid": grid, "levels": levels,
               "nfe": 2 * levels - 1 if sampler == "heun" else levels, "scale": scale,
               "interval": list(steer) if steer else None, "classifier_calls": calls["classifier"],
               "accuracy": metrics.accuracy, "fid": metrics.fid, "precision": metrics.precision,
               "recall": metrics.recall, "ode_error": None}
        if sampler in DETERMINISTIC and grid in ("karras", "logsnr", "linspace", "trailing") and steer is None:
            denoiser = settings.denoiser(model_fn, diffusion)
            start_abar = float(denoiser.alphas_cumprod[-1])
            ref = reference_solution(start_abar, scale)
            row["ode_error"] = float((x[: len(ref)] - ref).pow(2).mean().sqrt())
        row["seconds"] = round(time.perf_counter() - start, 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    # (1) the grid sweep
    for sampler in ("dpm++2m", "heun"):
        for grid in GRIDS:
            for scale in grid_scales:
                for nfe in (grid_nfes if scale else [n for n in grid_nfes if n in scale0_nfes]):
                    measure("grids", sampler, grid, nfe, scale)
    # (2) the best grid: lowest mean scale-4 FID of dpm++2m and heun over the sweep
    guided = max(scales)
    score = {grid: np.mean([r["fid"] for r in rows if r["grid"] == grid and r["scale"] == guided]) for grid in GRIDS}
    best_grid = min(score, key=score.get)
    print(f"best grid by mean FID at scale {guided:g}: {best_grid} ({', '.join(f'{g} {v:.2f}' for g, v in score.items())})")
    # (3) every solver at every NFE on its grid
    done = {(r["sampler"], r["grid"], r["nfe"], r["scale"]) for r in rows}
    for sampler in SOLVERS:
        grid = "leading" if sampler in ("ddim", "ddpm") else best_grid
        for scale in scales:
            for nfe in ((baseline_nfes if sampler in ("ddim", "ddpm") else nfes) if scale else scale0_nfes):
                nfe_actual = 2 * levels_for(nfe, sampler) - 1 if sampler == "heun" else levels_for(nfe, sampler)
                if (sampler, grid, nfe_actual, scale) not in done:
                    measure("solvers", sampler, grid, nfe, scale)
    # (4) the guidance interval for the best deterministic solver at 10 NFE (scale-4 FID)
    candidates = [r for r in rows if r["scale"] == guided and r["nfe"] in (9, 10) and r["sampler"] in DETERMINISTIC
                  and r["grid"] == (best_grid if r["sampler"] not in ("ddim", "ddpm") else "leading")]
    best_solver = min(candidates, key=lambda r: r["fid"])["sampler"] if candidates else "dpm++2m"
    best_solver_grid = "leading" if best_solver in ("ddim", "ddpm") else best_grid
    for interval in intervals:
        for nfe in nfes:
            measure("interval", best_solver, best_solver_grid, nfe, guided, steer=interval)

    seconds = time.perf_counter() - begin
    summary = {"rows": rows, "best_grid": best_grid, "best_solver": best_solver, "seconds": seconds,
               "load_before": load_before, "load_after": os.getloadavg(), "threads": args.threads,
               "samples": args.samples, "intervals": intervals}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    plot(rows, best_grid, guided, Path(args.plot))
    print(tables(summary))
    print(f"total {seconds / 60:.1f} min; load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")


def _curve_rows(rows: list[dict], sampler: str, grid: str, scale: float, stage_interval: bool = False) -> list[dict]:
    picked = [r for r in rows if r["sampler"] == sampler and r["grid"] == grid and r["scale"] == scale
              and (r["interval"] is not None) == stage_interval]
    return sorted({r["nfe"]: r for r in picked}.values(), key=lambda r: r["nfe"])


def plot(rows: list[dict], best_grid: str, scale: float, path: Path) -> None:
    """FID and judge accuracy against NFE at the guided scale, one line per solver (on its grid), and the
    ODE error of the deterministic curves that have a reference (grids with a fixed start level)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(14, 3.8), dpi=80)
    styles = dict(zip(SOLVERS, ["o-", "s--", "x:", "^-", "o-", "v-", "<-", "D-"]))
    for sampler in SOLVERS:
        grid = "leading" if sampler in ("ddim", "ddpm") else best_grid
        curve = _curve_rows(rows, sampler, grid, scale)
        if not curve:
            continue
        nfe = [r["nfe"] for r in curve]
        label = f"{sampler} ({grid})" + (" = ddim" if sampler == "euler" else "")
        axes[0].plot(nfe, [r["fid"] for r in curve], styles[sampler], label=label)
        axes[1].plot(nfe, [r["accuracy"] for r in curve], styles[sampler], label=label)
    for sampler in ("dpm++2m", "heun"):
        for grid in ("karras", "logsnr"):
            curve = [r for r in _curve_rows(rows, sampler, grid, scale) if r["ode_error"] is not None]
            if curve:
                axes[2].plot([r["nfe"] for r in curve], [r["ode_error"] for r in curve], "o-", label=f"{sampler} ({grid})")
    ticks = sorted({r["nfe"] for r in rows if r["sampler"] != "heun"})
    titles = ["FID (judge features)", "judge accuracy", "RMS error vs 500-step reference"]
    for axis, title in zip(axes, titles):
        axis.set_xscale("log")
        axis.set_xticks(ticks, [str(t) for t in ticks])
        axis.minorticks_off()
        axis.set_xlabel("NFE (model evaluations)")
        axis.set_title(f"{title}, classifier scale {scale:g}", fontsize=10)
        axis.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def tables(summary: dict) -> str:
    """Markdown tables: per solver and scale, FID / accuracy / ODE error by NFE; the grid sweep; the interval."""
    rows, best_grid = summary["rows"], summary["best_grid"]
    out = []
    for scale in sorted({r["scale"] for r in rows}):
        nfes = sorted({r["nfe"] for r in rows if r["scale"] == scale})
        out.append(f"\nScale {scale:g}: FID / judge accuracy / RMS ODE error (deterministic, vs reference) by NFE\n")
        out.append("| solver (grid) | " + " | ".join(str(n) for n in nfes) + " |")
        out.append("|---|" + "---|" * len(nfes))
        curves = [(s, "leading" if s in ("ddim", "ddpm") else best_grid) for s in SOLVERS]
        curves += [(s, g) for s in ("dpm++2m", "heun") for g in GRIDS if g != best_grid]
        for sampler, grid in curves:
            by_nfe = {r["nfe"]: r for r in _curve_rows(rows, sampler, grid, scale)}
            if not by_nfe:
                continue
            cells = []
            for n in nfes:
                r = by_nfe.get(n)
                if r is None:
                    cells.append("")
                    continue
                err = f" / {r['ode_error']:.3f}" if r["ode_error"] is not None else ""
                cells.append(f"{r['fid']:.2f} / {r['accuracy']:.3f}{err}")
            out.append(f"| {sampler} ({grid}) | " + " | ".join(cells) + " |")
    for interval in sorted({tuple(r["interval"]) for r in rows if r["stage"] == "interval"}):
        interval_rows = [r for r in rows if r["stage"] == "interval" and tuple(r["interval"]) == interval]
        sampler, grid, scale = interval_rows[0]["sampler"], interval_rows[0]["grid"], interval_rows[0]["scale"]
        plain = {r["nfe"]: r for r in _curve_rows(rows, sampler, grid, scale)}
        out.append(f"\nGuidance interval {list(interval)} vs always, {sampler} ({grid}), scale {scale:g}\n")
        out.append("| NFE | FID always | FID interval | acc always | acc interval | precision / recall always | "
                   "precision / recall interval | classifier passes saved |")
        out.append("|---|---|---|---|---|---|---|---|")
        for r in interval_rows:
            p = plain.get(r["nfe"])
            if p is None:
                continue
            saved = 1 - r["classifier_calls"] / max(p["classifier_calls"], 1)
            out.append(f"| {r['nfe']} | {p['fid']:.2f} | {r['fid']:.2f} | {p['accuracy']:.3f} | {r['accuracy']:.3f} | "
                       f"{p['precision']:.3f} / {p['recall']:.3f} | {r['precision']:.3f} / {r['recall']:.3f} | "
                       f"{saved:.0%} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
