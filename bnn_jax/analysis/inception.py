"""Inception-V3 pool features (2048-d) for FID, from a weights file the user supplies locally.

The network is the FID variant of Inception-V3 used by pytorch-fid (``FIDInceptionA/C/E``:
average pools that do not count padding, a max pool in the last block) with torchvision's layer
names: images are resized to 299x299 (bilinear), mapped to ``[−1, 1]`` and gray ones repeated to
3 channels; the output is the global average of ``Mixed_7c``. Every conv is
``relu(BN(conv(x)))`` with BatchNorm eps 1e-3 and no conv bias.

The weights file is an ``.npz`` of the PyTorch state dict (names such as
``Mixed_5b.branch1x1.conv.weight``, OIHW kernels, ``...bn.running_mean``), e.g. written from
pytorch-fid's ``pt_inception-2015-12-05`` checkpoint with
``np.savez(path, **{k: v.numpy() for k, v in torch.load(ckpt).items()})``. Nothing is downloaded.
``width`` scales every channel count (1 = the real network; smaller only for tests).
"""

from __future__ import annotations

import os
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

SIZE = 299


class _Params:
    """Parameter source for the forward: a dict of arrays, or (``record``) a shape recorder."""

    def __init__(self, arrays: dict | None, width: float):
        self.arrays, self.width, self.shapes = arrays, width, {}

    def ch(self, n: int) -> int:
        return max(1, int(round(n * self.width)))

    def get(self, name: str, shape: tuple[int, ...]):
        if self.arrays is None:
            self.shapes[name] = shape
            return jnp.zeros(shape, jnp.float32)
        return self.arrays[name]


def _conv(p: _Params, name: str, x, cout: int, k, stride=1, pad=0):
    kh, kw = (k, k) if isinstance(k, int) else k
    ph, pw = (pad, pad) if isinstance(pad, int) else pad
    cout = p.ch(cout)
    w = p.get(f"{name}.conv.weight", (cout, x.shape[-1], kh, kw))
    y = jax.lax.conv_general_dilated(x, jnp.transpose(w, (2, 3, 1, 0)), (stride, stride),
                                     [(ph, ph), (pw, pw)],
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    g, b = p.get(f"{name}.bn.weight", (cout,)), p.get(f"{name}.bn.bias", (cout,))
    m, v = p.get(f"{name}.bn.running_mean", (cout,)), p.get(f"{name}.bn.running_var", (cout,))
    return jax.nn.relu((y - m) / jnp.sqrt(v + 1e-3) * g + b)


def _avg(x):  # pytorch-fid: count_include_pad=False
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max(x, stride=2, pad=0):
    return nn.max_pool(x, (3, 3), (stride, stride), ((pad, pad), (pad, pad)))


def _block_a(p, n, x, pool):
    b1 = _conv(p, f"{n}.branch1x1", x, 64, 1)
    b5 = _conv(p, f"{n}.branch5x5_2", _conv(p, f"{n}.branch5x5_1", x, 48, 1), 64, 5, pad=2)
    d = _conv(p, f"{n}.branch3x3dbl_1", x, 64, 1)
    d = _conv(p, f"{n}.branch3x3dbl_3", _conv(p, f"{n}.branch3x3dbl_2", d, 96, 3, pad=1), 96, 3,
              pad=1)
    return jnp.concatenate([b1, b5, d, _conv(p, f"{n}.branch_pool", _avg(x), pool, 1)], -1)


def _block_b(p, n, x):
    b3 = _conv(p, f"{n}.branch3x3", x, 384, 3, stride=2)
    d = _conv(p, f"{n}.branch3x3dbl_1", x, 64, 1)
    d = _conv(p, f"{n}.branch3x3dbl_3", _conv(p, f"{n}.branch3x3dbl_2", d, 96, 3, pad=1), 96, 3,
              stride=2)
    return jnp.concatenate([b3, d, _max(x)], -1)


def _block_c(p, n, x, c7):
    b1 = _conv(p, f"{n}.branch1x1", x, 192, 1)
    s = _conv(p, f"{n}.branch7x7_1", x, c7, 1)
    s = _conv(p, f"{n}.branch7x7_2", s, c7, (1, 7), pad=(0, 3))
    s = _conv(p, f"{n}.branch7x7_3", s, 192, (7, 1), pad=(3, 0))
    d = _conv(p, f"{n}.branch7x7dbl_1", x, c7, 1)
    for i, (c, k, pad) in enumerate([(c7, (7, 1), (3, 0)), (c7, (1, 7), (0, 3)),
                                     (c7, (7, 1), (3, 0)), (192, (1, 7), (0, 3))]):
        d = _conv(p, f"{n}.branch7x7dbl_{i + 2}", d, c, k, pad=pad)
    return jnp.concatenate([b1, s, d, _conv(p, f"{n}.branch_pool", _avg(x), 192, 1)], -1)


def _block_d(p, n, x):
    b3 = _conv(p, f"{n}.branch3x3_2", _conv(p, f"{n}.branch3x3_1", x, 192, 1), 320, 3, stride=2)
    s = _conv(p, f"{n}.branch7x7x3_1", x, 192, 1)
    s = _conv(p, f"{n}.branch7x7x3_2", s, 192, (1, 7), pad=(0, 3))
    s = _conv(p, f"{n}.branch7x7x3_3", s, 192, (7, 1), pad=(3, 0))
    s = _conv(p, f"{n}.branch7x7x3_4", s, 192, 3, stride=2)
    return jnp.concatenate([b3, s, _max(x)], -1)


def _block_e(p, n, x, max_pool):
    b1 = _conv(p, f"{n}.branch1x1", x, 320, 1)
    s = _conv(p, f"{n}.branch3x3_1", x, 384, 1)
    s = jnp.concatenate([_conv(p, f"{n}.branch3x3_2a", s, 384, (1, 3), pad=(0, 1)),
                         _conv(p, f"{n}.branch3x3_2b", s, 384, (3, 1), pad=(1, 0))], -1)
    d = _conv(p, f"{n}.branch3x3dbl_2", _conv(p, f"{n}.branch3x3dbl_1", x, 448, 1), 384, 3,
              pad=1)
    d = jnp.concatenate([_conv(p, f"{n}.branch3x3dbl_3a", d, 384, (1, 3), pad=(0, 1)),
                         _conv(p, f"{n}.branch3x3dbl_3b", d, 384, (3, 1), pad=(1, 0))], -1)
    pooled = _max(x, 1, 1) if max_pool else _avg(x)
    return jnp.concatenate([b1, s, d, _conv(p, f"{n}.branch_pool", pooled, 192, 1)], -1)


def _forward(p: _Params, x):
    x = _conv(p, "Conv2d_1a_3x3", x, 32, 3, stride=2)
    x = _conv(p, "Conv2d_2a_3x3", x, 32, 3)
    x = _max(_conv(p, "Conv2d_2b_3x3", x, 64, 3, pad=1))
    x = _max(_conv(p, "Conv2d_4a_3x3", _conv(p, "Conv2d_3b_1x1", x, 80, 1), 192, 3))
    for n, pool in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
        x = _block_a(p, n, x, pool)
    x = _block_b(p, "Mixed_6a", x)
    for n, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        x = _block_c(p, n, x, c7)
    x = _block_d(p, "Mixed_7a", x)
    x = _block_e(p, "Mixed_7b", x, False)
    x = _block_e(p, "Mixed_7c", x, True)
    return jnp.mean(x, axis=(1, 2))


def preprocess(images) -> jax.Array:
    """``[N, H, W, 1 or 3]`` images in [0, 1] -> ``[N, 299, 299, 3]`` in [−1, 1]."""
    x = jnp.asarray(images, jnp.float32)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    if x.shape[-1] != 3:
        raise ValueError(f"Inception features need 1 or 3 channels, got shape {x.shape}")
    x = jax.image.resize(x, (x.shape[0], SIZE, SIZE, 3), "bilinear", antialias=False)
    return 2.0 * x - 1.0


def expected_shapes(width: float = 1.0) -> dict[str, tuple[int, ...]]:
    """Every array the weights file must hold, with its (PyTorch-layout) shape."""
    p = _Params(None, width)
    jax.eval_shape(lambda x: _forward(p, x), jax.ShapeDtypeStruct((1, SIZE, SIZE, 3),
                                                                  jnp.float32))
    return p.shapes


def load(path: str | None, width: float = 1.0) -> dict[str, jax.Array]:
    """The weights of ``path`` (.npz), every name and shape checked."""
    if not path:
        raise ValueError("Inception features need --inception-weights FILE: a local .npz of "
                         "the FID Inception-V3 state dict (see bnn_jax.analysis.inception); "
                         "nothing is downloaded")
    if not os.path.exists(path):
        raise ValueError(f"Inception weights file {path!r} not found; give a local .npz of the "
                         "FID Inception-V3 state dict (see bnn_jax.analysis.inception)")
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    want = expected_shapes(width)
    missing = sorted(set(want) - set(arrays))
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} Inception-V3 array(s), e.g. "
                         f"{missing[:3]}; is it the FID Inception state dict?")
    bad = [f"{k} {arrays[k].shape} (expected {want[k]})" for k in want
           if tuple(arrays[k].shape) != want[k]]
    if bad:
        raise ValueError(f"{path}: wrong shapes: {', '.join(bad[:3])}")
    return {k: jnp.asarray(arrays[k], jnp.float32) for k in want}


def features_fn(path: str | None, *, width: float = 1.0,
                batch_size: int = 50) -> Callable[[np.ndarray], np.ndarray]:
    """``images [N, H, W, C] in [0, 1] -> [N, 2048·width]`` pool features."""
    params = load(path, width)

    @jax.jit
    def run(params, x):
        return _forward(_Params(params, width), preprocess(x))

    def fn(images):
        return np.concatenate([np.asarray(run(params, images[i:i + batch_size]))
                               for i in range(0, len(images), batch_size)])

    return fn
