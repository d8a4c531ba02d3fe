"""The study's knobs: network sizes, training lengths, and what to sample. Two recipes, the default
(about five minutes on a 2-core CPU) and `--quick` (about one and a half)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from guided_diffusion.config import ClassifierConfig, DiffusionConfig, ModelConfig
from guided_diffusion.demo.data import IMAGE_SIZE, NUM_CLASSES
from guided_diffusion.demo.train import TrainSpec

__all__ = ["StudySettings", "default_settings", "quick_settings", "SCALES", "SAMPLERS"]

SCALES = (0.0, 1.0, 2.0, 4.0, 8.0)
SAMPLERS = ("ddim", "dpm++2m")


def _unet() -> ModelConfig:
    # An ADM UNet cut down to 8x8: two levels, attention only in the middle block, learned sigma.
    return ModelConfig(
        image_size=IMAGE_SIZE, num_channels=32, num_res_blocks=1, channel_mult="1,1", attention_resolutions="",
        num_head_channels=32, learn_sigma=True, num_classes=NUM_CLASSES, use_scale_shift_norm=True,
        resblock_updown=False,
    )


def _diffusion() -> DiffusionConfig:
    return DiffusionConfig(learn_sigma=True, diffusion_steps=1000, noise_schedule="cosine")


def _guide() -> ClassifierConfig:
    # The noisy classifier of ADM-G (attention pooling), small.
    return ClassifierConfig(
        image_size=IMAGE_SIZE, classifier_width=32, classifier_depth=1, classifier_attention_resolutions="",
        classifier_channel_mult="1,2", classifier_pool="attention", classifier_num_head_channels=32,
        classifier_resblock_updown=True, num_classes=NUM_CLASSES,
    )


def _judge() -> ClassifierConfig:
    # A different network from the guide: adaptive pooling, whose pooled activations are the feature space.
    return ClassifierConfig(
        image_size=IMAGE_SIZE, classifier_width=32, classifier_depth=1, classifier_attention_resolutions="",
        classifier_channel_mult="1,2", classifier_pool="adaptive", classifier_num_head_channels=32,
        classifier_resblock_updown=False, num_classes=NUM_CLASSES,
    )


@dataclass(frozen=True)
class StudySettings:
    """Everything that decides a run besides the seed."""

    unet: ModelConfig = field(default_factory=_unet)
    diffusion: DiffusionConfig = field(default_factory=_diffusion)
    guide: ClassifierConfig = field(default_factory=_guide)
    judge: ClassifierConfig = field(default_factory=_judge)
    # Batches of 64 use a CPU core a third better than 32 at this size.
    unet_training: TrainSpec = TrainSpec(steps=1200, batch_size=64, lr=2e-3, ema_rate=0.995)
    # A sharp guide moves samples at small scales; weight decay would blunt it.
    guide_training: TrainSpec = TrainSpec(steps=1000, batch_size=64, lr=2e-3, noised=True)
    judge_training: TrainSpec = TrainSpec(steps=500, batch_size=64, lr=2e-3, weight_decay=0.05, noised=False)
    samples_per_class: int = 20
    sampling_steps: int = 20
    sample_batch_size: int = 100
    scales: tuple[float, ...] = SCALES
    samplers: tuple[str, ...] = SAMPLERS

    @property
    def respacing(self) -> str:
        """DDIM-style spacing (0, K, 2K, ...): it leaves out the last steps of the cosine schedule, where
        alpha is ~1e-4 and a classifier-guided score step would be amplified a thousandfold."""
        return f"ddim{self.sampling_steps}"

    @property
    def num_samples(self) -> int:
        return self.samples_per_class * self.unet.num_classes

    def replace(self, **changes) -> StudySettings:
        return replace(self, **changes)


def default_settings() -> StudySettings:
    """The README's run: guidance clearly trading recall for precision and accuracy."""
    return StudySettings()


def quick_settings() -> StudySettings:
    """`--quick`: the same study with shorter training and fewer samples."""
    return StudySettings(
        unet_training=TrainSpec(steps=400, batch_size=64, lr=2e-3, ema_rate=0.99),
        guide_training=TrainSpec(steps=400, batch_size=64, lr=2e-3, noised=True),
        judge_training=TrainSpec(steps=200, batch_size=64, lr=2e-3, weight_decay=0.05, noised=False),
        samples_per_class=10,
        sampling_steps=15,
    )
