"""The ideal (empirical) score of a finite training set.

If the data law is the empirical distribution of N training points phi_n, the
noised marginal of any linear SDE (x_t = alpha x_0 + sigma z) is the mixture
p_t(x) = (1/N) sum_n N(x; alpha phi_n, sigma^2 I) and, by Tweedie's formula,

    E[x_0 | x_t = x] = sum_n W_n(x) phi_n,
    W_n(x)           = softmax_n( -||x - alpha phi_n||^2 / (2 sigma^2) ),
    grad log p_t(x)  = -(x - alpha E[x_0 | x_t = x]) / sigma^2.

This is the score a diffusion model would learn with unlimited capacity; sampling
with it only ever reproduces training points (Kamb & Ganguli 2025, "An analytic
theory of creativity in convolutional diffusion models", ICML, Sec. 2; also
Biroli et al. 2024). It is the baseline the LS / ELS machines of
`scoresde.analytic.local` are compared with.

The sum over the training set is streamed in chunks (`lax.scan`) with an online
log-sum-exp whose maximum is kept per sample (Milakov & Gimelshein 2018; see
`scoresde.analytic._chunks`, shared with the local machines).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import equinox as eqx
import jax
import jax.numpy as jnp

from scoresde._types import Array
from scoresde.analytic._base import AbstractDenoiserScore, check_example
from scoresde.analytic._chunks import NEG, check_chunk_size, check_train, pad_to_chunks, per_sample, \
    streaming_softmax_mean
from scoresde.sde import AbstractSDE


class IdealScore(AbstractDenoiserScore):
    """Ideal (empirical) score / denoiser of a training set under any linear SDE.

        E[x_0 | x_t = x] = sum_n softmax_n(-||x - alpha phi_n||^2 / (2 sigma^2)) phi_n
        score(x, t)      = -(x - alpha E[x_0 | x_t = x]) / sigma^2

    (Kamb & Ganguli 2025, eq. 3). With `train_labels`, the class-conditional version
    restricts the sum to the training points of the example's label y:
    score(x, t, y). Every class passed as y must occur in `train_labels` (inside jit
    this cannot be checked; a missing class gives a meaningless result).

    Attributes:
      train: (N, D) flattened training images phi_n.
      sqnorm: (N,) ||phi_n||^2.
      labels: (N,) int labels or None.
      shape: the shape of one example, e.g. (H, W, C).
      chunk_size: training points per streamed chunk (None: all at once).
    """

    train: Array
    sqnorm: Array
    labels: Optional[Array]
    shape: tuple = eqx.field(static=True)
    chunk_size: Optional[int] = eqx.field(static=True)

    def __init__(self, train_images, *, train_labels=None, chunk_size: Optional[int] = 1024):
        train_images = check_train(train_images)
        check_chunk_size(chunk_size)
        n = train_images.shape[0]
        self.shape = tuple(train_images.shape[1:])
        self.train = train_images.reshape(n, -1)
        self.sqnorm = jnp.sum(self.train**2, axis=-1)
        if train_labels is not None:
            train_labels = jnp.asarray(train_labels)
            if train_labels.shape != (n,):
                raise ValueError(f"train_labels must have shape ({n},) like train_images' first "
                                 f"axis, got {train_labels.shape}.")
        self.labels = train_labels
        self.chunk_size = None if chunk_size is None else int(chunk_size)

    def posterior_mean(self, x: Array, alpha: Array, sigma: Array, y: Optional[Array] = None):
        """E[x_0 | x] and log sum_n exp(-||x - alpha phi_n||^2 / (2 sigma^2)) for given alpha, sigma.

        alpha, sigma: scalars or (batch,). y: (batch,) labels for the conditional version.
        Returns (mean shaped like x, log_normaliser (batch,)).
        """
        b = x.shape[0]
        xf = x.reshape(b, -1)
        a = per_sample(alpha, b).astype(xf.dtype)
        s2 = per_sample(sigma, b).astype(xf.dtype) ** 2
        n = self.train.shape[0]
        bias = jnp.zeros((n,), xf.dtype)
        labels = self.labels if self.labels is not None else jnp.zeros((n,), jnp.int32)
        if y is not None and self.labels is None:
            raise ValueError("labels y were passed but the IdealScore was built without "
                             "train_labels; build it with train_labels=... for class conditioning.")
        if y is None:
            y_b = None
        else:
            y_b = jnp.broadcast_to(jnp.asarray(y), (b,))
        c = n if self.chunk_size is None else self.chunk_size
        chunks = pad_to_chunks([self.train, self.sqnorm, bias, labels], n, c,
                                [0.0, 0.0, NEG, -1])
        xsq = jnp.sum(xf**2, axis=-1)

        def logits_fn(chunk):
            phi, sq, bs, lab = chunk
            # ||x - a phi||^2 = ||x||^2 - 2 a <x, phi> + a^2 ||phi||^2, one matmul per chunk.
            d = xsq[:, None] - 2.0 * a[:, None] * (xf @ phi.T) + (a * a)[:, None] * sq[None]
            logits = -d / (2.0 * s2[:, None]) + bs[None]
            if y_b is not None:
                logits = jnp.where(lab[None] == y_b[:, None], logits, NEG)
            return logits

        def contract_fn(p, chunk):
            return p @ chunk[0]

        mean, lse = streaming_softmax_mean(tuple(chunks), logits_fn, contract_fn, (b,),
                                            (xf.shape[1],), xf.dtype)
        return mean.reshape(x.shape), lse

    def denoise(self, x: Array, t: Array, sde: AbstractSDE, y: Optional[Array] = None) -> Array:
        """E[x_0 | x_t = x] under the empirical data law (softmax-weighted training mean)."""
        x = check_example(x, t, sde, self.shape, same_size_ok=True)
        return self.posterior_mean(x, sde.alpha(t), sde.sigma(t), y)[0]

    def log_prob(self, x: Array, t: Array, sde: AbstractSDE) -> Array:
        """log p_t(x) = log (1/N) sum_n N(x; alpha phi_n, sigma^2 I), shape (batch,)."""
        x = check_example(x, t, sde, self.shape, same_size_ok=True)
        b, d = x.shape[0], math.prod(x.shape[1:])
        s = per_sample(sde.sigma(t), b)
        lse = self.posterior_mean(x, sde.alpha(t), s)[1]
        return lse - jnp.log(self.train.shape[0]) - 0.5 * d * jnp.log(2 * jnp.pi * s * s)


def ideal_score_fn(train_images, sde: AbstractSDE, *, train_labels=None,
                   chunk_size: Optional[int] = 1024) -> Callable:
    """score(x, t[, y]) of the empirical distribution of `train_images` (N, ...) under `sde`.

    See `IdealScore` for the maths (Kamb & Ganguli 2025, eq. 3).
    """
    return IdealScore(train_images, train_labels=train_labels, chunk_size=chunk_size).score_fn(sde)


def ideal_denoiser(train_images, sde: AbstractSDE, *, train_labels=None,
                   chunk_size: Optional[int] = 1024) -> Callable:
    """denoise(x, t[, y]) = E[x_0 | x_t = x] of the empirical distribution of `train_images`."""
    return IdealScore(train_images, train_labels=train_labels, chunk_size=chunk_size).denoiser(sde)


def subsample(train_images, key: Array, n: int, train_labels=None):
    """A uniformly random subset of n training images (without replacement).

    Returns the images, or (images, labels) when train_labels is given. Used to make
    the machines cheaper on large sets; the result is another empirical law.
    """
    train_images = jnp.asarray(train_images)
    total = train_images.shape[0]
    if not (1 <= n <= total):
        raise ValueError(f"n must be between 1 and the number of training images {total}, got {n}.")
    idx = jax.random.choice(key, total, (n,), replace=False)
    if train_labels is None:
        return train_images[idx]
    return train_images[idx], jnp.asarray(train_labels)[idx]
