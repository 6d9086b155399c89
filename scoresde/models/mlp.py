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

from scoresde.models.embeddings import AbstractConditionedNet

Array = jax.Array


class MLP(AbstractConditionedNet):
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

    @nn.compact
    def __call__(self, x: Array, t: Array, y: Array | None = None, train: bool = False) -> Array:
        if x.ndim != 2:
            raise ValueError(f"MLP expects x of shape (batch, dim), got {x.shape}; flatten images first.")
        emb = self.conditioning(x, t, y, train, self.emb_dim, self.width)
        h = nn.Dense(self.width)(x)
        for _ in range(self.depth):
            z = nn.Dense(self.width)(nn.silu(h)) + nn.Dense(self.width)(emb)
            z = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(z))
            h = h + nn.Dense(self.width)(z)
        return nn.Dense(x.shape[-1])(nn.silu(h)).astype(x.dtype)
