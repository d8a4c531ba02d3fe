"""Sample-quality evaluation matching OpenAI's TF evaluator: FID, sFID, Inception Score, precision, recall.

`evaluate(ref_npz, sample_npz, extractor)` is the end-to-end path; the metric functions work on any
feature arrays, and any `FeatureExtractor` (e.g. `ClassifierFeatureExtractor`, a classifier
checkpoint's penultimate features) can replace the Inception network. `extractor.feature_space`
(`FeatureSpace`: network, weights hash, dimension; `.key` a stable string) says which features a
number belongs to; reference files record it and are refused in other features.
"""
from guided_diffusion.evaluation.evaluator import (
    BatchSummary,
    EvaluationResult,
    check_feature_space,
    evaluate,
    read_feature_space,
    save_reference_batch,
    summarize_batch,
)
from guided_diffusion.evaluation.features import (
    ClassifierFeatureExtractor,
    FeatureExtractor,
    Features,
    FeatureSpace,
    InceptionFeatureExtractor,
    resolve_device,
)
from guided_diffusion.evaluation.inception import InceptionOutput, InceptionV3, resize_bilinear_tf1
from guided_diffusion.evaluation.metrics import (
    frechet_distance,
    inception_score,
    pairwise_squared_distances,
    precision_recall,
    softmax,
    statistics,
)
from guided_diffusion.evaluation.npz import NpzArrayReader, NpzWriter
from guided_diffusion.evaluation.weights import (
    INCEPTION_WEIGHTS_URL,
    InceptionWeightsUnavailable,
    inception_weights_file,
    load_inception_network,
)

__all__ = [
    "BatchSummary",
    "ClassifierFeatureExtractor",
    "EvaluationResult",
    "FeatureExtractor",
    "FeatureSpace",
    "Features",
    "INCEPTION_WEIGHTS_URL",
    "InceptionFeatureExtractor",
    "InceptionOutput",
    "InceptionV3",
    "InceptionWeightsUnavailable",
    "NpzArrayReader",
    "NpzWriter",
    "check_feature_space",
    "evaluate",
    "frechet_distance",
    "inception_score",
    "inception_weights_file",
    "load_inception_network",
    "pairwise_squared_distances",
    "precision_recall",
    "read_feature_space",
    "resize_bilinear_tf1",
    "resolve_device",
    "save_reference_batch",
    "softmax",
    "statistics",
    "summarize_batch",
]
