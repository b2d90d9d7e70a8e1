"""Deploying the BatchNorm-folded open_nsfw in integers: onnxruntime on the QDQ exports against
the float export, and ``--backend fixed`` against the numpy float runtime, all measured in one
run on the real photos of this machine (a benchmark, not a test). Run from the repository root
(fetches open_nsfw on first use; about 5 minutes on 2 idle cores, more on a busy machine):

    python benchmarks/deploy.py [--seconds 9] [--rounds 3]

Photos: ``photos()`` of ``benchmarks/folded_nsfw.py`` (opencv-doc's samples, scikit-image's
data images, MTCNN's), prepared as Yahoo's classify_nsfw.py: resize 256x256, centre crop
224x224, BGR mean (104, 117, 123).

Steps, each printed:
1. fold the BatchNorms (``tools/fold_bn``), then quantize the folded net with ``tools/quantize
   --widths conv=W,fc=W,act=8 --all_layers --per_channel --bias int32`` (agreement on ``prob``
   over the photos) for W = 8 and W = 7;
2. export the float folded net (``export_onnx``) and each quantized net as QDQ with signed and
   with unsigned activations (``export_quantized``), and print what onnxruntime fuses into
   integer kernels (``describe_fusion``); every file also outputs ``fc_nsfw``. The 8-bit
   unsigned file runs a second time with onnxruntime's ``session.x64quantprecision=1`` (u8u8
   kernels, which do not saturate; see the background the script prints);
3. onnxruntime images/s of each file (CPU, 2 intra-op threads, a batch of 8 photos, one warm-up
   run), timed in ``--rounds`` interleaved rounds of ``--seconds / --rounds`` seconds per file;
   the median round gives images/s, divided by the float export's median for the ratio;
4. per file, over all photos: top-1 agreement with the float net (the numpy runtime on the
   folded net) and the number of ``fc_nsfw`` values that differ from ``--backend fixed`` on the
   same quantized net;
5. ``--backend fixed`` images/s on the quantized nets against the numpy runtime on the float
   folded net, batches of 8 photos run in turn (the first batch is not timed);
6. one summary table (markdown rows).
"""
import argparse
import contextlib
import io
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort

from ristretto_py import Net
from ristretto_py.cli import fold_bn as fold_cli
from ristretto_py.cli import quantize as quantize_cli
from ristretto_py.evaluators.image_data import ImagePreparation
from ristretto_py.models import fetch_model
from ristretto_py.runtime import make_runtime
from ristretto_py.runtime.onnx_export import export_onnx
from ristretto_py.runtime.quantized_export import (INTEGER_KERNELS, describe_fusion,
                                                   export_quantized, onnxruntime_nodes)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from folded_nsfw import PREPARE, photos  # noqa: E402  (the sibling benchmark's photo finder)

WEIGHT_BITS = (8, 7)
ACTIVATIONS = ("signed", "unsigned")
BATCH = 8
THREADS = 2
LOGIT_BLOB = "fc_nsfw"
PRECISION_OPTION = "session.x64quantprecision"
BACKGROUND = f"""\
Background: onnxruntime's x86 builds fuse QDQ convolutions into integer kernels only for uint8
activations (their QDQ fusion allows int8 activations on ARM alone, unless the session option
session.qdqisint8allowed=1 asks for it), so with signed int8 activations only part of the graph
is fused and the convolutions stay float between DequantizeLinear and QuantizeLinear.
"unsigned" stores the same signed values as uint8 with zero point 128, and every convolution
becomes a QLinearConv. On AVX2 without VNNI its u8s8 kernel (vpmaddubsw) adds pairs of
uint8 x int8 products in 16 bits with saturation: with 8-bit weights a pair can reach
2 x 255 x 128 = 65,280 > 32,767, so some sums saturate and values can differ from --backend
fixed; 7-bit weights keep a pair within 2 x 255 x 64 = 32,640, exact. (VNNI's vpdpbusd adds in
32 bits.) The row "+{PRECISION_OPTION}" runs the 8-bit unsigned file with the
onnxruntime session option {PRECISION_OPTION}=1: its slower u8u8 kernels, exact."""


# -- the machine and the photos -------------------------------------------------------------
def cpu_line():
    """The CPU's model name and which of its flags matter to onnxruntime's int8 kernels."""
    text = pathlib.Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("model name")), "unknown")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines()
                      if line.startswith("flags")), []))
    shown = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}"
                      for flag in ("avx2", "avx512f", "avx512_vnni", "avx_vnni"))
    return f"CPU: {model}, {os.cpu_count()} cores; {shown}"


def link_photos(folder):
    """Symbolic links to every photo found, in one folder (what ``--images`` reads), sorted."""
    found = photos()
    paths = [p for kept in found.values() for p in kept]
    print("photos: " + ", ".join(f"{name} {len(kept)}" for name, kept in found.items())
          + f" ({len(paths)} in all)")
    folder.mkdir()
    for index, path in enumerate(paths):
        os.symlink(path, folder / f"{index:03d}_{os.path.basename(path)}")
    return sorted(str(p) for p in folder.iterdir())


def prepared(paths):
    prepare = ImagePreparation((256, 256), (224, 224), (104, 117, 123))
    return np.concatenate([prepare(p) for p in paths])


def batches(images):
    return [images[start:start + BATCH] for start in range(0, len(images), BATCH)]


# -- folding and quantizing through the tools -----------------------------------------------
def quiet_tool(main, argv, keep=()):
    """Run a tool's ``main``; print only its stdout lines that start with one of ``keep``."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    for line in out.getvalue().splitlines():
        if line.startswith(keep):
            print(f"  {line}")
    if code != 0:
        sys.exit(f"{main.__module__} failed ({code}):\n{out.getvalue()}")


def fold(files, tmp):
    model, weights = tmp / "folded.prototxt", tmp / "folded.caffemodel"
    print("tools/fold_bn on open_nsfw:")
    quiet_tool(fold_cli.main, ["--model", str(files.prototxt), "--weights", str(files.caffemodel),
                               "--out_model", str(model), "--out_weights", str(weights)],
               keep=("layers:",))
    return model, weights


def quantize(model, weights, bits, folder, tmp):
    out = tmp / f"quantized_w{bits}.prototxt"
    print(f"tools/quantize --widths conv={bits},fc={bits},act=8 --all_layers --per_channel "
          f"--bias int32:")
    start = time.perf_counter()
    quiet_tool(quantize_cli.main,
               ["--model", str(model), "--weights", str(weights), "--model_quantized", str(out),
                "--trimming_mode", "dynamic_fixed_point",
                "--widths", f"conv={bits},fc={bits},act=8",
                "--all_layers", "--per_channel", "--bias", "int32", "--images", str(folder),
                *PREPARE, "--score", "agreement", "--score_blob", "prob", "--quiet"],
               keep=("Baseline", "Dynamic fixed point net", "within", "outside", "Weights and"))
    print(f"  ({time.perf_counter() - start:.0f} s)")
    return Net.load(out, weights)


# -- the ONNX files -------------------------------------------------------------------------
class OnnxFile:
    """One exported model, its onnxruntime session, and what was measured on it."""

    def __init__(self, name, bits, activations, model, config=None):
        self.name, self.bits, self.activations = name, bits, activations
        self.model = with_output(model, LOGIT_BLOB)
        self.counts = onnxruntime_nodes(self.model)
        options = ort.SessionOptions()
        for key, value in (config or {}).items():
            options.add_session_config_entry(key, value)
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(self.model.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.rates = []                 # images/s, one per round
        self.agreement = self.differing = None

    def run(self, images):
        prob, logits = self.session.run(["prob", LOGIT_BLOB], {self.input: images})
        return prob, logits

    def integer_kernels(self):
        found = {op: n for op, n in self.counts.items() if op in INTEGER_KERNELS}
        return ", ".join(f"{n} {op}" for op, n in sorted(found.items())) or "none"


def with_output(model, value):
    """A copy of ``model`` that also outputs ``value`` (a float tensor the graph computes)."""
    if not any(value in node.output for node in model.graph.node):
        sys.exit(f"the exported graph has no value named {value}")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if value not in [o.name for o in copy.graph.output]:
        copy.graph.output.append(onnx.helper.make_tensor_value_info(value, onnx.TensorProto.FLOAT,
                                                                    None))
    return copy


def export_all(folded, quantized):
    files = [OnnxFile("float.onnx", 32, "float", export_onnx(folded).model)]
    for bits, net in quantized.items():
        for activations in ACTIVATIONS:
            export = export_quantized(net, "qdq", activations=activations)
            for note in export.notes:
                print(f"  note: {note}")
            files.append(OnnxFile(f"qdq_w{bits}_{activations}.onnx", bits, activations,
                                  export.model))
            if (bits, activations) == (8, "unsigned"):
                files.append(OnnxFile(f"qdq_w8_unsigned.onnx +{PRECISION_OPTION}", bits,
                                      activations, export.model, {PRECISION_OPTION: "1"}))
    for item in files:
        line = f"{item.name}: {describe_fusion(item.counts)}"
        if item.counts.get("FusedConv"):
            line += (f" (and {item.counts['FusedConv']} FusedConv: float Conv fused with its "
                     f"Add/Relu, not counted above)")
        print(line)
    return files


# -- speed ----------------------------------------------------------------------------------
def images_per_second(run, seconds):
    """Run ``run`` (one batch of BATCH images) until ``seconds`` have passed; images/s."""
    runs, start = 0, time.perf_counter()
    while True:
        run()
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return runs * BATCH / elapsed


def time_onnx(files, batch, seconds, rounds):
    """Interleaved rounds (the order turns each round); each file's median round."""
    for item in files:
        item.run(batch)                               # warm-up
    for round_index in range(rounds):
        order = files[round_index % len(files):] + files[:round_index % len(files)]
        for item in order:
            item.rates.append(images_per_second(lambda: item.run(batch), seconds / rounds))
    base = statistics.median(files[0].rates)
    width = max(len(item.name) for item in files)
    print(f"onnxruntime images/s (batch {BATCH}, {THREADS} threads, {rounds} rounds of "
          f"{seconds / rounds:.1f} s per file; median, ratio to float.onnx):")
    for item in files:
        rounds_text = ", ".join(f"{r:.1f}" for r in item.rates)
        print(f"  {item.name:{width}s} {statistics.median(item.rates):7.1f}  "
              f"{statistics.median(item.rates) / base:5.2f}x   (rounds: {rounds_text})")


# -- the reference runtimes: numpy float, --backend fixed ------------------------------------
def run_references(folded, quantized, images):
    """Every photo through the numpy runtime (float folded net) and ``--backend fixed`` (each
    quantized net), batch by batch in turn; returns the outputs and the per-batch seconds of
    the full batches after the first."""
    runtimes = {"numpy": (folded, make_runtime(folded, "numpy"))}
    for bits, net in quantized.items():
        runtimes[f"fixed_w{bits}"] = (net, make_runtime(net, "fixed"))
    outputs = {name: {"prob": [], LOGIT_BLOB: []} for name in runtimes}
    seconds = {name: [] for name in runtimes}
    for index, batch in enumerate(batches(images)):
        for name, (net, runtime) in runtimes.items():
            start = time.perf_counter()
            blobs = runtime.forward({net.input_blobs[0]: batch})
            elapsed = time.perf_counter() - start
            if index > 0 and len(batch) == BATCH:
                seconds[name].append(elapsed)
            for blob in outputs[name]:
                outputs[name][blob].append(blobs[blob])
    for name, (net, runtime) in runtimes.items():
        if name.startswith("fixed"):
            print(f"  {name}: {runtime.describe_how()}")
    return ({name: {blob: np.concatenate(v) for blob, v in blobs.items()}
             for name, blobs in outputs.items()}, seconds)


def check_files(files, images, references):
    """Top-1 agreement with the float net and fc_nsfw values differing from --backend fixed."""
    reference = references["numpy"]["prob"]
    top1 = reference.argmax(axis=1)
    print(f"float (numpy runtime, folded): top-1 nsfw on {int(top1.sum())} of {len(top1)} photos, "
          f"P(nsfw) from {reference[:, 1].min():.4f} to {reference[:, 1].max():.4f}")
    for item in files:
        outputs = [item.run(batch) for batch in batches(images)]
        prob = np.concatenate([p for p, _ in outputs])
        logits = np.concatenate([x for _, x in outputs])
        item.agreement = float(np.mean(prob.argmax(axis=1) == top1))
        delta = np.abs(prob[:, 1] - reference[:, 1])
        line = (f"  {item.name}: top-1 agreement {item.agreement:.4f}, |P(nsfw) - float| mean "
                f"{delta.mean():.5f} max {delta.max():.5f}")
        if item.bits != 32:
            fixed = references[f"fixed_w{item.bits}"][LOGIT_BLOB]
            item.differing = int(np.count_nonzero(logits != fixed))
            largest = float(np.abs(logits - fixed).max())
            line += (f"; {LOGIT_BLOB}: {item.differing} of {fixed.size} values differ from "
                     f"--backend fixed (largest difference {largest:.6g})")
        else:
            largest = float(np.abs(logits - references["numpy"][LOGIT_BLOB]).max())
            line += f"; {LOGIT_BLOB} within {largest:.3g} of the numpy runtime"
        print(line)


def runtime_rates(seconds):
    """images/s per runtime: BATCH over the median seconds of its timed batches."""
    return {name: BATCH / statistics.median(times) for name, times in seconds.items() if times}


# -- the summary ----------------------------------------------------------------------------
def summary(files, rates, references):
    base = statistics.median(files[0].rates)
    top1 = references["numpy"]["prob"].argmax(axis=1)
    print()
    print("| file / runtime | weights bits | activations | fused integer kernels | images/s | "
          "ratio to float | top-1 agreement | fc_nsfw values differing from fixed |")
    print("|---|---|---|---|---|---|---|---|")
    for item in files:
        rate = statistics.median(item.rates)
        differing = "-" if item.differing is None else f"{item.differing} of {len(top1) * 2}"
        print(f"| {item.name} | {item.bits if item.bits != 32 else 'float32'} | "
              f"{item.activations} | {item.integer_kernels()} | {rate:.1f} | {rate / base:.2f}x | "
              f"{item.agreement:.4f} | {differing} |")
    numpy_rate = rates["numpy"]
    print(f"| numpy runtime, float folded net | float32 | float | - | {numpy_rate:.1f} | 1.00x | "
          f"1.0000 | - |")
    for bits in WEIGHT_BITS:
        rate = rates[f"fixed_w{bits}"]
        agreement = np.mean(references[f"fixed_w{bits}"]["prob"].argmax(axis=1) == top1)
        print(f"| --backend fixed | {bits} | 8-bit integers | all but prob (Softmax) | "
              f"{rate:.1f} | {rate / numpy_rate:.2f}x | {agreement:.4f} | 0 (itself) |")
    print(f"(ratio to float: onnxruntime files to float.onnx, the runtimes to the numpy runtime; "
          f"{len(top1)} photos, fc_nsfw has 2 values a photo)")


def measure(files, tmp, args):
    paths = link_photos(tmp / "photos")
    images = prepared(paths)
    model, weights = fold(files, tmp)
    folded = Net.load(model, weights)
    quantized = {bits: quantize(model, weights, bits, tmp / "photos", tmp) for bits in WEIGHT_BITS}
    onnx_files = export_all(folded, quantized)
    time_onnx(onnx_files, images[:BATCH], args.seconds, args.rounds)
    print(f"numpy runtime (float) and --backend fixed over the {len(images)} photos, "
          f"batches of {BATCH}:")
    references, seconds = run_references(folded, quantized, images)
    rates = runtime_rates(seconds)
    for name, rate in rates.items():
        print(f"  {name}: {rate:.2f} images/s (median of {len(seconds[name])} batches), "
              f"{rate / rates['numpy']:.2f}x the numpy runtime")
    check_files(onnx_files, images, references)
    summary(onnx_files, rates, references)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=9.0,
                        help="onnxruntime timing per file, all rounds together (default 9)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = parser.parse_args()
    began = time.perf_counter()
    print(cpu_line())
    print(f"onnxruntime {ort.__version__}, numpy {np.__version__}")
    print(BACKGROUND)
    files = fetch_model("open_nsfw")
    with tempfile.TemporaryDirectory() as tmp:
        measure(files, pathlib.Path(tmp), args)
    print(f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
