"""TFDS builder for scikit-learn's bundled 8x8 handwritten digits (no download).

The data are the 1797 images of `sklearn.datasets.load_digits` (UCI "Optical
Recognition of Handwritten Digits", Alpaydin & Kaynak 1998): 8x8 grey images with
integer intensities 0..16 (17 levels) and labels 0..9.

Fixed split, documented here and never changed without bumping VERSION:
    perm = numpy.random.RandomState(0).permutation(1797)
    train      = perm[:1350]     (1350 images, for fitting)
    validation = perm[1350:1500] ( 150 images, for checkpoint / model selection)
    test       = perm[1500:]     ( 297 images, for final numbers only)
so "train+validation" is the 1500-image training set of the issue's 1500/297 split
and selection on "validation" never sees the test images.

The features are `tfds.features.Tensor` (uint8 image (8, 8, 1), int64 label): the
`Image` feature would need TensorFlow to encode PNGs. The builder writes array_record
files that `tfds.data_source` / `builder.as_data_source` read without TensorFlow.
"""

from __future__ import annotations

import os

import numpy as np
from etils import epath
import tensorflow_datasets as tfds

NUM_IMAGES = 1797
SPLIT_SEED = 0
SPLIT_SIZES = {"train": 1350, "validation": 150, "test": 297}


def split_indices() -> dict[str, np.ndarray]:
    """Indices into `load_digits()` of each split (see the module docstring)."""
    perm = np.random.RandomState(SPLIT_SEED).permutation(NUM_IMAGES)
    a = SPLIT_SIZES["train"]
    b = a + SPLIT_SIZES["validation"]
    return {"train": perm[:a], "validation": perm[a:b], "test": perm[b:]}


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn 8x8 digits: 17 intensity levels, 10 classes, splits 1350/150/297."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Seeded split train 1350 / validation 150 / test 297."}
    # TFDS derives checksum paths from the package via importlib_resources, which is not
    # installed; there is nothing to download, so point it at this file directly.
    code_path = epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the data ship with scikit-learn
        return {name: self._generate_examples(idx) for name, idx in split_indices().items()}

    def _generate_examples(self, indices):
        from sklearn.datasets import load_digits

        d = load_digits()
        for i in indices:
            yield int(i), {"image": d.images[i].astype(np.uint8)[..., None], "label": int(d.target[i])}


def default_data_dir() -> str:
    """$TFDS_DATA_DIR if set, else ~/tensorflow_datasets (the TFDS default)."""
    return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def prepare_digits(data_dir: str | None = None) -> Digits:
    """Build the digits array_record files into `data_dir` if missing; return the builder.

    Building takes about 2 s and needs no network. Concurrent builders are safe: TFDS
    writes into a temporary directory and renames it when complete.
    """
    data_dir = data_dir or default_data_dir()
    builder = Digits(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        try:
            builder.download_and_prepare()
        except OSError:
            # Another process may have renamed its finished copy into place first.
            builder = Digits(data_dir=data_dir, file_format="array_record")
            if not builder.is_prepared():
                raise
    return builder
