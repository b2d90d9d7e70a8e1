"""Both ``--compat`` modes are builds of Ristretto: its range reading after the whole forward pass
(an in-place ReLU's output, not the layer's own) under the "ristretto" integer-length rule, the
true layer output under "safe"; inputs trimmed in place, so that a later reader of the blob (or
of a blob sharing its data) sees the trimmed values, on every backend; and identical written
fields under gpu and cpu. Expected values are worked out by hand in the comments."""
import pathlib

import numpy as np
import pytest

from ristretto_py import Net
from ristretto_py.lmdb_write import make_datum, write_lmdb
from ristretto_py.passes import ranges
from ristretto_py.passes.ristretto_quantize import RistrettoQuantizer
from ristretto_py.runtime import FixedRuntime, NumpyRuntime, OnnxRuntime
from conftest import net_param, write_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lenet_fashion"
MODEL, WEIGHTS = EXAMPLE / "lenet_train_test.prototxt", EXAMPLE / "lenet_fashion.caffemodel"


# -- (a) the range reading ---------------------------------------------------------------------
# Two 2x2 images scaled by 1/16: A = [1, 2, 3, 4] (label 0) and B = zeros (label 1).
# conv (1x1, w = -3, b = 3):  A -> [0, -3, -6, -9], B -> [3, 3, 3, 3]; after its in-place ReLU
#   A -> 0, B -> 3. True max |out| 9, read after the pass 3.
# ip1 (4 -> 1, w = -1, b = 2): A -> 2, B -> 2 - 12 = -10; after its ReLU 2 and 0.
#   True max |out| 10, read after the pass 2.
# ip2 (1 -> 2, w = [1, -1], b = [0, 1]): A (2) -> [2, -1], class 0; B (0) -> [0, 1], class 1.
def _tiny_quantize_net(tmp_path):
    db = tmp_path / "tiny_lmdb"
    images = (np.array([[16, 32], [48, 64]], np.uint8), np.zeros((2, 2), np.uint8))
    write_lmdb(db, [make_datum(image, label) for image, label in zip(images, (0, 1))])
    text = "".join(
        f'layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: {phase} }} '
        f'transform_param {{ scale: 0.0625 }} data_param {{ source: "{db}" batch_size: 2 '
        'backend: LMDB } }\n' for phase in ("TRAIN", "TEST"))
    text += (
        'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
        'convolution_param { num_output: 1 kernel_size: 1 } }\n'
        'layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }\n'
        'layer { name: "ip1" type: "InnerProduct" bottom: "conv" top: "ip1" '
        'inner_product_param { num_output: 1 } }\n'
        'layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }\n'
        'layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" '
        'inner_product_param { num_output: 2 } }\n'
        'layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" '
        'include { phase: TEST } }\n')
    blobs = {"conv": [np.full((1, 1, 1, 1), -3.0), [3.0]],
             "ip1": [np.full((1, 4), -1.0), [2.0]],
             "ip2": [[[1.0], [-1.0]], [0.0, 1.0]]}
    return write_model(tmp_path, text, blobs)


@pytest.mark.parametrize("compat", ["gpu", "cpu"])
@pytest.mark.parametrize("rule", ["ristretto", "safe"])
def test_range_reading_follows_the_rule_not_the_build(tmp_path, compat, rule):
    model, weights = _tiny_quantize_net(tmp_path)
    result = RistrettoQuantizer(model, weights, 1, "integer_power_of_2_weights", 1, compat=compat,
                                integer_length=rule, progress=False).run()
    assert result.baseline == 1.0
    found = {name: (r.max_in, r.max_out) for name, r in result.ranges.items()}
    layers = {layer.name: layer.quantization_param for layer in result.quantized.layer}
    written = {name: (layers[name].fl_layer_in, layers[name].fl_layer_out)
               for name in ("conv", "ip1", "ip2")}
    if rule == "ristretto":
        # After the pass: conv and ip1 hold their ReLUs' outputs (max 3 and 2).
        assert found == {"conv": (4.0, 3.0), "ip1": (3.0, 2.0), "ip2": (2.0, 2.0)}
        # il = ceil(log2 max): conv in 2, out 2; ip1 in 2, out 1; ip2 in 1, out 1.
        # 8-bit activations write fl = 8 - il.
        assert written == {"conv": (6, 6), "ip1": (6, 7), "ip2": (7, 7)}
    else:
        # True outputs: 9 and 10 (negative pre-activations).
        assert found == {"conv": (4.0, 9.0), "ip1": (3.0, 10.0), "ip2": (2.0, 2.0)}
        # il = floor(log2 max) + 2: conv in 4, out 5; ip1 in 3, out 5; ip2 in 3, out 3.
        assert written == {"conv": (4, 3), "ip1": (5, 3), "ip2": (5, 5)}
    for name in written:
        q = layers[name]
        assert (q.bw_layer_in, q.bw_layer_out, q.exp_min, q.exp_max) == (8, 8, -8, -1)


def test_analyze_ranges_reading_by_rule_on_the_tiny_net(tmp_path):
    model, weights = _tiny_quantize_net(tmp_path)
    net = Net.load(model, weights, phase="TRAIN")
    x = np.stack([np.arange(1, 5, dtype=np.float32).reshape(1, 2, 2), np.zeros((1, 2, 2), np.float32)])
    batch = [{"data": x, "label": np.array([0, 1], np.float32)}]
    after = ranges.analyze_ranges(net, batch, rule="ristretto")
    true = ranges.analyze_ranges(net, batch, rule="safe")
    assert (after["conv"].max_out, after["ip1"].max_out) == (3.0, 2.0)
    assert (true["conv"].max_out, true["ip1"].max_out) == (9.0, 10.0)
    # il_params: ceil(log2 3 + 1) = 3 for conv; the safe rule counts the bias (3 and 2).
    assert ranges.integer_lengths(after["conv"])[2] == 3
    assert ranges.integer_lengths(true["ip1"], "safe")[2] == 3


# -- (b) inputs trimmed in place ---------------------------------------------------------------
# ConvolutionRistretto "cq" reads "a", a Split top of "data" (Caffe's Split tops share the
# bottom's data, and Flatten's top shares its bottom's). 4-bit inputs with fl 0: clamp to
# [-8, 7], round to integers. Ties: 2.5 -> 2 (gpu, half to even) or 3 (cpu, half away from
# zero); -0.5 -> -0 or -1; 5.5 -> 6 in both.
X = np.array([0.4, 2.5, 3.5, -9.0, 100.0, -0.5, 5.5, 1.25], np.float32).reshape(1, 1, 1, 8)
TRIMMED = {"gpu": [0, 2, 4, -8, 7, 0, 6, 1], "cpu": [0, 3, 4, -8, 7, -1, 6, 1]}
SHARED = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 1 dim: 8 } } }\n'
          'layer { name: "before" type: "Convolution" bottom: "data" top: "before" '
          'convolution_param { num_output: 1 kernel_size: 1 bias_term: false } }\n'
          'layer { name: "sp" type: "Split" bottom: "data" top: "a" top: "b" }\n'
          'layer { name: "fl" type: "Flatten" bottom: "b" top: "flat" }\n'
          'layer { name: "cq" type: "ConvolutionRistretto" bottom: "a" top: "cq" '
          'convolution_param { num_output: 1 kernel_size: 1 bias_term: false } '
          'quantization_param { bw_layer_in: 4 fl_layer_in: 0 bw_layer_out: 8 fl_layer_out: 0 '
          'bw_params: 8 fl_params: 0 } }\n'
          'layer { name: "after" type: "Convolution" bottom: "data" top: "after" '
          'convolution_param { num_output: 1 kernel_size: 1 bias_term: false } }\n'
          'layer { name: "after_b" type: "Convolution" bottom: "b" top: "after_b" '
          'convolution_param { num_output: 1 kernel_size: 1 bias_term: false } }\n'
          'layer { name: "after_flat" type: "InnerProduct" bottom: "flat" top: "after_flat" '
          'inner_product_param { num_output: 8 bias_term: false } }\n')
UNIT = np.ones((1, 1, 1, 1), np.float32)
SHARED_BLOBS = {"before": [UNIT], "cq": [2 * UNIT], "after": [UNIT], "after_b": [UNIT],
                "after_flat": [np.eye(8, dtype=np.float32)]}


def _shared_net(text=SHARED):
    return Net.from_proto(net_param(text, SHARED_BLOBS))


@pytest.mark.parametrize("compat", ["gpu", "cpu"])
@pytest.mark.parametrize("backend", [NumpyRuntime, OnnxRuntime, FixedRuntime])
def test_later_readers_see_the_trimmed_input(compat, backend):
    net = _shared_net()
    trimmed = np.array(TRIMMED[compat], np.float32)
    x = X.copy()
    runtime = backend(net, compat=compat)
    for _ in range(2):                 # the same batch twice: the caller's array is never written
        blobs = runtime.forward({"data": x})
        np.testing.assert_array_equal(x, X)
        np.testing.assert_array_equal(blobs["before"].ravel(), X.ravel())   # ran before cq
        for name in ("data", "a", "b", "after", "after_b", "flat", "after_flat"):
            np.testing.assert_array_equal(blobs[name].ravel(), trimmed, err_msg=name)
        np.testing.assert_array_equal(blobs["cq"].ravel(), 2 * trimmed)


@pytest.mark.parametrize("compat", ["gpu", "cpu"])
def test_a_reader_after_a_layer_left_to_numpy_sees_the_trimmed_input(compat):
    # Stochastic rounding has no ONNX form: cq runs after the session, and "after", which reads
    # the blob cq trimmed, must run after it. With fl_layer_in 0, stochastic rounding leaves the
    # integers and clamped values of X alone: -9 -> -8, 100 -> 7; the others vary with the draw.
    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 1 dim: 8 } } }\n'
            + SHARED.split("\n")[4].replace('bottom: "a"', 'bottom: "data"').replace(
                "fl_params: 0", "fl_params: 0 rounding_scheme: STOCHASTIC") + "\n"
            + SHARED.split("\n")[5] + "\n")
    net = Net.from_proto(net_param(text, SHARED_BLOBS))
    onnx = OnnxRuntime(net, compat=compat, seed=5)
    assert onnx.export.tail == [1, 2]
    ours = NumpyRuntime(net, compat=compat, seed=5).forward({"data": X})
    theirs = onnx.forward({"data": X})
    assert theirs["data"].ravel()[3] == -8 and theirs["data"].ravel()[4] == 7
    np.testing.assert_array_equal(theirs["data"], np.round(theirs["data"]))
    for name in ("data", "after", "cq"):
        np.testing.assert_array_equal(theirs[name], ours[name], err_msg=name)
    np.testing.assert_array_equal(theirs["after"], theirs["data"])


@pytest.mark.parametrize("compat", ["gpu", "cpu"])
def test_trimming_in_place_leaves_recorded_snapshots_intact(compat):
    # The searches' caches keep the blobs in front of a layer and resume from them many times:
    # trimming in place must not reach into a snapshot.
    net = _shared_net()
    index = [layer.name for layer in net.layers].index("cq")
    runtime = NumpyRuntime(net, compat=compat)
    blobs, snapshots = runtime.record({"data": X}, [index])
    snapshot = snapshots[index]
    for name in ("data", "a", "b", "flat"):
        np.testing.assert_array_equal(snapshot[name].ravel(), X.ravel(), err_msg=name)
    for _ in range(2):
        resumed = runtime.resume(snapshot, index)
        for name in ("after", "after_b", "after_flat", "cq"):
            np.testing.assert_array_equal(resumed[name], blobs[name], err_msg=name)
        np.testing.assert_array_equal(snapshot["data"], X)


# -- (c) the example: one written file for both builds ------------------------------------------
@pytest.mark.parametrize("mode, iterations", [("dynamic_fixed_point", 1), ("minifloat", 1),
                                              ("integer_power_of_2_weights", 1)])
def test_both_builds_write_the_same_fields_on_the_example(mode, iterations, monkeypatch):
    monkeypatch.chdir(ROOT)          # the example's LMDB paths are relative, as in Caffe
    results = {compat: RistrettoQuantizer(MODEL, WEIGHTS, iterations, mode, 1, compat=compat,
                                          progress=False).run() for compat in ("gpu", "cpu")}
    gpu, cpu = results["gpu"], results["cpu"]
    assert gpu.chosen == cpu.chosen
    fields = {compat: {layer.name: layer.quantization_param.SerializeToString()
                       for layer in r.quantized.layer if layer.HasField("quantization_param")}
              for compat, r in results.items()}
    assert len(fields["gpu"]) == 4 and fields["gpu"] == fields["cpu"]
    ip1 = {layer.name: layer for layer in gpu.quantized.layer}["ip1"].quantization_param
    # ip1's blob after the pass is its ReLU's output, at most 7.06 here: il_out = 3, as a real
    # Ristretto build writes it (its true output, 9.15, would give 4).
    if mode == "dynamic_fixed_point":
        assert (ip1.bw_layer_out, ip1.fl_layer_out) == (32, 29)
    elif mode == "integer_power_of_2_weights":
        assert (ip1.bw_layer_out, ip1.fl_layer_out) == (8, 5)
    else:
        # exponent bits: max(4, ceil(log2(log2 21.08 - 1) + 1)) = max(4, 3) = 4; 16 bits chosen
        assert (ip1.exp_bits, ip1.mant_bits) == (4, 11)
