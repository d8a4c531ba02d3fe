"""End-to-end evaluation of a sample batch against a reference batch, as OpenAI's `evaluator.py`.

Reference and sample are .npz files with uint8 NHWC images in `arr_0`. Precomputed `mu`/`sigma` and
`mu_s`/`sigma_s` in a file replace the statistics of its images (the released reference batches hold
full-dataset statistics plus 10k images for precision/recall). Images are streamed in batches, so
files larger than memory work.
"""
from __future__ import annotations

import contextlib
import queue
import sys
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from guided_diffusion.evaluation.features import FeatureExtractor, FeatureSpace
from guided_diffusion.evaluation.metrics import (
    frechet_distance,
    inception_score,
    precision_recall,
    softmax,
    statistics,
)
from guided_diffusion.evaluation.npz import NpzArrayReader, NpzWriter, npz_keys, read_npz_arrays
from guided_diffusion.runtime.errors import UserError

__all__ = ["EvaluationResult", "BatchSummary", "summarize_batch", "evaluate", "save_reference_batch",
           "check_feature_space", "read_feature_space", "FEATURE_SPACE_KEY"]

REFERENCE_IMAGES = 10_000  # images kept in a saved reference batch for precision/recall, as the released ones
FEATURE_SPACE_KEY = "feature_space"  # the array of a reference file naming its statistics' features (JSON text)
_STATISTICS = ("mu", "sigma", "mu_s", "sigma_s")


@dataclass
class EvaluationResult:
    """The five numbers of the original evaluator (IS and sFID are None when the extractor lacks them)."""

    inception_score: float | None
    fid: float
    sfid: float | None
    precision: float
    recall: float

    def lines(self) -> list[str]:
        """`Name: value` lines in the original's order and format."""
        named = [("Inception Score", self.inception_score), ("FID", self.fid), ("sFID", self.sfid),
                 ("Precision", self.precision), ("Recall", self.recall)]
        return [f"{name}: {value}" for name, value in named if value is not None]

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


@dataclass
class BatchSummary:
    """What the metrics need from one batch file."""

    num_images: int
    pool: np.ndarray  # (N, D) features of arr_0, for precision/recall
    mu: np.ndarray
    sigma: np.ndarray
    mu_s: np.ndarray | None
    sigma_s: np.ndarray | None
    logits: np.ndarray | None
    precomputed: tuple[str, ...]  # names of statistics read from the file rather than computed


def _prefetched(batches: Iterator[np.ndarray], depth: int = 2) -> Generator[np.ndarray, None, None]:
    """Read (and decompress) the next batches on a thread while the network works on this one."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(done)
        except BaseException as exc:
            put(exc)

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def _check_images(reader: NpzArrayReader) -> None:
    shape = reader.shape
    if reader.dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise UserError(
            f"{reader.path}: arr_0 must hold uint8 RGB images shaped (N, H, W, 3), got {reader.dtype} {shape}; "
            "save samples as np.savez(path, images) with images = uint8 NHWC"
        )
    if shape[0] == 0:
        raise UserError(f"{reader.path}: arr_0 holds no images")


def read_feature_space(path: Path | str) -> FeatureSpace | None:
    """The feature space a reference file records for its statistics (None when it records none, as the
    original's files)."""
    path = Path(path)
    if FEATURE_SPACE_KEY not in npz_keys(path):
        return None
    stored = read_npz_arrays(path, [FEATURE_SPACE_KEY])[FEATURE_SPACE_KEY]
    try:
        if stored.dtype.kind != "U" or stored.size != 1:
            raise ValueError("not one string")
        return FeatureSpace.from_json(str(stored.reshape(-1)[0]))
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path}: its {FEATURE_SPACE_KEY} record is not readable; rebuild the file with "
                        "`evaluate IMAGES.npz --save_stats`") from None


def check_feature_space(path: Path | str, extractor: FeatureExtractor) -> None:
    """Refuse precomputed statistics in `path` that were made in other features than `extractor`'s.

    Statistics cover all images of the batch they were made from, while a reference file keeps only a
    subset of its images, so re-reading those in the asked features would silently give another FID:
    a mismatch is refused instead. Files without a record (the original's) are taken to be in the
    published Inception features, the only ones the original wrote; an extractor that does not name its
    weights (a custom one without `feature_space`) cannot be told apart, and only the dimension is checked."""
    path = Path(path)
    keys = npz_keys(path)
    if not keys & set(_STATISTICS):
        return
    wanted = extractor.feature_space
    recorded = read_feature_space(path)
    rebuild = "rebuild the reference with `evaluate IMAGES.npz --save_stats OUT.npz` in the features you want"
    if recorded is None:
        if wanted.network == "inception" or wanted.weights_sha256 is None:
            return
        raise UserError(f"{path} holds precomputed statistics without a record of their features (the original's "
                        f"format, made in Inception features), so they cannot be compared in {wanted.describe()}; "
                        f"{rebuild}, or evaluate in Inception features")
    if recorded.key != wanted.key:
        raise UserError(f"{path} holds statistics in {recorded.describe()}, not in the {wanted.describe()} asked for; "
                        f"FIDs across feature spaces mean nothing: {rebuild}, or ask for the features it was made with")


def _precomputed_pair(path: Path, keys: set[str], mean_key: str, cov_key: str, dim: int | None,
                      ) -> tuple[np.ndarray, np.ndarray] | None:
    if mean_key not in keys or cov_key not in keys:
        return None
    arrays = read_npz_arrays(path, [mean_key, cov_key])
    mean, cov = arrays[mean_key], arrays[cov_key]
    if dim is not None and (mean.shape != (dim,) or cov.shape != (dim, dim)):
        raise UserError(
            f"{path}: precomputed {mean_key}/{cov_key} are shaped {mean.shape}/{cov.shape} but the features have "
            f"{dim} dimensions; they come from another feature extractor: remove them or use matching features"
        )
    if not (np.isfinite(mean).all() and np.isfinite(cov).all()):
        raise UserError(f"{path}: precomputed {mean_key}/{cov_key} hold NaN or infinite values, so every FID against "
                        "them would be NaN; the file is damaged: rebuild it with `evaluate IMAGES.npz --save_stats`")
    return mean, cov


def summarize_batch(
    path: Path | str,
    extractor: FeatureExtractor,
    *,
    keep_logits: bool = True,
    progress: bool = True,
    on_images: Callable[[int, np.ndarray], None] | None = None,
) -> BatchSummary:
    """Features of every image in `path`'s arr_0 and the FID statistics (precomputed ones preferred).

    `on_images(start_row, images)` sees each batch of images as it is read.
    """
    path = Path(path)
    keys = npz_keys(path)
    check_feature_space(path, extractor)
    dim = extractor.feature_space.dim
    _precomputed_pair(path, keys, "mu", "sigma", dim)  # damaged statistics are refused before any image is read
    _precomputed_pair(path, keys, "mu_s", "sigma_s", None)
    pool_parts, spatial_parts, logit_parts = [], [], []
    with NpzArrayReader(path, "arr_0") as reader:
        _check_images(reader)
        bar = tqdm(total=len(reader), desc=f"features {path.name}", unit="img", disable=not progress, leave=False)
        start = 0
        batches = _prefetched(reader.iter_batches(extractor.batch_size))
        with bar, contextlib.closing(batches):  # stop the reading thread before the file closes
            for images in batches:
                if on_images is not None:
                    on_images(start, images)
                features = extractor.extract(images)
                pool_parts.append(np.asarray(features.pool, dtype=np.float32))
                if features.spatial is not None:
                    spatial_parts.append(np.asarray(features.spatial, dtype=np.float32))
                if keep_logits and features.logits is not None:
                    logit_parts.append(np.asarray(features.logits, dtype=np.float32))
                start += len(images)
                bar.update(len(images))
    pool = np.concatenate(pool_parts)
    spatial = np.concatenate(spatial_parts) if spatial_parts else None
    precomputed: list[str] = []

    pool_stats = _precomputed_pair(path, keys, "mu", "sigma", pool.shape[1])
    if pool_stats is not None:
        precomputed += ["mu", "sigma"]
    else:
        pool_stats = _statistics_of(pool, path)
    spatial_stats = None
    if spatial is not None:
        spatial_stats = _precomputed_pair(path, keys, "mu_s", "sigma_s", spatial.shape[1])
        if spatial_stats is not None:
            precomputed += ["mu_s", "sigma_s"]
        else:
            spatial_stats = _statistics_of(spatial, path)
    return BatchSummary(
        num_images=len(pool), pool=pool, mu=pool_stats[0], sigma=pool_stats[1],
        mu_s=spatial_stats[0] if spatial_stats else None, sigma_s=spatial_stats[1] if spatial_stats else None,
        logits=np.concatenate(logit_parts) if logit_parts else None, precomputed=tuple(precomputed),
    )


def _statistics_of(features: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if len(features) < 2:
        raise UserError(f"{path}: FID statistics need at least 2 images, the file has {len(features)}")
    if not np.isfinite(features).all():
        raise UserError(f"the features of {path} hold NaN or infinite values: the feature network's weights are "
                        "damaged or come from a diverged run")
    return statistics(features)


class _ReferenceWriter:
    """Collects a seeded random subset of a batch's images into a reference .npz while it streams by."""

    def __init__(self, out_path: Path | str, source: Path | str, max_images: int, seed: int,
                 space: FeatureSpace) -> None:
        self._space = space
        with NpzArrayReader(source, "arr_0") as reader:
            _check_images(reader)
            total, image_shape = len(reader), reader.shape[1:]
        keep = min(total, max_images)
        # Sorted random rows: unbiased even when the file is ordered by class, readable in one pass.
        self._rows = np.sort(np.random.default_rng(seed).choice(total, size=keep, replace=False))
        self._writer = NpzWriter(out_path)
        self._writer.begin("arr_0", (keep, *image_shape), np.dtype(np.uint8))

    def __call__(self, start: int, images: np.ndarray) -> None:
        lo, hi = np.searchsorted(self._rows, [start, start + len(images)])
        if hi > lo:
            self._writer.append(images[self._rows[lo:hi] - start])

    def finish(self, summary: BatchSummary) -> None:
        """Add the statistics (committed by `commit`)."""
        self._writer.write("mu", summary.mu)
        self._writer.write("sigma", summary.sigma)
        if summary.mu_s is not None and summary.sigma_s is not None:
            self._writer.write("mu_s", summary.mu_s)
            self._writer.write("sigma_s", summary.sigma_s)
        self._writer.write(FEATURE_SPACE_KEY, np.array([self._space.to_json()]))

    def commit(self) -> Path:
        return self._writer.commit()

    def discard(self) -> None:
        self._writer.discard()


@contextlib.contextmanager
def _reference_output(ref_path, extractor, save_stats, save_images) -> Iterator[_ReferenceWriter | None]:
    """A writer for `save_stats` (None without it) that is committed only when the whole block succeeds,
    and discarded, leaving no file and no temp file, when anything (a signal included) stops it."""
    if save_stats is None:
        yield None
        return
    check_feature_space(ref_path, extractor)  # before the output is opened
    writer = _ReferenceWriter(save_stats, ref_path, save_images, seed=0, space=extractor.feature_space)
    try:
        yield writer
        writer.commit()
    except BaseException:
        writer.discard()
        raise


def save_reference_batch(ref_path: Path | str, out_path: Path | str, extractor: FeatureExtractor, *,
                         max_images: int = REFERENCE_IMAGES, progress: bool = True) -> BatchSummary:
    """Write a reference file in the original format: `mu`, `sigma`, `mu_s`, `sigma_s` of all images in
    `ref_path` (its own precomputed ones if present) and `arr_0` = a seeded random subset of
    `max_images` of them (for precision/recall), and `feature_space` (JSON naming the extractor's network,
    weights hash and dimension) so the statistics are never compared in other features. Atomic."""
    with _reference_output(ref_path, extractor, out_path, max_images) as writer:
        summary = summarize_batch(ref_path, extractor, keep_logits=False, progress=progress, on_images=writer)
        assert writer is not None  # out_path is given
        writer.finish(summary)
    return summary


def _warn_if_rank_deficient(summary: BatchSummary, path: Path | str, log: Callable[[str], None]) -> None:
    dim = summary.pool.shape[1]
    if "mu" not in summary.precomputed and summary.num_images <= dim:
        log(f"warning: {path} has {summary.num_images} images for {dim}-d features; its covariance is singular "
            "and FID is unreliable (the paper uses 50k samples)")


def evaluate(
    ref_path: Path | str,
    sample_path: Path | str,
    extractor: FeatureExtractor,
    *,
    fid_method: str = "sqrtm",
    progress: bool = True,
    save_stats: Path | str | None = None,
    save_stats_images: int = REFERENCE_IMAGES,
    log: Callable[[str], None] | None = None,
) -> EvaluationResult:
    """Inception Score, FID, sFID, precision and recall of `sample_path` against `ref_path`.

    As the original: FID/sFID compare sample statistics with reference statistics, IS uses the samples
    only, precision/recall compare the reference's arr_0 with all samples (k=3). `save_stats` also
    writes the reference's statistics as a reusable reference file (see `save_reference_batch`).
    """
    if log is None:
        def log(message: str) -> None:
            if progress:
                print(message, file=sys.stderr)

    for path in (ref_path, sample_path):  # statistics in other features are refused before any work
        check_feature_space(path, extractor)
    log("computing reference batch features...")
    with _reference_output(ref_path, extractor, save_stats, save_stats_images) as writer:
        ref = summarize_batch(ref_path, extractor, keep_logits=False, progress=progress, on_images=writer)
        if writer is not None:
            writer.finish(ref)
        if ref.precomputed:
            log(f"using precomputed {', '.join(ref.precomputed)} from {ref_path}")
        log("computing sample batch features...")
        sample = summarize_batch(sample_path, extractor, keep_logits=True, progress=progress)
        if sample.pool.shape[1] != ref.pool.shape[1]:
            raise UserError(f"{ref_path} and {sample_path} give features of different sizes")
        _warn_if_rank_deficient(ref, ref_path, log)
        _warn_if_rank_deficient(sample, sample_path, log)

        log("computing evaluations...")
        score = inception_score(softmax(sample.logits)) if sample.logits is not None else None
        fid = frechet_distance(sample.mu, sample.sigma, ref.mu, ref.sigma, method=fid_method)
        sfid = None
        if sample.mu_s is not None and sample.sigma_s is not None and ref.mu_s is not None and ref.sigma_s is not None:
            sfid = frechet_distance(sample.mu_s, sample.sigma_s, ref.mu_s, ref.sigma_s, method=fid_method)
        for name, value in (("FID", fid), ("sFID", sfid)):
            if value is not None and not np.isfinite(value):
                raise UserError(f"{name} of {sample_path} against {ref_path} is {value}: the statistics are not usable "
                                "(NaN or infinite values); check both files")
        precision, recall = precision_recall(ref.pool, sample.pool, device=extractor.device)
    return EvaluationResult(inception_score=score, fid=fid, sfid=sfid, precision=precision, recall=recall)
