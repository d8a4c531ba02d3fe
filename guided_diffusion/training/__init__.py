"""Training diffusion models, upsamplers and noisy classifiers.

Modules: `loop` (the shared loop, `TrainBatch`, `DiffusionTrainer`), `classifier` (`ClassifierTrainer`),
`trainers` (`build_trainer`: which trainer a network needs), `precision` (fp32 master weights, fp16
loss scaling), `ema` (weight averages and their warm-up), `timestep_sampling` (timestep samplers),
`snapshots` (checkpoint sets, resume points), `rundir` (the run directory's lock), `finetune`
(`--init_from`), `monitor`, `watch` and `watch_flags` (sample grids, metrics and time budget during
training), `report` (plots of a run), `recipes` (the released models' training flags), `run` (a job from
command-line flags), `train_loop` (the original `TrainLoop`).
Atomic file writes are `guided_diffusion.runtime.atomic`; bf16 autocast is `guided_diffusion.runtime.autocast`;
generator states and per-example draws are `guided_diffusion.runtime.rng`.
"""
