"""bnn_jax: a JAX/Flax research framework for binary, ternary and low-bit neural networks."""

__version__ = "0.1.0"
