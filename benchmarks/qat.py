"""Quantization-aware training on the LeNet example. Each row prepares a quantized description
of the from-scratch float net: Ristretto layers at given widths (``tools/quantize --widths``)
and/or training-time quantizers (``tools/quantize_weights --training``: TWN, DoReFa, BNN). It
fine-tunes it with ``tools/train --qat activations`` (Ristretto layers trim their weights,
inputs and outputs while they train; the quantizers train through their straight-through
rules) and scores the written files with ``tools/evaluate`` (the numpy runtime) on all 10,000
test images.

Run from the repository root, after ``tools/make_lenet_fashion --lmdb_only`` and the from-scratch
run (``tools/train --solver examples/lenet_fashion/lenet_solver.prototxt``, which writes
``examples/lenet_fashion/lenet_iter_20000.caffemodel``):

    python benchmarks/qat.py [--rows dfp4,conv2,twn,dorefa,bnn] (also: dfp4_layer) [--iterations 4000] [--out DIR]

It prints one table: method, widths (per layer: weight bits / output bits), parameter bytes as
stored (packed; biases included) against float32, accuracy before and after training, the float
accuracy and the training time.
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
from ristretto_py.cli import quantize as quantize_cli
from ristretto_py.cli import quantize_weights as quantize_weights_cli
from ristretto_py.cli import train as train_cli
from ristretto_py.passes.cost import layer_costs
from ristretto_py.passes.training_report import quantization_rows

EXAMPLE = pathlib.Path("examples/lenet_fashion")
MODEL = EXAMPLE / "lenet_train_test_full.prototxt"
FLOAT_WEIGHTS = EXAMPLE / "lenet_iter_20000.caffemodel"
TEST_BATCHES = 100                       # 100 batches of 100: the 10,000 test images

# Each row: the method's name; tools/quantize arguments (Ristretto layers at given widths) or
# None for a float net; tools/quantize_weights --training arguments or None; the solver's
# base_lr. Every row trains with --qat activations.
ROWS = {
    "dfp4": {"method": "DFP, per-channel lengths",
             "quantize": ["--widths", "conv=4,fc=4,act=8", "--per_channel"]},
    "dfp4_layer": {"method": "DFP", "quantize": ["--widths", "conv=4,fc=4,act=8"]},
    "conv2": {"method": "TWN conv + DFP fc",
              "quantize": ["--widths", "conv=2,fc=4,act=8", "--per_channel"],
              "training": ["--layer_type", "conv=ternary"]},
    "twn": {"method": "TWN + DFP activations", "quantize": ["--widths", "conv=2,fc=2,act=8"],
            "training": ["--method", "ternary"]},
    "dorefa": {"method": "DoReFa (first/last float)",
               "training": ["--method", "dorefa:2:max", "--activations", "dorefa:4",
                            "--keep_first_last"]},
    "bnn": {"method": "BNN (first/last float)",
            "training": ["--method", "scaled_binary", "--activations", "sign",
                         "--keep_first_last"]},
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


def weight_bytes(model, weights):
    """(bytes as the quantized description stores them, float32 bytes) of every layer's
    parameters, from the cost model."""
    costs = layer_costs(Net.load(model, weights))
    quantized = sum(c.param_bytes for c in costs)
    floats = sum(c.param_bytes for c in layer_costs(Net.load(MODEL, FLOAT_WEIGHTS)))
    return quantized, floats


def prepare(name, directory):
    """The row's description: Ristretto layers at --widths, then training-time quantizers."""
    row = ROWS[name]
    model = MODEL
    if row.get("quantize"):
        model = directory / f"{name}_widths.prototxt"
        _quiet(quantize_cli.main, ["--model", str(MODEL), "--weights", str(FLOAT_WEIGHTS),
                                   "--model_quantized", str(model), "--trimming_mode",
                                   "dynamic_fixed_point", *row["quantize"],
                                   "--iterations", "10", "--quiet"])
    quantizers = row.get("training")
    if quantizers:
        prepared = directory / f"{name}.prototxt"
        _quiet(quantize_weights_cli.main, ["--model", str(model), "--weights",
                                           str(FLOAT_WEIGHTS), "--training", *quantizers,
                                           "--out_model", str(prepared)])
        model = prepared
    return model


def run_row(name, directory, iterations):
    method, base_lr = ROWS[name]["method"], ROWS[name].get("base_lr", BASE_LR)
    quantized = prepare(name, directory)
    before = accuracy(quantized, FLOAT_WEIGHTS)
    solver = directory / f"{name}_solver.prototxt"
    solver.write_text(SOLVER.format(net=quantized, test_batches=TEST_BATCHES, base_lr=base_lr,
                                    iterations=iterations, first_step=iterations * 6 // 10,
                                    second_step=iterations * 85 // 100,
                                    prefix=directory / name))
    start = time.perf_counter()
    _quiet(train_cli.main, ["--solver", str(solver), "--weights", str(FLOAT_WEIGHTS),
                            "--qat", "activations", "--quiet"])
    seconds = time.perf_counter() - start
    trained = directory / f"{name}_iter_{iterations}.caffemodel"
    after = accuracy(quantized, trained)
    stored, floats = weight_bytes(quantized, trained)
    return {"row": name, "method": method, "widths": widths_text(quantized),
            "weight_bytes": stored, "float_bytes": floats, "before": before,
            "accuracy": after, "seconds": seconds}


def widths_text(model):
    """conv/fc weight bits and activation bits as the quantization table gives them."""
    rows = quantization_rows(Net.load(model))
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
    if not FLOAT_WEIGHTS.exists():
        parser.error(f"{FLOAT_WEIGHTS} is missing: run tools/train --solver "
                     f"{EXAMPLE / 'lenet_solver.prototxt'} first")
    with tempfile.TemporaryDirectory() as scratch:
        directory = pathlib.Path(args.out or scratch)
        directory.mkdir(parents=True, exist_ok=True)
        float_accuracy = accuracy(MODEL, FLOAT_WEIGHTS)
        print(f"float LeNet: {float_accuracy:.2%} on 10,000 test images; "
              f"{args.iterations} training iterations per row")
        print(f"{'method':26s} {'widths (weight/output bits)':40s} {'weight bytes':>20s} {'before':>8s} "
              f"{'after':>8s} {'float':>8s} {'time':>7s}")
        for name in rows:
            row = run_row(name, directory, args.iterations)
            print(f"{row['method']:26s} {row['widths']:40s} "
                  f"{row['weight_bytes']:9.0f} / {row['float_bytes']:8.0f} "
                  f"{row['before']:8.2%} {row['accuracy']:8.2%} {float_accuracy:8.2%} "
                  f"{row['seconds']:6.0f}s", flush=True)


if __name__ == "__main__":
    main()
