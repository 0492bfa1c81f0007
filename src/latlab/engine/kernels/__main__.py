"""Build the engine's native kernels now (or wait for a build in progress), then say what loaded.

python -m latlab.engine.kernels
"""

from __future__ import annotations

import sys

from latlab.engine.kernels import build_directory, paged_decode_attention


def main() -> int:
    kernel = paged_decode_attention(wait=True)
    print(f"engine kernel: {kernel.reason} ({build_directory()})")
    return 0 if kernel.fn is not None else 1


if __name__ == "__main__":
    sys.exit(main())
