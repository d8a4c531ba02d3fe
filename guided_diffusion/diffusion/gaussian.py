"""Gaussian diffusion (Ho et al. 2020; Nichol & Dhariwal 2021; Dhariwal & Nichol 2021).

Notation follows the papers: alpha_bar_t = prod_{s<=t} (1 - beta_s); q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0,
(1 - alpha_bar_t) I); the model predicts eps, x_0 or x_{t-1}, and optionally its variance. The schedule is
computed in float64 NumPy once and each array is cached as float32 on every device it is used on, so a
sampling step does no host-to-device copies (the original re-uploaded each array at every lookup) and no
float64 tensor is ever made (Apple's MPS devices have no float64).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import numpy as np
import torch

from guided_diffusion.diffusion.denoiser import DiffusionDenoiser
from guided_diffusion.diffusion.inversion import ddim_invert
from guided_diffusion.diffusion.losses import discretized_gaussian_log_likelihood, normal_kl
from guided_diffusion.diffusion.stepping import ddim_steps, ddpm_steps, progress_bar
from guided_diffusion.diffusion.types import LossType, ModelMeanType, ModelVarType
from guided_diffusion.models.layers import mean_flat
from guided_diffusion.runtime.errors import SettingError
from guided_diffusion.runtime.rng import GeneratorNoise, Generators, randn

# The enums live in types.py (the denoiser below this module needs them); they are named here too, where
# the original has them.
__all__ = ["GaussianDiffusion", "ModelMeanType", "ModelVarType", "LossType", "_extract_into_tensor"]

Model = Callable[..., torch.Tensor]  # model(x, t, **model_kwargs), and cond_fn(x, t, **model_kwargs)
CondFn = Model | None
Denoise = Callable[[torch.Tensor], torch.Tensor] | None
Kwargs = dict[str, Any] | None
Device = torch.device | str | None


def _extract_into_tensor(arr: np.ndarray, timesteps: torch.Tensor, broadcast_shape: Sequence[int]) -> torch.Tensor:
    """arr[timesteps] as float32 on timesteps' device, broadcast to broadcast_shape (original helper).

    Uploaded at every call as the original does, but as float32 (the same values: the original casts
    after the lookup), so no float64 tensor reaches the device (MPS has no float64)."""
    res = torch.from_numpy(np.asarray(arr, dtype=np.float32)).to(device=timesteps.device)[timesteps]
    while len(res.shape) < len(broadcast_shape):
        res = res[..., None]
    return res.expand(broadcast_shape)


class GaussianDiffusion:
    """Training losses, DDPM/DDIM sampling with classifier guidance, and the variational bound."""

    _ARRAYS = (
        "betas", "log_betas", "alphas_cumprod", "alphas_cumprod_prev", "alphas_cumprod_next", "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod", "one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
        "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
        "recip_posterior_mean_coef1", "posterior_mean_coef2_over_coef1", "fixed_large_variance",
        "fixed_large_log_variance",
    )

    def __init__(
        self,
        *,
        betas: np.ndarray,
        model_mean_type: ModelMeanType,
        model_var_type: ModelVarType,
        loss_type: LossType,
        rescale_timesteps: bool = False,
    ):
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        self.rescale_timesteps = rescale_timesteps

        betas = np.array(betas, dtype=np.float64)  # float64 for accuracy, as the checkpoints were trained
        self.betas = betas
        assert len(betas.shape) == 1, "betas must be 1-D"
        assert (betas > 0).all() and (betas <= 1).all()
        self.num_timesteps = int(betas.shape[0])
        if self.num_timesteps < 2:
            # The posterior's log-variance at t = 0 is borrowed from t = 1, so one step is not a process.
            raise SettingError("timestep_respacing", f"a diffusion needs at least 2 steps, got {self.num_timesteps}; "
                               "keep more steps in timestep_respacing (or diffusion_steps)")

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        assert self.alphas_cumprod_prev.shape == (self.num_timesteps,)

        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)

        # q(x_{t-1} | x_t, x_0): variance beta~_t and mean coef1 * x_0 + coef2 * x_t.
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # beta~_0 is 0, so its log is clipped to beta~_1.
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

        # Derived arrays the methods look up (kept in float64 until the per-device cast).
        self.log_betas = np.log(betas)
        self.one_minus_alphas_cumprod = 1.0 - self.alphas_cumprod
        self.recip_posterior_mean_coef1 = 1.0 / self.posterior_mean_coef1
        self.posterior_mean_coef2_over_coef1 = self.posterior_mean_coef2 / self.posterior_mean_coef1
        self.fixed_large_variance = np.append(self.posterior_variance[1], betas[1:])
        self.fixed_large_log_variance = np.log(self.fixed_large_variance)
        self._device_arrays: dict[torch.device, dict[str, torch.Tensor]] = {}

    # -- schedule lookups ---------------------------------------------------------------------------

    def _arrays_on(self, device: torch.device) -> dict[str, torch.Tensor]:
        arrays = self._device_arrays.get(device)
        if arrays is None:
            # Cast on the host: no float64 tensor exists in torch, on any device (MPS has no float64).
            arrays = {name: torch.from_numpy(np.asarray(getattr(self, name), dtype=np.float32)).to(device)
                      for name in self._ARRAYS}
            self._device_arrays[device] = arrays
        return arrays

    def _extract(self, name: str, t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """The float32 value of schedule array `name` at each t, broadcast to `shape`."""
        res = self._arrays_on(t.device)[name][t]
        return res.reshape(*res.shape, *([1] * (len(shape) - res.ndim))).expand(shape)

    # -- the forward process ------------------------------------------------------------------------

    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log-variance of q(x_t | x_0)."""
        mean = self._extract("sqrt_alphas_cumprod", t, x_start.shape) * x_start
        variance = self._extract("one_minus_alphas_cumprod", t, x_start.shape)
        log_variance = self._extract("log_one_minus_alphas_cumprod", t, x_start.shape)
        return mean, variance, log_variance

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps."""
        if noise is None:
            noise = torch.randn_like(x_start)
        assert noise.shape == x_start.shape
        return (
            self._extract("sqrt_alphas_cumprod", t, x_start.shape) * x_start
            + self._extract("sqrt_one_minus_alphas_cumprod", t, x_start.shape) * noise
        )

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor,
                                  t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        assert x_start.shape == x_t.shape
        posterior_mean = (
            self._extract("posterior_mean_coef1", t, x_t.shape) * x_start
            + self._extract("posterior_mean_coef2", t, x_t.shape) * x_t
        )
        posterior_variance = self._extract("posterior_variance", t, x_t.shape)
        posterior_log_variance_clipped = self._extract("posterior_log_variance_clipped", t, x_t.shape)
        return posterior_mean, posterior_variance, posterior_log_variance_clipped

    # -- the reverse process ------------------------------------------------------------------------

    def p_mean_variance(self, model: Model, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool = True,
                        denoised_fn: Denoise = None, model_kwargs: Kwargs = None) -> dict[str, torch.Tensor]:
        """Run the model and return p(x_{t-1} | x_t): `mean`, `variance`, `log_variance`, `pred_xstart`."""
        if model_kwargs is None:
            model_kwargs = {}
        B, C = x.shape[:2]
        assert t.shape == (B,)
        model_output = model(x, self._scale_timesteps(t), **model_kwargs)
        model_variance, model_log_variance, model_output = self._reverse_variance(model_output, x, t)

        def process_xstart(x0: torch.Tensor) -> torch.Tensor:
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            return x0.clamp(-1, 1) if clip_denoised else x0

        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            pred_xstart = process_xstart(self._predict_xstart_from_xprev(x_t=x, t=t, xprev=model_output))
            model_mean = model_output
        elif self.model_mean_type in (ModelMeanType.START_X, ModelMeanType.EPSILON):
            if self.model_mean_type == ModelMeanType.START_X:
                pred_xstart = process_xstart(model_output)
            else:
                pred_xstart = process_xstart(self._predict_xstart_from_eps(x_t=x, t=t, eps=model_output))
            model_mean, _, _ = self.q_posterior_mean_variance(x_start=pred_xstart, x_t=x, t=t)
        else:
            raise NotImplementedError(self.model_mean_type)
        assert model_mean.shape == model_log_variance.shape == pred_xstart.shape == x.shape
        return {"mean": model_mean, "variance": model_variance, "log_variance": model_log_variance, "pred_xstart": pred_xstart}

    def _reverse_variance(self, model_output: torch.Tensor, x: torch.Tensor,
                          t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Split a learned-variance output; return (variance, log_variance, mean-part of the output)."""
        B, C = x.shape[:2]
        if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            assert model_output.shape == (B, C * 2, *x.shape[2:])
            model_output, model_var_values = torch.split(model_output, C, dim=1)
            if self.model_var_type == ModelVarType.LEARNED:
                model_log_variance = model_var_values
            else:
                # v in [-1, 1] interpolates log sigma^2 between beta~_t (v = -1) and beta_t (v = 1).
                min_log = self._extract("posterior_log_variance_clipped", t, x.shape)
                max_log = self._extract("log_betas", t, x.shape)
                frac = (model_var_values + 1) / 2
                model_log_variance = frac * max_log + (1 - frac) * min_log
            return torch.exp(model_log_variance), model_log_variance, model_output
        if self.model_var_type == ModelVarType.FIXED_LARGE:
            names = ("fixed_large_variance", "fixed_large_log_variance")
        else:
            names = ("posterior_variance", "posterior_log_variance_clipped")
        return self._extract(names[0], t, x.shape), self._extract(names[1], t, x.shape), model_output

    def _predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        assert x_t.shape == eps.shape
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, x_t.shape) * x_t
            - self._extract("sqrt_recipm1_alphas_cumprod", t, x_t.shape) * eps
        )

    def _predict_xstart_from_xprev(self, x_t: torch.Tensor, t: torch.Tensor, xprev: torch.Tensor) -> torch.Tensor:
        assert x_t.shape == xprev.shape
        return (
            self._extract("recip_posterior_mean_coef1", t, x_t.shape) * xprev
            - self._extract("posterior_mean_coef2_over_coef1", t, x_t.shape) * x_t
        )

    def _predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor) -> torch.Tensor:
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, x_t.shape) * x_t - pred_xstart
        ) / self._extract("sqrt_recipm1_alphas_cumprod", t, x_t.shape)

    def _scale_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        if self.rescale_timesteps:
            return t.float() * (1000.0 / self.num_timesteps)
        return t

    # The conversions samplers need, under public names (the original's private names stay, above).
    predict_xstart_from_eps = _predict_xstart_from_eps
    predict_xstart_from_xprev = _predict_xstart_from_xprev
    predict_eps_from_xstart = _predict_eps_from_xstart

    def timestep_table(self) -> tuple[np.ndarray, np.ndarray]:
        """(original timesteps, alphas_cumprod) of the finest schedule this process knows, ascending."""
        return np.arange(self.num_timesteps, dtype=np.float64), np.asarray(self.alphas_cumprod, dtype=np.float64)

    # -- classifier guidance ------------------------------------------------------------------------

    def condition_mean(self, cond_fn: Model, p_mean_var: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor,
                       model_kwargs: Kwargs = None) -> torch.Tensor:
        """Sohl-Dickstein et al.: shift the mean by Sigma * grad log p(y | x_t). cond_fn(x, t, **model_kwargs)
        returns that gradient, already multiplied by the guidance scale."""
        gradient = cond_fn(x, self._scale_timesteps(t), **(model_kwargs or {}))
        return p_mean_var["mean"].float() + p_mean_var["variance"] * gradient.float()

    def condition_score(self, cond_fn: Model, p_mean_var: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor,
                        model_kwargs: Kwargs = None) -> dict[str, torch.Tensor]:
        """Song et al. score conditioning: eps' = eps - sqrt(1 - alpha_bar_t) grad log p(y | x_t), then
        x_0 and the mean are recomputed from eps' (x_0 is deliberately not re-clipped, as the original)."""
        alpha_bar = self._extract("alphas_cumprod", t, x.shape)
        eps = self._predict_eps_from_xstart(x, t, p_mean_var["pred_xstart"])
        eps = eps - (1 - alpha_bar).sqrt() * cond_fn(x, self._scale_timesteps(t), **(model_kwargs or {}))
        out = p_mean_var.copy()
        out["pred_xstart"] = self._predict_xstart_from_eps(x, t, eps)
        out["mean"], _, _ = self.q_posterior_mean_variance(x_start=out["pred_xstart"], x_t=x, t=t)
        return out

    # -- DDPM ---------------------------------------------------------------------------------------

    def p_sample(
        self, model: Model, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool = True, denoised_fn: Denoise = None,
        cond_fn: CondFn = None, model_kwargs: Kwargs = None, generator: Generators = None,
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """One ancestral step x_t -> x_{t-1}. Guidance moves the mean only; `pred_xstart` is the unguided
        prediction (as the original). `noise` or `generator` fixes the draw."""
        out = self.p_mean_variance(model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs)
        if noise is None:
            noise = randn(x.shape, generator, device=x.device, dtype=x.dtype)
        nonzero_mask = (t != 0).float().view(-1, *([1] * (len(x.shape) - 1)))  # no noise at t == 0
        if cond_fn is not None:
            out["mean"] = self.condition_mean(cond_fn, out, x, t, model_kwargs=model_kwargs)
        sample = out["mean"] + nonzero_mask * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def p_sample_loop(self, model: Model, shape: Sequence[int], noise: torch.Tensor | None = None,
                      clip_denoised: bool = True, denoised_fn: Denoise = None, cond_fn: CondFn = None,
                      model_kwargs: Kwargs = None, device: Device = None, progress: bool = False,
                      generator: Generators = None) -> torch.Tensor:
        """Draw samples with the full ancestral sampler; returns the final x_0."""
        final: dict[str, torch.Tensor] = {}
        for step in self.p_sample_loop_progressive(
            model, shape, noise=noise, clip_denoised=clip_denoised, denoised_fn=denoised_fn, cond_fn=cond_fn,
            model_kwargs=model_kwargs, device=device, progress=progress, generator=generator,
        ):
            final = step
        return final["sample"]

    def p_sample_loop_progressive(self, model: Model, shape: Sequence[int], noise: torch.Tensor | None = None,
                                  clip_denoised: bool = True, denoised_fn: Denoise = None, cond_fn: CondFn = None,
                                  model_kwargs: Kwargs = None, device: Device = None, progress: bool = False,
                                  generator: Generators = None) -> Iterator[dict[str, torch.Tensor]]:
        """Yield p_sample's output at every step, from t = T-1 down to 0.

        An entry point over the package's one DDPM loop (`stepping.ddpm_steps`)."""
        yield from self._loop(ddpm_steps, model, shape, noise, device, progress, generator, clip_denoised=clip_denoised,
                              threshold=denoised_fn, cond_fn=cond_fn, model_kwargs=model_kwargs, desc="DDPM")

    def _loop(self, steps: Callable[..., Iterator[dict[str, Any]]], model: Model, shape: Sequence[int],
              noise: torch.Tensor | None, device: Device, progress: bool, generator: Generators,
              **kwargs: Any) -> Iterator[dict[str, torch.Tensor]]:
        """Run sampler `steps` (ddpm_steps / ddim_steps) on this process, yielding the original's dicts."""
        if device is None:
            device = next(cast(torch.nn.Module, model).parameters()).device  # as the original: a module's device
        assert isinstance(shape, (tuple, list))
        img = noise if noise is not None else randn(shape, generator, device=device)
        for out in steps(DiffusionDenoiser(model, self), img, noise=GeneratorNoise(generator), progress=progress,
                         **kwargs):
            yield {"sample": out["x"], "pred_xstart": out["x0"]}

    # -- DDIM ---------------------------------------------------------------------------------------

    def ddim_sample(
        self, model: Model, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool = True, denoised_fn: Denoise = None,
        cond_fn: CondFn = None, model_kwargs: Kwargs = None, eta: float = 0.0, generator: Generators = None,
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """One DDIM step (Song et al. 2021, eq. 12); guidance shifts the score (eps)."""
        out = self.p_mean_variance(model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs)
        if cond_fn is not None:
            out = self.condition_score(cond_fn, out, x, t, model_kwargs=model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])  # re-derived: x_0 may have been clipped
        alpha_bar = self._extract("alphas_cumprod", t, x.shape)
        alpha_bar_prev = self._extract("alphas_cumprod_prev", t, x.shape)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        mean_pred = out["pred_xstart"] * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        nonzero_mask = (t != 0).float().view(-1, *([1] * (len(x.shape) - 1)))
        if eta != 0.0 or noise is not None:
            if noise is None:
                noise = randn(x.shape, generator, device=x.device, dtype=x.dtype)
            mean_pred = mean_pred + nonzero_mask * sigma * noise
        return {"sample": mean_pred, "pred_xstart": out["pred_xstart"]}

    def ddim_reverse_sample(self, model: Model, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool = True,
                            denoised_fn: Denoise = None, model_kwargs: Kwargs = None,
                            eta: float = 0.0) -> dict[str, torch.Tensor]:
        """One deterministic DDIM inversion step x_t -> x_{t+1} (as the original: x is taken to be at level t)."""
        assert eta == 0.0, "Reverse ODE only for deterministic path"
        out = self.p_mean_variance(model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs)
        eps = (
            self._extract("sqrt_recip_alphas_cumprod", t, x.shape) * x - out["pred_xstart"]
        ) / self._extract("sqrt_recipm1_alphas_cumprod", t, x.shape)
        alpha_bar_next = self._extract("alphas_cumprod_next", t, x.shape)
        mean_pred = out["pred_xstart"] * torch.sqrt(alpha_bar_next) + torch.sqrt(1 - alpha_bar_next) * eps
        return {"sample": mean_pred, "pred_xstart": out["pred_xstart"]}

    def ddim_reverse_sample_loop(self, model: Model, x: torch.Tensor, clip_denoised: bool = False,
                                 denoised_fn: Denoise = None, model_kwargs: Kwargs = None, device: Device = None,
                                 progress: bool = False) -> torch.Tensor:
        """Invert the deterministic DDIM sampler: map data x_0 to the x_{T-1} from which
        `ddim_sample_loop(noise=...)` (eta = 0) returns approximately x_0 again.

        An entry point over `inversion.ddim_invert` (step t goes from level alpha_bar_{t-1}, 1 for
        t = 0, to alpha_bar_t using eps(x, t), without refinement).
        """
        if device is None:
            device = next(cast(torch.nn.Module, model).parameters()).device  # as the original: a module's device

        def process_x0(x0: torch.Tensor) -> torch.Tensor:
            x0 = denoised_fn(x0) if denoised_fn is not None else x0
            return x0.clamp(-1, 1) if clip_denoised else x0

        transform = process_x0 if (clip_denoised or denoised_fn is not None) else None
        return ddim_invert(DiffusionDenoiser(model, self), x.to(device), model_kwargs=model_kwargs, progress=progress,
                           denoised_fn=transform)

    def ddim_sample_loop(self, model: Model, shape: Sequence[int], noise: torch.Tensor | None = None,
                         clip_denoised: bool = True, denoised_fn: Denoise = None, cond_fn: CondFn = None,
                         model_kwargs: Kwargs = None, device: Device = None, progress: bool = False, eta: float = 0.0,
                         generator: Generators = None) -> torch.Tensor:
        """Draw samples with DDIM; returns the final x_0."""
        final: dict[str, torch.Tensor] = {}
        for step in self.ddim_sample_loop_progressive(
            model, shape, noise=noise, clip_denoised=clip_denoised, denoised_fn=denoised_fn, cond_fn=cond_fn,
            model_kwargs=model_kwargs, device=device, progress=progress, eta=eta, generator=generator,
        ):
            final = step
        return final["sample"]

    def ddim_sample_loop_progressive(self, model: Model, shape: Sequence[int], noise: torch.Tensor | None = None,
                                     clip_denoised: bool = True, denoised_fn: Denoise = None, cond_fn: CondFn = None,
                                     model_kwargs: Kwargs = None, device: Device = None, progress: bool = False,
                                     eta: float = 0.0,
                                     generator: Generators = None) -> Iterator[dict[str, torch.Tensor]]:
        """Yield ddim_sample's output at every step, from t = T-1 down to 0.

        An entry point over the package's one DDIM loop (`stepping.ddim_steps`)."""
        yield from self._loop(ddim_steps, model, shape, noise, device, progress, generator, clip_denoised=clip_denoised,
                              threshold=denoised_fn, cond_fn=cond_fn, model_kwargs=model_kwargs, eta=eta, desc="DDIM")

    # -- the variational bound ----------------------------------------------------------------------

    def _vb_terms_bpd(self, model: Model, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                      clip_denoised: bool = True, model_kwargs: Kwargs = None) -> dict[str, torch.Tensor]:
        """One term of the bound in bits: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)), or the decoder NLL at t = 0."""
        true_mean, _, true_log_variance_clipped = self.q_posterior_mean_variance(x_start=x_start, x_t=x_t, t=t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        kl = normal_kl(true_mean, true_log_variance_clipped, out["mean"], out["log_variance"])
        kl = mean_flat(kl) / np.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(x_start, means=out["mean"], log_scales=0.5 * out["log_variance"])
        decoder_nll = mean_flat(decoder_nll) / np.log(2.0)
        output = torch.where((t == 0), decoder_nll, kl)
        return {"output": output, "pred_xstart": out["pred_xstart"]}

    def training_losses(self, model: Model, x_start: torch.Tensor, t: torch.Tensor, model_kwargs: Kwargs = None,
                        noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-example training losses at timesteps t: `loss`, and `mse`/`vb` for the MSE losses."""
        if model_kwargs is None:
            model_kwargs = {}
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        terms: dict[str, torch.Tensor] = {}
        if self.loss_type.is_vb():
            terms["loss"] = self._vb_terms_bpd(model, x_start, x_t, t, clip_denoised=False, model_kwargs=model_kwargs)["output"]
            if self.loss_type == LossType.RESCALED_KL:
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms
        if self.loss_type not in (LossType.MSE, LossType.RESCALED_MSE):
            raise NotImplementedError(self.loss_type)
        model_output = model(x_t, self._scale_timesteps(t), **model_kwargs)
        if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            B, C = x_t.shape[:2]
            assert model_output.shape == (B, C * 2, *x_t.shape[2:])
            model_output, model_var_values = torch.split(model_output, C, dim=1)
            # The VB term trains the variance only: the mean enters it with its gradient stopped.
            frozen_out = torch.cat([model_output.detach(), model_var_values], dim=1)
            terms["vb"] = self._vb_terms_bpd(lambda *args, r=frozen_out: r, x_start, x_t, t, clip_denoised=False)["output"]
            if self.loss_type == LossType.RESCALED_MSE:
                # The paper's lambda = 0.001 for any T (the original's MSE leaves it at 1 for T = 1000).
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
        target = {
            ModelMeanType.PREVIOUS_X: lambda: self.q_posterior_mean_variance(x_start=x_start, x_t=x_t, t=t)[0],
            ModelMeanType.START_X: lambda: x_start,
            ModelMeanType.EPSILON: lambda: noise,
        }[self.model_mean_type]()
        assert model_output.shape == target.shape == x_start.shape
        terms["mse"] = mean_flat((target - model_output) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms

    def _prior_bpd(self, x_start: torch.Tensor) -> torch.Tensor:
        """KL(q(x_T | x_0) || N(0, I)) in bits per dim; not trainable, but part of the bound."""
        t = torch.full((x_start.shape[0],), self.num_timesteps - 1, device=x_start.device, dtype=torch.long)
        qt_mean, _, qt_log_variance = self.q_mean_variance(x_start, t)
        kl_prior = normal_kl(mean1=qt_mean, logvar1=qt_log_variance, mean2=0.0, logvar2=0.0)
        return mean_flat(kl_prior) / float(np.log(2.0))

    def calc_bpd_loop(self, model: Model, x_start: torch.Tensor, clip_denoised: bool = True, model_kwargs: Kwargs = None,
                      progress: bool = False) -> dict[str, torch.Tensor]:
        """The whole variational bound in bits per dim, term by term (T model evaluations)."""
        device = x_start.device
        batch_size = x_start.shape[0]
        vb, xstart_mse, mse = [], [], []
        for step in progress_bar(range(self.num_timesteps - 1, -1, -1), progress, "bits/dim"):
            t_batch = torch.full((batch_size,), step, device=device, dtype=torch.long)
            noise = torch.randn_like(x_start)
            x_t = self.q_sample(x_start=x_start, t=t_batch, noise=noise)
            with torch.no_grad():
                out = self._vb_terms_bpd(model, x_start=x_start, x_t=x_t, t=t_batch, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
            vb.append(out["output"])
            xstart_mse.append(mean_flat((out["pred_xstart"] - x_start) ** 2))
            eps = self._predict_eps_from_xstart(x_t, t_batch, out["pred_xstart"])
            mse.append(mean_flat((eps - noise) ** 2))
        vb_t = torch.stack(vb, dim=1)
        prior_bpd = self._prior_bpd(x_start)
        return {
            "total_bpd": vb_t.sum(dim=1) + prior_bpd,
            "prior_bpd": prior_bpd,
            "vb": vb_t,
            "xstart_mse": torch.stack(xstart_mse, dim=1),
            "mse": torch.stack(mse, dim=1),
        }
