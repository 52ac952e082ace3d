"""BiPer: binary neural networks with a periodic function (Vargas et al., CVPR 2024; edmav4/BiPer).

Stage 2 (the binary model) binarizes weights with the square wave ``sign(sin(omega0 W))`` and
back-propagates the sine's exact derivative; stage 1 trains the real weights ``sin(omega0 W)``
with binary activations, and stage 2 starts from stage 1's parameters ("warm weight
initialization"). Activations are divided by their per-sample std (training only) and binarized
with the ApproxSign gradient. The output scale ``alpha`` (per output channel, init U[0, 1)) and
the conv belong to the layer. ``sign(0) = +1`` (the reference's ``torch.sign`` gives 0 at 0; we
keep outputs truly binary so they can be bit-packed).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from bnn_jax.quant.core import estimator, exact_div, mean, sign
from bnn_jax.quant.larq import approx_sign
from bnn_jax.quant.registry import check_choice, check_positive, register

#: omega0 of every released run script (the argparse default ``--freq`` is 30).
OMEGA0 = 20.0


def _sine_sign_derivative(w, omega0):
    return omega0 * jnp.cos(omega0 * w)


_sine_sign = estimator(lambda w, omega0: sign(jnp.sin(omega0 * w)), _sine_sign_derivative)


def _check_omega(omega0=OMEGA0):
    check_positive("omega0", omega0)


@register("biper_weight", validate=_check_omega,
          paper="BiPer (Vargas et al., CVPR 2024), stage 2",
          formula="sign(sin(ω0·W)), sign(0)=+1; g·ω0·cos(ω0·W) (identity STE through sign, exact "
                  "sine derivative); ω0 = 20",
          result="CIFAR-10 ResNet-18 / ResNet-20 / VGG-Small 93.75 / 86.98 / 92.46; ImageNet "
                 "ResNet-18 / ResNet-34 61.40 / 65.73 [README]")
def biper_weight(x, *, omega0=OMEGA0):
    """BiPer weights: ``sign(sin(omega0 W))`` with gradient ``omega0 cos(omega0 W)``.

    Default omega0 = 20 is what every released script passes (the argparse default is 30).
    Scales are applied outside (the layer's learned ``alpha``).
    """
    return _sine_sign(x, omega0)


@register("biper_weight_stage1", validate=_check_omega, bits=None,
          paper="BiPer (Vargas et al., CVPR 2024), stage 1",
          formula="sin(ω0·W) (real-valued, exact gradient ω0·cos(ω0·W))",
          result="– (stage 1 of the two-stage recipe)")
def biper_weight_stage1(x, *, omega0=OMEGA0):
    """BiPer stage-1 weights: the real-valued sine ``sin(omega0 W)``."""
    return jnp.sin(omega0 * x)


def _check_act(training=True, eps=1e-5):
    check_choice("training", training, (True, False))
    check_positive("eps", eps)


@register("biper_act", validate=_check_act,
          paper="BiPer (Vargas et al., CVPR 2024), activations (ReCU code base)",
          formula="training: a0 = a / sqrt(var_{C,H,W}(a) + 1e-5) (unbiased var, per sample, "
                  "differentiated); eval: a0 = a; sign(a0), sign(0)=+1, with g·max(0, 2 − 2|a0|)",
          result="ImageNet ResNet-18 61.40 [README]")
def biper_act(x, *, training=True, eps=1e-5):
    """BiPer activations: per-sample std normalization in training only, then ApproxSign.

    torch's ``var`` is unbiased (divides by N - 1), and the division is differentiated, as in
    the reference ``BinarizeConv2d``. The sign is unchanged by the normalization.
    """
    if training:
        axes = tuple(range(1, x.ndim))
        n = math.prod(x.shape[1:])
        centred = x - mean(x, axis=axes, keepdims=True)
        var = exact_div(jnp.sum(jnp.square(centred), axis=axes, keepdims=True), float(n - 1))
        x = x / jnp.sqrt(var + eps)
    return approx_sign(x)


def biper_regularizer(weights, *, omega0=OMEGA0, tau=0.037):
    """BiPer's sine regularizer ``sum_layers tau mean(0.5 - 0.5 cos(2 omega0 W))``.

    ``weights`` is one array or a list of the binarized layers' latent weights; ``tau`` may be
    traced (:func:`bnn_jax.quant.schedules.biper_tau`). The reference adds it on CIFAR only
    (commented out in its ImageNet script).
    """
    if not isinstance(weights, (list, tuple)):
        weights = [weights]
    return sum(tau * mean(0.5 - 0.5 * jnp.cos(2.0 * omega0 * w)) for w in weights)


def biper_alpha_init(key, out_channels, dtype=jnp.float32):
    """The layer's output scale at init: U[0, 1) per output channel (``torch.rand``, from ReCU)."""
    return jax.random.uniform(key, (out_channels,), dtype)


#: The released two-stage recipes (edmav4/BiPer run scripts): stage 2 loads stage 1's
#: checkpoint (same W, alpha, omega0) and switches weights from `biper_weight_stage1` to
#: `biper_weight`.
RECIPES = {
    "cifar10": (
        dict(stage=1, weight="biper_weight_stage1", epochs=600, lr=0.021, weight_decay=0.0016,
             tau=0.037, batch_size=256, schedule="cosine", warmup_epochs=5, omega0=OMEGA0),
        dict(stage=2, weight="biper_weight", epochs=300, lr=0.0037, weight_decay=0.00016,
             tau=0.0468, batch_size=256, schedule="cosine", omega0=OMEGA0),
    ),
    "imagenet": (
        dict(stage=1, weight="biper_weight_stage1", epochs=200, lr=0.1, weight_decay=1e-4,
             tau=None, batch_size=512, schedule="cosine", omega0=OMEGA0),
        dict(stage=2, weight="biper_weight", epochs=100, lr=0.01, tau=None, batch_size=512,
             schedule="cosine", omega0=OMEGA0),
    ),
}


def biper_two_stage(dataset="cifar10"):
    """The two stage configs of BiPer's recipe for ``dataset`` (``"cifar10"`` or ``"imagenet"``).

    Train stage 1 with ``weight="biper_weight_stage1"``; then start stage 2 from stage 1's
    parameters with :func:`biper_stage2_params` and ``weight="biper_weight"``. ``tau=None``
    means no regularizer (ImageNet).
    """
    check_choice("dataset", dataset, tuple(RECIPES))
    return tuple(dict(c) for c in RECIPES[dataset])


def biper_stage2_params(stage1_params):
    """Stage 2's initial parameters: stage 1's, unchanged (BiPer's warm weight initialization).

    The binary weights at the start of stage 2 are therefore ``sign(sin(omega0 W))`` of the
    stage-1 latent weights; returned as a fresh pytree so stage-1 state is not aliased.
    """
    return jax.tree_util.tree_map(jnp.array, stage1_params)
