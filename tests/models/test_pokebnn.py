"""PokeBNN: a PokeConv's forward against a NumPy re-statement of google/aqt pokebnn.py (with
AQT's quantizer formulas), and its ACE against the reference ``size_stats`` formula counted by
hand over the network's layout."""


import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import models
from bnn_jax.analysis import cost
from bnn_jax.models.pokebnn import PokeConv

EPS32 = np.finfo(np.float32).eps
HS = 2.0 ** -7


def q_binary(x, bound):
    """AQT prec 1, half_shift: scale 1/B, clip to +-(1 - 2^-7), floor + 0.5, rescale."""
    s = 1.0 / (bound + EPS32)
    return (np.floor(np.clip(x * s, -(1 - HS), 1 - HS)) + 0.5) / s


def q_signed(x, bits, bound):
    n = 2.0 ** (bits - 1) - 1
    s = n / (bound + EPS32)
    return np.floor(np.clip(x * s, -n, n) + 0.5) / s


def q_unsigned(x, bits, bound):
    s = 2.0 ** bits / (bound + EPS32)
    return np.clip(np.floor(x * s), 0, 2 ** bits - 1) / s


def chan_max(w):
    return np.abs(w).max(axis=(0, 1, 2), keepdims=True)


def mean_of_max(x):
    return np.abs(x).reshape(len(x), -1).max(axis=1).mean()


def same_pads(n, k, s):
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def conv(x, w, stride, groups=1):
    """NHWC x HWIO 'SAME' convolution, written out."""
    n, h, wd, c = x.shape
    kh, kw, cg, o = w.shape
    (pt, pb), (pl, pr) = same_pads(h, kh, stride), same_pads(wd, kw, stride)
    xp = np.pad(x, [(0, 0), (pt, pb), (pl, pr), (0, 0)])
    oh, ow = -(-h // stride), -(-wd // stride)
    y = np.zeros((n, oh, ow, o))
    og = o // groups
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            for g in range(groups):
                y[:, i, j, g * og:(g + 1) * og] = np.einsum(
                    "nhwc,hwco->no", patch[..., g * cg:(g + 1) * cg], w[..., g * og:(g + 1) * og])
    return y


def avg_pool_3x3_s2(x):
    n, h, w, c = x.shape
    (pt, pb), (pl, pr) = same_pads(h, 3, 2), same_pads(w, 3, 2)
    xp = np.pad(x, [(0, 0), (pt, pb), (pl, pr), (0, 0)])
    oh, ow = -(-h // 2), -(-w // 2)
    return np.stack([np.stack([xp[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3].sum(axis=(1, 2)) / 9
                               for j in range(ow)], 1) for i in range(oh)], 1)


def reshape_add(r, y, method):
    cin, cout = r.shape[-1], y.shape[-1]
    if cin > cout:
        k = cin // cout
        r = r[..., :cout * k].reshape(*r.shape[:3], cout, k).mean(-1)
    elif cin < cout:
        r = (np.concatenate([r] * (cout // cin), -1) if method == "tile"
             else np.concatenate([r, np.zeros(r.shape[:3] + (cout - cin,))], -1))
    if r.shape != y.shape:
        r = avg_pool_3x3_s2(r)
    return y + r


def bn(x, p):
    return (x - p["mean"]) / np.sqrt(p["var"] + 1e-5) * p["scale"] + p["bias"]


def dprelu(x, p):
    v = x - p["bias_x"]
    return np.where(v >= 0, p["pos_slope"], p["neg_slope"]) * v - p["bias_y"]


def se(r, p):
    s = r.mean(axis=(1, 2), keepdims=True)
    s = q_signed(s, 4, mean_of_max(s))
    w1 = p["reduce"]["kernel"]
    s = np.maximum(conv(s, q_signed(w1, 4, chan_max(w1)), 1) + p["reduce"]["bias"], 0)
    s = q_unsigned(s, 4, mean_of_max(s))
    w2 = p["expand"]["kernel"]
    s = conv(s, q_signed(w2, 4, chan_max(w2)), 1) + p["expand"]["bias"]
    return np.minimum(np.maximum(s + 3, 0), 6) / 6


def poke_conv_reference(x, r1, p, stride):
    """google/aqt pokebnn.py PokeBNN.poke_conv, in NumPy."""
    w = p["conv"]["kernel"]
    y = conv(q_binary(x, 3.0), q_binary(w, chan_max(w)), stride)
    y = bn(y, p["bn"])
    y = reshape_add(x, y, "zeropad")
    if r1 is not None:
        y = reshape_add(r1, y, "tile")
    y = dprelu(y, p["act"]) * se(x, p["se"])
    return bn(y, p["bn_split"])


def _randomize(module, seed):
    """Random values for every array, so BN statistics, DPReLU and biases all matter."""
    rng = np.random.default_rng(seed)
    state = nnx.state(module)
    flat = {}
    for path, v in nnx.to_flat_state(state):
        shape = v.shape
        name = path[-1]
        if name == "var":
            val = rng.uniform(0.5, 2.0, shape)
        elif name in ("scale", "pos_slope"):
            val = rng.uniform(0.5, 1.5, shape)
        else:
            val = rng.standard_normal(shape) * (0.3 if name != "kernel" else 1.0)
        v.set_value(jnp.asarray(val, jnp.float32))
        flat[path] = val
    nnx.update(module, state)
    tree: dict = {}
    for path, val in flat.items():
        d = tree
        for k in path[:-1]:
            d = d.setdefault(str(k), {})
        d[path[-1]] = val
    return tree


@pytest.mark.parametrize("cin,cout,k,stride,r1_channels", [
    (16, 8, 3, 2, None),   # channel shrink by averaging pairs, 3x3/s2 average pool shortcut
    (8, 32, 1, 1, 16),     # zero-pad shortcut and the tiled long shortcut (third conv)
])
def test_poke_conv_matches_reference(cin, cout, k, stride, r1_channels):
    m = PokeConv(cin, cout, k, stride, rngs=nnx.Rngs(0), zero_init=r1_channels is not None)
    p = _randomize(m, 1)
    p["se"] = {"reduce": p["se"]["reduce"], "expand": p["se"]["expand"]}
    m.eval()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 8, 8, cin)) * 2.0
    r1 = None if r1_channels is None else rng.standard_normal((3, 8, 8, r1_channels))
    got = np.asarray(m(jnp.asarray(x, jnp.float32),
                       None if r1 is None else jnp.asarray(r1, jnp.float32)))
    want = poke_conv_reference(x, r1, p, stride)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def _size_stats_ace(mult, h=224):
    """The reference size_stats ACE (MACs x weight bits x act bits, conv + dense), by hand."""
    ace = 0
    h = h // 4
    ace += h * h * (4 * 4 * 3) * 32 * 8 * 8          # init_conv 4x4/s4, 8-bit
    ace += h * h * (3 * 3 * 1) * 64 * 8 * 8          # init_conv_group, 32 groups
    layout = [(1, 64)] * 3 + [(2, 128)] + [(1, 128)] * 3 + [(2, 256)] + [(1, 256)] * 5 + \
        [(2, 512)] + [(1, 512)] * 2
    c = 64
    for stride, base in layout:
        f = int(base * mult)
        for cin, cout, kk, s in [(c, f, 1, 1), (f, f, 3, stride), (f, 4 * f, 1, 1)]:
            h = -(-h // s)
            ace += h * h * kk * kk * cin * cout * 1 * 1      # binary conv
            ace += cin * (cin // 8) * 4 * 4 + (cin // 8) * cout * 4 * 4  # SE 1x1 convs (1 px)
        c = 4 * f
    return ace + c * 1000 * 8 * 8                        # dense, 8-bit


@pytest.mark.parametrize("name,mult", [
    ("pokebnn_0.5x", 0.5),
    pytest.param("pokebnn_1.0x", 1.0, marks=pytest.mark.slow),
    pytest.param("pokebnn_2.0x", 2.0, marks=pytest.mark.slow)])
def test_pokebnn_ace_is_the_reference_size_stats(name, mult):
    model = nnx.eval_shape(lambda: models.build(dict(name=name), num_classes=1000,
                                                input_shape=(224, 224, 3), rngs=nnx.Rngs(0)))
    t = cost.analyze(model, (224, 224, 3)).totals()
    assert t["ace"] == _size_stats_ace(mult)
    assert set(t["macs_by_precision"]) == {"1", "4", "8"}


@pytest.mark.slow  # an eager forward pass through 48 PokeConvs takes minutes on CPU
def test_pokebnn_small_forward():
    model = models.build(dict(name="pokebnn", filter_multiplier=0.25), num_classes=10,
                         input_shape=(32, 32, 3), rngs=nnx.Rngs(0))
    model.eval()
    out = model(jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)),
                            jnp.float32))
    assert out.shape == (2, 10) and bool(jnp.all(jnp.isfinite(out)))


def test_pokebnn_rejects_bad_fields():
    with pytest.raises(ValueError, match="filter_multiplier"):
        models.build(dict(name="pokebnn", filter_multiplier=0), num_classes=10,
                     input_shape=(32, 32, 3), rngs=nnx.Rngs(0))


