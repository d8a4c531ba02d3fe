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


KNOWN_FAILURES: tuple[KnownFailure, ...] = (
    KnownFailure("dpm++2m", "logsnr", 6, True,
                 "classifier_sample on the digits demo's networks: judge accuracy 0.09, chance level (issue 20 item 4)"),
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
            f"measured to fail ({row.evidence}); use more steps or another step grid",
            stacklevel=3,
        )
    return row
