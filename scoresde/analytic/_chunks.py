"""Streaming softmax-weighted means over a training set, in chunks (private module,
public names; used by the ideal score and the LS / ELS machines, not re-exported).

A posterior mean sum_k softmax_k(l_k) v_k over N training points (or patches) is
computed as one `lax.scan` over chunks with an online log-sum-exp (Milakov &
Gimelshein 2018, "Online normalizer calculation for softmax"): a running maximum m, a
running sum s = sum exp(l - m) and a running numerator are rescaled by
exp(m_old - m_new) when a chunk raises the maximum. The maximum is kept per entry (per
sample; per pixel for the local machines), never shared over the batch: with a shared
maximum, a sample far from every training point (logits ~ -1e4 below those of another
sample) has all its weights underflow to 0 and its posterior mean becomes 0/0.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from scoresde._checks import check_batched, check_float_data
from scoresde._types import Array

# A finite stand-in for -inf: exp(NEG - m) == 0 for every finite m, and unlike -inf
# it never produces inf - inf = nan in the running-maximum update.
NEG = -1e30


def per_sample(c, batch: int) -> Array:
    """A scalar or (batch,) coefficient as an array of shape (batch,)."""
    c = jnp.asarray(c)
    return jnp.broadcast_to(c.reshape(-1) if c.ndim else c, (batch,))


def streaming_softmax_mean(chunks, logits_fn: Callable, contract_fn: Callable,
                           batch_shape: tuple, value_shape: tuple, dtype):
    """sum_k softmax_k(l_k) v_k over a stream of chunks, with a per-entry online max.

    chunks: a pytree whose leaves have a leading chunk axis (scanned over).
    logits_fn(chunk) -> logits of shape batch_shape + (c,).
    contract_fn(p, chunk) -> sum_k p[..., k] v_k of shape batch_shape + value_shape,
        where p = exp(l - m) are the unnormalised weights of the chunk.
    Returns (mean, log_normaliser) with log_normaliser = logsumexp_k l_k of shape
    batch_shape. The maximum m is taken separately for every entry of batch_shape.
    """
    expand = (...,) + (None,) * len(value_shape)

    def body(carry, chunk):
        m, s, num = carry
        logits = logits_fn(chunk)
        m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
        scale = jnp.exp(m - m_new)
        p = jnp.exp(logits - m_new[..., None])
        s = s * scale + jnp.sum(p, axis=-1)
        num = num * scale[expand] + contract_fn(p, chunk)
        return (m_new, s, num), None

    init = (jnp.full(batch_shape, NEG, dtype), jnp.zeros(batch_shape, dtype),
            jnp.zeros(batch_shape + value_shape, dtype))
    (m, s, num), _ = jax.lax.scan(body, init, chunks)
    return num / s[expand], m + jnp.log(s)


def pad_to_chunks(arrays, n: int, chunk_size: int, fill_values):
    """Pad the leading axis n of each array to a multiple of chunk_size and reshape to
    (n_chunks, chunk_size, ...). Padding rows take the matching fill value (NEG for a
    logit bias, so they weigh exp(NEG - m) = 0)."""
    c = max(1, min(int(chunk_size), n))
    n_chunks = -(-n // c)
    pad = n_chunks * c - n
    out = []
    for a, fill in zip(arrays, fill_values):
        if pad:
            a = jnp.concatenate([a, jnp.full((pad,) + a.shape[1:], fill, a.dtype)], axis=0)
        out.append(a.reshape((n_chunks, c) + a.shape[1:]))
    return out


def check_chunk_size(chunk_size) -> None:
    """Raise unless chunk_size is None or a positive integer."""
    if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None (got {chunk_size!r}).")


def check_train(train_images, name: str = "train_images") -> Array:
    """train_images as a non-empty batch-first floating-point array (raises otherwise)."""
    train_images = jnp.asarray(train_images)
    check_float_data(train_images, name)
    check_batched(train_images, name)
    if train_images.shape[0] < 1:
        raise ValueError(f"{name} is empty (shape {train_images.shape}); pass at least one image.")
    return train_images


__all__ = ["NEG", "per_sample", "streaming_softmax_mean", "pad_to_chunks", "check_chunk_size", "check_train"]
