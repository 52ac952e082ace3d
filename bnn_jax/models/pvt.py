"""PVTv2, the Pyramid Vision Transformer v2 (Wang et al., CVMJ 2022), with a choice of attention.

The network of github.com/whai362/PVT ``classification/pvt_v2.py`` (at 57e2dfa): four stages,
each an overlapping patch embedding (conv ``7x7``/stride 4 first, ``3x3``/stride 2 after, then
LayerNorm) and blocks ``x + attn(LN(x))``, ``x + fc2(GELU(dwconv3x3(fc1(LN(x)))))``, a
LayerNorm after each stage, the mean token into the classifier. ``attention``:

* ``"sra"``: PVTv2's spatial-reduction attention: keys and values from the tokens reduced by a
  ``sr x sr``/stride ``sr`` conv and a LayerNorm (``sr_ratios``, 8-4-2-1 by default);
* ``"msa"``: full softmax attention in every stage (EcoFormer's ``pvt_v2_*_msa`` models, the
  starting point of its fine-tune);
* ``"ecoformer"``: :class:`bnn_jax.nn.ecoformer.EcoFormerAttention` in stages 1-3 and softmax
  attention in the last stage, as EcoFormer's ``pvt/pvt_v2.py`` (``Block(last_stage=True)``)
  builds it; ``ecoformer`` gives its fields (``num_bits``, ``num_anchors``, ``topk``, ...).

``first_patch``/``first_stride`` make small inputs usable (e.g. 3/2 on 28x28 MNIST). There is
no stochastic depth (the PVTv2 configs' ``drop_path`` 0.1): the training loop hands models no
dropout key, and EcoFormer's fine-tunes run the model in eval mode, where it is off. Weights
start as the reference initializes them: linear kernels N(0, 0.02) (timm's ``trunc_normal_``
cuts at ±2, i.e. ±100 standard deviations), convolutions N(0, 2/fan_out), biases 0.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from bnn_jax.nn import MultiHeadAttention

ATTENTIONS = ("sra", "msa", "ecoformer")


def _conv(cin: int, cout: int, k: int, stride: int, pad: int, rngs: nnx.Rngs,
          groups: int = 1) -> nnx.Conv:
    return nnx.Conv(cin, cout, (k, k), strides=stride, padding=[(pad, pad), (pad, pad)],
                    feature_group_count=groups, rngs=rngs)


class PatchEmbed(nnx.Module):
    """``OverlapPatchEmbed``: conv (padding ``patch // 2``) to tokens, then LayerNorm (torch's
    default eps 1e-5: the reference builds ``nn.LayerNorm(embed_dim)`` here)."""

    def __init__(self, cin: int, cout: int, patch: int, stride: int, *, rngs: nnx.Rngs):
        self.proj = _conv(cin, cout, patch, stride, patch // 2, rngs)
        self.norm = nnx.LayerNorm(cout, epsilon=1e-5, rngs=rngs)

    def __call__(self, x: jax.Array):
        x = self.proj(x)
        b, h, w, c = x.shape
        return self.norm(x.reshape(b, h * w, c)), (h, w)


class SRAttention(nnx.Module):
    """Softmax attention whose keys/values come from the tokens reduced ``sr_ratio`` times per
    side (conv + LayerNorm eps 1e-5); ``sr_ratio=1`` is plain multi-head self-attention."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, *, rngs: nnx.Rngs):
        self.sr_ratio = sr_ratio
        self.attn = MultiHeadAttention(num_heads, dim, rngs=rngs)
        if sr_ratio > 1:
            self.sr = _conv(dim, dim, sr_ratio, sr_ratio, 0, rngs)
            self.norm = nnx.LayerNorm(dim, epsilon=1e-5, rngs=rngs)

    def __call__(self, x: jax.Array, hw: tuple[int, int]) -> jax.Array:
        if self.sr_ratio == 1:
            return self.attn(x)
        b, n, c = x.shape
        kv = self.sr(x.reshape(b, *hw, c))
        return self.attn(x, self.norm(kv.reshape(b, -1, c)))


class HashAttention(nnx.Module):
    """EcoFormer's attention in a PVT block (the reference's ``EcoformerSelfAttention``, which
    has no spatial reduction)."""

    def __init__(self, dim: int, num_heads: int, fields: dict, *, rngs: nnx.Rngs):
        from bnn_jax.nn.ecoformer import EcoFormerAttention

        self.attn = EcoFormerAttention(num_heads, dim, rngs=rngs, **fields)

    def __call__(self, x: jax.Array, hw: tuple[int, int]) -> jax.Array:
        return self.attn(x)


class Block(nnx.Module):
    """``x + attn(LN(x))``, ``x + MLP(LN(x))`` with the depthwise-conv MLP (LayerNorm eps 1e-6,
    exact GELU)."""

    def __init__(self, dim: int, mlp_ratio: float, attention: nnx.Module, *, rngs: nnx.Rngs):
        hidden = int(dim * mlp_ratio)
        self.norm1 = nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs)
        self.attention = attention
        self.norm2 = nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs)
        self.fc1 = nnx.Linear(dim, hidden, rngs=rngs)
        self.dwconv = _conv(hidden, hidden, 3, 1, 1, rngs, groups=hidden)
        self.fc2 = nnx.Linear(hidden, dim, rngs=rngs)

    def __call__(self, x: jax.Array, hw: tuple[int, int]) -> jax.Array:
        x = x + self.attention(self.norm1(x), hw)
        h = self.fc1(self.norm2(x))
        b, n, c = h.shape
        h = self.dwconv(h.reshape(b, *hw, c)).reshape(b, n, c)
        return x + self.fc2(jax.nn.gelu(h, approximate=False))


def init_like_reference(model: nnx.Module, rngs: nnx.Rngs) -> None:
    """PVT's ``_init_weights``: linear kernels N(0, 0.02), conv kernels N(0, 2/fan_out) with
    ``fan_out = k·k·out/groups``; biases keep their zero init."""
    for _, m in nnx.iter_modules(model):
        kernel = getattr(m, "kernel", None)
        if not isinstance(kernel, nnx.Param):
            continue
        shape = kernel[...].shape
        if len(shape) == 2:
            std = 0.02
        else:
            fan_out = math.prod(shape[:-2]) * shape[-1] // getattr(m, "feature_group_count", 1)
            std = math.sqrt(2.0 / fan_out)
        kernel[...] = std * jax.random.normal(rngs.params(), shape, kernel[...].dtype)


def _ecoformer_fields(fields: Any) -> dict:
    """The EcoFormerAttention keyword fields of ``fields`` (ValueError naming unknown ones)."""
    import inspect

    from bnn_jax.nn.ecoformer import EcoFormerAttention

    fields = fields.to_dict() if hasattr(fields, "to_dict") else dict(fields or {})
    valid = [n for n, p in inspect.signature(EcoFormerAttention.__init__).parameters.items()
             if p.kind is p.KEYWORD_ONLY and n != "rngs"]
    unknown = sorted(set(fields) - set(valid))
    if unknown:
        raise ValueError(f"pvt_v2: unknown ecoformer field(s) {unknown}; valid: {valid}")
    return fields


def _ints(name: str, value: Any, n: int, least: int = 1) -> tuple:
    value = tuple(value)
    if len(value) != n or not all(isinstance(v, int) and not isinstance(v, bool) and v >= least
                                  for v in value):
        raise ValueError(f"pvt_v2: {name} must be {n} integers >= {least}, got {value!r}")
    return value


class Model(nnx.Module):
    """PVTv2 with ``attention`` = ``"sra"`` | ``"msa"`` | ``"ecoformer"`` (defaults: PVTv2-B2's
    widths, the official configs' ``qkv_bias=True``)."""

    def __init__(self, *, num_classes: int, input_shape: Sequence[int], rngs: nnx.Rngs,
                 embed_dims: Sequence[int] = (64, 128, 320, 512),
                 num_heads: Sequence[int] = (1, 2, 5, 8),
                 mlp_ratios: Sequence[float] = (8, 8, 4, 4),
                 depths: Sequence[int] = (3, 4, 6, 3), sr_ratios: Sequence[int] = (8, 4, 2, 1),
                 attention: str = "sra", ecoformer: Any = None, first_patch: int = 7,
                 first_stride: int = 4):
        if attention not in ATTENTIONS:
            raise ValueError(f"pvt_v2: unknown attention {attention!r}; valid: "
                             f"{list(ATTENTIONS)}")
        embed_dims, depths = _ints("embed_dims", embed_dims, 4), _ints("depths", depths, 4)
        num_heads, sr_ratios = _ints("num_heads", num_heads, 4), _ints("sr_ratios", sr_ratios, 4)
        mlp_ratios = tuple(mlp_ratios)
        if len(mlp_ratios) != 4 or not all(isinstance(r, (int, float)) and r > 0
                                           for r in mlp_ratios):
            raise ValueError(f"pvt_v2: mlp_ratios must be 4 positive numbers, got {mlp_ratios!r}")
        bad = [i for i in range(4) if embed_dims[i] % num_heads[i]]
        if bad:
            raise ValueError(f"pvt_v2: num_heads {num_heads} must divide embed_dims "
                             f"{embed_dims} (stage(s) {bad})")
        if not (isinstance(first_stride, int) and 1 <= first_stride < first_patch):
            raise ValueError(f"pvt_v2: need 1 <= first_stride < first_patch (the reference "
                             f"asserts patch > stride), got {first_stride}, {first_patch}")
        if ecoformer is not None and attention != "ecoformer":
            raise ValueError("pvt_v2: ecoformer fields are given but attention is "
                             f"{attention!r}; set attention='ecoformer' or drop them")
        eco = _ecoformer_fields(ecoformer)
        self.patch_embeds, self.stages, self.norms = nnx.List(), nnx.List(), nnx.List()
        cin = int(input_shape[-1])
        for i, (dim, heads) in enumerate(zip(embed_dims, num_heads)):
            patch, stride = (first_patch, first_stride) if i == 0 else (3, 2)
            self.patch_embeds.append(PatchEmbed(cin, dim, patch, stride, rngs=rngs))
            blocks = nnx.List()
            for _ in range(depths[i]):
                if attention == "ecoformer" and i < 3:
                    attn = HashAttention(dim, heads, eco, rngs=rngs)
                else:
                    sr = sr_ratios[i] if attention == "sra" else 1
                    attn = SRAttention(dim, heads, sr, rngs=rngs)
                blocks.append(Block(dim, mlp_ratios[i], attn, rngs=rngs))
            self.stages.append(blocks)
            self.norms.append(nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs))
            cin = dim
        self.head = nnx.Linear(embed_dims[-1], num_classes, rngs=rngs)
        init_like_reference(self, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits for NHWC images."""
        hw = x.shape[1:3]
        for i, (embed, blocks, norm) in enumerate(zip(self.patch_embeds, self.stages,
                                                      self.norms)):
            if i:
                x = x.reshape(x.shape[0], *hw, -1)  # tokens back to a map for the next embed
            x, hw = embed(x)
            for block in blocks:
                x = block(x, hw)
            x = norm(x)
        return self.head(jnp.mean(x, axis=1))
