"""Throughput of the numpy runtime and the onnxruntime backend against OpenCV's Caffe importer on
two real models, measured in one run on real images (a benchmark, not a test).

    python benchmarks/runtime.py [--repeats 7] [--models open_nsfw res10_ssd]

Each backend runs once to warm up, then ``--repeats`` timed runs; the median gives images/s.
The ratios compare throughputs (above 1: faster than OpenCV). The largest difference of the
outputs to OpenCV's is printed too, so that a fast but wrong backend shows.
"""
import argparse
import importlib.resources
import os
import statistics
import time

import cv2
import numpy as np

from ristretto_py.images import prepare_image, read_image
from ristretto_py.models import fetch_model
from ristretto_py.net import Net
from ristretto_py.runtime import NumpyRuntime, OnnxRuntime

# name -> (input width and height, batch size, BGR mean, output blob); the means are the ones
# the models were trained with.
CASES = {
    "open_nsfw": ((224, 224), 8, (104.0, 117.0, 123.0), "prob"),
    "res10_ssd": ((300, 300), 1, (104.0, 177.0, 123.0), "detection_out"),
}


def sample_images():
    """MTCNN's multiple-faces.jpg and scikit-learn's china.jpg, decoded by OpenCV (BGR).

    scikit-learn's ``load_sample_image`` needs Pillow and returns RGB; reading the same file
    it ships with OpenCV gives the BGR pixels Caffe models expect without another dependency.
    """
    faces = fetch_model("mtcnn_pnet").images[0]
    china = importlib.resources.files("sklearn.datasets") / "images" / "china.jpg"
    return [read_image(faces), read_image(str(china))]


def make_batch(pictures, size, batch, mean):
    """``batch`` inputs, alternating the pictures (mirrored on every second round)."""
    items = []
    for index in range(batch):
        picture = pictures[index % len(pictures)]
        if (index // len(pictures)) % 2:
            picture = cv2.flip(picture, 1)
        items.append(prepare_image(picture, resize=size, mean=mean))
    return np.concatenate(items)


def median_seconds(function, repeats):
    function()  # warm-up: first-call allocations, thread pools, lazy initialisation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def opencv_runner(files, batch, output):
    net = cv2.dnn.readNetFromCaffe(str(files.prototxt), str(files.caffemodel))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

    def forward():
        net.setInput(batch)
        return net.forward(output)
    return forward


def ours_runner(runtime, input_blob, batch, output):
    return lambda: runtime.forward({input_blob: batch})[output]


def difference(ours, reference, output):
    if output == "detection_out":
        # Detection rows may come in another order; compare the confident ones as sets.
        def confident(rows):
            rows = rows.reshape(-1, 7)
            rows = rows[rows[:, 2] > 0.5]
            return rows[np.lexsort(rows.T[::-1])]
        ours, reference = confident(ours), confident(reference)
        if ours.shape != reference.shape:
            return f"{len(ours)} vs {len(reference)} detections"
    elif ours.shape != reference.shape:
        return f"shape {ours.shape} vs {reference.shape}"
    return f"{float(np.abs(ours - reference).max()):.2e}"


def benchmark(name, pictures, repeats):
    size, batch_size, mean, output = CASES[name]
    files = fetch_model(name)
    batch = make_batch(pictures, size, batch_size, mean)
    net = Net.load(files.prototxt, files.caffemodel)
    input_blob = net.input_blobs[0]
    if net.shapes()[input_blob] != batch.shape:
        net = net.with_input_shapes({input_blob: batch.shape})
    runners = {
        "OpenCV": opencv_runner(files, batch, output),
        "numpy": ours_runner(NumpyRuntime(net), input_blob, batch, output),
        "onnxruntime": ours_runner(OnnxRuntime(net, all_blobs=False), input_blob, batch, output),
    }
    reference = runners["OpenCV"]()
    results = {}
    for backend, runner in runners.items():
        seconds = median_seconds(runner, repeats)
        agreement = "-" if backend == "OpenCV" else difference(runner(), reference, output)
        results[backend] = batch_size / seconds
        print(f"{name:10s} {format_shape(batch.shape):>14s} {backend:12s} "
              f"{seconds * 1000:9.1f} ms {batch_size / seconds:9.2f} images/s   "
              f"max |diff| to OpenCV: {agreement}", flush=True)
    for backend in ("numpy", "onnxruntime"):
        print(f"{name:10s} {backend}/OpenCV throughput ratio: "
              f"{results[backend] / results['OpenCV']:.2f}")
    return results


def format_shape(shape):
    return "x".join(str(d) for d in shape)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--repeats", type=int, default=7, help="timed runs after the warm-up")
    args = parser.parse_args()
    import onnxruntime
    print(f"CPUs: {os.cpu_count()}; OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads); "
          f"onnxruntime {onnxruntime.__version__}; numpy {np.__version__}; "
          f"median of {args.repeats} runs after one warm-up")
    pictures = sample_images()
    for name in args.models:
        benchmark(name, pictures, args.repeats)


if __name__ == "__main__":
    main()
