"""Memory planning: weights, KV cache and the concurrency a device holds (no torch needed)."""
