"""Local (LS) and equivariant local (ELS) score machines.

Kamb & Ganguli 2025, "An analytic theory of creativity in convolutional diffusion
models" (ICML), Sec. 3-4. A convolutional denoiser is (i) local: its output at pixel
x depends only on the P x P patch Omega_x around x, and (ii) translation equivariant.
The optimal denoisers under these constraints are, for images x_t of shape (H, W, C)
under x_t = alpha x_0 + sigma z:

LS machine (locality only; eq. 7): each pixel's posterior is over the training
images phi_n, compared only through the patch at that same location,

    D_LS(x)[p] = sum_n W_n^p(x) phi_n[p],
    W_n^p(x)   = softmax_n( -||x[Omega_p] - alpha phi_n[Omega_p]||^2 / (2 sigma^2) ).

ELS machine (locality + equivariance; eq. 9): each pixel's posterior is over ALL
P x P patches psi of all training images at all locations, predicting the patch
centre psi[c],

    D_ELS(x)[p] = sum_psi W_psi^p(x) psi[c],
    W_psi^p(x)  = softmax_psi( -||x[Omega_p] - alpha psi||^2 / (2 sigma^2) ).

Boundaries: with `boundary="circular"` patches wrap around the image (both for x and
for the training images), which makes the machine exactly equivariant to circular
shifts. With `boundary="zeros"` (the paper's main results, matching zero-padded
convolutions) patches that overlap the border contain the zero padding, and the
training patches are cut from zero-padded training images, so a patch's position
relative to the border is partly encoded in its zeros: equivariance is broken at
the border exactly as it is in a zero-padded CNN.

Computation: ||x_p - alpha psi||^2 = ||x_p||^2 - 2 alpha <x_p, psi> + alpha^2 ||psi||^2,
so the middle term for every pixel and every training patch is one correlation
(`lax.conv_general_dilated` with the training patches as kernels) and ||x_p||^2 is a
box filter of x^2; all pixels are computed at once. The sum over training patches is
streamed in chunks with a running log-sum-exp whose maximum is per sample and per
pixel (`scoresde.analytic._chunks`, shared with the ideal score). Identical training
patches are merged once, at construction, with their multiplicity added to the logits
(log count): exact, and a large saving on images with flat backgrounds.
"""

# No `from __future__ import annotations`: equinox reads `eqx.AbstractVar[...]` from the
# evaluated annotation (as a string it would become a dataclass field of the abstract class).
import abc
from typing import Optional

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from scoresde._checks import concrete_or_none
from scoresde._types import Array
from scoresde.analytic._base import AbstractDenoiserScore, check_example
from scoresde.analytic._chunks import NEG, check_chunk_size, check_train, pad_to_chunks, per_sample, \
    streaming_softmax_mean
from scoresde.sde import AbstractSDE

_BOUNDARIES = ("zeros", "circular")


def _check_patch_size(patch_size):
    if int(patch_size) != patch_size or patch_size < 1 or patch_size % 2 == 0:
        raise ValueError(f"patch_size must be a positive odd integer (a patch has a centre "
                         f"pixel), got {patch_size!r}.")
    return int(patch_size)


def _check_images(train_images, name="train_images"):
    train_images = check_train(train_images, name)
    if train_images.ndim != 4:
        raise ValueError(f"{name} must have shape (N, H, W, C), got {train_images.shape}; "
                         "add a channel axis with x[..., None].")
    return train_images


def _box_sum(v: Array, patch_size: int) -> Array:
    """Sum of v (B, H, W) over the P x P window around every pixel, zero outside."""
    r = patch_size // 2
    return jax.lax.reduce_window(v, 0.0, jax.lax.add, (1, patch_size, patch_size), (1, 1, 1),
                                 padding=((0, 0), (r, r), (r, r)))


def _pad_images(x: Array, r: int, boundary: str):
    """Pad (B, H, W, C) by r pixels on each side: zeros or circular wrap."""
    widths = ((0, 0), (r, r), (r, r), (0, 0))
    if boundary == "circular":
        return jnp.pad(x, widths, mode="wrap")
    return jnp.pad(x, widths)


class AbstractLocalMachine(AbstractDenoiserScore):
    """A patch-based exact denoiser on images of shape (H, W, C) (LS or ELS machine).

    Final classes implement `posterior_mean(x, alpha, sigma)`, the machine's estimate of
    E[x_0 | x_t = x] for given signal and noise coefficients; `denoise` evaluates it at
    (alpha(t), sigma(t)) and the score follows from Tweedie's formula.
    """

    shape: eqx.AbstractVar[tuple]

    @abc.abstractmethod
    def posterior_mean(self, x: Array, alpha: Array, sigma: Array) -> Array:
        """The machine's E[x_0 | x] for x of shape (batch, H, W, C); alpha, sigma scalars
        or of shape (batch,)."""

    def denoise(self, x: Array, t: Array, sde: AbstractSDE) -> Array:
        """The machine's estimate of E[x_0 | x_t = x] (see the module docstring)."""
        x = check_example(x, t, sde, self.shape)
        return self.posterior_mean(x, sde.alpha(t), sde.sigma(t))


class LSMachine(AbstractLocalMachine):
    """Local score machine (Kamb & Ganguli 2025, eq. 7): patch posterior at each location.

        D_LS(x)[p] = sum_n softmax_n(-||x[Omega_p] - alpha phi_n[Omega_p]||^2 / (2 sigma^2)) phi_n[p]

    with Omega_p the P x P patch around pixel p, zero padding outside the image (so
    out-of-image terms vanish). With P >= 2 max(H, W) - 1 every patch covers the whole
    image and D_LS is the ideal denoiser.

    Args:
      train_images: (N, H, W, C) float training images phi_n.
      patch_size: odd P.
      chunk_size: training images per streamed chunk (None: all at once).
    """

    train: Array  # (N, H, W, C)
    box_sq: Array  # (N, H, W): sum of phi_n^2 over each patch
    shape: tuple = eqx.field(static=True)
    patch_size: int = eqx.field(static=True)
    chunk_size: Optional[int] = eqx.field(static=True)

    def __init__(self, train_images, patch_size: int, *, chunk_size: Optional[int] = 256):
        train_images = _check_images(train_images)
        check_chunk_size(chunk_size)
        self.patch_size = _check_patch_size(patch_size)
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.shape = tuple(train_images.shape[1:])
        self.train = train_images
        self.box_sq = _box_sum(jnp.sum(train_images**2, axis=-1), self.patch_size)

    def posterior_mean(self, x: Array, alpha: Array, sigma: Array) -> Array:
        """D_LS(x) for given alpha, sigma (scalars or (batch,))."""
        b = x.shape[0]
        a = per_sample(alpha, b).astype(x.dtype)[:, None, None, None]
        s2 = per_sample(sigma, b).astype(x.dtype)[:, None, None, None] ** 2
        n = self.train.shape[0]
        c = n if self.chunk_size is None else self.chunk_size
        bias = jnp.zeros((n,), x.dtype)
        chunks = pad_to_chunks([self.train, self.box_sq, bias], n, c, [0.0, 0.0, NEG])
        xsq = _box_sum(jnp.sum(x * x, axis=-1), self.patch_size)[..., None]  # (B, H, W, 1)

        def logits_fn(chunk):
            phi, bsq, bs = chunk
            prod = jnp.einsum("bhwc,nhwc->bnhw", x, phi)
            cross = jnp.moveaxis(
                _box_sum(prod.reshape((-1,) + prod.shape[2:]), self.patch_size)
                .reshape(prod.shape), 1, -1)  # (B, H, W, n)
            d = xsq - 2.0 * a * cross + a * a * jnp.moveaxis(bsq, 0, -1)[None]
            return -d / (2.0 * s2) + bs

        def contract_fn(p, chunk):
            return jnp.einsum("bhwn,nhwc->bhwc", p, chunk[0])

        h, w, ch = self.shape
        mean, _ = streaming_softmax_mean(tuple(chunks), logits_fn, contract_fn, (b, h, w),
                                          (ch,), x.dtype)
        return mean


def extract_patches(images, patch_size: int, boundary: str = "zeros") -> np.ndarray:
    """All P x P patches (one centred on every pixel) of images (N, H, W, C), on the host.

    Returns (N * H * W, P, P, C): zero padding or circular wrap outside the image.
    """
    images = np.asarray(images)
    r = patch_size // 2
    widths = ((0, 0), (r, r), (r, r), (0, 0))
    padded = np.pad(images, widths, mode="wrap" if boundary == "circular" else "constant")
    win = np.lib.stride_tricks.sliding_window_view(padded, (patch_size, patch_size), axis=(1, 2))
    # win: (N, H, W, C, P, P) -> (N, H, W, P, P, C)
    win = np.moveaxis(win, 3, -1)
    return np.ascontiguousarray(win.reshape((-1, patch_size, patch_size, images.shape[-1])))


class ELSMachine(AbstractLocalMachine):
    """Equivariant local score machine (Kamb & Ganguli 2025, eq. 9).

        D_ELS(x)[p] = sum_psi softmax_psi(-||x[Omega_p] - alpha psi||^2 / (2 sigma^2)) psi[c]

    over all P x P patches psi of all training images at all locations (centre pixel
    psi[c]). `boundary="circular"`: periodic patches, exact equivariance under circular
    shifts. `boundary="zeros"`: zero padding of x and of the training images (the
    paper's boundary-broken machine, matching zero-padded CNNs).

    Args:
      train_images: (N, H, W, C) float training images (concrete: patches are cut on
        the host at construction).
      patch_size: odd P.
      boundary: "zeros" or "circular".
      chunk_size: training patches per streamed chunk (None: all at once).
      key, max_images: optional random subsample of max_images training images.
      dedup: merge identical patches (exact; log-multiplicity added to the logits).
    """

    patches: Array  # (K, P, P, C) distinct training patches
    sqnorm: Array  # (K,) ||psi||^2
    centres: Array  # (K, C) psi[c]
    log_count: Array  # (K,) log multiplicity (NEG on padding rows)
    n_patches: int = eqx.field(static=True)  # number of distinct training patches
    shape: tuple = eqx.field(static=True)
    patch_size: int = eqx.field(static=True)
    boundary: str = eqx.field(static=True)
    chunk_size: Optional[int] = eqx.field(static=True)

    def __init__(self, train_images, patch_size: int, *, boundary: str = "zeros",
                 chunk_size: Optional[int] = 2048, key: Optional[Array] = None,
                 max_images: Optional[int] = None, dedup: bool = True):
        train_images = _check_images(train_images)
        check_chunk_size(chunk_size)
        if boundary not in _BOUNDARIES:
            raise ValueError(f"boundary must be one of {_BOUNDARIES}, got {boundary!r}.")
        if concrete_or_none(train_images) is None:
            raise ValueError("train_images must be concrete (not traced): ELSMachine cuts the "
                             "training patches on the host; build it outside jit.")
        if max_images is not None:
            if key is None:
                raise ValueError("max_images needs a PRNG key to draw the subsample; pass key=.")
            n = train_images.shape[0]
            if max_images < n:
                idx = jax.random.choice(key, n, (int(max_images),), replace=False)
                train_images = train_images[idx]
        self.patch_size = _check_patch_size(patch_size)
        self.boundary = boundary
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.shape = tuple(train_images.shape[1:])
        dtype = np.dtype(train_images.dtype)
        patches = extract_patches(train_images, self.patch_size, boundary)
        if dedup:
            # Byte-wise identical rows (one memcmp sort, much faster than unique(axis=0)).
            # -0.0 and +0.0 stay separate entries, which is still exact.
            flat = np.ascontiguousarray(patches.reshape(patches.shape[0], -1))
            rows = flat.view(np.dtype((np.void, flat.dtype.itemsize * flat.shape[1]))).ravel()
            _, first, counts = np.unique(rows, return_index=True, return_counts=True)
            patches = patches[first]
        else:
            counts = np.ones(patches.shape[0])
        r = self.patch_size // 2
        sqnorm = np.sum(patches.astype(np.float64) ** 2, axis=(1, 2, 3))
        centres = patches[:, r, r, :]
        log_count = np.log(counts)
        self.n_patches = patches.shape[0]
        # Pad once, here, to a whole number of chunks (padding rows weigh exp(NEG) = 0),
        # so no concatenation happens per call.
        if self.chunk_size is not None:
            pad = -self.n_patches % self.chunk_size
            if pad and self.n_patches > self.chunk_size:
                patches = np.concatenate([patches, np.zeros((pad,) + patches.shape[1:])])
                sqnorm = np.concatenate([sqnorm, np.zeros(pad)])
                centres = np.concatenate([centres, np.zeros((pad,) + centres.shape[1:])])
                log_count = np.concatenate([log_count, np.full(pad, NEG)])
        self.patches = jnp.asarray(patches, dtype)
        self.sqnorm = jnp.asarray(sqnorm, dtype)
        self.centres = jnp.asarray(centres, dtype)
        self.log_count = jnp.asarray(log_count, dtype)

    def posterior_mean(self, x: Array, alpha: Array, sigma: Array) -> Array:
        """D_ELS(x) for given alpha, sigma (scalars or (batch,))."""
        b = x.shape[0]
        a = per_sample(alpha, b).astype(x.dtype)[:, None, None, None]
        s2 = per_sample(sigma, b).astype(x.dtype)[:, None, None, None] ** 2
        p = self.patch_size
        x_pad = _pad_images(x, p // 2, self.boundary)
        # ||x_p||^2 for every pixel: correlation of x^2 with a ones kernel.
        ones = jnp.ones((p, p, x.shape[-1], 1), x.dtype)
        dn = ("NHWC", "HWIO", "NHWC")
        xsq = jax.lax.conv_general_dilated(x_pad * x_pad, ones, (1, 1), "VALID",
                                           dimension_numbers=dn)  # (B, H, W, 1)
        k = self.patches.shape[0]
        c = k if self.chunk_size is None else self.chunk_size
        chunks = pad_to_chunks([self.patches, self.sqnorm, self.centres, self.log_count],
                                k, c, [0.0, 0.0, 0.0, NEG])

        def logits_fn(chunk):
            psi, sq, _, lc = chunk
            kernel = jnp.moveaxis(psi, 0, -1)  # (P, P, C, c): training patches as kernels
            cross = jax.lax.conv_general_dilated(x_pad, kernel, (1, 1), "VALID",
                                                 dimension_numbers=dn)  # (B, H, W, c)
            d = xsq - 2.0 * a * cross + a * a * sq
            return -d / (2.0 * s2) + lc

        def contract_fn(w, chunk):
            return w @ chunk[2]

        h, wd, ch = self.shape
        mean, _ = streaming_softmax_mean(tuple(chunks), logits_fn, contract_fn, (b, h, wd),
                                          (ch,), x.dtype)
        return mean
