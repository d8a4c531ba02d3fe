"""The judge: a classifier of clean digits that guidance never sees, used to score samples.

Its class predictions give the accuracy on the intended classes, and its penultimate features (the
pooled activations before the last layer) are the feature space for FID, precision and recall, plugged
into the evaluator as a `FeatureExtractor`.
"""
from __future__ import annotations

import numpy as np
import torch

from guided_diffusion.demo.data import to_model_input
from guided_diffusion.evaluation import FeatureExtractor, Features
from guided_diffusion.runtime.errors import UserError

__all__ = ["JudgeFeatures"]


class JudgeFeatures(FeatureExtractor):
    """Features and logits of a clean-image classifier (`EncoderUNetModel` with adaptive pooling, run
    at timestep 0) for uint8 NHWC images."""

    def __init__(self, judge: torch.nn.Module, batch_size: int = 512):
        if getattr(judge, "pool", None) != "adaptive":
            raise UserError("the judge must be a classifier with --classifier_pool adaptive (its pooled features are the metric space)")
        self.judge = judge.eval()
        self.batch_size = batch_size
        self.device = next(judge.parameters()).device
        self._pool_layer = judge.get_submodule("out.2")  # normalization, SiLU, AdaptiveAvgPool2d, 1x1 conv, flatten

    def extract(self, images: np.ndarray) -> Features:
        pooled: list[torch.Tensor] = []
        logits: list[torch.Tensor] = []
        hook = self._pool_layer.register_forward_hook(lambda _m, _i, out: pooled.append(out.flatten(1)))
        try:
            with torch.no_grad():
                for start in range(0, len(images), self.batch_size):
                    x = to_model_input(images[start : start + self.batch_size]).to(self.device)
                    logits.append(self.judge(x, torch.zeros(len(x), dtype=torch.long, device=self.device)))
        finally:
            hook.remove()
        return Features(pool=torch.cat(pooled).double().cpu().numpy(), logits=torch.cat(logits).float().cpu().numpy())

    def predict(self, images: np.ndarray) -> np.ndarray:
        """The judge's class for each image."""
        logits = self.extract(images).logits
        assert logits is not None  # extract() always fills them
        return logits.argmax(axis=1)
