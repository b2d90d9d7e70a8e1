"""Time Ristretto's quantize search on the bundled example for every trimming mode and both
backends; print seconds, forward batches and evaluations. The float pass and the range analysis
run once per search (see the batch counts). Run from the repository root:

    python benchmarks/quantize.py [--iterations 10]
"""
import argparse
import os
import pathlib
import time

from ristretto_py.passes.ristretto_quantize import MODES, RistrettoQuantizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lenet_fashion"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()
    os.chdir(ROOT)          # the example's LMDB paths are relative to the repository root
    print(f"LeNet/Fashion-MNIST, {args.iterations} iterations of 100 images per evaluation, "
          f"{os.cpu_count()} CPUs")
    for mode in MODES:
        for backend in ("numpy", "onnxruntime"):
            quantizer = RistrettoQuantizer(EXAMPLE / "lenet_train_test.prototxt",
                                           EXAMPLE / "lenet_fashion.caffemodel", args.iterations,
                                           mode, error_margin=1, backend=backend, progress=False)
            start = time.perf_counter()
            result = quantizer.run()
            seconds = time.perf_counter() - start
            evaluations = len(result.candidates) + 1 + (mode == "dynamic_fixed_point")
            print(f"{mode:28s} {backend:12s} {seconds:6.2f} s  {result.forward_passes:4d} forward "
                  f"batches ({evaluations} TEST evaluations + 10 range batches)  "
                  f"chosen {result.chosen}  score {result.final_score:.4f}")


if __name__ == "__main__":
    main()
