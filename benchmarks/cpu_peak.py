"""The CPU's float32 FMA peak, measured: the ceiling no GEMM on this machine can pass.

A GEMM rate is only "x% of what the CPU gives" against a measured peak: the nominal clock times
the FMA units says little on a VM that may boost or be throttled. This compiles a small C loop
(12 independent AVX2 or AVX-512 FMA chains per thread, enough to cover the FMA latency on both
pipes), runs it on N OpenMP threads for about a second, and reports FLOP/s.

    .venv/bin/python benchmarks/cpu_peak.py --threads 1,2

Needs a C compiler (``cc``) with OpenMP; returns None (and says why) where there is none.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CHAINS = 12  # independent accumulators: > latency (4 cycles) x FMA pipes (2)

_SOURCE = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#if defined(__AVX512F__)
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define SUM(v) _mm512_reduce_add_ps(v)
#else
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
static float SUM(__m256 v) { float o[8]; _mm256_storeu_ps(o, v); float s = 0;
  for (int i = 0; i < 8; i++) s += o[i]; return s; }
#endif
int main(int argc, char** argv) {
  long iters = atol(argv[1]);
  float total = 0;
  double t0 = omp_get_wtime();
#pragma omp parallel reduction(+ : total)
  {
    vec a[CHAINS];
    for (int j = 0; j < CHAINS; j++) a[j] = SET1(1.0f + j);
    const vec m = SET1(0.9999999f), c = SET1(1e-7f);
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 16
      for (int j = 0; j < CHAINS; j++) a[j] = FMA(a[j], m, c);
    }
    for (int j = 0; j < CHAINS; j++) total += SUM(a[j]);
  }
  double seconds = omp_get_wtime() - t0;
  printf("%.6e %d %f\n", 2.0 * LANES * CHAINS * (double)iters * omp_get_max_threads() / seconds,
         LANES, total);
  return 0;
}
"""


def build(directory: Path) -> Path | str:
    """The compiled probe, or why it could not be built."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return "no C compiler (cc) on PATH"
    source, binary = directory / "fma_peak.c", directory / "fma_peak"
    source.write_text(_SOURCE.replace("CHAINS", str(CHAINS)))
    argv = [cc, "-O2", "-march=native", "-fopenmp", str(source), "-o", str(binary)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"cc failed: {done.stderr.strip()[-300:]}"
    return binary


def fma_peak_flop_s(threads: int, *, iters: int = 400_000_000, binary: Path | None = None) -> float:
    """float32 FLOP/s of ``threads`` threads doing nothing but FMAs (median of 3 runs)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_PROC_BIND": "true"}
    runs = []
    for _ in range(3):
        out = subprocess.run([str(binary), str(iters)], capture_output=True, text=True,
                             env=env, check=True, timeout=120)  # fmt: skip
        runs.append(float(out.stdout.split()[0]))
    return sorted(runs)[1]


def measure(threads: list[int]) -> dict[int, float] | str:
    """FMA peak per thread count, or why it could not be measured."""
    with tempfile.TemporaryDirectory(prefix="latlab-peak-") as tmp:
        binary = build(Path(tmp))
        if isinstance(binary, str):
            return binary
        return {n: fma_peak_flop_s(n, binary=binary) for n in threads}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1,2")
    args = p.parse_args()
    got = measure([int(t) for t in args.threads.split(",")])
    if isinstance(got, str):
        raise SystemExit(f"cpu_peak: {got}")
    for n, flop_s in got.items():
        print(f"{n} thread(s): {flop_s / 1e9:.1f} GFLOP/s float32 FMA peak")


if __name__ == "__main__":
    main()
