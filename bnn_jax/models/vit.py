"""Vision Transformer (Dosovitskiy et al., ICLR 2021) and DeiT (Touvron et al., ICML 2021).

Patch embedding (a ``patch_size`` conv with stride ``patch_size``), a class token (and, for
``distilled=True``, DeiT's distillation token), learned position embeddings, ``depth`` pre-LN
:class:`bnn_jax.models.transformer.EncoderBlock` s, a final LayerNorm and a linear head on the
class token. The distilled model's logits are the mean of the class-token head and the
distillation-token head, as DeiT evaluates it (and Hugging Face's
``DeiTForImageClassificationWithTeacher``); so it also trains, unless ``distilled_training``
(timm's name): then in training mode it returns both heads (:class:`HeadLogits`), as DeiT's
``DistilledVisionTransformer`` and OFQ's ``deit_vision_transformer.py`` do, and the
classification task trains the class head on the labels and the distillation head on the
teacher, each with its own loss. Patch size and resolution follow the data
(``input_shape``), so a 28x28 image with ``patch_size=7`` gives 16 patches.

``attention`` picks the attention layer by name (:data:`ATTENTIONS`): ``"softmax"``
(:class:`bnn_jax.nn.MultiHeadAttention`), ``"sab"`` (BiViT's
:class:`bnn_jax.nn.SABAttention`), ``"ofq"`` (OFQ's :class:`bnn_jax.nn.QKReparamAttention`) or
``"ecoformer"`` (``bnn_jax.nn.ecoformer.EcoFormerAttention``, imported when asked for);
``attention_fields`` are its keyword arguments (quantizers, ``bits``, ...). The model's own
``input_quantizer`` / ``kernel_quantizer`` / ``kernel_constraint`` apply to the MLPs
(``fc2_input_quantizer`` to the second MLP layer alone). The patch embedding and the head stay
full precision unless ``config.quant`` rules address ``patch_embed`` / ``head``. ``pretrained``
names local weights that initialize the model: a Hugging Face directory
(:func:`bnn_jax.models.hub.load_into`) or a timm state dict file
(:func:`bnn_jax.models.hub_timm.load_into`).

The methods' placements are field sets: :func:`ofq_fields` (OFQ W{b}A{b}), :func:`bivit_fields`
(BiViT, attention and MLP binarized separately for Cross-layer Binarization) and
:func:`sign_fields` (plain sign W1A1 baseline).
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from bnn_jax.models.transformer import EncoderBlock, check_positive_ints
from bnn_jax.nn import MultiHeadAttention, QKReparamAttention, QuantConv, QuantLinear, SABAttention
from bnn_jax.quant.registry import check

#: attention name -> (module path, class name); "ecoformer" is imported only when used.
ATTENTIONS = {"softmax": MultiHeadAttention, "sab": SABAttention, "ofq": QKReparamAttention,
              "ecoformer": None}
GELU = functools.partial(jax.nn.gelu, approximate=False)  # torch.nn.GELU / Hugging Face "gelu"


def attention_class(name: str) -> Any:
    """The attention class named ``name`` (ValueError listing the valid names)."""
    check(isinstance(name, str) and name in ATTENTIONS,
          f"unknown attention {name!r}; valid: {sorted(ATTENTIONS)}")
    if name != "ecoformer":
        return ATTENTIONS[name]
    try:
        from bnn_jax.nn.ecoformer import EcoFormerAttention
    except ModuleNotFoundError as e:
        if e.name != "bnn_jax.nn.ecoformer":
            raise
        raise ValueError("attention='ecoformer' needs bnn_jax.nn.ecoformer (EcoFormerAttention), "
                         "which this installation does not have; pick one of "
                         f"{sorted(n for n in ATTENTIONS if n != 'ecoformer')}") from None
    return EcoFormerAttention


def attention_factory(name: str, fields: dict | None) -> Any:
    """``(num_heads, dim, rngs=) -> attention layer`` for the named attention and its fields."""
    cls = attention_class(name)
    fields = dict(fields or {})
    return lambda num_heads, dim, *, rngs: cls(num_heads, dim, rngs=rngs, **fields)


def load_pretrained(model: nnx.Module, path: str) -> None:
    """Fill ``model`` with local weights, if ``path`` names them: a Hugging Face directory
    (``config.json``) or a timm state dict (``.safetensors`` / ``.npz`` file)."""
    if not path:
        return
    if pathlib.Path(path).suffix in (".safetensors", ".npz"):
        from bnn_jax.models import hub_timm

        hub_timm.load_into(model, path)
    else:
        from bnn_jax.models import hub

        hub.load_into(model, path)


def mlp_quant(input_quantizer, kernel_quantizer, kernel_constraint) -> dict:
    """The quantizer arguments of the MLP linears."""
    return dict(input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer,
                kernel_constraint=kernel_constraint)


BINARY_ACT = dict(name="bnn_ste", boundary="exclusive")  # BiViT's BinaryQuantizer (sign)


def ofq_fields(bits: int) -> dict[str, Any]:
    """OFQ's placement (nbasyl/OFQ ``modules/qlinear.py``, ``modules/attention.py``): StatsQ
    kernels, ``ofq_lsq`` per-token inputs (unsigned after the GELU, ``QMLP``'s ``fc2``) and the
    query-key reparameterized attention, all at ``bits``."""
    act = dict(name="ofq_lsq", bits=bits, granularity="token")
    return dict(attention="ofq", attention_fields=dict(bits=bits), input_quantizer=act,
                kernel_quantizer=dict(name="statsq", bits=bits),
                fc2_input_quantizer=dict(act, signed=False))


def bivit_fields(*, attention: bool = True, mlp: bool = True) -> dict[str, Any]:
    """BiViT (ThisisBillhe/BiViT ``utils_quant.py``): SAB attention (binary Q, K, V, {0, 1}
    attention, row-centred ``bivit_weight`` kernels with learned scales) and/or W1A1 MLPs
    (sign inputs, ``bivit_weight`` kernels). The part left out stays full precision with the
    same parameters (``bivit_weight(binary=False)``), so the stages of Cross-layer
    Binarization share one parameter tree and chain through ``config.init_from``."""
    latent = dict(name="bivit_weight", binary=False)
    attn = {} if attention else dict(input_quantizer=None, qkv_quantizer=None,
                                     kernel_quantizer=latent, binarize_attention=False)
    return dict(attention="sab", attention_fields=attn,
                input_quantizer=BINARY_ACT if mlp else None,
                kernel_quantizer="bivit_weight" if mlp else latent)


def sign_fields() -> dict[str, Any]:
    """Plain W1A1 baseline: ``ste_sign`` weights (no scale) and inputs of every block linear,
    ``ste_sign`` Q, K, V; softmax probabilities stay real."""
    sign = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign")
    return dict(attention="softmax", attention_fields=dict(sign, qkv_quantizer="ste_sign"),
                **sign)


class HeadLogits(NamedTuple):
    """A distilled model's two heads in training (``distilled_training=True``): the class
    token's and the distillation token's logits, each ``[B, C]``; ``shape`` is one head's."""

    cls: jax.Array
    dist: jax.Array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.cls.shape)

    def average(self) -> jax.Array:
        """The mean of the two heads, DeiT's prediction at evaluation."""
        return (self.cls + self.dist) / 2


class Model(nnx.Module):
    """ViT / DeiT classifier; defaults are ViT-Ti/16 (DeiT-Ti) at the data's resolution."""

    def __init__(self, *, num_classes: int, input_shape: Sequence[int], rngs: nnx.Rngs,
                 patch_size: int = 16, hidden: int = 192, depth: int = 12, num_heads: int = 3,
                 mlp_dim: int = 768, distilled: bool = False, attention: str = "softmax",
                 attention_fields: dict | None = None, input_quantizer: Any = None,
                 kernel_quantizer: Any = None, kernel_constraint: Any = None,
                 fc2_input_quantizer: Any = None, norm_eps: float = 1e-6,
                 distilled_training: bool = False, pretrained: str = ""):
        check_positive_ints("vit", patch_size=patch_size, hidden=hidden, depth=depth,
                            num_heads=num_heads, mlp_dim=mlp_dim, num_classes=num_classes)
        h, w, c = tuple(input_shape)
        check(h % patch_size == 0 and w % patch_size == 0,
              f"vit: patch_size={patch_size} must divide the image size {h}x{w}")
        check(hidden % num_heads == 0, f"vit: num_heads={num_heads} must divide hidden={hidden}")
        check(distilled in (True, False), f"vit: distilled must be True or False, got "
                                          f"{distilled!r}")
        check(distilled_training in (True, False) and (distilled or not distilled_training),
              f"vit: distilled_training={distilled_training!r} needs distilled=True (it trains "
              "the class and distillation heads separately)")
        self.distilled, self.distilled_training = distilled, distilled_training
        # nnx's train() / eval() set it; in training a distilled_training model returns
        # both heads (DeiT's and OFQ's training forward), in evaluation their mean.
        self.deterministic = False
        self.num_patches = (h // patch_size) * (w // patch_size)
        extra = 2 if distilled else 1
        self.patch_embed = QuantConv(c, hidden, (patch_size, patch_size), patch_size,
                                     padding="VALID", rngs=rngs)
        self.cls_token = nnx.Param(jnp.zeros((1, 1, hidden)))
        if distilled:
            self.dist_token = nnx.Param(jnp.zeros((1, 1, hidden)))
        init = nnx.initializers.truncated_normal(0.02)
        self.pos_embed = nnx.Param(init(rngs.params(), (1, self.num_patches + extra, hidden)))
        attn = attention_factory(attention, attention_fields)
        quant = mlp_quant(input_quantizer, kernel_quantizer, kernel_constraint)
        self.blocks = nnx.List([
            EncoderBlock(hidden, mlp_dim, num_heads, quant=quant, rngs=rngs, attention=attn,
                         norm_eps=norm_eps,
                         mlp=dict(act=GELU, fc2_input_quantizer=fc2_input_quantizer))
            for _ in range(depth)])
        self.norm = nnx.LayerNorm(hidden, epsilon=norm_eps, rngs=rngs)
        self.head = QuantLinear(hidden, num_classes, rngs=rngs)
        if distilled:
            self.head_dist = QuantLinear(hidden, num_classes, rngs=rngs)
        load_pretrained(self, pretrained)

    def features(self, images: jax.Array) -> jax.Array:
        """Token features ``[B, extra + patches, hidden]`` after the final LayerNorm."""
        x = self.patch_embed(images)
        b = x.shape[0]
        x = x.reshape(b, -1, x.shape[-1])
        tokens = [jnp.broadcast_to(self.cls_token[...], (b, 1, x.shape[-1]))]
        if self.distilled:
            tokens.append(jnp.broadcast_to(self.dist_token[...], (b, 1, x.shape[-1])))
        x = jnp.concatenate([*tokens, x], axis=1) + self.pos_embed[...]
        for block in self.blocks:
            x = block(x, None)
        return self.norm(x)

    def __call__(self, images: jax.Array) -> jax.Array | HeadLogits:
        """Logits for a batch of NHWC images (:class:`HeadLogits` when training with
        ``distilled_training``)."""
        x = self.features(images)
        logits = self.head(x[:, 0])
        if self.distilled:
            heads = HeadLogits(logits, self.head_dist(x[:, 1]))
            if self.distilled_training and not self.deterministic:
                return heads
            logits = heads.average()
        return logits
