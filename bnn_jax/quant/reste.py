"""ReSTE: the rectified straight-through estimator (Wu et al., ICCV 2023; DravenALG/ReSTE).

Forward is exactly ``sign`` (sign(0) = +1 here; the reference's ``torch.sign`` gives 0 at 0).
The backward is the derivative of the power function ``f(z) = sign(z)|z|^(1/o)`` with two
code-level details the paper's figure leaves out: it is zero beyond ``|z| > t`` (t = 1.5), and
within ``|z| <= interval`` (0.1) it is replaced by the secant slope of ``f`` on [0, interval],
``interval^(1/o) / interval``, which avoids the pole at 0. ``o`` follows
:func:`bnn_jax.quant.schedules.reste_o` from 1 (a clipped STE at 1.5) to ``o_end`` (3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bnn_jax.quant.core import estimator, mean, sign, sign0
from bnn_jax.quant.registry import (check, check_choice, check_positive, check_schedule_value,
                                    register)


def _reste_derivative(x, o, t, interval):
    abs_x = jnp.abs(x)
    # jnp.where evaluates both branches; keep the power's base away from 0 so no inf/nan leaks.
    power = (1.0 / o) * jnp.power(jnp.maximum(abs_x, interval), (1.0 - o) / o)
    secant = jnp.power(interval, 1.0 / o) / interval
    h = jnp.where(abs_x <= interval, secant, power)
    return jnp.where(abs_x <= t, h, 0.0).astype(jnp.result_type(x))


_reste = estimator(lambda x, o, t, interval: sign(x), _reste_derivative)


def _check_reste(o=1.0, t=1.5, interval=0.1, **kw):
    check_schedule_value("o", o, lo=1)
    if "scale_gradient" in kw:
        check_choice("scale_gradient", kw["scale_gradient"], (True, False))
    check_positive("t", t)
    check_positive("interval", interval)
    check(interval < t, f"interval must be smaller than t, got interval={interval}, t={t}")


@register("reste", validate=_check_reste,
          paper="ReSTE (Wu et al., ICCV 2023)",
          formula="sign(x), sign(0)=+1; g·h(x): h = (1/o)|x|^((1−o)/o) for 0.1 < |x| ≤ 1.5, "
                  "0.1^(1/o)/0.1 for |x| ≤ 0.1, 0 beyond 1.5; o: cosine 1 → o_end "
                  "(`schedules.reste_o`)",
          result="CIFAR-10 ResNet-20 / ResNet-18 / VGG-small W1A1 86.75 / 92.63 / 92.55; "
                 "ImageNet ResNet-18 / ResNet-34 W1A1 60.88 / 82.59 ; 65.05 / 85.78 [README]")
def reste(x, *, o=1.0, t=1.5, interval=0.1):
    """Sign with ReSTE's power-function gradient; ``o`` may be a traced schedule value.

    Scales are applied outside (see :func:`reste_weight`).
    """
    return _reste(x, o, t, interval)


@register("reste_weight", validate=_check_reste,
          paper="ReSTE (Wu et al., ICCV 2023), weight binarization",
          formula="mean|W|·reste(W), sign(0)=+1; the per-tensor mean|W| is differentiated "
                  "(binarized_modules.py l. 41-42) with torch's d|w|/dw, 0 at w = 0",
          result="ImageNet ResNet-18 W1A1 60.88 / 82.59 [README]")
def reste_weight(x, *, o=1.0, t=1.5, interval=0.1, scale_gradient=True):
    """ReSTE weights: one per-tensor ``mean|W|`` times ``reste(W)``.

    As the reference ``BinarizeConv2d`` (``binarized_modules.py`` lines 41-42: mean over all
    four dims, no ``detach``), the scale is differentiated by default, with torch's derivative
    of ``|w|``, ``sign(w)``, which is 0 at w = 0 (JAX's is 1 there); ``scale_gradient=False``
    stops it.
    """
    # |w| as w·sg(sign0(w)): the same value, and the gradient sign0(w) that torch.abs has.
    scale = mean(x * jax.lax.stop_gradient(sign0(x)))
    if not scale_gradient:
        scale = jax.lax.stop_gradient(scale)
    return _reste(x, o, t, interval) * scale
