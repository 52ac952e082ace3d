"""BERT (Devlin et al., 2019) encoder with MLM / NSP / sequence-classification heads, and its
binarized variants BiBERT (Qin et al., ICLR 2022) and BiPFT (Xing et al., AAAI 2024).

Names follow Hugging Face's ``BertFor*`` models (``embeddings/word_embeddings``,
``position_embeddings``, ``token_type_embeddings``, ``embeddings/LayerNorm``; per layer
``attention`` (``query``/``key``/``value``/``out``), ``attention_norm``, ``intermediate``,
``output``, ``output_norm``; ``pooler``, ``classifier``, ``mlm_transform``, ``mlm_norm``,
``mlm_bias``, ``nsp``) so checkpoints map by name (:mod:`bnn_jax.models.hub`).

``head``: ``"mlm"`` (``BertForMaskedLM``: logits ``[B, L, V]``, decoder tied to the latent word
table), ``"pretraining"`` (``BertForPreTraining``: ``(mlm_logits, nsp_logits [B, 2])``) or
``"classification"`` (``BertForSequenceClassification``: logits ``[B, num_labels]``;
``num_labels=1`` is regression, e.g. STS-B). It defaults to classification when ``num_labels``
is given, else MLM. The pooler exists only for heads that read it, as in Hugging Face.

``method`` places the quantizers as the papers' code does:

* ``None`` — full precision;
* ``"bibert"`` (htqin/BiBERT ``transformer/modeling_quant.py``): ``bibert_weight`` kernels and
  ``bibert_act`` inputs in every encoder linear and the pooler (l. 106-112, 205-303), the word
  table binarized per row (l. 62), Bi-Attention (:class:`bnn_jax.nn.BiAttention`: no softmax,
  {0,1} attention times sign V); positions, token types, LayerNorms and the classifier
  (l. 463) stay full precision;
* ``"bipft"`` (Xingrun-Xing/BiPFT ``binary_pretraining/bipft.py``): ``bipft_weight`` kernels and
  ``bipft_act`` inputs (learned shift + elastic sign) in every encoder linear and the pooler
  (l. 192-204, 318-414, 591), the word table per-row BWN (l. 124), BiPFT attention
  (:class:`bnn_jax.nn.BiPFTAttention`: elastic Q/K/V binarizers, unsigned elastic binarizer of
  the probabilities, rank-1 residual estimators when ``estimators=True``); the MLM transform
  (l. 612) and the heads stay full precision. BiPFT's pooler adds a LayerNorm and a residual
  (l. 597-604); that change is not modelled here.

Hidden states (embeddings output, then every layer) are sown as ``hidden_states``; attention
modules sow ``q``, ``k``, ``v`` and ``attention`` (:mod:`bnn_jax.nn.attention`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bnn_jax.models.transformer import (Attention, QuantEmbed, activation, check_positive_ints,
                                        layer_norm, pretrained_fields)
from bnn_jax.nn import BiAttention, BiPFTAttention, QuantLinear
from bnn_jax.quant.registry import check, check_choice

METHODS = (None, "bibert", "bipft")
HEADS = ("mlm", "pretraining", "classification")

_PLACEMENT = {
    None: dict(input=None, kernel=None, embed=None),
    "bibert": dict(input="bibert_act", kernel="bibert_weight",
                   embed=dict(name="bibert_weight", channel_axis=0)),
    "bipft": dict(input="bipft_act", kernel="bipft_weight",
                  embed=dict(name="bipft_weight", layerwise=False)),
}


def placement(method: str | None) -> dict[str, Any]:
    """Quantizers by role (``input``/``kernel`` of encoder linears and pooler, ``embed``)."""
    check_choice("method", method, METHODS)
    return _PLACEMENT[method]


class Layer(nnx.Module):
    """Post-LN encoder layer: ``norm(x + attn(x))``, then ``norm(x + output(act(inter(x))))``."""

    def __init__(self, hidden, heads, intermediate, *, act, eps, method, bool_rule, estimators,
                 rngs):
        q = placement(method)
        lin = dict(input_quantizer=q["input"], kernel_quantizer=q["kernel"], rngs=rngs)
        if method == "bibert":
            self.attention = BiAttention(heads, hidden, bool_rule=bool_rule, **lin)
        elif method == "bipft":
            self.attention = BiPFTAttention(heads, hidden, estimators=estimators, **lin)
        else:
            self.attention = Attention(heads, hidden, **lin)
        self.attention_norm = layer_norm(hidden, eps, rngs)
        self.intermediate = QuantLinear(hidden, intermediate, **lin)
        self.output = QuantLinear(intermediate, hidden, **lin)
        self.output_norm = layer_norm(hidden, eps, rngs)
        self.act = act

    def __call__(self, x, mask):
        x = self.attention_norm(x + self.attention(x, mask=mask))
        h = self.output(activation(self.act)(self.intermediate(x)))
        return self.output_norm(x + h)


class Embeddings(nnx.Module):
    """Word (quantizable) + position + token-type embeddings, then LayerNorm."""

    def __init__(self, vocab_size, hidden, max_len, type_vocab_size, *, eps, quantizer, rngs):
        self.word_embeddings = QuantEmbed(vocab_size, hidden, quantizer=quantizer, rngs=rngs)
        self.position_embeddings = nnx.Embed(max_len, hidden, rngs=rngs)
        self.token_type_embeddings = nnx.Embed(type_vocab_size, hidden, rngs=rngs)
        self.LayerNorm = layer_norm(hidden, eps, rngs)

    def __call__(self, input_ids, token_type_ids):
        positions = jnp.arange(input_ids.shape[1])[None]
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(token_type_ids))
        return self.LayerNorm(x)


class Model(nnx.Module):
    """BERT: ``model(input_ids, attention_mask=None, token_type_ids=None)``; see the module
    docstring for heads and methods. BERT-base is ``hidden=768, intermediate=3072,
    num_layers=12, num_heads=12, max_len=512``. ``pretrained``: a local Hugging Face directory
    whose architecture and weights the model takes (heads it lacks stay fresh)."""

    def __init__(self, *, vocab_size: int, max_len: int, rngs: nnx.Rngs,
                 num_labels: int | None = None, head: str | None = None, hidden: int = 64,
                 intermediate: int = 128, num_layers: int | None = None, num_heads: int = 4,
                 type_vocab_size: int = 2, act: str = "gelu", norm_eps: float = 1e-12,
                 method: str | None = None, bool_rule: str = "code", estimators: bool = True,
                 pretrained: str = ""):
        if pretrained:  # the checkpoint's architecture
            arch = pretrained_fields(pretrained, "bert", vocab_size=vocab_size, max_len=max_len,
                                     layers=dict(num_layers=num_layers))
            hidden, act = arch.get("hidden", hidden), arch.get("act", act)
            intermediate = arch.get("intermediate", intermediate)
            num_layers = arch.get("num_layers", num_layers)
            num_heads = arch.get("num_heads", num_heads)
            type_vocab_size = arch.get("type_vocab_size", type_vocab_size)
            norm_eps = arch.get("norm_eps", norm_eps)
        num_layers = 2 if num_layers is None else num_layers
        head = ("classification" if num_labels is not None else "mlm") if head is None else head
        check_choice("head", head, HEADS)
        check(head != "classification" or num_labels is not None,
              "bert: head='classification' needs num_labels (1 for regression)")
        check_positive_ints("bert", vocab_size=vocab_size, max_len=max_len, hidden=hidden,
                            intermediate=intermediate, num_layers=num_layers,
                            num_heads=num_heads, type_vocab_size=type_vocab_size,
                            **({} if num_labels is None else {"num_labels": num_labels}))
        check(hidden % num_heads == 0, f"bert: num_heads={num_heads} must divide "
                                       f"hidden={hidden}")
        activation(act)
        q = placement(method)
        self.vocab_size, self.max_len, self.head, self.method = vocab_size, max_len, head, method
        self.num_labels = num_labels
        self.embeddings = Embeddings(vocab_size, hidden, max_len, type_vocab_size, eps=norm_eps,
                                     quantizer=q["embed"], rngs=rngs)
        self.layers = nnx.List([
            Layer(hidden, num_heads, intermediate, act=act, eps=norm_eps, method=method,
                  bool_rule=bool_rule, estimators=estimators, rngs=rngs)
            for _ in range(num_layers)])
        self.act = act
        if head in ("pretraining", "classification"):
            self.pooler = QuantLinear(hidden, hidden, input_quantizer=q["input"],
                                      kernel_quantizer=q["kernel"], rngs=rngs)
        if head == "classification":
            self.classifier = nnx.Linear(hidden, num_labels, rngs=rngs)
        else:
            self.mlm_transform = nnx.Linear(hidden, hidden, rngs=rngs)
            self.mlm_norm = layer_norm(hidden, norm_eps, rngs)
            self.mlm_bias = nnx.Param(jnp.zeros((vocab_size,)))
        if head == "pretraining":
            self.nsp = nnx.Linear(hidden, 2, rngs=rngs)
        if pretrained:
            from bnn_jax.models import hub

            # BiBERT and BiPFT students have the teacher's layers (they start from it).
            t = hub.checkpoint_layers(pretrained)["layers"]
            check(t == num_layers, f"bert: pretrained={pretrained!r} has {t} layers, the "
                                   f"model {num_layers}; set num_layers={t}")
            hub.load_student(self, pretrained)

    def encode(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               token_type_ids: jax.Array | None = None) -> jax.Array:
        """The last layer's hidden states ``[B, L, D]``."""
        check(input_ids.ndim == 2, f"bert: input_ids must be [batch, length], got shape "
                                   f"{tuple(input_ids.shape)}")
        b, length = input_ids.shape
        check(length <= self.max_len, f"bert: sequence of length {length} is longer than the "
                                      f"model's max_len={self.max_len}")
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        mask = (None if attention_mask is None else
                jnp.asarray(attention_mask).astype(bool).reshape(b, 1, 1, length))
        x = self.embeddings(input_ids, token_type_ids)
        self.sow(nnx.Intermediate, "hidden_states", x, capture_noop=True)
        for layer in self.layers:
            x = layer(x, mask)
            self.sow(nnx.Intermediate, "hidden_states", x, capture_noop=True)
        return x

    def mlm_logits(self, x: jax.Array) -> jax.Array:
        h = self.mlm_norm(activation(self.act)(self.mlm_transform(x)))
        return self.embeddings.word_embeddings.attend(h) + self.mlm_bias[...]

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None):
        """MLM logits, ``(mlm, nsp)`` logits, or classification logits (per ``head``)."""
        x = self.encode(input_ids, attention_mask, token_type_ids)
        if self.head == "mlm":
            return self.mlm_logits(x)
        pooled = jnp.tanh(self.pooler(x[:, 0]))
        if self.head == "classification":
            return self.classifier(pooled)
        return self.mlm_logits(x), self.nsp(pooled)
