"""Model analysis: summaries (parameters, bits, memory) and binary-weight flip metrics."""
