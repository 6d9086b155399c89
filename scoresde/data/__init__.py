"""Data: the embedded digits (TFDS builder), synthetic 2-D sets and one input pipeline.

    info = dataset_info("digits")           # shape (8, 8, 1), num_levels 17, num_classes 10
    it = make_iterator("digits", "train", 128, seed=0)   # {"image", "label"} batches
    images, labels = load_arrays("digits", "test")       # whole split, integer images

Valid names: digits, ring, checkerboard, swiss_roll, moons (no download) and the TFDS
sets mnist, fashion_mnist, cifar10, celeb_a (prepared by the user as array_record).
"""

from scoresde.data.digits import Digits, default_data_dir, prepare_digits, split_indices
from scoresde.data.pipeline import (
    bin_centres,
    DATASETS,
    DatasetInfo,
    dataset_info,
    dataset_names,
    load_arrays,
    log_scale_per_dim,
    make_iterator,
    scale_images,
    to_levels,
)
from scoresde.data.synthetic import ring_mixture

__all__ = [
    "DATASETS", "DatasetInfo", "Digits", "dataset_info", "dataset_names", "default_data_dir",
    "load_arrays", "log_scale_per_dim", "make_iterator", "prepare_digits", "ring_mixture",
    "scale_images", "split_indices", "to_levels", "bin_centres",
]
