"""Sample quality: Fréchet distance (FID) and precision/recall over pluggable image features.

``FID = ‖μ_r − μ_g‖² + tr(Σ_r + Σ_g − 2(Σ_r Σ_g)^½)`` (Heusel et al., 2017) of Gaussian fits
to the features of real and generated images. Precision/recall are those of Kynkäänniemi et
al. (2019): a generated sample is "precise" if it lies inside the k-NN ball (``k = 3``) of some
real sample, a real one "recalled" if inside the ball of some generated sample.

Features (:func:`extractor`):

* ``classifier`` (offline default): the penultimate activations (the input of the head, the
  last linear layer) of a classifier trained by bnn_jax on the same data. ⚠ This "classifier
  FID" is a relative measure between models scored with the same classifier; it is NOT
  comparable to Inception FID numbers in papers (other network, other feature space).
* ``inception``: the 2048-d pool features of Inception-V3 (:mod:`bnn_jax.analysis.inception`)
  from a weights file the user supplies locally (nothing is downloaded).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

FEATURES = ("classifier", "inception")


def gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of ``features [N, D]`` (float64)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be [N, D] with N >= 2, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """``‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2(Σ1 Σ2)^½)``; the trace of the square root is taken from
    the eigenvalues of the symmetric ``Σ1^½ Σ2 Σ1^½`` (same eigenvalues as ``Σ1 Σ2``)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    tr_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two feature sets ``[N, D]``."""
    return frechet_distance(*gaussian(real), *gaussian(fake))


def _knn_radii(f: np.ndarray, k: int) -> np.ndarray:
    d = _distances(f, f)
    return np.sort(d, axis=1)[:, k]  # column 0 is the point itself


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T
    return np.sqrt(np.clip(sq, 0, None))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) with ``k``-NN balls."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples of each, "
                         f"got {len(real)} real and {len(fake)} generated")
    d = _distances(fake, real)
    precision = np.mean(np.any(d <= _knn_radii(real, k)[None], axis=1))
    recall = np.mean(np.any(d.T <= _knn_radii(fake, k)[None], axis=1))
    return float(precision), float(recall)


def metrics(real_features: np.ndarray, fake_features: np.ndarray, k: int = 3) -> dict:
    """``{"fid", "precision", "recall"}`` of generated vs real features."""
    p, r = precision_recall(real_features, fake_features, k)
    return {"fid": fid(real_features, fake_features), "precision": p, "recall": r}


class _Tap(nnx.Module):
    """Wraps a layer and sows its input as ``features`` (the penultimate activations)."""

    def __init__(self, layer):
        self.layer = layer

    def __call__(self, x, *args, **kwargs):
        self.sow(nnx.Intermediate, "features", x)
        return self.layer(x, *args, **kwargs)


def _head(model: nnx.Module):
    """``(parent, attribute)`` of the last linear layer in module order (the classifier head)."""
    from bnn_jax.nn.layers import QuantLinear

    found = None
    for path, node in nnx.iter_graph(model):
        if isinstance(node, (nnx.Linear, QuantLinear)) and path:
            found = path
    if found is None:
        raise ValueError(f"{type(model).__name__} has no linear layer whose input could serve "
                         "as penultimate features; pass a classifier")
    parent = model
    for p in found[:-1]:
        parent = parent[p] if isinstance(p, int) else getattr(parent, p)
    return parent, found[-1]


def penultimate(model: nnx.Module, batch_size: int = 500) -> Callable[[np.ndarray], np.ndarray]:
    """A feature function ``images [N, H, W, C] -> [N, D]``: the input of ``model``'s head."""
    model = nnx.clone(model)
    model.eval()
    parent, name = _head(model)
    tap = _Tap(parent[name] if isinstance(name, int) else getattr(parent, name))
    if isinstance(name, int):
        parent[name] = tap
    else:
        setattr(parent, name, tap)
    graph, state = nnx.split(model)

    @jax.jit
    def features(state, x):
        _, inter = nnx.capture(nnx.merge(graph, state), nnx.Intermediate)(x)
        leaves = [v for v in jax.tree.leaves(nnx.to_pure_dict(inter))]
        return leaves[0].reshape(x.shape[0], -1)

    def fn(images):
        out = [np.asarray(features(state, jnp.asarray(images[i:i + batch_size], jnp.float32)))
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out)

    return fn


def classifier_features(workdir: str) -> Callable[[np.ndarray], np.ndarray]:
    """Penultimate features of a bnn_jax classification run's newest checkpoint."""
    from bnn_jax.export.__main__ import restore_model

    model, _, _ = restore_model(workdir)
    return penultimate(model)


def extractor(name: str, *, classifier: str | None = None,
              inception_weights: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """The feature function ``name`` (one of :data:`FEATURES`), checked before any work."""
    if name == "classifier":
        if not classifier:
            raise ValueError("classifier features need --classifier DIR: a bnn_jax "
                             "classification run on the same data (e.g. configs/digits_bnn.py)")
        return classifier_features(classifier)
    if name == "inception":
        from bnn_jax.analysis import inception

        return inception.features_fn(inception_weights)
    raise ValueError(f"unknown features {name!r}; valid features: {list(FEATURES)}")


def test_images(ds, limit: int | None = None) -> np.ndarray:
    """The dataset's test images ``[N, H, W, C]`` (padding removed)."""
    out = []
    for b in ds.eval_batches():
        mask = np.asarray(b.get("mask", np.ones(len(b["image"]))), bool)
        out.append(np.asarray(b["image"], np.float32)[mask])
    x = np.concatenate(out)
    return x if limit is None else x[:limit]
