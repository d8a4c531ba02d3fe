"""Training the noisy classifier used for guidance.

As the original: images are noised to a timestep drawn by the schedule sampler (or left clean
with `noised=False`, t = 0), the classifier sees the raw timestep, the loss is cross-entropy, and
`train_`/`val_` loss, top-1 and top-5 accuracy are logged with timestep quartiles. Fixes: a
validation batch uses center crops without flips and the training class indices; a loss-aware
sampler is updated and its importance weights applied; no EMA is kept (the original keeps none).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from guided_diffusion.data.stream import ImageStream
from guided_diffusion.training.loop import TrainBatch, TrainerBase, log_loss_dict
from guided_diffusion.training.timestep_sampling import LossAwareSampler


def compute_top_k(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per example: 1.0 when the label is among the k largest logits, else 0.0."""
    k = min(k, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices
    return (top == labels[:, None]).any(dim=-1).float()


class ClassifierTrainer(TrainerBase):
    """Trains an `EncoderUNetModel` classifier on (optionally noised) labelled images."""

    kind = "classifier"
    has_ema = False

    def __init__(
        self, *, noised: bool = True, val_data: Iterator[Any] | None = None, eval_interval: int = 5, anneal_lr: bool = False, **kwargs: Any
    ):
        super().__init__(**kwargs)
        self.noised = noised
        self.val_data = val_data
        self.eval_interval = eval_interval
        self.anneal_lr = anneal_lr

    def anneal_steps(self) -> int:
        return self.options.iterations if self.anneal_lr else 0

    def before_step(self) -> None:
        if self.val_data is not None and self.step % self.eval_interval == 0:
            self.evaluate()

    def evaluate(self) -> None:
        """Log `val_*` metrics on one validation batch."""
        if self.val_data is None:
            return
        batch = TrainBatch.from_item(next(self.val_data), labels=True).to(self.device)
        self.model.eval()
        with torch.no_grad():
            self._run_chunks(batch, prefix="val", train=False)
        self.model.train()

    def forward_backward(self, batch: TrainBatch) -> None:
        self.mp_trainer.zero_grad()
        self._run_chunks(batch, prefix="train", train=True)

    def _run_chunks(self, batch: TrainBatch, prefix: str, train: bool) -> None:
        network = self.ddp_model if train else self.model
        for chunk, last, _ in self.microbatches(batch):
            factor = len(chunk) / len(batch)  # the original's classifier always averages
            t, weights, _, noise = self.draws(chunk)
            if self.noised:
                images = self.diffusion.q_sample(chunk.images, t, noise=noise)
            else:
                images = chunk.images
                t = torch.zeros_like(t)
                weights = torch.ones_like(weights)
            labels = chunk.cond["y"]
            with self.sync_context(last) if train else nullcontext():
                with self.autocast():
                    logits = network(images, timesteps=t)
                losses = F.cross_entropy(logits.float(), labels, reduction="none")
                log_loss_dict(
                    self.diffusion,
                    t,
                    {
                        f"{prefix}_loss": losses.detach(),
                        f"{prefix}_acc@1": compute_top_k(logits.detach(), labels, 1),
                        f"{prefix}_acc@5": compute_top_k(logits.detach(), labels, 5),
                    },
                )
                if train:
                    if self.noised and isinstance(self.schedule_sampler, LossAwareSampler):
                        self.schedule_sampler.update_with_local_losses(t, losses.detach())
                    self.mp_trainer.backward((losses * weights).mean() * factor)

    def extra_state(self) -> dict:
        if self.val_data is not None and hasattr(self.val_data, "state_dict"):
            return {"val_data": self.val_data.state_dict()}
        return {}

    def load_extra_state(self, state: dict) -> None:
        if self.val_data is not None and hasattr(self.val_data, "load_state_dict") and "val_data" in state:
            self.val_data.load_state_dict(state["val_data"])

    def run(self) -> None:
        try:
            super().run()
        finally:
            if isinstance(self.val_data, ImageStream):
                self.val_data.close()
