"""Quantization-aware training on the examples. Each row prepares a quantized description of a
float net: the LeNet example trained from scratch, or the DenseNet example with its BatchNorm
layers folded (``tools/fold_bn``). Ristretto layers at given widths (``tools/quantize
--widths``) and/or training-time quantizers (``tools/quantize_weights --training``: TWN,
DoReFa, BNN) are applied. The row then fine-tunes with ``tools/train --qat activations
--frozen_bn``: Ristretto layers trim their weights, inputs and outputs while they train, the
quantizers train through their straight-through rules, and BatchNorm statistics stay fixed. The
written files are scored with ``tools/evaluate`` (the numpy runtime) on all 10,000 test images.

Run from the repository root, after ``tools/make_lenet_fashion --lmdb_only`` and the two float
runs (``tools/train --solver examples/lenet_fashion/lenet_solver.prototxt``, which writes
``lenet_iter_20000.caffemodel``, and ``tools/train --solver
examples/densenet_fashion/densenet_solver.prototxt``, which writes ``densenet_iter_3000``):

    python benchmarks/qat.py [--rows dfp4,conv2,twn,dorefa,bnn,densenet] [--iterations 4000]
                             [--out DIR]

(also the row dfp4_layer: per-layer instead of per-channel lengths). It prints one table:
method, widths (per layer: weight bits / output bits), parameter bytes as stored (packed;
biases included) against float32, accuracy before and after training, the float net's accuracy,
the training iterations (the DenseNet row takes 1,000) and the training time.
"""
import argparse
import contextlib
import io
import json
import pathlib
import tempfile
import time

from ristretto_py import Net
from ristretto_py.cli import evaluate as evaluate_cli
from ristretto_py.cli import fold_bn as fold_bn_cli
from ristretto_py.cli import quantize as quantize_cli
from ristretto_py.cli import quantize_weights as quantize_weights_cli
from ristretto_py.cli import train as train_cli
from ristretto_py.passes.cost import layer_costs
from ristretto_py.passes.training_report import quantization_rows

EXAMPLE = pathlib.Path("examples/lenet_fashion")
MODEL = EXAMPLE / "lenet_train_test_full.prototxt"
FLOAT_WEIGHTS = EXAMPLE / "lenet_iter_20000.caffemodel"
DENSENET = pathlib.Path("examples/densenet_fashion")
NETS = {"LeNet": (MODEL, FLOAT_WEIGHTS, EXAMPLE / "lenet_solver.prototxt"),
        "DenseNet": (DENSENET / "densenet_train_test.prototxt",
                     DENSENET / "densenet_iter_3000.caffemodel",
                     DENSENET / "densenet_solver.prototxt")}
TEST_BATCHES = 100                       # 100 batches of 100: the 10,000 test images

# Each row: the method's name; the net (LeNet unless named) and whether its BatchNorm layers
# are folded first (tools/fold_bn); tools/quantize arguments (Ristretto layers at given widths)
# or None for a float net; tools/quantize_weights --training arguments or None; the solver's
# base_lr and iterations (default: --iterations). Every row trains with --qat activations.
ROWS = {
    "dfp4": {"method": "DFP, per-channel lengths",
             "quantize": ["--widths", "conv=4,fc=4,act=8", "--per_channel"]},
    "dfp4_layer": {"method": "DFP", "quantize": ["--widths", "conv=4,fc=4,act=8"]},
    "conv2": {"method": "TWN conv + DFP fc",
              "quantize": ["--widths", "conv=2,fc=4,act=8", "--per_channel"],
              "training": ["--layer_type", "conv=ternary"]},
    "twn": {"method": "TWN + DFP activations", "quantize": ["--widths", "act=8"],
            "training": ["--method", "ternary"]},
    "dorefa": {"method": "DoReFa (first/last float)",
               "training": ["--method", "dorefa:2:max", "--activations", "dorefa:4",
                            "--keep_first_last"]},
    "bnn": {"method": "BNN (first/last float)",
            "training": ["--method", "scaled_binary", "--activations", "sign",
                         "--keep_first_last"]},
    "densenet": {"method": "DenseNet BN folded, DFP", "net": "DenseNet", "fold_bn": True,
                 "quantize": ["--widths", "conv=8,fc=8,act=8", "--per_channel"],
                 "base_lr": 1e-4, "iterations": 1000},
}
BASE_LR = 1e-3

SOLVER = """net: "{net}"
test_iter: {test_batches}
test_interval: {iterations}
test_initialization: false
base_lr: {base_lr}
momentum: 0.9
weight_decay: 0.0005
lr_policy: "multistep"
gamma: 0.1
stepvalue: {first_step}
stepvalue: {second_step}
display: 500
max_iter: {iterations}
snapshot: 0
snapshot_prefix: "{prefix}"
random_seed: 1
solver_mode: CPU
"""


def _quiet(main, argv):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = main(argv)
    if code:
        raise SystemExit(f"{main.__module__} {' '.join(argv)} failed with exit code {code}")
    return out.getvalue()


def accuracy(model, weights):
    text = _quiet(evaluate_cli.main, ["--model", str(model), "--weights", str(weights),
                                      "--iterations", str(TEST_BATCHES), "--json", "--quiet"])
    return json.loads(text)["scores"]["accuracy"]


def weight_bytes(model, weights, float_model, float_weights):
    """(parameter bytes as the quantized description stores them, as float32), from the cost
    model."""
    quantized = sum(c.param_bytes for c in layer_costs(Net.load(model, weights)))
    floats = sum(c.param_bytes for c in layer_costs(Net.load(float_model, float_weights)))
    return quantized, floats


def prepare(name, directory):
    """(description, float weights to start from): the row's net, BatchNorm folded if asked,
    then Ristretto layers at --widths, then training-time quantizers."""
    row = ROWS[name]
    model, weights, _ = NETS[row.get("net", "LeNet")]
    if row.get("fold_bn"):
        folded = directory / f"{name}_folded.prototxt"
        folded_weights = directory / f"{name}_folded.caffemodel"
        _quiet(fold_bn_cli.main, ["--model", str(model), "--weights", str(weights),
                                  "--out_model", str(folded), "--out_weights",
                                  str(folded_weights)])
        model, weights = folded, folded_weights
    if row.get("quantize"):
        quantized = directory / f"{name}_widths.prototxt"
        _quiet(quantize_cli.main, ["--model", str(model), "--weights", str(weights),
                                   "--model_quantized", str(quantized), "--trimming_mode",
                                   "dynamic_fixed_point", *row["quantize"],
                                   "--iterations", "10", "--quiet"])
        model = quantized
    if row.get("training"):
        prepared = directory / f"{name}.prototxt"
        _quiet(quantize_weights_cli.main, ["--model", str(model), "--weights", str(weights),
                                           "--training", *row["training"],
                                           "--out_model", str(prepared)])
        model = prepared
    return model, weights


def run_row(name, directory, iterations):
    row = ROWS[name]
    base_lr, iterations = row.get("base_lr", BASE_LR), row.get("iterations", iterations)
    float_model, float_weights, _ = NETS[row.get("net", "LeNet")]
    quantized, weights = prepare(name, directory)
    before = accuracy(quantized, weights)
    solver = directory / f"{name}_solver.prototxt"
    solver.write_text(SOLVER.format(net=quantized, test_batches=TEST_BATCHES, base_lr=base_lr,
                                    iterations=iterations, first_step=iterations * 6 // 10,
                                    second_step=iterations * 85 // 100,
                                    prefix=directory / name))
    start = time.perf_counter()
    _quiet(train_cli.main, ["--solver", str(solver), "--weights", str(weights),
                            "--qat", "activations", "--frozen_bn", "--quiet"])
    seconds = time.perf_counter() - start
    trained = directory / f"{name}_iter_{iterations}.caffemodel"
    after = accuracy(quantized, trained)
    stored, floats = weight_bytes(quantized, trained, float_model, float_weights)
    return {"row": name, "method": row["method"], "widths": widths_text(quantized, trained),
            "weight_bytes": stored, "float_bytes": floats, "before": before,
            "accuracy": after, "float": accuracy(float_model, float_weights),
            "iterations": iterations, "seconds": seconds}


def widths_text(model, weights):
    """Per learned layer, weight bits / output bits (the quantization table's)."""
    rows = quantization_rows(Net.load(model, weights))
    if len(rows) > 6:           # a deep net: the distinct pairs
        pairs = sorted({f"{r['weight_bits']}/{r['output_bits']}" for r in rows})
        return f"{len(rows)} layers: " + ", ".join(pairs)
    return " ".join(f"{r['layer']}:{r['weight_bits']}/{r['output_bits']}" for r in rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=",".join(r for r in ROWS if r != "dfp4_layer"))
    parser.add_argument("--iterations", type=int, default=4000)
    parser.add_argument("--out", help="keep the files here (default: a temporary folder)")
    args = parser.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    unknown = set(rows) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; choose from {sorted(ROWS)}")
    for name in rows:
        _, weights, solver = NETS[ROWS[name].get("net", "LeNet")]
        if not weights.exists():
            parser.error(f"{weights} is missing: run tools/train --solver {solver} first")
    with tempfile.TemporaryDirectory() as scratch:
        directory = pathlib.Path(args.out or scratch)
        directory.mkdir(parents=True, exist_ok=True)
        print(f"{'method':26s} {'widths (weight/output bits)':40s} {'weight bytes':>20s} "
              f"{'before':>8s} {'after':>8s} {'float':>8s} {'iterations':>10s} {'time':>7s}")
        for name in rows:
            row = run_row(name, directory, args.iterations)
            print(f"{row['method']:26s} {row['widths']:40s} "
                  f"{row['weight_bytes']:9.0f} / {row['float_bytes']:8.0f} "
                  f"{row['before']:8.2%} {row['accuracy']:8.2%} {row['float']:8.2%} "
                  f"{row['iterations']:10d} {row['seconds']:6.0f}s", flush=True)


if __name__ == "__main__":
    main()
