"""Residual MLP score network for low-dimensional data (B, D).

    h_0 = Dense(x);  h_{l+1} = h_l + Dense(Dropout(SiLU(Dense(SiLU(h_l)) + Dense(emb))))
    out = Dense(SiLU(h_L))   (shape (B, D), no output nonlinearity)

emb is the time (+ label) embedding of `scoresde.models.embeddings.TimeEmbedding`.
What the output means (eps, score, x0, v) is decided by the parameterisation that
`scoresde.parameterization.score_fn_from_network` wraps around it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from scoresde.models.embeddings import TimeEmbedding, drop_labels

Array = jax.Array


class MLP(nn.Module):
    """MLP(width, depth): apply(variables, x (B, D), t (B,), y=None, train=False) -> (B, D).

    num_classes: if set, labels y in 0..num_classes (num_classes = null label) are
    embedded; class_dropout replaces labels by the null label while training
    (classifier-free guidance). dropout: rate inside each residual block. Stochastic
    layers need rngs={"dropout": key} when train=True.
    """

    width: int = 256
    depth: int = 3
    emb_dim: int = 128
    embedding: str = "fourier"
    time_scale: float = 1000.0
    fourier_scale: float = 16.0
    num_classes: int | None = None
    class_dropout: float = 0.0
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: Array, t: Array, y: Array | None = None, train: bool = False) -> Array:
        if x.ndim != 2:
            raise ValueError(f"MLP expects x of shape (batch, dim), got {x.shape}; flatten images first.")
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:1])
        y = drop_labels(y, self.num_classes, self.class_dropout, train, self.make_rng)
        emb = TimeEmbedding(self.emb_dim, self.width, self.embedding, self.time_scale,
                            self.fourier_scale, self.num_classes)(t, y)
        h = nn.Dense(self.width)(x)
        for _ in range(self.depth):
            z = nn.Dense(self.width)(nn.silu(h)) + nn.Dense(self.width)(emb)
            z = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(z))
            h = h + nn.Dense(self.width)(z)
        return nn.Dense(x.shape[-1])(nn.silu(h)).astype(x.dtype)
