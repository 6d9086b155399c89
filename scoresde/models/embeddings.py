"""Time (noise-level) embeddings shared by the networks.

* Sinusoidal (Vaswani et al. 2017; DDPM, Ho et al. 2020): for s = time_scale * t,
      emb(s) = [sin(s w_0..w_{h-1}), cos(s w_0..w_{h-1})],  w_j = max_period^(-j/h),
  h = dim/2. With t in [eps, 1] and time_scale = 1000 this is DDPM's embedding of the
  discrete step index.
* Gaussian Fourier features (Tancik et al. 2020; NCSN++, Song et al. 2021):
      emb(t) = [sin(2 pi t W), cos(2 pi t W)],  W ~ N(0, scale^2 I) of size dim/2,
  with W fixed. W is drawn from a fixed PRNG key at trace time, so it is a
  constant of the network, not a parameter (no optimiser or weight decay touches it).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def sinusoidal_embedding(t: Array, dim: int, *, time_scale: float = 1000.0,
                         max_period: float = 10_000.0) -> Array:
    """(B,) -> (B, dim) sinusoidal features of time_scale * t (module docstring)."""
    if dim % 2:
        raise ValueError(f"dim must be even for a sinusoidal embedding, got {dim}.")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = (time_scale * jnp.asarray(t, jnp.float32))[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def gaussian_fourier_embedding(t: Array, dim: int, *, scale: float = 16.0, seed: int = 0) -> Array:
    """(B,) -> (B, dim) Gaussian Fourier features with fixed W ~ N(0, scale^2)."""
    if dim % 2:
        raise ValueError(f"dim must be even for a Fourier embedding, got {dim}.")
    w = scale * jax.random.normal(jax.random.PRNGKey(seed), (dim // 2,), jnp.float32)
    args = 2 * jnp.pi * jnp.asarray(t, jnp.float32)[:, None] * w[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class TimeEmbedding(nn.Module):
    """t (B,) [and labels y (B,)] -> conditioning vector (B, out_dim).

    emb = Dense(SiLU(Dense(features(t)))) + Embed(y), features sinusoidal or Gaussian
    Fourier. With num_classes set, id num_classes is the "no label" class of
    classifier-free guidance (Ho & Salimans 2022); y=None means every example gets it.
    """

    dim: int
    out_dim: int
    kind: str = "sinusoidal"
    time_scale: float = 1000.0
    fourier_scale: float = 16.0
    num_classes: int | None = None

    @nn.compact
    def __call__(self, t: Array, y: Array | None = None) -> Array:
        t = jnp.asarray(t, jnp.float32)
        if t.ndim != 1:
            raise ValueError(f"t must have shape (batch,), got shape {t.shape}.")
        if self.kind == "sinusoidal":
            f = sinusoidal_embedding(t, self.dim, time_scale=self.time_scale)
        elif self.kind == "fourier":
            f = gaussian_fourier_embedding(t, self.dim, scale=self.fourier_scale)
        else:
            raise ValueError(f"embedding kind must be 'sinusoidal' or 'fourier', got {self.kind!r}.")
        emb = nn.Dense(self.out_dim)(nn.silu(nn.Dense(self.out_dim)(f)))
        if self.num_classes is not None:
            if y is None:
                y = jnp.full(t.shape, self.num_classes, jnp.int32)
            emb = emb + nn.Embed(self.num_classes + 1, self.out_dim, name="label_embed")(y)
        elif y is not None:
            raise ValueError("labels y were passed to a network built with num_classes=None; "
                             "set num_classes to condition on labels.")
        return emb


def drop_labels(y: Array | None, num_classes: int | None, rate: float, train: bool,
                rng_fn) -> Array | None:
    """Replace each label by the null id num_classes with probability `rate` (training only).

    Classifier-free guidance training (Ho & Salimans 2022): one network learns the
    conditional and (with the null id) the unconditional score.
    """
    if y is None or num_classes is None or rate <= 0 or not train:
        return y
    keep = jax.random.bernoulli(rng_fn("dropout"), 1.0 - rate, y.shape)
    return jnp.where(keep, y, num_classes)


class AbstractConditionedNet(nn.Module):
    """The conditioning every score network here shares: a time embedding of t and, with
    num_classes set, of the label y (`TimeEmbedding`), with classifier-free label dropout
    while training (`drop_labels`). Subclasses call `self.conditioning(...)` inside their
    compact `__call__` (the embedding's parameters live in the subclass's scope, named
    TimeEmbedding_0) and may redeclare a field to change its default."""

    embedding: str = "sinusoidal"
    time_scale: float = 1000.0
    fourier_scale: float = 16.0
    num_classes: int | None = None
    class_dropout: float = 0.0
    dropout: float = 0.0

    def conditioning(self, x: Array, t: Array, y: Array | None, train: bool, emb_dim: int,
                     out_dim: int) -> Array:
        """(B, out_dim) embedding of t (a scalar or (B,)) and the labels y of the batch x."""
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:1])
        y = drop_labels(y, self.num_classes, self.class_dropout, train, self.make_rng)
        return TimeEmbedding(emb_dim, out_dim, self.embedding, self.time_scale, self.fourier_scale,
                             self.num_classes)(t, y)


def count_params(variables) -> int:
    """Number of scalars in the 'params' collection (or in the whole tree)."""
    tree = variables.get("params", variables) if hasattr(variables, "get") else variables
    return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))
