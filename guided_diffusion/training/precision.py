"""Mixed-precision training: fp32 master weights and a dynamic loss scale for fp16 models.

In fp16 mode the model's torso convolutions run in float16 (`model.convert_to_fp16()`), the
optimizer updates float32 copies of every parameter, and the loss is multiplied by
2**lg_loss_scale before backward. A step whose gradients are not finite is skipped and the scale
halved, but never below `min_lg_loss_scale`; after `max_consecutive_skips` skipped steps in a row
training stops with a clear error instead of spinning forever (the original's scale fell to
2**-16199 on diverged runs). The scale is part of `state_dict()`, so it survives a resume.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn as nn

from guided_diffusion.models.layers import convert_module_to_f16, convert_module_to_f32
from guided_diffusion.runtime import logs
from guided_diffusion.runtime.errors import SettingError, UserError

INITIAL_LOG_LOSS_SCALE = 20.0
MIN_LOG_LOSS_SCALE = 0.0
MAX_LOG_LOSS_SCALE = 40.0

__all__ = [
    "INITIAL_LOG_LOSS_SCALE",
    "MixedPrecisionTrainer",
    "check_precision_choice",
    "convert_module_to_f16",
    "convert_module_to_f32",
    "global_norm",
]


def global_norm(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """L2 norm of all tensors together, as a 0-d float32 tensor (no host sync)."""
    tensors = [t for t in tensors if t is not None]
    if not tensors:
        return torch.zeros(())
    norms = torch._foreach_norm([t.float() for t in tensors])
    return torch.linalg.vector_norm(torch.stack(norms))


def check_precision_choice(use_fp16: bool, use_bf16: bool, *, fp16_setting: str = "use_fp16") -> None:
    """fp16 weights with loss scaling and bfloat16 autocast are two ways to train in reduced precision:
    at most one. `fp16_setting` names the fp16 switch (`classifier_use_fp16` for classifiers)."""
    if use_fp16 and use_bf16:
        raise SettingError("use_bf16", f"bf16 autocast and {fp16_setting} True exclude each other: pick one")


class MixedPrecisionTrainer:
    """Owns the master parameters, the loss scale and the gradient step (the original's API)."""

    def __init__(
        self,
        *,
        model: nn.Module,
        use_fp16: bool = False,
        fp16_scale_growth: float = 1e-3,
        initial_lg_loss_scale: float = INITIAL_LOG_LOSS_SCALE,
        min_lg_loss_scale: float = MIN_LOG_LOSS_SCALE,
        max_lg_loss_scale: float = MAX_LOG_LOSS_SCALE,
        max_grad_norm: float = 0.0,
        max_consecutive_skips: int = 100,
    ):
        self.model = model
        self.use_fp16 = use_fp16
        self.fp16_scale_growth = fp16_scale_growth
        self.min_lg_loss_scale = min_lg_loss_scale
        self.max_lg_loss_scale = max_lg_loss_scale
        self.max_grad_norm = max_grad_norm
        self.max_consecutive_skips = max_consecutive_skips
        self.lg_loss_scale = float(initial_lg_loss_scale)
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self.param_names = [name for name, _ in model.named_parameters()]
        self.model_params: list[torch.Tensor] = list(model.parameters())
        self.master_params = self.model_params
        if self.use_fp16 and getattr(model, "dtype", torch.float16) != torch.float16:
            raise SettingError("use_fp16", "use_fp16 training needs a model built for it: create the model with use_fp16=True")
        if self.use_fp16:
            # Copy before casting, so the masters keep the exact float32 values.
            self.master_params = [nn.Parameter(p.detach().float().clone()) for p in self.model_params]
            self.model.convert_to_fp16()  # type: ignore[operator]  # UNet and classifier define it; nn.Module does not

    # --- gradients ----------------------------------------------------------------------------

    def zero_grad(self) -> None:
        for param in self.model_params:
            param.grad = None
        if self.use_fp16:
            for master in self.master_params:
                master.grad = None

    def loss_scale(self) -> float:
        """The factor backward multiplies the loss by (1 outside fp16 mode)."""
        return 2.0**self.lg_loss_scale if self.use_fp16 else 1.0

    def backward(self, loss: torch.Tensor) -> None:
        if self.use_fp16:
            (loss * self.loss_scale()).backward()
        else:
            loss.backward()

    def _collect_master_grads(self) -> list[torch.Tensor]:
        if not self.use_fp16:
            # As the original: parameters without a gradient are left out of the step.
            return [grad for grad in (param.grad for param in self.master_params) if grad is not None]
        grads = []
        for master, param in zip(self.master_params, self.model_params):
            grad = torch.zeros_like(master) if param.grad is None else param.grad.detach().float()
            master.grad = grad
            grads.append(grad)
        return grads

    def optimize(self, opt: torch.optim.Optimizer) -> bool:
        """Unscale, check, clip and apply the gradients; False when the step was skipped."""
        grads = self._collect_master_grads()
        scale = self.loss_scale()
        grad_norm = global_norm(grads) / scale
        grad_norm_value = float(grad_norm)  # the one host sync of the step
        if not math.isfinite(grad_norm_value):
            self._skip_step()
            return False
        self.consecutive_skips = 0
        if scale != 1.0:
            torch._foreach_mul_(grads, 1.0 / scale)
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.master_params, self.max_grad_norm)
        logs.logkv_mean("grad_norm", grad_norm_value)
        logs.logkv_mean("param_norm", float(global_norm([p.detach() for p in self.master_params])))
        if self.use_fp16:
            logs.logkv_mean("lg_loss_scale", self.lg_loss_scale)
        opt.step()
        self.zero_grad()
        if self.use_fp16:
            self.master_params_to_model_params()
            self.lg_loss_scale = min(self.lg_loss_scale + self.fp16_scale_growth, self.max_lg_loss_scale)
        return True

    def _skip_step(self) -> None:
        self.zero_grad()
        self.skipped_steps += 1
        self.consecutive_skips += 1
        if self.use_fp16:
            self.lg_loss_scale = max(self.lg_loss_scale - 1.0, self.min_lg_loss_scale)
            logs.log(f"Found NaN, decreased lg_loss_scale to {self.lg_loss_scale:g}")
        else:
            logs.log("Found non-finite gradients, skipped the step")
        logs.logkv_mean("skipped_steps", 1.0)
        if self.consecutive_skips >= self.max_consecutive_skips:
            where = f" with the loss scale at its floor 2^{self.min_lg_loss_scale:g}" if self.use_fp16 else ""
            raise UserError(
                f"gradients were not finite for {self.consecutive_skips} steps in a row{where}: training has diverged; "
                "resume from an earlier checkpoint with a lower lr or with grad_clip 1.0"
            )

    # --- weights --------------------------------------------------------------------------------

    def master_params_to_model_params(self) -> None:
        """Copy the float32 masters into the (partly float16) model."""
        with torch.no_grad():
            for master, param in zip(self.master_params, self.model_params):
                param.copy_(master.detach())

    def master_params_to_state_dict(self, master_params: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """A plain float32 state dict of the model with `master_params` (default: the current
        masters) in place of its parameters; tensors on the CPU, no `module.` prefix."""
        params = self.master_params if master_params is None else master_params
        state = {name: value.detach().float().cpu().clone() for name, value in self.model.state_dict().items()}
        for name, value in zip(self.param_names, params):
            state[name] = value.detach().float().cpu().clone()
        return state

    def state_dict_to_master_params(self, state_dict: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The parameters of `state_dict` in master order, as float32 tensors on the masters' device."""
        missing = [name for name in self.param_names if name not in state_dict]
        if missing:
            raise UserError(
                f"checkpoint lacks parameter {missing[0]} ({len(missing)} missing): it was saved from a different model; check the model settings"
            )
        out = []
        for name, master in zip(self.param_names, self.master_params):
            value = state_dict[name]
            if tuple(value.shape) != tuple(master.shape):
                raise UserError(
                    f"checkpoint parameter {name} has shape {tuple(value.shape)}, the model has {tuple(master.shape)}: check the model settings"
                )
            out.append(value.detach().to(device=master.device, dtype=torch.float32))
        return out

    def load_master_params(self, params: list[torch.Tensor]) -> None:
        """Set the masters (and the model) to `params`."""
        with torch.no_grad():
            for master, value in zip(self.master_params, params):
                master.copy_(value)
        if self.use_fp16:
            self.master_params_to_model_params()

    # --- checkpointed state -----------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "lg_loss_scale": self.lg_loss_scale,
            "skipped_steps": self.skipped_steps,
            "consecutive_skips": self.consecutive_skips,
        }

    def load_state_dict(self, state: dict) -> None:
        self.lg_loss_scale = float(state.get("lg_loss_scale", self.lg_loss_scale))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.consecutive_skips = int(state.get("consecutive_skips", 0))
