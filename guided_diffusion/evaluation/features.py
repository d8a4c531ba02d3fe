"""Feature extractors: what turns uint8 images into the vectors the metrics compare.

The evaluator works with any `FeatureExtractor`; `InceptionFeatureExtractor` gives the original's
feature space (pool_3, mixed_6/conv, IS logits); `ClassifierFeatureExtractor` the penultimate features of
one of this package's classifier checkpoints. Subclass `FeatureExtractor` to evaluate in another space,
for example a small classifier trained on your own data.
"""
from __future__ import annotations

import abc
import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from guided_diffusion.evaluation.inception import InceptionV3
from guided_diffusion.evaluation.weights import load_inception_network
from guided_diffusion.runtime.errors import UserError

__all__ = ["Features", "FeatureExtractor", "FeatureSpace", "InceptionFeatureExtractor", "ClassifierFeatureExtractor",
           "feature_extractor_from_spec", "parse_feature_spec", "resolve_device", "weights_sha256"]


@dataclass(frozen=True)
class FeatureSpace:
    """Which features statistics live in: the network (`"inception"`, `"classifier"`, or a custom
    extractor's class name), the sha256 of its weights (`weights_sha256`: the tensors, so a .pt and a
    .safetensors of the same weights agree) and the dimension of the pool features. FIDs are comparable
    only within one space; `key` is a stable string naming it (stored in reference files, and what a
    series of FIDs over training should be grouped by)."""

    network: str
    weights_sha256: str | None
    dim: int | None

    @property
    def key(self) -> str:
        """`network:first 16 hex digits of the weights' sha256:dim`, e.g. "classifier:3f2a...:512"."""
        return f"{self.network}:{(self.weights_sha256 or '-')[:16]}:{self.dim if self.dim is not None else '-'}"

    def describe(self) -> str:
        """For messages: "classifier features (weights 3f2a9c01..., 512-d)"."""
        weights = f"weights {self.weights_sha256[:8]}..." if self.weights_sha256 else "unhashed weights"
        size = f", {self.dim}-d" if self.dim is not None else ""
        return f"{self.network} features ({weights}{size})"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpace:
        data = json.loads(text)
        dim = data.get("dim")
        return cls(network=str(data["network"]), weights_sha256=data.get("weights_sha256"),
                   dim=int(dim) if dim is not None else None)


def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes, in name order: the identity of the
    weights whatever file format held them."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Features:
    """Features of one batch of N images.

    `pool` (N, D): used for FID and precision/recall. `spatial` (N, Ds) or None: used for sFID.
    `logits` (N, classes) or None: softmaxed for the Inception Score.
    """

    pool: np.ndarray
    spatial: np.ndarray | None = None
    logits: np.ndarray | None = None


class FeatureExtractor(abc.ABC):
    """Maps a batch of uint8 NHWC RGB images to `Features`.

    Subclasses set `batch_size` (images per `extract` call the evaluator will use) and `device`
    (where precision/recall distances are computed).
    """

    batch_size: int = 64
    device: torch.device = torch.device("cpu")

    @property
    def feature_space(self) -> FeatureSpace:
        """The space these features live in; override to name the weights and dimension, so reference
        statistics saved with them are refused by an extractor with other weights."""
        return FeatureSpace(network=type(self).__qualname__, weights_sha256=None, dim=None)

    @abc.abstractmethod
    def extract(self, images: np.ndarray) -> Features:
        """Features of `images`, a uint8 array shaped (N, H, W, 3)."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None`/"auto" -> CUDA when available, else CPU; anything else is parsed by torch."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return resolved


@contextlib.contextmanager
def _full_fp32() -> Iterator[None]:
    """Disable TF32 convolutions/matmuls for the duration: the reference numbers are exact float32."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class InceptionFeatureExtractor(FeatureExtractor):
    """The evaluator's Inception-v3 features: pool_3 (2048), mixed_6/conv[..., :7] flattened in TF's
    NHWC order (2023), and the 1008 bias-free IS logits. Takes over `network`: with `fuse_batchnorm`
    its batch norms are folded into the convolutions in place."""

    def __init__(self, network: InceptionV3, *, device: str | torch.device | None = None, batch_size: int = 64,
                 fuse_batchnorm: bool = True) -> None:
        if batch_size < 1:
            raise UserError(f"--batch_size must be positive, got {batch_size}")
        self.device = resolve_device(device)
        self.batch_size = batch_size
        network = network.eval()
        # Hashed before folding, which rewrites the convolution weights in place.
        self._space = FeatureSpace("inception", weights_sha256(network.state_dict()), 2048)
        if fuse_batchnorm:  # same function, one op per layer instead of two
            network.fuse_batchnorm()
        self.network = network.to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs omit it

    @classmethod
    def from_weights(cls, path: Path | str | None = None, *, device: str | torch.device | None = None,
                     batch_size: int = 64, progress: bool = True) -> InceptionFeatureExtractor:
        """Build from pytorch-fid's weights at `path`, or from the cached download when `path` is None."""
        return cls(load_inception_network(path, progress=progress), device=device, batch_size=batch_size)

    @property
    def feature_space(self) -> FeatureSpace:
        return self._space

    def extract(self, images: np.ndarray) -> Features:
        batch = torch.from_numpy(np.asarray(images)).to(self.device, non_blocking=True)
        # NHWC uint8 -> NCHW float view; permuting keeps it channels_last in memory.
        batch = batch.permute(0, 3, 1, 2).float()
        with torch.inference_mode(), _full_fp32():
            output = self.network(batch)
            # TF flattened the NHWC map: position-major, channel-minor. Precomputed mu_s/sigma_s in
            # reference files use that order.
            spatial = output.spatial.permute(0, 2, 3, 1).reshape(len(batch), -1)
            return Features(
                pool=output.pool.float().cpu().numpy(),
                spatial=spatial.float().cpu().numpy(),
                logits=output.logits.float().cpu().numpy(),
            )


class ClassifierFeatureExtractor(FeatureExtractor):
    """Penultimate features of one of this package's classifiers (`EncoderUNetModel`), run on clean
    images at timestep 0: the activations entering the pooling head, averaged over positions for the
    `adaptive`/`attention` pools (after the head's normalization and SiLU), or the pooled vector the
    final linear layer sees for the `spatial` pools. Logits are its class scores. For users without
    the Inception weights (offline, or images unlike ImageNet's): the numbers are not comparable with
    published FIDs."""

    def __init__(self, classifier: torch.nn.Module, *, image_size: int | None = None,
                 device: str | torch.device | None = None, batch_size: int = 64) -> None:
        if batch_size < 1:
            raise UserError(f"--batch_size must be positive, got {batch_size}")
        head = getattr(classifier, "out", None)
        if not isinstance(head, torch.nn.Sequential):
            raise UserError("classifier features need one of this package's classifiers (EncoderUNetModel)")
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.classifier = classifier.eval().to(self.device)
        self.image_size = image_size
        # adaptive/attention: out = [norm, SiLU, pool, ...]; spatial pools: out = [Linear, ..., Linear] on the
        # already pooled vector.
        self._spatial_head = isinstance(head[0], torch.nn.Linear)
        self._hook_module = head if self._spatial_head else head[1]
        width = head[0].in_features if self._spatial_head else getattr(head[0], "num_channels", None)
        dim = int(width) if isinstance(width, int) else None
        self._space = FeatureSpace("classifier", weights_sha256(classifier.state_dict()), dim)

    @property
    def feature_space(self) -> FeatureSpace:
        return self._space

    @classmethod
    def from_checkpoint(cls, path: Path | str, *, device: str | torch.device | None = None,
                        batch_size: int = 64) -> ClassifierFeatureExtractor:
        """Load a classifier checkpoint (architecture from config.json beside it, safetensors metadata,
        or the released preset of that name)."""
        from guided_diffusion.config import ClassifierConfig
        from guided_diffusion.weights.checkpoints import (
            config_for_checkpoint,
            inspect_checkpoint,
            load_state_dict,
            load_weights,
        )

        inspect_checkpoint(path, expected="classifier")  # "X is a diffusion model checkpoint, not a classifier"
        state = load_state_dict(path)
        config = config_for_checkpoint(path, state)
        if not isinstance(config, ClassifierConfig):
            raise UserError(f"{path} is not a classifier checkpoint (its config describes a {type(config).__name__}); "
                            "pass a classifier_train checkpoint or a released *_classifier.pt")
        network = load_weights(config.build(), state, source=str(path))
        return cls(network, image_size=config.image_size, device=device, batch_size=batch_size)

    def _features_hook(self, store: list[torch.Tensor]):
        if self._spatial_head:
            return self._hook_module.register_forward_pre_hook(lambda _m, args: store.append(args[0].flatten(1)))
        return self._hook_module.register_forward_hook(lambda _m, _i, out: store.append(out.float().mean(dim=(2, 3))))

    def extract(self, images: np.ndarray) -> Features:
        batch = torch.from_numpy(np.asarray(images)).to(self.device)
        x = batch.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        if self.image_size is not None and x.shape[-1] != self.image_size:
            x = torch.nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                                antialias=True, align_corners=False)
        pooled: list[torch.Tensor] = []
        hook = self._features_hook(pooled)
        try:
            with torch.inference_mode():
                logits = self.classifier(x, torch.zeros(len(x), dtype=torch.long, device=self.device))
        finally:
            hook.remove()
        return Features(pool=pooled[0].double().cpu().numpy(), logits=logits.float().cpu().numpy())


def parse_feature_spec(spec: str) -> tuple[str, str | None]:
    """'inception' -> ("inception", None); 'classifier:PATH' -> ("classifier", PATH); else ValueError."""
    text = spec.strip()
    if text == "inception":
        return "inception", None
    if text.startswith("classifier:") and len(text) > len("classifier:"):
        return "classifier", text[len("classifier:"):]
    raise ValueError(f"unknown feature space {spec!r}: use inception or classifier:PATH")


def feature_extractor_from_spec(spec: str, *, device: str | torch.device | None = None, batch_size: int = 64,
                                inception_weights: Path | str | None = None, progress: bool = True) -> FeatureExtractor:
    """The extractor named by `spec` (see `parse_feature_spec`)."""
    kind, path = parse_feature_spec(spec)
    if kind == "classifier" and path is not None:
        return ClassifierFeatureExtractor.from_checkpoint(path, device=device, batch_size=batch_size)
    return InceptionFeatureExtractor.from_weights(inception_weights, device=device, batch_size=batch_size,
                                                  progress=progress)
