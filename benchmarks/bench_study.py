"""Study v2: guided sampling against model evaluations on the digits demo's models.

    python benchmarks/bench_study.py --models DEMO_DIR      # a `guided-diffusion demo [--quick]` folder
    python benchmarks/bench_study.py --replot                # redraw the plot and tables from the JSON

Every setting samples the same `--samples` images (sample i from seed stream i of --seed, class i % 10)
at classifier scale `--scale`, and is scored three ways:
  distance  RMS (0..255 pixel units, clipped images) to the reference: DDIM on 250 karras levels from
            sigma_max 80, the same guided ODE from the same noise; what a solver is for;
  accuracy  the demo judge's accuracy on the intended class (a classifier guidance never saw);
  FID       in the judge's features against the held-out digits.
Deterministic solvers run on every grid kind and on grids tuned for them (`sampling.tuning.tune_grid`,
from warm-up noise of its own stream: never these samples); stochastic samplers get accuracy and FID.
NFE counts model evaluations (heun spends 2K - 1 on K levels). Writes benchmarks/results/study.json,
docs/images/study_distance.png and markdown tables (stdout).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from guided_diffusion.config import DiffusionConfig
from guided_diffusion.demo.data import load_digits_dataset
from guided_diffusion.demo.judge import JudgeFeatures
from guided_diffusion.demo.metrics import Reference, score_samples
from guided_diffusion.diffusion.grids import GRIDS, grid_file_document
from guided_diffusion.runtime.rng import SampleNoise
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn
from guided_diffusion.sampling.output import to_uint8
from guided_diffusion.sampling.samplers import SAMPLERS
from guided_diffusion.sampling.settings import SamplerSettings
from guided_diffusion.sampling.tuning import pixel_rms, tune_grid, tuning_reference
from guided_diffusion.weights.checkpoints import load_model, read_config_json

NFES = (4, 6, 8, 10, 12, 15, 20)
STOCHASTIC_GRIDS = ("leading", "karras", "logsnr")


def levels_for(nfe: int, sampler: str) -> int:
    """Levels that spend at most `nfe` model evaluations."""
    per_level = SAMPLERS[sampler].evaluations(10) / 10
    return max(2, (nfe + 1) // 2) if per_level > 1 else nfe


def _checkpoint(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise SystemExit(f"no {pattern} in {folder}: pass --models a folder written by `guided-diffusion demo`")
    return found[-1]


class Study:
    """The demo's networks, the fixed noise and labels, the judge and the reference solution."""

    def __init__(self, models: Path, samples: int, scale: float, seed: int, batch: int):
        root = models / "checkpoints"
        unet_path = _checkpoint(root / "diffusion", "ema_*.pt")
        unet = load_model(unet_path).eval().requires_grad_(False)
        guide = load_model(_checkpoint(root / "classifier", "model*.pt")).eval().requires_grad_(False)
        self.judge = JudgeFeatures(load_model(_checkpoint(root / "judge", "model*.pt")).eval())
        saved = read_config_json(unet_path)
        assert saved is not None
        self.diffusion = DiffusionConfig.from_dict(saved["diffusion"]).replace(timestep_respacing="").build()
        self.model = GuidedModel(unet, class_cond=False)
        self.cond_fn = classifier_cond_fn(guide, scale) if scale else None
        self.scale, self.seed, self.batch = scale, seed, batch
        self.indices = list(range(samples))
        self.labels = np.arange(samples, dtype=np.int64) % 10
        digits = load_digits_dataset()
        test_images, _ = digits.subset(digits.test)
        self.reference_features = Reference.of(self.judge.extract(test_images))
        self.reference: torch.Tensor | None = None

    def draw(self, settings: SamplerSettings) -> torch.Tensor:
        denoiser = settings.denoiser(self.model, self.diffusion)
        parts = []
        for start in range(0, len(self.indices), self.batch):
            batch = self.indices[start:start + self.batch]
            noise = SampleNoise(self.seed, batch)
            x = noise.randn((len(batch), 3, 8, 8), device=torch.device("cpu"))
            y = torch.as_tensor(self.labels[batch])
            parts.append(SAMPLERS[settings.sampler](denoiser, x, noise=noise, cond_fn=self.cond_fn,
                                                    model_kwargs={"y": y}, **settings.sampler_kwargs()))
        return torch.cat(parts)

    def score(self, images: torch.Tensor, deterministic: bool) -> dict:
        uint8 = to_uint8(images).numpy()
        metrics = score_samples(self.judge, self.reference_features, uint8, self.labels, sampler="", scale=self.scale)
        row = {"accuracy": metrics.accuracy, "fid": metrics.fid}
        if deterministic and self.reference is not None:
            row["distance"] = round(pixel_rms(images, self.reference), 3)
        return row


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    load_before, begin = os.getloadavg(), time.perf_counter()
    study = Study(Path(args.models), args.samples, args.scale, args.seed, args.batch)
    rows: list[dict] = []
    t0 = time.perf_counter()
    study.reference = study.draw(SamplerSettings(sampler="ddim", steps=250, step_grid="karras"))
    reference_row = {"sampler": "ddim", "grid": "karras", "nfe": 250, "levels": 250,
                     **study.score(study.reference, False), "seconds": round(time.perf_counter() - t0, 1)}
    print(f"reference: {reference_row}", flush=True)

    done = {}  # rows of an earlier, stopped run of the same study (--rows), by setting
    rows_path = Path(args.rows)
    if rows_path.exists():
        for line in rows_path.read_text().splitlines():
            row = json.loads(line)
            done[(row["sampler"], row["grid"], row["levels"])] = row
    rows_path.parent.mkdir(parents=True, exist_ok=True)

    def record(sampler: str, grid: str, nfe_levels: int, settings: SamplerSettings, deterministic: bool) -> None:
        if (sampler, grid, nfe_levels) in done:
            rows.append(done[(sampler, grid, nfe_levels)])
            return
        start = time.perf_counter()
        images = study.draw(settings)
        row = {"sampler": sampler, "grid": grid, "levels": nfe_levels, "nfe": settings.evaluations(nfe_levels),
               **study.score(images, deterministic), "seconds": round(time.perf_counter() - start, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(rows_path, "a") as handle:
            handle.write(json.dumps(row) + "\n")

    deterministic = [s for s in args.solvers.split(",")]
    nfes = [int(v) for v in args.nfe.split(",")]
    for sampler in deterministic:
        for grid in args.grids.split(","):
            kind, _, sigma_min = grid.partition("@")  # "logsnr@0.2": the logsnr grid down to sigma 0.2
            for nfe in nfes:
                levels = levels_for(nfe, sampler)
                record(sampler, grid, levels, SamplerSettings(sampler=sampler, steps=levels, step_grid=kind,
                                                              sigma_min=float(sigma_min) if sigma_min else None), True)
    reference = None  # the tuning reference, shared by every tuned grid of this study
    for sampler in [s for s in args.tune.split(",") if s]:
        for nfe in nfes:
            levels = levels_for(nfe, sampler)
            path = Path(args.grids_dir) / f"{sampler}_{levels}.json"
            if not path.exists():
                if reference is None:
                    reference = tuning_reference(study.model, study.diffusion, image_shape=(3, 8, 8),
                                                 cond_fn=study.cond_fn, labels=lambda idx: np.asarray(idx) % 10,
                                                 warmup=args.warmup, seed=args.seed)
                start = time.perf_counter()
                result = tune_grid(study.model, study.diffusion, reference, sampler=sampler, levels=levels,
                                   max_trials=args.max_trials)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(grid_file_document(
                    result.sigmas, sampler=sampler, classifier_scale=args.scale, warmup=args.warmup,
                    distance=round(result.distance, 4), start_distance=round(result.start_distance, 4),
                    trials=result.trials, seconds=round(time.perf_counter() - start, 1)), indent=1))
                print(f"tuned {path}: warm-up RMS {result.start_distance:.2f} -> {result.distance:.2f} in "
                      f"{time.perf_counter() - start:.0f} s", flush=True)
            record(sampler, "tuned", levels, SamplerSettings(sampler=sampler, steps=levels, step_grid=str(path)), True)
    for sampler in [s for s in args.stochastic.split(",") if s]:
        for grid in STOCHASTIC_GRIDS:
            for nfe in nfes:
                record(sampler, grid, nfe, SamplerSettings(sampler=sampler, steps=nfe, step_grid=grid), False)
    for nfe in (50,):  # the acceptance's baseline: DDIM at 50 evaluations
        record("ddim", "karras", nfe, SamplerSettings(sampler="ddim", steps=nfe, step_grid="karras"), True)
    return {"date": time.strftime("%Y-%m-%d"), "models": str(args.models), "samples": args.samples, "scale": args.scale,
            "seed": args.seed, "threads": args.threads, "load_before": load_before, "load_after": os.getloadavg(),
            "minutes": round((time.perf_counter() - begin) / 60, 1), "reference": reference_row, "rows": rows}


def tables(summary: dict) -> str:
    rows = summary["rows"]
    nfes = sorted({r["nfe"] for r in rows if r["nfe"] <= 20})
    out = []
    for title, keep, field in (
        ("distance to the 250-level solution (RMS, 0..255)", lambda r: "distance" in r, "distance"),
        ("judge accuracy", lambda r: True, "accuracy"),
        ("FID (judge features)", lambda r: True, "fid"),
    ):
        out.append(f"\n{title}, scale {summary['scale']:g}, {summary['samples']} samples\n")
        out.append("| sampler | grid | " + " | ".join(str(n) for n in nfes) + " |")
        out.append("|---|---|" + "---:|" * len(nfes))
        for key in dict.fromkeys((r["sampler"], r["grid"]) for r in rows if keep(r)):
            cells = {r["nfe"]: r[field] for r in rows if (r["sampler"], r["grid"]) == key and keep(r)}
            out.append(f"| {key[0]} | {key[1]} | " + " | ".join(
                (f"{cells[n]:.3g}" if field != "accuracy" else f"{cells[n]:.3f}") if n in cells else "" for n in nfes) + " |")
    return "\n".join(out)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["rows"] if "distance" in r and r["nfe"] <= 20]
    figure, axis = plt.subplots(figsize=(7.5, 4.8))
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        mine = [r for r in rows if r["sampler"] == sampler]
        best_grid = min({r["grid"] for r in mine if r["grid"] != "tuned"},
                        key=lambda g: np.mean([r["distance"] for r in mine if r["grid"] == g]))
        for grid, style in ((best_grid, "-o"), ("tuned", "--s")):
            points = sorted((r["nfe"], r["distance"]) for r in mine if r["grid"] == grid)
            if points:
                axis.plot(*zip(*points), style, label=f"{sampler} ({grid})", markersize=4)
    axis.axhline(10, color="grey", linewidth=0.8, linestyle=":")
    axis.set_yscale("log")
    axis.set_xlabel("model evaluations (NFE)")
    axis.set_ylabel("RMS distance to the 250-level solution (0..255)")
    axis.set_title(f"Guided sampling at scale {summary['scale']:g}, digits demo models")
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="demo_out", help="output folder of `guided-diffusion demo` (--quick or not)")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--nfe", default=",".join(map(str, NFES)))
    parser.add_argument("--solvers", default="ddim,heun,dpm++2m,dpm++3m,unipc,ipndm,deis")
    parser.add_argument("--grids", default=",".join((*GRIDS, "karras@0.2", "logsnr@0.2")),
                        help="grid kinds; KIND@S ends a karras/logsnr grid at sigma S instead of the model's smallest")
    parser.add_argument("--tune", default="ddim,dpm++2m", help="solvers to tune grids for at every NFE")
    parser.add_argument("--stochastic", default="ddpm,dpm++2m_sde,dpm++3m_sde")
    parser.add_argument("--warmup", type=int, default=256)
    parser.add_argument("--max_trials", type=int, default=150)
    parser.add_argument("--grids_dir", default="benchmarks/results/grids")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/study.json")
    parser.add_argument("--rows", default="benchmarks/results/study_rows.jsonl",
                        help="each row as it is measured; a rerun skips the settings already there")
    parser.add_argument("--plot", default="docs/images/study_distance.png")
    parser.add_argument("--replot", action="store_true", help="only redraw the plot and tables from --out")
    args = parser.parse_args()
    if not args.replot:
        summary = run(args)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1))
    summary = json.loads(Path(args.out).read_text())
    plot(summary, Path(args.plot))
    print(tables(summary))
    print(f"\n{summary['minutes']} min, load {summary['load_before']} -> {summary['load_after']}")


if __name__ == "__main__":
    main()
