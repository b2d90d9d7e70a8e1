"""An LFW-scored search on real faces. Run from the repository root (needs scikit-image for its
``lfw_subset``, ``pip install scikit-image``; fetches MTCNN on first use):

    python benchmarks/lfw_faces.py [--error_margin 1]

No LFW copy ships here, so the tree is built from scikit-image's ``lfw_subset``: its 100 real
face crops (25x25, from LFW) each become an identity of four images (the crop, its mirror, a
shifted and a brighter copy), written in LFW's layout with a ``pairs.txt`` of 10 folds (10
identities per fold, 30 matched and 30 mismatched pairs each). The features are the 256 values
of MTCNN O-Net's ``conv5`` (a face network), inputs 48x48, mean 127.5, scale 1/128. It runs
``tools/quantize --score lfw`` (uniform dynamic fixed point, safe integer lengths) and prints the
chosen widths, the float and quantized LFW accuracies (the two reports written side by side),
and the time.
"""
import argparse
import json
import pathlib
import tempfile
import time

import numpy as np

from ristretto_py.cli import quantize as quantize_cli
from ristretto_py.images import opencv
from ristretto_py.models import fetch_model

IDENTITIES, PER_IDENTITY, FOLDS, PAIRS = 100, 4, 10, 30


def build_tree(base, seed=0):
    from skimage.data import lfw_subset
    cv2 = opencv()
    faces = (lfw_subset()[:IDENTITIES] * 255).round().astype(np.uint8)
    names = [f"Face_{i:03d}" for i in range(IDENTITIES)]
    for name, face in zip(names, faces):
        folder = base / "lfw" / name
        folder.mkdir(parents=True)
        shifted = np.roll(face, (1, -1), axis=(0, 1))
        brighter = np.clip(face.astype(np.int16) * 11 // 10 + 8, 0, 255).astype(np.uint8)
        for index, image in enumerate((face, face[:, ::-1], shifted, brighter), 1):
            cv2.imwrite(str(folder / f"{name}_{index:04d}.png"), image)
    rng = np.random.default_rng(seed)
    lines = [f"{FOLDS}\t{PAIRS}"]
    per_fold = IDENTITIES // FOLDS
    for fold in range(FOLDS):
        members = names[fold * per_fold:(fold + 1) * per_fold]
        matched = [(n, a, b) for n in members for a in range(1, PER_IDENTITY + 1)
                   for b in range(a + 1, PER_IDENTITY + 1)]
        for i in rng.choice(len(matched), PAIRS, replace=False):
            lines.append("%s\t%d\t%d" % matched[i])
        for _ in range(PAIRS):
            first, second = rng.choice(members, 2, replace=False)
            lines.append(f"{first}\t{rng.integers(1, PER_IDENTITY + 1)}\t{second}\t"
                         f"{rng.integers(1, PER_IDENTITY + 1)}")
    (base / "pairs.txt").write_text("\n".join(lines) + "\n")
    # The tree stores .png; the LFW reader expects Name_0001.jpg, so name them so.
    for path in (base / "lfw").rglob("*.png"):
        path.rename(path.with_suffix(".jpg"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--error_margin", default="1", help="points of LFW accuracy (default 1)")
    args = parser.parse_args()
    onet = fetch_model("mtcnn_onet")
    with tempfile.TemporaryDirectory() as tmp:
        base = pathlib.Path(tmp)
        build_tree(base)
        report = base / "report"
        start = time.perf_counter()
        code = quantize_cli.main([
            "--model", str(onet.prototxt), "--weights", str(onet.caffemodel),
            "--model_quantized", str(base / "onet_q.prototxt"),
            "--trimming_mode", "dynamic_fixed_point", "--integer_length", "safe",
            "--score", "lfw", "--feature_blob", "conv5", "--lfw_root", str(base / "lfw"),
            "--pairs", str(base / "pairs.txt"), "--resize", "48,48", "--mean", "127.5",
            "--scale", "0.0078125", "--error_margin", args.error_margin,
            "--report", str(report), "--quiet"])
        assert code == 0
        seconds = time.perf_counter() - start
        result = json.loads((report / "report.json").read_text())
        lfw_float = json.loads((report / "lfw_float" / "report.json").read_text())
        lfw_ours = json.loads((report / "lfw_quantized" / "report.json").read_text())
        print(f"{IDENTITIES} identities x {PER_IDENTITY} images, {FOLDS} folds of "
              f"{2 * PAIRS} pairs; MTCNN O-Net conv5 features")
        print(f"chosen {result['chosen']}: LFW accuracy {lfw_ours['mean_accuracy']:.4f} +- "
              f"{lfw_ours['standard_error']:.4f} (float {lfw_float['mean_accuracy']:.4f} +- "
              f"{lfw_float['standard_error']:.4f}); ROC AUC {lfw_ours['roc_auc']:.4f} (float "
              f"{lfw_float['roc_auc']:.4f}); {result['margin_verdict']}")
        print(f"weights {result['weight_bytes_before']:,} -> {result['weight_bytes_after']:,} "
              f"bytes; {seconds:.1f} s, {result['forward_batches']} forward batches")


if __name__ == "__main__":
    main()
