"""Time per-layer k-means (K=16) on the 5.9M weights of open_nsfw and count the scikit-learn
KMeans fits; the packed file's size against the caffemodel's. Fetches the model on first use.

    python benchmarks/kmeans.py [--clusters 16] [--scope layer]
"""
import argparse
import os
import tempfile
import time
from unittest import mock

import numpy as np
import sklearn.cluster

from ristretto_py import Net
from ristretto_py.models import fetch_model
from ristretto_py.packed import write_packed
from ristretto_py.passes.kmeans import cluster_net, compression


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clusters", type=int, default=16)
    parser.add_argument("--scope", default="layer")
    args = parser.parse_args()
    files = fetch_model("open_nsfw")
    net = Net.load(files.prototxt, files.caffemodel)
    original_fit = sklearn.cluster.KMeans.fit
    with mock.patch.object(sklearn.cluster.KMeans, "fit", autospec=True,
                           side_effect=original_fit) as fit:
        start = time.perf_counter()
        clustered, clusters = cluster_net(net, args.clusters, args.scope)
        seconds = time.perf_counter() - start
    weights = sum(np.size(i) for c in clusters for i in c.indices.values())
    _, total = compression(net, clusters, 32)
    with tempfile.TemporaryDirectory() as tmp:
        packed = os.path.join(tmp, "open_nsfw.pack")
        write_packed(packed, clustered, clusters)
        packed_bytes = os.path.getsize(packed)
    print(f"open_nsfw: {weights:,} weights in {len(clusters)} codebooks, K={args.clusters}, "
          f"scope {args.scope}: {seconds:.1f} s, {fit.call_count} scikit-learn KMeans fits "
          f"({os.cpu_count()} CPUs)")
    print(f"r = {total['ratio']:.2f}; caffemodel {os.path.getsize(files.caffemodel):,} bytes, "
          f"packed {packed_bytes:,} bytes")


if __name__ == "__main__":
    main()
