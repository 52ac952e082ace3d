"""Training-time schedules of the binarization methods, as pure jit-able functions of the step.

Every schedule takes ``(step, total_steps)`` (Python numbers or traced scalars) and returns a
float32 value (or an int32/bool where the reference uses an integer or a switch). The reference
code updates most of them once per *epoch* ``e`` of ``E``; pass ``step=e, total_steps=E`` to
reproduce that exactly, or the optimizer step for a smooth per-step version.
"""

from __future__ import annotations

import math

import jax.numpy as jnp


def progress(step, total_steps):
    """Fraction of training done, ``step / total_steps`` clipped to [0, 1], in float32."""
    step = jnp.asarray(step, jnp.float32)
    total = jnp.asarray(total_steps, jnp.float32)
    return jnp.clip(step / total, 0.0, 1.0)


def reste_o(step, total_steps, *, o_end=3.0):
    """ReSTE's o: ``1 + (o_end - 1)(1 - cos(pi/2 * e/E))``, rising from 1 (STE) to o_end.

    The reference (DravenALG/ReSTE ``main.py::ReSTE``) uses the same value for weights and
    activations.
    """
    beta = 1.0 - jnp.cos(progress(step, total_steps) * (math.pi * 0.5))
    return 1.0 + beta * (o_end - 1.0)


def irnet_t_k(step, total_steps, *, t_min=0.1, t_max=10.0):
    """IR-Net's EDE ``(t, k)``: ``t = 10^(log10 t_min + (log10 t_max - log10 t_min) e/E)``,
    ``k = max(1/t, 1)``.

    Defaults are the paper's T_min = 0.1, T_max = 10, as htqin/IR-Net's CIFAR-10 VGG-Small
    (``main.py`` line 123) and ResNet-20 1w32a (``trainer.py`` line 129) trainers; its
    ResNet-20 1w1a trainer uses t_min = 1e-3 (``trainer.py`` line 130). The repository has
    no ResNet-18 trainer.
    """
    lo, hi = math.log10(t_min), math.log10(t_max)
    t = jnp.power(jnp.float32(10.0), lo + (hi - lo) * progress(step, total_steps))
    k = jnp.where(t < 1.0, 1.0 / t, 1.0)
    return t, k


def fda_terms(step, total_steps, *, base=9):
    """FDA's number of Fourier terms ``n(e) = 9 + floor(9 e / E)`` (BiBench ``fda.py``), int32."""
    return base + jnp.floor(progress(step, total_steps) * base).astype(jnp.int32)


def fda_noise_weight(step, total_steps):
    """FDA's noise-adaption weight ``alpha(e) = 0.05 (1 + cos(pi (e + 1) / E))`` (BiBench)."""
    nxt = jnp.asarray(step, jnp.float32) + 1.0
    return 0.05 * (1.0 + jnp.cos(nxt / jnp.asarray(total_steps, jnp.float32) * math.pi))


def biper_tau(step, total_steps, *, tau_min, tau_max):
    """BiPer's regularizer weight ``A e^(e/E) + B``, ``A = (tau_max - tau_min)/(e - 1)``,
    ``B = tau_min - A``: an exponential ramp from tau_min to tau_max (edmav4/BiPer CIFAR)."""
    a = (tau_max - tau_min) / (math.e - 1.0)
    return a * jnp.exp(progress(step, total_steps)) + (tau_min - a)


def cga_active(step, total_steps, *, cga_steps):
    """True during OFQ's Confidence-Guided Annealing: the last ``cga_steps`` of training.

    OFQ trains 300 epochs of QAT, then fine-tunes ``freeze_for_n_epochs`` (30 in its scripts)
    with CGA, so ``total_steps = 330, cga_steps = 30`` in epochs.
    """
    return jnp.asarray(step) >= jnp.asarray(total_steps) - cga_steps
