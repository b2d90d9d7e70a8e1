"""Wall time and forward batches of Ristretto's uniform search and of our per-layer search on the
bundled example (the per-layer search caches unchanged prefixes). Run from the repository root:

    python benchmarks/search.py [--iterations 10]
"""
import argparse
import os
import pathlib
import time

from ristretto_py.passes.per_layer_search import per_layer_search
from ristretto_py.passes.ristretto_quantize import RistrettoQuantizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lenet_fashion"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()
    os.chdir(ROOT)
    quantizer = RistrettoQuantizer(EXAMPLE / "lenet_train_test.prototxt", EXAMPLE / "lenet_fashion.caffemodel",
                                   args.iterations, "dynamic_fixed_point", 1, integer_length="safe",
                                   progress=False)
    start = time.perf_counter()
    uniform = quantizer.run()
    uniform_seconds, uniform_batches = time.perf_counter() - start, quantizer.forward_passes
    start = time.perf_counter()
    result, _ = per_layer_search(quantizer, uniform)
    seconds = time.perf_counter() - start
    batches = quantizer.forward_passes - uniform_batches
    print(f"uniform search:   {uniform_seconds:6.2f} s, {uniform_batches} forward batches; "
          f"{uniform.chosen} score {result.uniform_score:.4f}, {result.uniform_bytes:,} weight bytes")
    print(f"per-layer search: {seconds:6.2f} s, {batches} forward batches (suffix runs counted as "
          f"whole batches), {len(result.trials)} configurations + {len(result.sensitivity)} "
          f"sensitivity probes; score {result.score:.4f}, {result.bytes:,} weight bytes")
    print(f"per-layer / uniform time: {seconds / uniform_seconds:.1f}x")


if __name__ == "__main__":
    main()
