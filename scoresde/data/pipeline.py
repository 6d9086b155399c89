"""Input pipeline: named data sets -> seeded, sharded, dequantised batches.

Images arrive as integers k in {0, ..., L-1}, L = `DatasetInfo.num_levels` (17 for the
digits, 256 for 8-bit images). With uniform dequantisation (Theis et al. 2016; Ho et
al. 2019) the model sees

    x01 = (k + u) / L,  u ~ U[0, 1)^D          (dequantize=True)
    x01 = k / (L - 1)                          (dequantize=False: exact grid, ends at 0, 1)

and then x = x01 ("[0,1]") or x = 2 x01 - 1 ("[-1,1]"). A density p(x) of the scaled,
dequantised data gives the discrete log-likelihood bound

    log P(k) >= E_u[ log p(x) ] + D log|dx/d(k+u)|,   |dx/d(k+u)| = s / L,

s = 1 for "[0,1]" and 2 for "[-1,1]" (`log_scale_per_dim`); bits/dim = -that / (D log 2).
Always use the data set's own L: the digits have 17 levels, not 256.

Batches are per host, cut from global batches: with P = `process_count` hosts and a
host batch of b, global batch k is rows [k P b, (k + 1) P b) of the stream of seeded
epoch permutations, and host `process_index` = p reads rows [p b, (p + 1) b) of it
only (its examples, and nothing of the other hosts'); the trainer reshapes a host
batch for its local devices with `scoresde.parallel.shard`. Randomness comes from
NumPy generators seeded by the seed and the position in the stream: each epoch's
permutation by (seed, epoch), global batch k's dequantisation noise and flips by
(seed, k), each host drawing the values of its rows (`bit_generator.advance` skips the
others'). So P hosts together see exactly the batches, noise and flips of one host
with a P b batch. A run is reproducible, and a resumed run starts at its batch
directly (`make_iterator(start_batch=k)`).

The loader is a small NumPy loop over TFDS random-access data sources
(`tfds.data_source`, array_record, no TensorFlow). We looked at grain: it would add
a dependency and worker processes for what is, at our batch sizes, a permutation and
a gather; the digits fit in memory and TFDS sets are read by index.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from scoresde.data import synthetic
from scoresde.data.digits import prepare_digits

SCALES = ("[-1,1]", "[0,1]")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a pipeline consumer needs to know about a named data set.

    shape: one example's shape ((H, W, C) for images, (2,) for the toy sets);
    num_levels: intensity levels L of the integer images, None for continuous data;
    num_classes: labels are 0..num_classes-1, None when the set has no labels;
    splits: the split names; flip_ok: whether horizontal flips keep the data on the
    data manifold (not for digits: a flipped digit is not a digit); source: "digits"
    (embedded TFDS builder), "synthetic" or "tfds" (user-provided TFDS files).
    """

    name: str
    shape: tuple[int, ...]
    num_levels: int | None
    num_classes: int | None
    splits: tuple[str, ...]
    flip_ok: bool
    source: str
    description: str = ""

    @property
    def dim(self) -> int:
        return int(np.prod(self.shape))


SYNTHETIC_SIZES = {"train": 100_000, "validation": 10_000, "test": 10_000}
_SYNTHETIC_SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}

DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", (8, 8, 1), 17, 10, ("train", "validation", "test"), False,
                          "digits", "scikit-learn 8x8 digits, 1350/150/297 (see scoresde.data.digits)"),
    **{n: DatasetInfo(n, (2,), None, synthetic.NUM_CLASSES[n], tuple(SYNTHETIC_SIZES), False,
                      "synthetic", (synthetic.__doc__ or "").strip().splitlines()[0])
       for n in synthetic.SAMPLERS},
    "mnist": DatasetInfo("mnist", (28, 28, 1), 256, 10, ("train", "test"), False, "tfds"),
    "fashion_mnist": DatasetInfo("fashion_mnist", (28, 28, 1), 256, 10, ("train", "test"), True, "tfds"),
    "cifar10": DatasetInfo("cifar10", (32, 32, 3), 256, 10, ("train", "test"), True, "tfds"),
    "celeb_a": DatasetInfo("celeb_a", (64, 64, 3), 256, None, ("train", "validation", "test"), True,
                           "tfds", "CelebA, central 140x140 crop resized to 64x64 (Song et al. 2021)"),
}


def dataset_names() -> tuple[str, ...]:
    return tuple(DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    """The `DatasetInfo` of a named data set; unknown names fail listing the valid ones."""
    if name not in DATASETS:
        raise ValueError(f"dataset name {name!r} is unknown; valid names: {', '.join(DATASETS)}.")
    return DATASETS[name]


def log_scale_per_dim(num_levels: int, scale: str = "[-1,1]") -> float:
    """log|dx / d(k + u)| = log(s / L) per dimension (s = 2 for "[-1,1]", 1 for "[0,1]").

    Add D times this to log p(x) of the scaled data to get the dequantised
    log-likelihood bound of the integer images (module docstring).
    """
    _check_scale(scale)
    return float(np.log((2.0 if scale == "[-1,1]" else 1.0) / num_levels))


def scale_images(k, num_levels: int, *, scale: str = "[-1,1]", dequantize: bool = True,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """Integer images k in {0..L-1} -> float32 x (module docstring); rng draws u."""
    _check_scale(scale)
    k = np.asarray(k, np.float64)
    if dequantize:
        if rng is None:
            raise ValueError("rng is required when dequantize=True; pass numpy.random.default_rng(seed).")
        x01 = (k + rng.random(k.shape)) / num_levels
    else:
        x01 = k / (num_levels - 1)
    x = 2.0 * x01 - 1.0 if scale == "[-1,1]" else x01
    return x.astype(np.float32)


def bin_centres(k, num_levels: int, *, scale: str = "[-1,1]") -> np.ndarray:
    """Integer images k -> the centre of each level's dequantisation bin, x01 = (k + 1/2) / L
    (the middle of the (k + u) / L the models are trained on), in the given scale."""
    _check_scale(scale)
    k = np.asarray(k, np.float32)
    x = 2.0 * (k + 0.5) / num_levels - 1.0 if scale == "[-1,1]" else (k + 0.5) / num_levels
    return x.astype(np.float32)


def to_levels(x, num_levels: int, *, scale: str = "[-1,1]", dequantized: bool = True) -> np.ndarray:
    """Inverse of `scale_images`: float x -> integer levels in {0..L-1} (clipped).

    dequantized=True inverts x01 = (k+u)/L by k = floor(L x01), exact up to float32
    rounding within ~1e-7 of a bin edge; dequantized=False inverts x01 = k/(L-1) by
    rounding. Model samples are mapped to images the same way.
    """
    _check_scale(scale)
    x = np.asarray(x, np.float64)
    x01 = (x + 1.0) / 2.0 if scale == "[-1,1]" else x
    k = np.floor(x01 * num_levels) if dequantized else np.round(x01 * (num_levels - 1))
    return np.clip(k, 0, num_levels - 1).astype(np.int32)


def _check_scale(scale):
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}.")


# ----------------------------------------------------------------------------- sources
class _ArraySource:
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def get(self, idx):
        return self.images[idx], self.labels[idx]


class _TfdsSource:
    """Random access to a TFDS data source; decodes, crops/resizes and picks labels."""

    def __init__(self, ds, info: DatasetInfo):
        self.ds, self.info = ds, info

    def __len__(self):
        return len(self.ds)

    def get(self, idx):
        exs = [self.ds[int(i)] for i in idx]
        images = np.stack([_preprocess(self.info.name, np.asarray(e["image"])) for e in exs])
        labels = np.asarray([int(e["label"]) if "label" in e else 0 for e in exs], np.int32)
        return images, labels


def _preprocess(name, image):
    if name == "celeb_a":
        # Central 140x140 crop, bicubic resize to 64x64 (score_sde / NCSN preprocessing).
        from PIL import Image

        h, w = image.shape[:2]
        top, left = (h - 140) // 2, (w - 140) // 2
        crop = image[top:top + 140, left:left + 140]
        image = np.asarray(Image.fromarray(crop).resize((64, 64), Image.BICUBIC))
    return image


def _open_source(name: str, split: str, data_dir: str | None):
    info = dataset_info(name)
    if info.source == "synthetic":
        if split not in SYNTHETIC_SIZES:
            raise ValueError(f"split {split!r} of {name!r} is unknown; valid splits: {', '.join(SYNTHETIC_SIZES)}.")
        rng = np.random.default_rng([_SYNTHETIC_SPLIT_SEEDS[split], 1234])
        return _ArraySource(*synthetic.SAMPLERS[name](rng, SYNTHETIC_SIZES[split]))
    if info.source == "digits":
        builder = prepare_digits(data_dir)
        try:
            ds = builder.as_data_source(split=split)
        except Exception as e:  # noqa: BLE001 - re-raised with the valid names
            raise ValueError(f"split {split!r} of 'digits' is invalid ({e}); valid splits: "
                             f"{', '.join(info.splits)} or TFDS split expressions such as "
                             "'train+validation' or 'train[:100]'.") from e
        exs = [ds[i] for i in range(len(ds))]
        images = np.stack([np.asarray(e["image"]) for e in exs]).astype(np.uint8)
        labels = np.asarray([int(e["label"]) for e in exs], np.int32)
        return _ArraySource(images, labels)
    import tensorflow_datasets as tfds

    try:
        ds = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # noqa: BLE001 - missing files surface as many exception types
        raise FileNotFoundError(
            f"dataset {name!r} (split {split!r}) could not be opened from data_dir={data_dir!r} "
            f"(default ~/tensorflow_datasets) ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}). Prepare it first in "
            f"array_record format, e.g. `tfds build {name} --file_format=array_record`, or use the "
            "embedded 'digits' (no download needed)."
        ) from e
    return _TfdsSource(ds, info)


def load_arrays(name: str, split: str, data_dir: str | None = None):
    """The whole split as arrays: (images, labels int32) -- for evaluation.

    Images are the raw integers (uint8) for image sets and float32 (n, 2) for the
    synthetic sets. For big TFDS sets (celeb_a) this reads everything into memory.
    """
    src = _open_source(name, split, data_dir)
    return src.get(np.arange(len(src)))


# ----------------------------------------------------------------------------- iterator
def _check_int(value, name, lo):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}.")


def make_iterator(name: str, split: str, batch_size: int, *, seed: int, num_epochs: int | None = None,
                  dequantize: bool = True, flip: bool = False, process_index: int = 0,
                  process_count: int = 1, data_dir: str | None = None, scale: str = "[-1,1]",
                  shuffle: bool = True, drop_remainder: bool = True, start_batch: int = 0) -> Iterator[dict]:
    """Batches {"image": float32 (batch_size, *shape), "label": int32 (batch_size,)}.

    Epoch e visits a permutation of the split drawn from (seed, e) (identity if
    shuffle=False). The epochs form one stream cut into global batches of
    batch_size * process_count examples; host `process_index` = p takes rows
    [p batch_size, (p + 1) batch_size) of each (disjoint across hosts, together the
    global batch). Batches run on across epoch boundaries; num_epochs=None repeats
    forever; at the end of a finite run a partial global batch of r examples is dropped
    (drop_remainder) or cut into process_count slices of r // process_count (the tail
    r mod process_count left out) and yielded.
    Image sets are scaled and (optionally) dequantised as in the module docstring, with
    flip=True flipping each image left-right with probability 1/2 (only for sets with
    `flip_ok`); synthetic sets are yielded as they are. Batch k's noise and flips come
    from (seed, k) (this host's rows of them), so `start_batch=k` starts the same stream at batch k
    without reading batches 0..k-1 (what a resumed run does).

    All arguments are checked here, before the first batch, so a bad config fails
    before training starts.
    """
    info = dataset_info(name)
    _check_int(batch_size, "batch_size", 1)
    _check_int(seed, "seed", 0)
    _check_int(process_count, "process_count", 1)
    _check_int(process_index, "process_index", 0)
    if process_index >= process_count:
        raise ValueError(f"process_index must be < process_count = {process_count}, got {process_index}.")
    if num_epochs is not None:
        _check_int(num_epochs, "num_epochs", 1)
    _check_int(start_batch, "start_batch", 0)
    _check_scale(scale)
    if flip and not info.flip_ok:
        ok = [n for n, i in DATASETS.items() if i.flip_ok]
        raise ValueError(f"flip=True is not allowed for {name!r} (a mirrored example is not an example "
                         f"of the data set); flips are allowed for: {', '.join(ok)}.")
    src = _open_source(name, split, data_dir)
    n, global_batch = len(src), batch_size * process_count
    if n < global_batch and drop_remainder and num_epochs == 1:
        raise ValueError(f"batch_size={batch_size} x process_count={process_count} exceeds the {n} examples "
                         f"of split {split!r} of {name!r}.")
    if n < process_count:
        raise ValueError(f"split {split!r} of {name!r} has {n} examples, fewer than "
                         f"process_count={process_count}.")
    return _batches(src, info, batch_size, process_count, seed, num_epochs, dequantize, flip,
                    process_index, scale, shuffle, drop_remainder, start_batch)


def _batches(src, info, batch_size, process_count, seed, num_epochs, dequantize, flip, process_index,
             scale, shuffle, drop_remainder, start_batch):
    # The global stream is epoch 0's permutation, then epoch 1's, ...; global batch k is
    # stream[k G : (k + 1) G] (G = batch_size * process_count) and this host reads its rows
    # [p b, (p + 1) b) only. Batch k's noise and flips come from the generator of global
    # batch k, advanced to this host's rows, so batch k is computed without reading batches
    # < k and the union of the hosts' batches is the single-process batch bit for bit.
    n, b, P = len(src), batch_size, process_count
    G = b * P

    def perm(epoch):
        return np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)

    k = start_batch
    epoch, offset = divmod(start_batch * G, n)
    buf = np.zeros((0,), np.int64)
    if num_epochs is None or epoch < num_epochs:
        buf = perm(epoch)[offset:]
        epoch += 1
    while True:
        while len(buf) >= G:
            rows, buf = buf[:G], buf[G:]
            yield _host_batch(src, info, rows, process_index * b, b, seed, k, dequantize, flip, scale)
            k += 1
        if num_epochs is not None and epoch >= num_epochs:
            break
        buf = np.concatenate([buf, perm(epoch)])
        epoch += 1
    q = len(buf) // P  # the last partial global batch: P equal slices, the tail len mod P left out
    if q and not drop_remainder:
        yield _host_batch(src, info, buf, process_index * q, q, seed, k, dequantize, flip, scale)


def _host_batch(src, info, global_idx, row0, rows, seed, k, dequantize, flip, scale):
    """Rows [row0, row0 + rows) of global batch k (example indices `global_idx`), with the
    flips and noise that the single-process batch k draws for exactly those rows.

    Batch k's generator (PCG64) draws len(global_idx) uniforms for the flips (if any),
    then one uniform per pixel in row order, one 64-bit output per float64; so skipping
    rows is `bit_generator.advance` by the number of draws they would take.
    """
    rng = _batch_rng(seed, 0, k)
    if row0 == 0 and rows == len(global_idx):
        return _make_batch(src, info, global_idx, rng, dequantize, flip, scale)
    window = _RowWindow(rng, row0, len(global_idx) - row0 - rows)
    return _make_batch(src, info, global_idx[row0:row0 + rows], window, dequantize, flip, scale)


class _RowWindow:
    """A generator's `random(shape)` for some rows of a bigger batch: each draw of shape
    (rows, *s) skips the draws of `before` rows, draws, then skips `after` rows'."""

    def __init__(self, rng: np.random.Generator, before: int, after: int):
        self.rng, self.before, self.after = rng, before, after

    def random(self, shape):
        per_row = int(np.prod(shape[1:]))
        self.rng.bit_generator.advance(self.before * per_row)
        out = self.rng.random(shape)
        self.rng.bit_generator.advance(self.after * per_row)
        return out


def _batch_rng(seed, process_index, k):
    """The generator of batch k's dequantisation noise and flips (process_index is 0: the
    generator of a global batch, shared by all hosts since multi-host runs draw the
    single-process stream)."""
    return np.random.default_rng([seed, process_index, 7, k])


def _make_batch(src, info, idx, rng, dequantize, flip, scale):
    images, labels = src.get(idx)
    if info.num_levels is None:
        x = np.asarray(images, np.float32)
    else:
        if flip:
            mirror = rng.random(len(idx)) < 0.5
            images = np.where(mirror[:, None, None, None], images[:, :, ::-1, :], images)
        x = scale_images(images, info.num_levels, scale=scale, dequantize=dequantize, rng=rng)
    return {"image": x, "label": np.asarray(labels, np.int32)}
