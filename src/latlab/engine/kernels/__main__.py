"""Build the engine's native kernels now (or wait for a build in progress), then say what loaded.

python -m latlab.engine.kernels
"""

from __future__ import annotations

import sys

from latlab.engine.kernels import build_directory, decode_model, paged_decode_attention, step_ops


def main() -> int:
    kernels = (paged_decode_attention(wait=True), decode_model(wait=True))
    for kernel in kernels:
        print(f"engine kernel: {kernel.reason} ({build_directory()})")
    ops, reason = step_ops(wait=True)
    print(f"engine kernel: {reason} ({build_directory()})")
    return 0 if ops is not None and all(k.fn is not None for k in kernels) else 1


if __name__ == "__main__":
    sys.exit(main())
