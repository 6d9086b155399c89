"""U-Net of the DDPM++ / NCSN++ family (Ho et al. 2020; Song et al. 2021, App. H).

    x -> Conv3x3 -> [ResBlock x num_res_blocks (+ attention at attn_resolutions),
                     Downsample]  per level (widths ch * ch_mult[level])
      -> ResBlock, Attention, ResBlock           (bottleneck)
      -> [ResBlock x (num_res_blocks + 1) on concat(h, skip) (+ attention), Upsample]
      -> GroupNorm, SiLU, Conv3x3 -> output shaped like x

ResBlock (BigGAN-style residual block of DDPM++):
    h = Conv(SiLU(GN(x))) + Dense(SiLU(emb));  h = Conv(Dropout(SiLU(GN(h))))
    out = (skip(x) + h) / sqrt(2)   (skip_rescale) or skip(x) + h
Attention: single-head self-attention over the H*W positions with a residual, again
divided by sqrt(2) when skip_rescale. emb is the time embedding (sinusoidal as in
DDPM++ or Gaussian Fourier as in NCSN++) plus an optional class embedding whose id
num_classes is the null label of classifier-free guidance.

Resolution bookkeeping: level l works at H / 2^l, so H and W must be divisible by
2^(len(ch_mult) - 1). Digits (8x8): ch_mult=(1, 2) runs at 8 and 4; MNIST (28):
(1, 2, 2) at 28, 14, 7; CIFAR-10 (32): DDPM++ uses ch=128, ch_mult=(1, 2, 2, 2),
num_res_blocks=4 (cont.), attn_resolutions=(16,), dropout=0.1.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from scoresde.models.embeddings import AbstractConditionedNet

Array = jax.Array


def _groups(channels: int, max_groups: int = 32) -> int:
    """Largest group count <= max_groups dividing `channels` with >= 4 channels each (or 1)."""
    for g in range(min(max_groups, channels // 4), 0, -1):
        if channels % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    out_ch: int
    dropout: float = 0.0
    skip_rescale: bool = True

    @nn.compact
    def __call__(self, x, emb, train: bool):
        h = nn.silu(nn.GroupNorm(_groups(x.shape[-1]))(x))
        h = nn.Conv(self.out_ch, (3, 3))(h)
        h = h + nn.Dense(self.out_ch)(nn.silu(emb))[:, None, None, :]
        h = nn.silu(nn.GroupNorm(_groups(self.out_ch))(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.out_ch, (3, 3))(h)
        if x.shape[-1] != self.out_ch:
            x = nn.Dense(self.out_ch, name="skip")(x)  # 1x1 convolution (NIN)
        out = x + h
        return out / math.sqrt(2.0) if self.skip_rescale else out


class AttnBlock(nn.Module):
    skip_rescale: bool = True

    @nn.compact
    def __call__(self, x):
        b, hh, ww, c = x.shape
        h = nn.GroupNorm(_groups(c))(x).reshape(b, hh * ww, c)
        q, k, v = jnp.split(nn.Dense(3 * c)(h), 3, axis=-1)
        w = jax.nn.softmax(jnp.einsum("bic,bjc->bij", q, k) / math.sqrt(c), axis=-1)
        h = nn.Dense(c)(jnp.einsum("bij,bjc->bic", w, v)).reshape(b, hh, ww, c)
        out = x + h
        return out / math.sqrt(2.0) if self.skip_rescale else out


class UNet(AbstractConditionedNet):
    """apply(variables, x (B, H, W, C), t (B,), y=None, train=False) -> (B, H, W, C).

    ch: base width; ch_mult: width multiplier per resolution level; num_res_blocks per
    level; attn_resolutions: spatial sizes (e.g. (16,)) that get self-attention;
    embedding: "sinusoidal" (DDPM++, time_scale * t) or "fourier" (NCSN++,
    fourier_scale); num_classes / class_dropout: label conditioning with a null id;
    dropout inside the residual blocks (needs rngs={"dropout": key} when training).
    """

    ch: int = 64
    ch_mult: Sequence[int] = (1, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = ()
    skip_rescale: bool = True

    @nn.compact
    def __call__(self, x: Array, t: Array, y: Array | None = None, train: bool = False) -> Array:
        if x.ndim != 4:
            raise ValueError(f"UNet expects x of shape (batch, H, W, C), got {x.shape}.")
        n_down = len(self.ch_mult) - 1
        if x.shape[1] % 2**n_down or x.shape[2] % 2**n_down:
            raise ValueError(f"image size {x.shape[1:3]} must be divisible by 2^(len(ch_mult)-1) = "
                             f"{2**n_down}; use fewer levels in ch_mult={tuple(self.ch_mult)} or pad.")
        emb = self.conditioning(x, t, y, train, self.ch, 4 * self.ch)
        block = lambda c: ResBlock(c, self.dropout, self.skip_rescale)  # noqa: E731
        attn = lambda h: AttnBlock(self.skip_rescale)(h) if h.shape[1] in self.attn_resolutions else h  # noqa: E731

        h = nn.Conv(self.ch, (3, 3), name="conv_in")(x)
        skips = [h]
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = attn(block(self.ch * mult)(h, emb, train))
                skips.append(h)
            if level < n_down:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), name=f"down_{level}")(h)
                skips.append(h)
        h = block(h.shape[-1])(h, emb, train)
        h = AttnBlock(self.skip_rescale)(h)
        h = block(h.shape[-1])(h, emb, train)
        for level, mult in reversed(list(enumerate(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = attn(block(self.ch * mult)(jnp.concatenate([h, skips.pop()], axis=-1), emb, train))
            if level > 0:
                b, hh, ww, c = h.shape
                h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), "nearest")
                h = nn.Conv(c, (3, 3), name=f"up_{level}")(h)
        assert not skips
        h = nn.silu(nn.GroupNorm(_groups(h.shape[-1]))(h))
        return nn.Conv(x.shape[-1], (3, 3), name="conv_out")(h).astype(x.dtype)
