"""Settings measured to fail, and the one-line warning a job that uses one of them gets.

Each row of `KNOWN_FAILURES` is a measurement: a sampler on a step grid at up to some number of model
evaluations, with or without classifier guidance, gave samples that do not show what was asked for. A
job is checked against the table when it is built (`sampling.job.sampling_job`), so adding a measured
failure is adding a row here and nothing else.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

from guided_diffusion.diffusion.grids import DEFAULT_GRID
from guided_diffusion.sampling.settings import SamplerSettings

__all__ = ["KnownFailure", "KNOWN_FAILURES", "known_failure", "warn_if_known_failure"]


@dataclass(frozen=True)
class KnownFailure:
    """`sampler` on the `grid` step grid with at most `max_evaluations` model evaluations fails, with
    classifier guidance (`guided` True) or without it (False); `evidence` says what was measured."""

    sampler: str
    grid: str
    max_evaluations: int
    guided: bool
    evidence: str


# Measured by benchmarks/bench_study.py (the digits demo's --quick networks, classifier scale 4, 500 samples
# against the judge; the 250-level reference reaches 0.72, chance is 0.10): every grid kind on which a
# sampler's judge accuracy stayed below 0.3 up to the evaluations given. Rerun the study and regenerate the
# rows when a sampler changes. (dpm++2m on logsnr at 6 evaluations, 0.09 before guidance was split from
# its data prediction, now reaches 0.70 and is no longer here.)
KNOWN_FAILURES: tuple[KnownFailure, ...] = (
    KnownFailure("ddpm", "karras", 4, True, "judge accuracy <= 0.29 (chance 0.10) up to 4 evaluations"),
    KnownFailure("heun", "linspace", 19, True, "judge accuracy <= 0.12 (chance 0.10) up to 19 evaluations"),
    KnownFailure("heun", "leading", 5, True, "judge accuracy <= 0.17 (chance 0.10) up to 5 evaluations"),
    KnownFailure("heun", "trailing", 19, True, "judge accuracy <= 0.01 (chance 0.10) up to 19 evaluations"),
    KnownFailure("heun", "karras", 15, True, "judge accuracy <= 0.15 (chance 0.10) up to 15 evaluations"),
    KnownFailure("heun", "logsnr", 15, True, "judge accuracy <= 0.08 (chance 0.10) up to 15 evaluations"),
    KnownFailure("dpm++3m", "leading", 6, True, "judge accuracy <= 0.28 (chance 0.10) up to 6 evaluations"),
    KnownFailure("dpm++2m_sde", "karras", 4, True, "judge accuracy <= 0.29 (chance 0.10) up to 4 evaluations"),
    KnownFailure("dpm++3m_sde", "leading", 8, True, "judge accuracy <= 0.23 (chance 0.10) up to 8 evaluations"),
    KnownFailure("dpm++3m_sde", "karras", 10, True, "judge accuracy <= 0.13 (chance 0.10) up to 10 evaluations"),
    KnownFailure("dpm++3m_sde", "logsnr", 6, True, "judge accuracy <= 0.24 (chance 0.10) up to 6 evaluations"),
    KnownFailure("unipc", "leading", 4, True, "judge accuracy <= 0.08 (chance 0.10) up to 4 evaluations"),
    KnownFailure("ipndm", "linspace", 20, True, "judge accuracy <= 0.03 (chance 0.10) up to 20 evaluations"),
    KnownFailure("ipndm", "trailing", 20, True, "judge accuracy <= 0.12 (chance 0.10) up to 20 evaluations"),
    KnownFailure("ipndm", "karras", 12, True, "judge accuracy <= 0.16 (chance 0.10) up to 12 evaluations"),
    KnownFailure("ipndm", "logsnr", 12, True, "judge accuracy <= 0.18 (chance 0.10) up to 12 evaluations"),
    KnownFailure("deis", "trailing", 10, True, "judge accuracy <= 0.01 (chance 0.10) up to 10 evaluations"),
    KnownFailure("deis", "karras", 12, True, "judge accuracy <= 0.24 (chance 0.10) up to 12 evaluations"),
    KnownFailure("deis", "logsnr", 12, True, "judge accuracy <= 0.16 (chance 0.10) up to 12 evaluations"),
)


def known_failure(settings: SamplerSettings, *, guided: bool) -> KnownFailure | None:
    """The row of KNOWN_FAILURES these settings fall under, or None. Only `steps`-level grids are
    measured (a timestep_respacing keeps the original's steps)."""
    if settings.steps is None:
        return None
    grid = settings.step_grid or DEFAULT_GRID
    evaluations = settings.evaluations(settings.steps)
    for row in KNOWN_FAILURES:
        if (row.sampler, row.grid, row.guided) == (settings.sampler, grid, guided) and evaluations <= row.max_evaluations:
            return row
    return None


def warn_if_known_failure(settings: SamplerSettings, *, guided: bool) -> KnownFailure | None:
    """Warn (one line under the command line) when the settings fall under a measured failure; returns the row."""
    row = known_failure(settings, guided=guided)
    if row is not None:
        what = "with classifier guidance" if row.guided else "without guidance"
        warnings.warn(
            f"{row.sampler} on the {row.grid} grid at {row.max_evaluations} model evaluations or fewer {what} was "
            f"measured to fail on the digits demo ({row.evidence}); use dpm++2m or ddim, more steps, or "
            "another step grid (see docs/sampling.md, Which sampler)",
            stacklevel=3,
        )
    return row
