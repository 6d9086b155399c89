"""Per-example PRNG keys, shared by the samplers, the likelihood and guidance.

Example i of a batch draws all its randomness from keys[i] only, so a batch split over
devices (scoresde.parallel) gives the same numbers as one device for the same keys.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def per_example_keys(key, batch: int) -> Array:
    """Typed key array of shape (batch,): `key` split in `batch`, or `key` itself if it
    already holds one key per example (a typed (B,) array or raw uint32 (B, 2))."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.dtype != jnp.uint32:
            raise TypeError(f"key must be a PRNG key (jax.random.key / PRNGKey) or an array of "
                            f"{batch} keys, got dtype {key.dtype}.")
        key = jax.random.wrap_key_data(key)
    if key.ndim == 0:
        return jax.random.split(key, batch)
    if key.shape == (batch,):
        return key
    if key.ndim == 1:
        raise ValueError(f"key holds {key.shape[0]} keys but the batch has {batch} examples; pass one "
                         "key, or exactly one key per example.")
    raise ValueError(f"key must be one PRNG key or one key per example (shape ({batch},) typed "
                     f"or ({batch}, 2) raw), got a key array of shape {key.shape}.")
