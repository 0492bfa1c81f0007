"""Model compression: pruning layers, channels and heads, 2:4 sparsity, distillation."""
