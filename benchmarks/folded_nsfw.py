"""BatchNorm-folded open_nsfw at 8 bits on real photos, through the command-line tools. Run from
the repository root (fetches open_nsfw on first use):

    python benchmarks/folded_nsfw.py [--search]

Photos: every colour photo of Debian's opencv-doc samples (``apt-get install opencv-doc``),
scikit-image's data images (``pip install scikit-image``) and MTCNN's photos, whichever are
installed; the count is printed. Preparation as Yahoo's classify_nsfw.py: resize to 256x256,
centre crop 224x224, BGR mean (104, 117, 123).

It folds the BatchNorms (``tools/fold_bn``), then writes the net at 8-bit weights and 8-bit
activations with ``tools/quantize --widths conv=8,fc=8,act=8`` (safe integer lengths) in four
parameter formats: Ristretto's shared bias format, a 32-bit bias, and each with per-channel
weights. For each it prints the top-1 agreement with the float net, the mean and largest
|P(nsfw) difference|, the spread of P(nsfw) (a constant output has none), and the share of
conv_1's weights rounded to 0. ``--search`` also runs the uniform search with ``--score l2``
on ``prob`` (``--max_distance 0.05``) and checks that its choice meets the bound.
"""
import argparse
import glob
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

from ristretto_py import Net
from ristretto_py.cli import fold_bn as fold_cli
from ristretto_py.cli import quantize as quantize_cli
from ristretto_py.evaluators.image_data import ImagePreparation
from ristretto_py.images import opencv
from ristretto_py.models import fetch_model
from ristretto_py.runtime import make_runtime

PREPARE = ["--resize", "256,256", "--crop", "224,224", "--mean", "104,117,123"]
OPENCV_DOC = "/usr/share/doc/opencv-doc/examples/data"


def photos():
    """Colour photos found on this machine (at least 64 pixels a side), by source."""
    cv2 = opencv()
    sources = {"opencv-doc": sorted(glob.glob(f"{OPENCV_DOC}/*.jpg") + glob.glob(f"{OPENCV_DOC}/*.png"))}
    try:
        import skimage
        folder = os.path.join(os.path.dirname(skimage.__file__), "data")
        sources["scikit-image"] = sorted(glob.glob(f"{folder}/*.png") + glob.glob(f"{folder}/*.jpg"))
    except ImportError:
        sources["scikit-image"] = []
    sources["mtcnn"] = [str(p) for p in fetch_model("mtcnn_pnet").images]
    found = {}
    for name, paths in sources.items():
        kept = []
        for path in paths:
            image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
            if image is None or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 64:
                continue
            if np.ptp(image.astype(np.int16), axis=2).max() == 0:        # gray stored as colour
                continue
            kept.append(path)
        found[name] = kept
    return found


def probabilities(model, weights, paths):
    net = Net.load(model, weights)
    prepare = ImagePreparation((256, 256), (224, 224), (104, 117, 123))
    runtime = make_runtime(net, "numpy")
    batch = np.concatenate([prepare(p) for p in paths])
    values = []
    for start in range(0, len(batch), 16):
        values.append(runtime.forward({net.input_blobs[0]: batch[start:start + 16]})["prob"])
    return np.concatenate(values)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--search", action="store_true", help="also run the l2-scored search")
    args = parser.parse_args()
    files = fetch_model("open_nsfw")
    found = photos()
    paths = [p for kept in found.values() for p in kept]
    print("photos: " + ", ".join(f"{name} {len(kept)}" for name, kept in found.items())
          + f" ({len(paths)} in all)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        folder = tmp / "photos"
        folder.mkdir()
        for index, path in enumerate(paths):
            os.symlink(path, folder / f"{index:03d}_{os.path.basename(path)}")
        ordered = sorted(str(p) for p in folder.iterdir())
        folded, folded_weights = tmp / "folded.prototxt", tmp / "folded.caffemodel"
        assert fold_cli.main(["--model", str(files.prototxt), "--weights", str(files.caffemodel),
                              "--out_model", str(folded), "--out_weights", str(folded_weights)]) == 0
        reference = probabilities(folded, folded_weights, ordered)
        top1 = reference.argmax(axis=1)
        print(f"float (folded): P(nsfw) from {reference[:, 1].min():.4f} to "
              f"{reference[:, 1].max():.4f}, std {reference[:, 1].std():.4f}; "
              f"top-1 nsfw on {int(top1.sum())} of {len(top1)}")
        print(f"{'bias':8s} {'weights':12s} {'agreement':>9s} {'mean |dP|':>10s} {'max |dP|':>9s} "
              f"{'P(nsfw) std':>11s} {'conv_1 zeroed':>13s} {'seconds':>8s}")
        for bias in ("shared", "int32"):
            for per_channel in (False, True):
                out, report = tmp / f"q_{bias}_{per_channel}.prototxt", tmp / f"r_{bias}_{per_channel}"
                start = time.perf_counter()
                argv = ["--model", str(folded), "--weights", str(folded_weights),
                        "--model_quantized", str(out), "--trimming_mode", "dynamic_fixed_point",
                        "--widths", "conv=8,fc=8,act=8", "--images", str(folder), *PREPARE,
                        "--score", "agreement", "--score_blob", "prob", "--bias", bias,
                        "--report", str(report), "--quiet"] + (["--per_channel"] if per_channel else [])
                assert quantize_cli.main(argv) == 0
                seconds = time.perf_counter() - start
                ours = probabilities(out, folded_weights, ordered)
                delta = np.abs(ours[:, 1] - reference[:, 1])
                layers = json.loads((report / "report.json").read_text())["layers"]
                zeroed = layers["conv_1"]["zeroed_weights"]
                print(f"{bias:8s} {'per channel' if per_channel else 'per layer':12s} "
                      f"{np.mean(ours.argmax(axis=1) == top1):9.4f} {delta.mean():10.5f} "
                      f"{delta.max():9.5f} {ours[:, 1].std():11.4f} {zeroed:13.1%} {seconds:8.1f}",
                      flush=True)
        if args.search:
            out, report = tmp / "l2.prototxt", tmp / "l2"
            start = time.perf_counter()
            assert quantize_cli.main(["--model", str(folded), "--weights", str(folded_weights),
                                      "--model_quantized", str(out), "--trimming_mode",
                                      "dynamic_fixed_point", "--images", str(folder), *PREPARE,
                                      "--score", "l2", "--score_blob", "prob", "--max_distance",
                                      "0.05", "--integer_length", "safe", "--per_channel",
                                      "--report", str(report), "--quiet"]) == 0
            result = json.loads((report / "report.json").read_text())
            ours = probabilities(out, folded_weights, ordered)
            distance = np.mean(np.linalg.norm(ours - reference, axis=1)
                               / np.linalg.norm(reference, axis=1))
            print(f"--score l2 search: chose {result['chosen']}, distance {result['final_score']:.4f} "
                  f"(recomputed {distance:.4f}), {result['margin_verdict']}; "
                  f"{time.perf_counter() - start:.1f} s, {result['forward_batches']} forward batches")
            if distance > 0.05:
                sys.exit("the search's choice misses --max_distance")


if __name__ == "__main__":
    main()
