"""Local ResNet: stacked 3x3 convolutions with a fixed, known receptive field.

The equivariant local score (ELS) analysis (Kamb & Ganguli 2024, "An analytic theory
of creativity in convolutional diffusion models") explains samples of convolutional
score networks through two inductive biases: locality (each output pixel depends on a
P x P patch) and translation equivariance. This network has exactly those: n_layers
3x3 convolutions, stride 1, no down-sampling and no normalisation (a normalisation
would mix information across the whole image), so

    receptive field P = 2 n_layers + 1,

and with circular padding the map x -> net(x, t) commutes with cyclic shifts of the
image. Time (and label) enter only through a spatially constant FiLM per layer,
h <- h (1 + a_l(emb)) + b_l(emb), which keeps both properties.

    h_0 = Conv(x);  h_{l+1} = h_l + Conv_l(SiLU(FiLM_l(h_l))),  l = 1..n_layers-2;
    out = Conv_out(SiLU(h_{n_layers-1}))        (n_layers convolutions in all)
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from scoresde.models.embeddings import AbstractConditionedNet

Array = jax.Array


class LocalResNet(AbstractConditionedNet):
    """apply(variables, x (B, H, W, C), t (B,), y=None, train=False) -> (B, H, W, C).

    padding: "circular" (translation equivariant on the torus) or "zeros".
    `receptive_field` = 2 n_layers + 1 (side of the square patch one output sees).
    """

    channels: int = 64
    n_layers: int = 8
    padding: str = "circular"
    emb_dim: int = 64

    @property
    def receptive_field(self) -> int:
        """Side length 2 n_layers + 1 of the input patch that one output pixel depends on."""
        return 2 * self.n_layers + 1

    @nn.compact
    def __call__(self, x: Array, t: Array, y: Array | None = None, train: bool = False) -> Array:
        if self.n_layers < 2:
            raise ValueError(f"n_layers must be >= 2 (input and output convolutions), got {self.n_layers}.")
        if self.padding not in ("circular", "zeros"):
            raise ValueError(f"padding must be 'circular' or 'zeros', got {self.padding!r}.")
        if x.ndim != 4:
            raise ValueError(f"LocalResNet expects x of shape (batch, H, W, C), got {x.shape}.")
        pad = "CIRCULAR" if self.padding == "circular" else "SAME"
        emb = nn.silu(self.conditioning(x, t, y, train, self.emb_dim, 2 * self.emb_dim))
        h = nn.Conv(self.channels, (3, 3), padding=pad, name="conv_in")(x)
        for i in range(self.n_layers - 2):
            film = nn.Dense(2 * self.channels, name=f"film_{i}")(emb)[:, None, None, :]
            scale, shift = jnp.split(film, 2, axis=-1)
            z = nn.silu(h * (1 + scale) + shift)
            z = nn.Dropout(self.dropout, deterministic=not train)(z)
            h = h + nn.Conv(self.channels, (3, 3), padding=pad, name=f"conv_{i}")(z)
        out = nn.Conv(x.shape[-1], (3, 3), padding=pad, name="conv_out")(nn.silu(h))
        return out.astype(x.dtype)
