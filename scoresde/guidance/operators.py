"""Linear measurement operators y = A x for inverse problems.

Each operator is an immutable equinox Module acting on batch-first data x (B, ...):

    apply(x)      A x            (B, ...) -> observation (B, *obs_shape)
    transpose(y)  A^T y          observation -> data shape
    pinv(y)       A^+ y = A^T (A A^T)^{-1} y  (minimum-norm pre-image)
    replace(x, y) x - A^+ (A x - y): the point closest to x with A x = y (for the
                  replacement method: keeps the null-space part of x, sets the observed part)
    gram_solve(v, r2, s2)  (r2 A A^T + s2 I)^{-1} v  (used by Pi-GDM)

All three operators here have A A^T = c I on the observation space (c = 1 for a mask
restricted to its observed pixels, 1/f^2 for f x f average pooling, 1/C for the
channel average), so A^+ and gram_solve are elementwise. Shapes are checked by
`check_data(x)`; a mask or factor that does not fit the data raises a ValueError.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from scoresde._checks import concrete_or_none

Array = jax.Array


class AbstractLinearOperator(eqx.Module):
    """A linear observation y = A x with A A^T = gram_scale * I on the observation space."""

    @abc.abstractmethod
    def observation_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of A x for x of shape data_shape (batch first); raises if x does not fit."""

    @abc.abstractmethod
    def apply(self, x: Array) -> Array:
        """A x."""

    @abc.abstractmethod
    def transpose(self, y: Array) -> Array:
        """A^T y."""

    @abc.abstractmethod
    def gram_scale(self) -> float:
        """c with A A^T = c I (on the observed coordinates)."""

    def check_data(self, x, name: str = "x"):
        """Raise if x (batch first) does not fit the operator."""
        self.observation_shape(tuple(jnp.shape(x)))

    def check_observation(self, y, x_shape, name: str = "y"):
        """Raise unless y has the shape A x has for data of shape x_shape."""
        want = self.observation_shape(tuple(x_shape))
        if tuple(jnp.shape(y)) != want:
            raise ValueError(f"{name} has shape {tuple(jnp.shape(y))} but {type(self).__name__} "
                             f"maps data of shape {tuple(x_shape)} to observations of shape {want}; "
                             f"build y with op.apply(x) (one observation per example).")

    def pinv(self, y: Array) -> Array:
        """A^+ y = A^T (A A^T)^{-1} y = A^T y / c."""
        return self.transpose(y) / self.gram_scale()

    def replace(self, x: Array, y: Array) -> Array:
        """x - A^+ (A x - y): the orthogonal projection of x onto {A x = y}."""
        return x - self.pinv(self.apply(x) - y)

    def gram_solve(self, v: Array, r2, s2) -> Array:
        """(r2 A A^T + s2 I)^{-1} v with r2, s2 scalars or per example (B,)."""
        den = r2 * self.gram_scale() + s2
        return v / _bc(den, v)


def _bc(c, v):
    c = jnp.asarray(c)
    return c.reshape(c.shape + (1,) * (v.ndim - c.ndim)) if c.ndim else c


class Inpainting(AbstractLinearOperator):
    """Pixel mask: A x = m * x with m in {0, 1} (1 = observed), y shaped like x (zeros at
    the unknown pixels). `mask` has the shape of one example (or broadcasts to it, e.g.
    (H, W, 1) for all channels); apply / transpose / replace raise a ValueError on data
    that the mask does not fit. A^T = A, A A^T = diag(m), so on the observed pixels
    c = 1; `replace` is exact elementwise selection, so observed pixels equal y bit for bit.
    """

    mask: Array

    def __init__(self, mask):
        mask = jnp.asarray(mask)
        m = concrete_or_none(mask)
        if m is not None and not np.all((m == 0) | (m == 1)):
            raise ValueError("mask must contain only 0 (unknown) and 1 (observed) values.")
        self.mask = mask.astype(jnp.float32) if not jnp.issubdtype(mask.dtype, jnp.floating) else mask

    def observation_shape(self, data_shape):
        ex = tuple(data_shape[1:])
        if len(data_shape) < 2:
            raise ValueError(f"x must be batch first (batch, ...), got shape {tuple(data_shape)}.")
        try:
            b = np.broadcast_shapes(self.mask.shape, ex)
        except ValueError:
            b = None
        if b != ex or self.mask.ndim > len(ex):
            raise ValueError(f"mask has shape {self.mask.shape}, which does not fit one example of "
                             f"shape {ex}; give a mask of shape {ex} (or one that broadcasts to it).")
        return tuple(data_shape)

    def _m(self, x):
        # every method checks the mask against x (a mask of the wrong shape would
        # otherwise broadcast silently, e.g. a (2,) mask against (B, 2) data of another layout)
        self.observation_shape(tuple(jnp.shape(x)))
        return self.mask.astype(x.dtype)

    def apply(self, x):
        return jnp.where(self._m(x) > 0, x, 0).astype(x.dtype)

    def transpose(self, y):
        return self.apply(y)

    def gram_scale(self):
        return 1.0

    def pinv(self, y):
        return self.apply(y)

    def replace(self, x, y):
        return jnp.where(self._m(x) > 0, y, x)

    def gram_solve(self, v, r2, s2):
        # Only observed entries matter (v = A(...) vanishes elsewhere); avoid 0/0 there.
        den = _bc(jnp.asarray(r2) + s2, v)
        return jnp.where(self._m(v) > 0, v / den, 0).astype(v.dtype)


def _check_image(data_shape, who):
    if len(data_shape) != 4:
        raise ValueError(f"{who} works on images of shape (batch, H, W, C), got shape "
                         f"{tuple(data_shape)}; reshape flat data first.")


class AveragePool(AbstractLinearOperator):
    """Super-resolution operator: average over non-overlapping f x f blocks,
    (B, H, W, C) -> (B, H/f, W/f, C). A^T y spreads each low-res value over its block
    divided by f^2, so A A^T = I / f^2 and A^+ y is nearest-neighbour up-sampling."""

    factor: int = eqx.field(static=True)

    def __check_init__(self):
        if not isinstance(self.factor, (int, np.integer)) or self.factor < 1:
            raise ValueError(f"factor must be an integer >= 1, got {self.factor!r}.")

    def observation_shape(self, data_shape):
        _check_image(data_shape, "AveragePool")
        B, H, W, C = data_shape
        f = self.factor
        if H % f or W % f:
            raise ValueError(f"AveragePool(factor={f}) needs H and W divisible by {f}, got "
                             f"H={H}, W={W}; crop or pad the images, or choose another factor.")
        return (B, H // f, W // f, C)

    def apply(self, x):
        B, H, W, C = self.observation_shape(x.shape)
        f = self.factor
        return x.reshape(B, H, f, W, f, C).mean(axis=(2, 4))

    def transpose(self, y):
        f = self.factor
        up = jnp.repeat(jnp.repeat(y, f, axis=1), f, axis=2)
        return up / (f * f)

    def gram_scale(self):
        return 1.0 / (self.factor**2)


class Colorization(AbstractLinearOperator):
    """Grey-scale observation: the channel average, (B, H, W, C) -> (B, H, W, 1), C =
    `channels` >= 2. A^T y copies y / C into every channel, A A^T = I / C, and A^+ y
    puts y in every channel."""

    channels: int = eqx.field(static=True, default=3)

    def __check_init__(self):
        if not isinstance(self.channels, (int, np.integer)) or self.channels < 2:
            raise ValueError(f"channels must be an integer >= 2 (colorisation needs "
                             f"multi-channel data), got {self.channels!r}.")

    def observation_shape(self, data_shape):
        _check_image(data_shape, "Colorization")
        if data_shape[-1] != self.channels:
            raise ValueError(f"Colorization(channels={self.channels}) got data with "
                             f"C={data_shape[-1]} channels (shape {tuple(data_shape)}); build it "
                             f"with channels={data_shape[-1]}" + (" - colorisation needs C >= 2."
                                                                  if data_shape[-1] < 2 else "."))
        return tuple(data_shape[:-1]) + (1,)

    def apply(self, x):
        self.observation_shape(x.shape)
        return x.mean(axis=-1, keepdims=True)

    def transpose(self, y):
        return jnp.repeat(y, self.channels, axis=-1) / self.channels

    def gram_scale(self):
        return 1.0 / self.channels
