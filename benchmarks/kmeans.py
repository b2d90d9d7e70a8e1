"""k-means at full size, two cases. Run from the repository root:

    python benchmarks/kmeans.py [--clusters 16] [--scope layer]
    python benchmarks/kmeans.py --search [--iterations 3]

The first times per-layer k-means (K=16) on the 5.9M weights of open_nsfw, counts the
scikit-learn KMeans fits and compares the packed file's size with the caffemodel's (fetches the
model on first use). ``--search`` runs ``tools/quantize --trimming_mode kmeans`` on the bundled
example with its real index widths, from 12 bits (K=4096 on 405,000 fc weights) down; the test
suite runs the same search from 4 bits. It prints each candidate, the time, the bytes against a
hand count, and checks the written weights (2^bits values per type, packed file identical).
"""
import argparse
import json
import os
import pathlib
import tempfile
import time
from unittest import mock

import numpy as np
import sklearn.cluster

from ristretto_py import Net
from ristretto_py.models import fetch_model
from ristretto_py.packed import net_with_packed, write_packed
from ristretto_py.passes.kmeans import cluster_net, compression

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lenet_fashion"
STAGES = (("Convolution", "conv_params"), ("InnerProduct", "fc_params"))


def open_nsfw(clusters, scope):
    files = fetch_model("open_nsfw")
    net = Net.load(files.prototxt, files.caffemodel)
    original_fit = sklearn.cluster.KMeans.fit
    with mock.patch.object(sklearn.cluster.KMeans, "fit", autospec=True,
                           side_effect=original_fit) as fit:
        start = time.perf_counter()
        clustered, groups = cluster_net(net, clusters, scope)
        seconds = time.perf_counter() - start
    weights = sum(np.size(i) for c in groups for i in c.indices.values())
    _, total = compression(net, groups, 32)
    with tempfile.TemporaryDirectory() as tmp:
        packed = os.path.join(tmp, "open_nsfw.pack")
        write_packed(packed, clustered, groups)
        packed_bytes = os.path.getsize(packed)
    print(f"open_nsfw: {weights:,} weights in {len(groups)} codebooks, K={clusters}, "
          f"scope {scope}: {seconds:.1f} s, {fit.call_count} scikit-learn KMeans fits "
          f"({os.cpu_count()} CPUs)")
    print(f"r = {total['ratio']:.2f}; caffemodel {os.path.getsize(files.caffemodel):,} bytes, "
          f"packed {packed_bytes:,} bytes")


def quantize_search(iterations):
    from ristretto_py.cli import quantize as quantize_cli
    os.chdir(ROOT)          # the example's LMDB paths are relative, as in Caffe
    model, weights = EXAMPLE / "lenet_train_test.prototxt", EXAMPLE / "lenet_fashion.caffemodel"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        out, weights_out, packed = tmp / "k.prototxt", tmp / "k.caffemodel", tmp / "k.pack"
        start = time.perf_counter()
        code = quantize_cli.main(["--model", str(model), "--weights", str(weights),
                                  "--model_quantized", str(out), "--weights_quantized", str(weights_out),
                                  "--packed", str(packed), "--trimming_mode", "kmeans",
                                  "--kmeans_scope", "type", "--error_margin", "1",
                                  "--iterations", str(iterations), "--report", str(tmp / "r"), "--quiet"])
        seconds = time.perf_counter() - start
        if code:
            raise SystemExit(f"tools/quantize failed (exit {code})")
        report = json.loads((tmp / "r" / "report.json").read_text())
        for c in report["candidates"]:
            print(f"{c['stage']:12s} {c['bit_width']:2d}-bit indices: {c['score']:.4f} "
                  f"{'passed' if c['passed'] else 'failed'}")
        original, net = Net.load(model, weights), Net.load(out, weights_out)
        rebuilt = net_with_packed(Net.load(out), packed)
        bits_after = sum(np.size(b) for l in original.layers for b in l.blobs[1:]) * 32
        for layer_type, stage in STAGES:
            bits = report["chosen"][stage]
            n = sum(np.size(l.blobs[0]) for l in original.layers if l.type == layer_type)
            if bits == 32:
                bits_after += n * 32
                continue
            bits_after += n * bits + 2 ** bits * 32
            values = np.concatenate([np.ravel(l.blobs[0]) for l in net.layers if l.type == layer_type])
            assert len(np.unique(values)) <= 2 ** bits, (stage, bits)
        for a, b in zip(net.layers, rebuilt.layers):
            assert all(np.array_equal(x, y) for x, y in zip(a.blobs, b.blobs)), a.name
    print(f"the example, index widths 12 down, scope type, {iterations} iterations: {seconds:.1f} s "
          f"({os.cpu_count()} CPUs); chosen {report['chosen']}, score {report['final_score']:.4f} "
          f"(float {report['float_score']:.4f})")
    print(f"weights and biases: {report['weight_bytes_before']:,} -> {report['weight_bytes_after']:,} bytes "
          f"(by hand {bits_after / 8:,.1f}), r = {report['compression']:.2f}; written weights "
          f"have at most 2^bits values per type and equal the packed file's")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clusters", type=int, default=16)
    parser.add_argument("--scope", default="layer")
    parser.add_argument("--search", action="store_true",
                        help="the quantize k-means search on the example instead")
    parser.add_argument("--iterations", type=int, default=3, help="--search: batches per evaluation")
    args = parser.parse_args()
    if args.search:
        quantize_search(args.iterations)
    else:
        open_nsfw(args.clusters, args.scope)


if __name__ == "__main__":
    main()
