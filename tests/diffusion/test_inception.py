"""Inception-V3 FID features from a local weights file: names, shapes, errors, a forward."""

import numpy as np
import pytest

from bnn_jax.analysis import fid, inception


def test_inception_state_dict_names():
    shapes = inception.expected_shapes()
    # torchvision names and PyTorch layouts (OIHW kernels, BN vectors)
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert shapes["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
    assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    assert shapes["Mixed_7c.branch_pool.bn.running_var"] == (192,)
    assert len([k for k in shapes if k.endswith(".conv.weight")]) == 94


def test_missing_file_and_wrong_file(tmp_path):
    with pytest.raises(ValueError, match="--inception-weights FILE"):
        fid.extractor("inception")
    with pytest.raises(ValueError, match="not found"):
        inception.load(str(tmp_path / "nope.npz"))
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="lacks"):
        inception.load(str(tmp_path / "bad.npz"))


@pytest.mark.slow
def test_tiny_random_inception_runs(tmp_path):
    width = 1 / 32
    rng = np.random.default_rng(0)
    def value(name, shape):  # He-scaled kernels, near-identity BatchNorm: live activations
        if name.endswith("conv.weight"):
            return rng.normal(0, np.sqrt(2 / np.prod(shape[1:])), shape)
        if name.endswith(("running_var", "bn.weight")):
            return rng.uniform(0.8, 1.2, shape)
        return rng.normal(0, 0.05, shape)

    arrays = {k: value(k, s).astype(np.float32)
              for k, s in inception.expected_shapes(width).items()}
    path = tmp_path / "tiny.npz"
    np.savez(path, **arrays)
    f = inception.features_fn(str(path), width=width)
    x = rng.uniform(size=(3, 8, 8, 1)).astype(np.float32)
    out = f(x)
    assert out.shape == (3, 10 + 12 * 4 + 6) and np.all(np.isfinite(out))
    np.testing.assert_array_equal(out, f(x))
    assert not np.allclose(out[0], out[1])
    arrays["Mixed_5b.branch1x1.conv.weight"] = arrays["Mixed_5b.branch1x1.conv.weight"][:1]
    np.savez(tmp_path / "bad_shape.npz", **arrays)
    with pytest.raises(ValueError, match="wrong shapes"):
        inception.load(str(tmp_path / "bad_shape.npz"), width=width)
