"""The diffusion process: beta schedules (`schedules`), `GaussianDiffusion` (`gaussian`, with the enums in
`types`), respacing and continuous step grids (`respace`, `grids`), the denoiser view of a trained model on
any grid (`denoiser`), the one DDPM and DDIM loop (`stepping`), DDIM inversion (`inversion`), the
likelihood terms (`losses`) and `create_gaussian_diffusion` (`factory`)."""
