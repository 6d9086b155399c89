"""Offline sample-quality metrics: Frechet distance, confidence, class entropy, memorisation.

FID needs Inception weights, which cannot be downloaded here: `frechet_distance_with`
takes any feature extractor (plug in an Inception network for FID), and the digits
use a classifier the toolkit trains itself (`load_digit_classifier`,
`digits_sample_quality`).
"""

from scoresde.metrics.classifier import (
    DigitClassifier,
    digits_sample_quality,
    levels_to_input,
    load_digit_classifier,
    train_digit_classifier,
)
from scoresde.metrics.frechet import (
    confident_fraction,
    frechet_distance,
    frechet_distance_from_features,
    frechet_distance_with,
    gaussian_stats,
    histogram_entropy,
)
from scoresde.metrics.memorisation import memorisation_report, nearest_neighbour_distances, nearest_neighbours

__all__ = [
    "DigitClassifier", "confident_fraction", "digits_sample_quality", "frechet_distance",
    "frechet_distance_from_features", "frechet_distance_with", "gaussian_stats", "histogram_entropy",
    "levels_to_input", "load_digit_classifier", "memorisation_report", "nearest_neighbour_distances",
    "nearest_neighbours", "train_digit_classifier",
]
