"""Frechet distance between Gaussian fits of features (FID's formula), histogram entropy.

For Gaussians N(m1, C1), N(m2, C2) the squared 2-Wasserstein (Frechet) distance is
(Dowson & Landau 1982; FID: Heusel et al. 2017)

    FD = |m1 - m2|^2 + tr(C1) + tr(C2) - 2 tr((C1 C2)^{1/2}),

and tr((C1 C2)^{1/2}) = tr((C1^{1/2} C2 C1^{1/2})^{1/2}) = sum_i sqrt(lambda_i) with
lambda_i the eigenvalues of the symmetric PSD matrix C1^{1/2} C2 C1^{1/2}. We compute
it with two symmetric eigendecompositions in float64, which avoids the complex
round-off that `scipy.linalg.sqrtm` of the non-symmetric C1 C2 produces.

FID is this distance on Inception-v3 pool features (Heusel et al. 2017). No weights
can be downloaded here, so `frechet_distance_with` takes any feature extractor: pass
your own Inception network (e.g. a JAX port with its weights) to get FID, or the
toolkit's digit classifier features for the offline digits metric.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of features (N, F) in float64, covariance with 1/(N-1)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must have shape (N, F) with N >= 2, got {f.shape}.")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(c):
    w, v = np.linalg.eigh((c + c.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """|m1 - m2|^2 + tr(C1 + C2 - 2 (C1 C2)^{1/2}) (module docstring); float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    c1, c2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    if mu1.shape != mu2.shape or c1.shape != c2.shape or c1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shapes do not match: mu1 {mu1.shape}, cov1 {c1.shape}, mu2 {mu2.shape}, "
                         f"cov2 {c2.shape}; expected (F,), (F, F) for both.")
    s1 = _sqrt_psd(c1)
    lam = np.linalg.eigvalsh(s1 @ c2 @ s1)
    tr_sqrt = np.sqrt(np.clip(lam, 0.0, None)).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2.0 * tr_sqrt)


def frechet_distance_from_features(f1, f2) -> float:
    """Frechet distance between the Gaussian fits of two feature sets (N1, F), (N2, F)."""
    return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))


def frechet_distance_with(feature_fn: Callable, x1, x2, *, batch_size: int = 500) -> float:
    """FD between feature_fn(x1) and feature_fn(x2), features computed in batches.

    Extension point for FID: feature_fn maps a batch of images (B, H, W, C) in the
    scale the network expects to (B, F) features, e.g. Inception-v3 pool3 (F = 2048).
    """
    def feats(x):
        return np.concatenate([np.asarray(feature_fn(x[i:i + batch_size]))
                               for i in range(0, len(x), batch_size)])

    return frechet_distance_from_features(feats(x1), feats(x2))


def histogram_entropy(labels, num_classes: int) -> float:
    """Entropy -sum_c h_c log h_c (nats) of the empirical class histogram h of `labels`.

    Maximum log(num_classes) when all classes are equally frequent; 0 for one class.
    """
    counts = np.bincount(np.asarray(labels).reshape(-1), minlength=num_classes).astype(np.float64)
    h = counts / counts.sum()
    nz = h[h > 0]
    return float(-(nz * np.log(nz)).sum())


def confident_fraction(proba, threshold: float = 0.9) -> float:
    """Fraction of examples whose top predicted class probability is >= threshold."""
    return float(np.mean(np.max(np.asarray(proba), axis=-1) >= threshold))
