"""PNG writers with PIL only (no matplotlib): image grids and 2-D scatter plots."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw


def grid_png(levels: np.ndarray, num_levels: int, path: str, *, ncol: int | None = None, scale: int = 4,
             pad: int = 1, row_labels: Sequence[str] | None = None, label_width: int = 60) -> str:
    """Integer images (N, H, W, C) in 0..num_levels-1 -> one PNG grid, each pixel scale x scale.

    row_labels: one caption per grid row, written in a white margin of label_width pixels
    on the left.
    """
    levels = np.asarray(levels)
    n, h, w, c = levels.shape
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    img = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, np.uint8)
    vals = np.round(levels.astype(np.float64) * 255.0 / (num_levels - 1)).astype(np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        img[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = vals[i]
    img = np.repeat(np.repeat(img, scale, 0), scale, 1)
    im = Image.fromarray(img[..., 0] if c == 1 else img)
    if row_labels is not None:
        if len(row_labels) != nrow:
            raise ValueError(f"row_labels has {len(row_labels)} entries but the grid has {nrow} rows "
                             f"({n} images, ncol={ncol}); give one label per row.")
        framed = Image.new(im.mode, (im.width + label_width, im.height), 255 if c == 1 else (255,) * 3)
        framed.paste(im, (label_width, 0))
        draw = ImageDraw.Draw(framed)
        for r, text in enumerate(row_labels):
            draw.text((2, (pad + r * (h + pad) + h // 2) * scale - 5), text, fill=0 if c == 1 else (0,) * 3)
        im = framed
    im.save(path)
    return path


def scatter_png(points: np.ndarray, path: str, *, size: int = 512, lim: float | None = None,
                reference: np.ndarray | None = None) -> str:
    """2-D points -> scatter plot PNG (black dots; optional grey reference points)."""
    pts = np.asarray(points, np.float64)
    lim = lim or float(np.percentile(np.abs(pts), 99.5) * 1.1 + 1e-9)
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)

    def px(p):
        return (p + lim) / (2 * lim) * (size - 1)

    for arr, col in ((reference, (180, 180, 180)), (pts, (0, 0, 0))):
        if arr is None:
            continue
        for u, v in zip(px(arr[:, 0]), px(-arr[:, 1])):
            if 0 <= u < size and 0 <= v < size:
                d.ellipse([u - 1, v - 1, u + 1, v + 1], fill=col)
    d.line([(size / 2, 0), (size / 2, size)], fill=(220, 220, 220))
    d.line([(0, size / 2), (size, size / 2)], fill=(220, 220, 220))
    im.save(path)
    return path
