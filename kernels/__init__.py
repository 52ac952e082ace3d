"""bnn_jax.kernels: packed-bit storage and XNOR-popcount operations (XLA everywhere, Pallas on GPU/TPU)."""
