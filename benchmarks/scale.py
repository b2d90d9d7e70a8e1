"""Scaling out with ``--cluster``: an evaluation of 10,000 images and Ristretto's quantize search
on them, in one process and on a local Ray with 1 and 2 workers, all measured in one run (a
benchmark, not a test). Run from the repository root after ``tools/make_lenet_fashion
--lmdb_only`` (the full Fashion-MNIST test LMDB) with the ``ray`` extra installed:

    python benchmarks/scale.py [--net lenet|densenet] [--iterations 100] [--workers 1,2]
    python benchmarks/scale.py --model M.prototxt --weights W.caffemodel    # another net

Nets: ``lenet``, the bundled example (about 0.1 ms an image on one core: the cluster's overhead
shows), and ``densenet`` (default), the DenseNet-style net of ``examples/densenet_fashion``
with random He-initialised weights (about 3 ms an image: the compute dominates; its accuracy is
chance, its timing is what counts).

What it prints, for each setting (one process; ``local:N``):
* evaluation: wall time of ``evaluate_classification`` over ``--iterations`` batches, the first
  time (each worker opens the LMDB, skips to its range, decodes it) and then the median of
  ``--rounds`` more (each worker keeps its batches), images/s and the speed-up against 1 worker;
* search: wall time of ``RistrettoQuantizer.run`` over ``--search_iterations`` batches (dynamic
  fixed point; the range analysis runs in this process in every setting), its candidates, and
  the overhead per candidate
  ((local:1 - one process) / candidates: the object store, the chunk calls, the gathering).

Ray's own start (a few seconds) is not timed: it is paid once per run, not per evaluation.
The same script on an N-node cluster: start Ray on the nodes (``ray start --head`` on one,
``ray start --address HEAD:6379`` on the others, ristretto-py and the LMDB at the same absolute
path on each) and pass ``--address ray://HEAD:10001``.
"""
import argparse
import os
import pathlib
import statistics
import tempfile
import time

import numpy as np

from ristretto_py.cluster import ClusterSpec, parse_cluster
from ristretto_py.cluster.session import Cluster
from ristretto_py.evaluators.classification import Batches, evaluate_classification
from ristretto_py.net import Net
from ristretto_py import caffe_io
from ristretto_py.passes.ristretto_quantize import RistrettoQuantizer
from ristretto_py.protos import caffe_pb2

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lenet_fashion"
DENSENET = ROOT / "examples" / "densenet_fashion" / "densenet_train_test.prototxt"


def random_weights(model, path, seed=0):
    """A caffemodel for ``model`` with He-initialised products, identity BatchNorm and Scale."""
    net = Net.load(model)
    shapes, rng = net.shapes(), np.random.default_rng(seed)
    weights = caffe_pb2.NetParameter()
    for layer, impl in zip(net.layers, net.impls):
        wanted = [tuple(s) for s in impl.param_shapes([shapes[b] for b in layer.bottoms])]
        if not wanted:
            continue
        entry = weights.layer.add(name=layer.name, type=layer.type)
        for index, shape in enumerate(wanted):
            if layer.type == "BatchNorm":
                array = np.zeros(shape) if index == 0 else np.ones(shape)
            elif layer.type == "Scale" or len(shape) < 2:
                array = np.ones(shape) if layer.type == "Scale" and index == 0 else np.zeros(shape)
            else:
                array = rng.normal(0, np.sqrt(2 / np.prod(shape[1:])), shape)
            entry.blobs.add().CopyFrom(caffe_io.array_to_blob(array.astype(np.float32)))
    caffe_io.write_net_binary(weights, path)
    return path


def evaluation(model, weights, iterations, rounds, cluster=None):
    """(first seconds, median seconds of the next rounds, images, score)."""
    param, blobs = caffe_io.read_net_text(model), caffe_io.read_net_binary(weights)
    net = Net.from_proto(param, blobs, source=str(model), weights_source=str(weights))
    on_cluster = None
    if cluster is not None:
        handle = cluster.pool.handle(param=param, weights=blobs, source=str(model),
                                     weights_source=str(weights))
        on_cluster = (cluster.pool, handle, {"backend": "numpy"})
        batches = Batches(net, iterations, cache=False, probe=False)
    else:
        batches = Batches(net, iterations)      # kept in memory, as a search keeps them
    times, result = [], None
    for _ in range(rounds + 1):
        start = time.perf_counter()
        result = evaluate_classification(net, iterations, batches=batches, cluster=on_cluster)
        times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[1:]), result.images, result.score()


def search(model, weights, iterations, cluster=None):
    """(seconds, candidates, chosen widths) of Ristretto's dynamic-fixed-point search."""
    quantizer = RistrettoQuantizer(model, weights, iterations, "dynamic_fixed_point", 1,
                                   progress=False)
    if cluster is not None:
        quantizer.on_cluster(cluster.pool)
    start = time.perf_counter()
    result = quantizer.run()
    return time.perf_counter() - start, len(result.candidates) + 2, result.chosen


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", choices=("densenet", "lenet"), default="densenet")
    parser.add_argument("--model", help="another net (train_test prototxt with Data layers)")
    parser.add_argument("--weights", help="its caffemodel")
    parser.add_argument("--iterations", type=int, default=100,
                        help="batches of the evaluation (default 100: the 10,000 test images)")
    parser.add_argument("--search_iterations", type=int, default=20,
                        help="batches per candidate of the search (default 20)")
    parser.add_argument("--workers", default="1,2", help="local Ray sizes (default 1,2)")
    parser.add_argument("--address", type=parse_cluster, help="a ray://HOST:PORT cluster too")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.chdir(ROOT)
    if args.model is None:
        if args.net == "lenet":
            args.model = str(EXAMPLE / "lenet_train_test_full.prototxt")
            args.weights = str(EXAMPLE / "lenet_fashion.caffemodel")
        else:
            args.model = str(DENSENET)
            args.weights = random_weights(DENSENET, os.path.join(tempfile.mkdtemp(),
                                                                 "densenet.caffemodel"))
    print(f"{args.model}: evaluation of {args.iterations} batches, search on "
          f"{args.search_iterations} batches per candidate", flush=True)
    settings = [("one process", None)] + [(f"local:{n}", ClusterSpec(workers=int(n)))
                                          for n in args.workers.split(",")]
    if args.address:
        settings.append((str(args.address), args.address))
    rows = {}
    for name, spec in settings:
        if spec is None:
            rows[name] = (1, evaluation(args.model, args.weights, args.iterations, args.rounds),
                          search(args.model, args.weights, args.search_iterations))
        else:
            with Cluster(spec, progress=False) as cluster:
                rows[name] = (cluster.workers,
                              evaluation(args.model, args.weights, args.iterations, args.rounds,
                                         cluster),
                              search(args.model, args.weights, args.search_iterations, cluster))
        workers, (first, warm, images, score), (seconds, candidates, chosen) = rows[name]
        print(f"{name:>14}: {workers} worker(s); evaluation {images:,} images: first "
              f"{first:6.2f} s, then {warm:6.2f} s ({images / warm:8,.0f} images/s, score "
              f"{score:.4f}); search {seconds:6.2f} s, {candidates} candidates, {chosen}",
              flush=True)
    one = rows.get("local:1")
    print()
    print("| setting | workers | evaluation first (s) | evaluation (s) | images/s | speed-up vs "
          "1 worker | search (s) | search speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (workers, (first, warm, images, _), (seconds, _, _)) in rows.items():
        speed = f"{one[1][1] / warm:.2f}x" if one else "-"
        search_speed = f"{one[2][0] / seconds:.2f}x" if one else "-"
        print(f"| {name} | {workers} | {first:.2f} | {warm:.2f} | {images / warm:,.0f} | "
              f"{speed} | {seconds:.2f} | {search_speed} |")
    if one and "one process" in rows:
        alone = rows["one process"][2]
        overhead = (one[2][0] - alone[0]) / alone[1]
        print(f"\nOverhead per candidate (local:1 search - one-process search) / candidates: "
              f"{overhead * 1000:.0f} ms")


if __name__ == "__main__":
    main()
