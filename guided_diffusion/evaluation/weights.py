"""Inception weights: pytorch-fid's port of the 2015 TF graph, fetched once into the cache or given by path."""
from __future__ import annotations

from pathlib import Path

from guided_diffusion.evaluation.inception import InceptionV3
from guided_diffusion.runtime.download import CACHE_ENV, cache_dir, download
from guided_diffusion.runtime.errors import UserError
from guided_diffusion.weights.checkpoints import read_tensor_file

__all__ = ["INCEPTION_WEIGHTS_URL", "InceptionWeightsUnavailable", "inception_weights_file", "load_inception_network"]

INCEPTION_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)


def _hash_prefix(file_name: str) -> str | None:
    """The sha256 prefix carried in names like `name-6726825d.pth` (torch hub convention)."""
    stem = file_name.rsplit(".", 1)[0]
    candidate = stem.rsplit("-", 1)[-1]
    if len(candidate) >= 8 and all(ch in "0123456789abcdef" for ch in candidate):
        return candidate
    return None


class InceptionWeightsUnavailable(UserError):
    """The Inception weights are not in the cache and cannot be downloaded. The message speaks of the
    cache, the URL and GUIDED_DIFFUSION_CACHE only; a command adds its own way out (a flag naming another
    copy, other features), since which one applies depends on the command."""

    def __init__(self, message: str, *, url: str, cache_path: Path):
        super().__init__(message)
        self.url = url
        self.cache_path = cache_path


def inception_weights_file(path: Path | str | None = None, *, url: str = INCEPTION_WEIGHTS_URL,
                           progress: bool = True) -> Path:
    """Path of the Inception weights: `path` when given, else the cached download of `url` (fetched on
    first use and checked against the sha256 prefix in its file name)."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise UserError(f"Inception weights {path} not found; pass an existing pt_inception-*.pth file")
        return path
    file_name = url.rsplit("/", 1)[-1]
    dest = cache_dir() / file_name
    try:
        return download(url, dest, sha256=_hash_prefix(file_name), progress=progress)
    except UserError as exc:
        # The download's own message already says how to place the file by hand; say only what the file
        # is and which variable moves the cache.
        where = "" if CACHE_ENV in str(exc) else f" ({CACHE_ENV} sets its folder)"
        raise InceptionWeightsUnavailable(
            f"the Inception weights are not in the cache{where} and cannot be downloaded: {exc}",
            url=url, cache_path=dest,
        ) from None


def load_inception_network(path: Path | str | None = None, *, progress: bool = True) -> InceptionV3:
    """`InceptionV3` with pytorch-fid's weights (from `inception_weights_file(path)`), in eval mode."""
    weights = inception_weights_file(path, progress=progress)
    try:
        state = read_tensor_file(weights)
    except UserError as exc:
        raise UserError(f"cannot read the Inception weights: {exc}; pass pytorch-fid's pt_inception-2015-12-05-6726825d.pth") from None
    network = InceptionV3()
    _check_state_dict(state, network, weights)
    network.load_state_dict(state, strict=False)  # only num_batches_tracked may be absent
    return network.eval()


def _check_state_dict(state: object, network: InceptionV3, source: Path) -> None:
    """Raise `UserError` naming what differs between `state` and pytorch-fid's Inception layout."""
    hint = "pass pytorch-fid's pt_inception-2015-12-05-6726825d.pth"
    if not isinstance(state, dict):
        raise UserError(f"{source} holds a {type(state).__name__}, not a state dict; {hint}")
    expected = {k: v.shape for k, v in network.state_dict().items() if not k.endswith("num_batches_tracked")}
    given = {k: getattr(v, "shape", None) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        raise UserError(
            f"{source} is not the FID Inception: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); {hint}"
        )
    for key, shape in expected.items():
        got = given[key]
        if got is None:
            raise UserError(f"{source}: {key} is not a tensor; {hint}")
        if tuple(got) != tuple(shape):
            raise UserError(f"{source}: {key} has shape {tuple(got)}, expected {tuple(shape)}; {hint}")
