"""Memorisation check: distance of each sample to its nearest training image.

A model that copies its training set produces samples much closer to a training image
than fresh data are. We compare d(s) = min_i |s - x_i^train| (Euclidean, in the
pixel scale given) for samples s with the same distance for held-out test images:
if samples were draws from the data law like the test images, the two distance
distributions would match. Reported: medians, their ratio (<< 1 flags copying), and
the fraction of samples closer than the 5% quantile of the test distances (about 0.05
for a non-memorising model, near 1 for a copying one). See Carlini et al. 2023,
"Extracting training data from diffusion models", and Somepalli et al. 2023.
"""

from __future__ import annotations

import numpy as np


def nearest_neighbours(queries, reference, *, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(distances (N,), indices (N,)): for each query (N, ...) the Euclidean distance to its
    nearest reference (M, ...) and that reference's index,

        d(q) = min_i ||q - r_i||_2,  ||q - r||^2 = ||q||^2 - 2 <q, r> + ||r||^2  (float64).
    """
    q = np.asarray(queries, np.float64).reshape(len(queries), -1)
    r = np.asarray(reference, np.float64).reshape(len(reference), -1)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} values per example, reference {r.shape[1]}.")
    r2 = (r**2).sum(1)
    dist, idx = np.empty(len(q)), np.empty(len(q), np.int64)
    for i in range(0, len(q), chunk):
        qc = q[i:i + chunk]
        d2 = (qc**2).sum(1)[:, None] + r2[None, :] - 2 * qc @ r.T
        idx[i:i + chunk] = d2.argmin(1)
        dist[i:i + chunk] = np.sqrt(np.clip(d2[np.arange(len(qc)), idx[i:i + chunk]], 0.0, None))
    return dist, idx


def nearest_neighbour_distances(queries, reference, *, chunk: int = 1024) -> np.ndarray:
    """(N,) Euclidean distance of each query (N, ...) to its nearest reference (M, ...)."""
    return nearest_neighbours(queries, reference, chunk=chunk)[0]


def memorisation_report(samples, train, test) -> dict:
    """Nearest-training-image distances of samples vs of test images (module docstring)."""
    ds = nearest_neighbour_distances(samples, train)
    dt = nearest_neighbour_distances(test, train)
    q05 = float(np.quantile(dt, 0.05))
    return {
        "nn_dist_samples_median": float(np.median(ds)),
        "nn_dist_test_median": float(np.median(dt)),
        "nn_dist_ratio": float(np.median(ds) / np.median(dt)),
        "frac_samples_below_test_q05": float(np.mean(ds < q05)),
    }
