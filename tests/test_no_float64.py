"""No float64 tensor in sampling, editing or a training step (issue 22): Apple's MPS devices have no float64
("Cannot convert a MPS Tensor to float64"), and the original's `_extract_into_tensor` uploaded float64
schedule arrays at every step. Schedule math belongs in NumPy and Python floats; tensors are float32.

A TorchDispatchMode sees the output of every operation run through PyTorch while tiny random networks
sample (through `load_pipeline`, as users do), edit (SDEdit, RePaint, DPS, DDIM inversion) and train for a
step. This machine has no MPS device, so the check is stricter than MPS needs: a float64 tensor anywhere,
host included, fails (host-side float64 belongs in NumPy).
"""
from __future__ import annotations

import itertools
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import CFG, CLASSIFIER, UNCOND, make_checkpoints, randomise_zero_layers
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from guided_diffusion import logger
from guided_diffusion.config import ClassifierConfig, DiffusionConfig, ModelConfig
from guided_diffusion.data.dataset import ImageBatch
from guided_diffusion.diffusion.denoiser import DiffusionDenoiser
from guided_diffusion.editing import MaskOperator, X0Predictor, ddim_invert, measurement_cond_fn, repaint, sdedit
from guided_diffusion.runtime.rng import SampleNoise
from guided_diffusion.sampling import load_pipeline
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn
from guided_diffusion.training.classifier import ClassifierTrainer
from guided_diffusion.training.loop import DiffusionTrainer, LoopOptions

pytestmark = pytest.mark.usefixtures("one_thread")

PACKAGE = Path(__file__).resolve().parents[1] / "guided_diffusion"

class Float64Recorder(TorchDispatchMode):
    """Records, for every operation whose output holds a float64 tensor, the operation and the innermost
    package source line that ran it."""

    def __init__(self) -> None:
        super().__init__()
        self.hits: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in tree_leaves(out)):
            self.hits.append((str(func), self._caller()))
        return out

    @staticmethod
    def _caller() -> str:
        for frame in reversed(traceback.extract_stack()):
            path = Path(frame.filename).resolve()
            if PACKAGE in path.parents:
                return f"{path.relative_to(PACKAGE).as_posix()}:{frame.lineno}"
        return "outside the package"


def float64_made_by(run: Callable[[], Any]) -> list[tuple[str, str]]:
    with Float64Recorder() as recorder:
        run()
    return recorder.hits


# -- the scenarios: each builds its objects inside the recorder, so set-up is checked too ------------------

MODEL = ModelConfig(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,1", attention_resolutions="4",
                    num_head_channels=8, learn_sigma=True, class_cond=True, num_classes=5, resblock_updown=True)
CLASSIFIER_CFG = ClassifierConfig(image_size=8, classifier_width=32, classifier_depth=1, classifier_channel_mult="1,1",
                                  classifier_attention_resolutions="4", classifier_num_head_channels=8, num_classes=5)
DIFFUSION = DiffusionConfig(diffusion_steps=50, learn_sigma=True, noise_schedule="cosine")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    return make_checkpoints(tmp_path_factory.mktemp("ckpt"))


def sample(checkpoints: dict[str, Path], **options: Any) -> Callable[[], Any]:
    def run() -> Any:
        pipe = load_pipeline(checkpoints["uncond"], classifier=checkpoints["classifier"], device="cpu", progress=False,
                             flags=UNCOND, classifier_flags=f"--image_size 8 {CLASSIFIER} --num_classes 10",
                             bf16=options.pop("bf16", False))
        return pipe.sample(2, classes=[1, 3], guidance_scale=2.0, seed=0, batch_size=2, **options)
    return run


def sample_cfg(checkpoints: dict[str, Path]) -> Callable[[], Any]:
    def run() -> Any:
        pipe = load_pipeline(checkpoints["cfg"], device="cpu", progress=False, flags=CFG)
        return pipe.sample(2, classes=[1, 3], cfg_scale=3.0, sampler="dpm++2m", steps=4, seed=0, batch_size=2)
    return run


def networks() -> tuple[DiffusionDenoiser, Any]:
    torch.manual_seed(0)
    model = randomise_zero_layers(MODEL.build(), 0).eval()
    classifier = randomise_zero_layers(CLASSIFIER_CFG.build(), 1).eval()
    denoiser = DiffusionDenoiser(GuidedModel(model, class_cond=True), DIFFUSION.replace(timestep_respacing="8").build())
    return denoiser, classifier_cond_fn(classifier, 2.0)


def images() -> tuple[torch.Tensor, dict[str, torch.Tensor], SampleNoise]:
    x0 = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return x0, {"y": torch.tensor([1, 3])}, SampleNoise(0, [0, 1])


def edit_sdedit() -> Any:
    denoiser, cond_fn = networks()
    x0, kwargs, noise = images()
    sdedit(denoiser, x0, strength=0.6, noise=noise, cond_fn=cond_fn, model_kwargs=kwargs)
    return sdedit(denoiser, x0, strength=0.6, from_inversion=True, inversion_refine=2, noise=noise, model_kwargs=kwargs)


def edit_repaint_and_dps() -> Any:
    denoiser, cond_fn = networks()
    x0, kwargs, noise = images()
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :4] = 1
    repaint(denoiser, noise.randn((2, 3, 8, 8)), known=x0, mask=mask, jump_length=2, jump_n_sample=2, noise=noise,
            cond_fn=cond_fn, model_kwargs=kwargs)
    operator = MaskOperator(mask)
    dps = measurement_cond_fn(operator, operator(x0), 1.0, predict_x0=X0Predictor(denoiser.model, DIFFUSION.build()))
    return sdedit(denoiser, x0, strength=1.0, noise=noise, cond_fn=dps, model_kwargs=kwargs)


def edit_invert() -> Any:
    denoiser, _ = networks()
    x0, kwargs, _ = images()
    return ddim_invert(denoiser, x0, model_kwargs=kwargs, refine=2)


def batches(labels: bool) -> Any:
    generator = torch.Generator().manual_seed(0)
    for step in itertools.count():
        yield ImageBatch(images=torch.rand(4, 3, 8, 8, generator=generator) * 2 - 1, labels=torch.arange(4) % 5,
                         seeds=torch.arange(4) + 1000 * step, bad_files=[], failed=False)


def train_step(tmp_path: Path, kind: str) -> Callable[[], Any]:
    def run() -> Any:
        options = LoopOptions(batch_size=4, lr=1e-3, ema_rate="0.9", log_interval=1000, save_interval=1000,
                              progress=False, seed=5, class_cond=True, num_classes=5)
        common = dict(diffusion=DIFFUSION.build(), data=batches(True), options=options, run_dir=tmp_path / kind)
        trainer = (DiffusionTrainer(model=MODEL.build(), **common) if kind == "diffusion"
                   else ClassifierTrainer(model=CLASSIFIER_CFG.build(), **common))
        logger.configure(dir=str(tmp_path / "log"), format_strs=[])
        try:
            trainer.run_step(trainer.next_batch())
            logger.dumpkvs()
        finally:
            logger.reset()
    return run


def scenario(name: str, checkpoints: dict[str, Path], tmp_path: Path) -> Callable[[], Any]:
    return {
        "sample ddim": sample(checkpoints, sampler="ddim", steps="ddim5"),
        "sample ddpm": sample(checkpoints, sampler="ddpm", steps="5"),
        "sample dpm++2m grid": sample(checkpoints, sampler="dpm++2m", steps=4),
        "sample heun grid bf16": sample(checkpoints, sampler="heun", steps=3, bf16=True),
        "sample cfg": sample_cfg(checkpoints),
        "edit sdedit": edit_sdedit,
        "edit repaint and dps": edit_repaint_and_dps,
        "edit ddim inversion": edit_invert,
        "train diffusion step": train_step(tmp_path, "diffusion"),
        "train classifier step": train_step(tmp_path, "classifier"),
    }[name]


SCENARIOS = ["sample ddim", "sample ddpm", "sample dpm++2m grid", "sample heun grid bf16", "sample cfg", "edit sdedit",
             "edit repaint and dps", "edit ddim inversion", "train diffusion step", "train classifier step"]


@pytest.mark.filterwarnings("ignore:.*was measured to fail")  # heun at 3 levels: few steps on purpose, dtypes are the point
@pytest.mark.parametrize("name", SCENARIOS)
def test_no_float64_tensor_is_made(name, checkpoints, tmp_path):
    hits = float64_made_by(scenario(name, checkpoints, tmp_path))
    assert not hits, f"float64 tensors made by: {sorted(set(hits))}"


def test_the_recorder_sees_a_float64_schedule_lookup():
    """The original's lookup (float64 uploaded to the device, cast after indexing) is caught."""
    import numpy as np

    def original_lookup() -> torch.Tensor:
        arr = np.linspace(0.1, 0.9, 10)
        return torch.from_numpy(arr).to("cpu")[torch.tensor([1, 2])].float()

    hits = float64_made_by(original_lookup)
    assert hits and all(where == "outside the package" for _, where in hits)
