"""Networks per second of derive.reality.montecarlo.sample on a GPU (PyTorch backend, float64
and float32) against the numpy backend on the same machine's CPUs; run where PyTorch sees a
CUDA device: ``python benchmarks/gpu_throughput.py``.  Prints one table."""
from __future__ import annotations

import time

import numpy as np

from derive import MLP
from derive.reality.montecarlo import sample

X = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.4]])


def rate(spec, n, **kw):
    sample(spec, X, max(200, n // 10), seed=0, progress=False, **kw)  # warm-up (compile, caches)
    t = time.perf_counter()
    sample(spec, X, n, seed=1, progress=False, **kw)
    return n / (time.perf_counter() - t)


def main():
    print(f"{'width':>6} {'depth':>5} {'ntk':>5} {'numpy net/s':>12} {'cuda f64 net/s':>15} "
          f"{'cuda f32 net/s':>15} {'f64 speed-up':>12}")
    for width, depth, ntk, n in ((64, 5, False, 20000), (256, 5, False, 5000),
                                 (1024, 5, False, 2000), (256, 3, True, 2000)):
        spec = MLP(depth, width, "tanh", 0.0, 1.0)
        cpu = rate(spec, n, ntk=ntk)
        g64 = rate(spec, n, ntk=ntk, backend="torch", device="cuda")
        g32 = rate(spec, n, ntk=ntk, backend="torch", device="cuda", dtype="float32")
        print(f"{width:>6} {depth:>5} {str(ntk):>5} {cpu:>12.0f} {g64:>15.0f} {g32:>15.0f} "
              f"{g64 / cpu:>12.1f}", flush=True)


if __name__ == "__main__":
    main()
