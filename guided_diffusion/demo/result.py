"""What a run of the study produced: its metrics, accuracies, checkpoints, files and timings."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from guided_diffusion.demo.metrics import SettingMetrics

__all__ = ["StudyResult"]


@dataclass
class StudyResult:
    """What a run produced."""

    out_dir: Path
    metrics: list[SettingMetrics]
    seconds: float
    judge_test_accuracy: float
    guide_test_accuracy: dict[int, float]
    command: str
    num_test_images: int
    checkpoints: dict[str, Path] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
