"""Editing and restoring images with the same models, samplers, seeds and guidance as sampling.

- `ddim_invert` (from `diffusion.inversion`, which the original-style `ddim_reverse_sample_loop` also runs):
  images -> the noise DDIM maps back to them (round trip measured by `psnr`).
- `sdedit`: noise images part-way (or invert them) and sample back, e.g. with a classifier towards a class.
- `repaint`: inpainting with the known region re-noised every step and resampling jumps.
- `measurement_cond_fn` with `MaskOperator`, `DownsampleOperator`, `BlurOperator`: diffusion posterior
  sampling as a cond_fn for every sampler, added to classifier guidance with `sum_cond_fns`.

The jobs the commands run are a library too: an `EditJob` (a task, `Invert`, `Img2Img`, `Inpaint` or
`Restore`, the `EditInputs` and the networks' configs, e.g. from `checkpoint_configs`) run by `run_edit`
(networks from `load_networks`) and written by `save_edit`.
"""
from guided_diffusion.diffusion.inversion import ddim_invert, psnr
from guided_diffusion.editing.grid import start_points
from guided_diffusion.editing.inputs import blurred, downsampled, write_example_inputs
from guided_diffusion.editing.io import (
    load_images,
    load_latents,
    load_mask,
    read_latents,
    save_latents,
)
from guided_diffusion.editing.job import (
    EditInputs,
    EditJob,
    EditTask,
    Img2Img,
    Inpaint,
    Invert,
    Restore,
    checkpoint_configs,
)
from guided_diffusion.editing.measurement import (
    BlurOperator,
    DownsampleOperator,
    MaskOperator,
    X0Predictor,
    measurement_cond_fn,
    paste_known,
    sum_cond_fns,
)
from guided_diffusion.editing.networks import EditNetworks, load_networks
from guided_diffusion.editing.output import EditResult, save_edit
from guided_diffusion.editing.repaint import repaint, repaint_schedule
from guided_diffusion.editing.run import run_edit
from guided_diffusion.editing.sdedit import sdedit

__all__ = [
    "BlurOperator",
    "DownsampleOperator",
    "EditInputs",
    "EditJob",
    "EditNetworks",
    "EditResult",
    "EditTask",
    "Img2Img",
    "Inpaint",
    "Invert",
    "MaskOperator",
    "Restore",
    "X0Predictor",
    "blurred",
    "checkpoint_configs",
    "ddim_invert",
    "downsampled",
    "load_images",
    "load_latents",
    "load_mask",
    "load_networks",
    "measurement_cond_fn",
    "paste_known",
    "psnr",
    "read_latents",
    "repaint",
    "repaint_schedule",
    "run_edit",
    "save_edit",
    "save_latents",
    "sdedit",
    "start_points",
    "sum_cond_fns",
    "write_example_inputs",
]
