"""Training diffusion models, upsamplers and noisy classifiers.

Modules: `loop` (the shared loop and `DiffusionTrainer`), `classifier` (`ClassifierTrainer`),
`precision` (fp32 master weights, fp16 loss scaling, bf16 autocast), `samplers` (timestep
samplers), `checkpointing` (checkpoint sets, resume points), `atomic` (atomic file writes), `rng`
(generator state and per-example draws), `run` (a job from command-line flags), `train_loop` (the
original `TrainLoop`).
"""
