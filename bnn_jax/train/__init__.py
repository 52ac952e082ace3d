"""Training: the loop, sharding, optimizers (incl. Bop), losses, checkpoints and metrics."""
