"""k-means weight sharing: nearest-centroid assignment (Lloyd's fixed point), fewer distinct
values than K, one codebook across layers, regex groups, the mini-float hybrid, the compression
ratio by hand, the packed file's exact round trip, byte-identical output for one seed, and
``tools/quantize --trimming_mode kmeans`` on the example (over short index widths: the full
search from 12 bits, one to four minutes on two cores, is ``benchmarks/kmeans.py --search``)."""
import json
import math
import pathlib

import numpy as np
import pytest

from ristretto_py import Net, caffe_io, numerics
from ristretto_py.cli import kmeans as kmeans_cli
from ristretto_py.cli import quantize as quantize_cli
from ristretto_py.packed import net_with_packed, pack_indices, read_packed, unpack_indices
from ristretto_py.passes import kmeans_search
from ristretto_py.passes.kmeans import Codebook, cluster_net, compression, group_layers, kmeans_1d
from ristretto_py.runtime import NumpyRuntime
from conftest import write_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lenet_fashion"
RNG = np.random.default_rng(8)
TEXT = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
        'layer { name: "conv1" type: "Convolution" bottom: "data" top: "c1" convolution_param { num_output: 8 kernel_size: 3 } }\n'
        'layer { name: "conv2" type: "Convolution" bottom: "c1" top: "c2" convolution_param { num_output: 4 kernel_size: 3 } }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "c2" top: "fc" inner_product_param { num_output: 5 } }\n')
BLOBS = {"conv1": [RNG.standard_normal((8, 3, 3, 3)), RNG.standard_normal(8)],
         "conv2": [RNG.standard_normal((4, 8, 3, 3)) * 0.1, RNG.standard_normal(4)],
         "fc": [RNG.standard_normal((5, 64)), RNG.standard_normal(5)]}


@pytest.fixture
def model(tmp_path):
    return write_model(tmp_path, TEXT, BLOBS)


def test_every_weight_takes_its_nearest_centroid():
    values = RNG.standard_normal(5000).astype(np.float32)
    centroids, index = kmeans_1d(values, 16, seed=0)
    assert np.all(np.diff(centroids) > 0) and centroids.size == 16
    distances = np.abs(values[:, None] - centroids[None, :])
    # Lloyd's algorithm stops at a fixed point: every value sits with its nearest centroid
    # (up to the tolerance of a tie between two centroids).
    chosen = distances[np.arange(values.size), index]
    assert np.all(chosen <= distances.min(axis=1) + 1e-6)
    # and each centroid is (to sklearn's tolerance) the mean of its members
    for k in range(16):
        assert centroids[k] == pytest.approx(values[index == k].mean(), abs=1e-2)


def test_fewer_distinct_values_than_clusters_are_kept_exactly():
    values = np.array([0.5, -1.0, 0.5, 2.0, -1.0], np.float32)
    centroids, index = kmeans_1d(values, 8, seed=0)
    np.testing.assert_array_equal(centroids[index], values)


def test_global_and_regex_codebooks(model):
    net = Net.load(*model)
    clustered, clusters = cluster_net(net, 4, "global")
    assert len(clusters) == 1 and clusters[0].layers == ["conv1", "conv2", "fc"]
    values = np.concatenate([np.ravel(l.blobs[0]) for l in clustered.layers[1:]])
    assert set(values) <= set(clusters[0].centroids) and len(set(values)) <= 4
    # biases are untouched
    for original, new in zip(net.layers[1:], clustered.layers[1:]):
        np.testing.assert_array_equal(original.blobs[1], new.blobs[1])
    groups = group_layers(net.layers[1:], r"regex:^(conv)\d")
    assert list(groups) == ["conv"] and [l.name for l in groups["conv"]] == ["conv1", "conv2"]
    groups = group_layers(net.layers[1:], "type")
    assert sorted(groups) == ["Convolution", "InnerProduct"]


def test_minifloat_hybrid_codebook(model):
    net = Net.load(*model)
    _, clusters = cluster_net(net, 16, "layer", codebook=Codebook.parse("minifloat:4,3"))
    for c in clusters:
        np.testing.assert_array_equal(numerics.trim_minifloat(c.centroids, 4, 3), c.centroids)
    _, fixed = cluster_net(net, 16, "layer", codebook=Codebook.parse("fixed:8"))
    for c in fixed:    # 8-bit fixed point: fl = 8 - ceil(log2(max|c|) + 1)
        fl = 8 - math.ceil(math.log2(np.abs(c.centroids).max()) + 1)
        scaled = c.centroids.astype(np.float64) * 2.0 ** fl
        assert np.all(scaled == np.round(scaled)) and np.abs(scaled).max() <= 128


def test_compression_ratio_by_hand(model):
    net = Net.load(*model)
    _, clusters = cluster_net(net, 16, "layer")
    rows, total = compression(net, clusters, 32)
    conv1 = rows[0]
    assert (conv1["n"], conv1["k"], conv1["index_bits"]) == (216, 16, 4)
    assert conv1["ratio"] == pytest.approx(216 * 32 / (216 * 4 + 16 * 32))
    n = 216 + 288 + 320
    biases = (8 + 4 + 5) * 32
    assert total["ratio"] == pytest.approx((n * 32 + biases) / (n * 4 + 3 * 16 * 32 + biases))


def test_pack_indices_round_trip():
    for bits in (1, 3, 4, 7, 12):
        values = RNG.integers(0, 2 ** bits, 1001)
        data = pack_indices(values, bits)
        assert len(data) == math.ceil(1001 * bits / 8)
        np.testing.assert_array_equal(unpack_indices(data, 1001, bits), values)


def test_cli_outputs_are_exact_and_byte_identical(model, tmp_path, capsys):
    prototxt, weights = model
    runs = []
    for i in range(2):
        out, packed = tmp_path / f"w{i}.caffemodel", tmp_path / f"p{i}.pack"
        assert kmeans_cli.main(["--model", str(prototxt), "--weights", str(weights), "--clusters", "8",
                                "--scope", "type", "--seed", "3", "--out-weights", str(out),
                                "--packed", str(packed), "--report", str(tmp_path / "report"),
                                "--quiet"]) == 0
        runs.append((out.read_bytes(), packed.read_bytes()))
    assert runs[0] == runs[1]
    clustered = Net.load(prototxt, tmp_path / "w0.caffemodel")
    rebuilt = net_with_packed(Net.load(prototxt), tmp_path / "p0.pack")
    for a, b in zip(clustered.layers, rebuilt.layers):
        for x, y in zip(a.blobs, b.blobs):
            np.testing.assert_array_equal(x, y)
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(NumpyRuntime(clustered).forward({"data": x})["fc"],
                                  NumpyRuntime(rebuilt).forward({"data": x})["fc"])
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["packed_bytes"] < report["caffemodel_bytes"]
    assert report["cost"]["totals"]["param_bytes"] == pytest.approx(report["total"]["bits_after"] / 8)
    assert "r =" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--clusters", "12"], "power of two"),
    (["--clusters", "8", "--codebook", "minifloat:4"], "codebook"),
    (["--clusters", "8", "--layers", "nope"], "no layer named nope"),
    (["--clusters", "8", "--scope", "regex:zzz"], "matches no layer"),
])
def test_cli_bad_arguments(model, tmp_path, capsys, args, message):
    prototxt, weights = model
    code = kmeans_cli.main(["--model", str(prototxt), "--weights", str(weights),
                            "--out-weights", str(tmp_path / "o.caffemodel"), "--quiet"] + args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o.caffemodel").exists()


def test_corrupt_packed_file_is_a_clear_error(tmp_path):
    from ristretto_py.errors import FormatError
    path = tmp_path / "bad.pack"
    path.write_bytes(b"RPYPACK1" + b"\x05\x00\x00\x00{oops")
    with pytest.raises(FormatError, match="corrupt packed"):
        read_packed(path)
    path.write_bytes(caffe_io.array_to_blob(np.zeros(3, np.float32)).SerializeToString())
    with pytest.raises(FormatError, match="not a ristretto-py packed"):
        read_packed(path)


def test_quantize_kmeans_mode_searches_index_widths_and_writes_weights(tmp_path, capsys, monkeypatch):
    # The real search starts at 12-bit indices (K = 4096), whose k-means on the example's 405,000
    # fc weights takes minutes; here it starts at 4 bits, and both stages still stop at a failure.
    assert kmeans_search.INDEX_BITS == tuple(range(12, 0, -1))
    monkeypatch.setattr(kmeans_search, "INDEX_BITS", (4, 3, 2, 1))
    monkeypatch.chdir(ROOT)     # the example's LMDB paths are relative, as in Caffe
    model, weights = EXAMPLE / "lenet_train_test.prototxt", EXAMPLE / "lenet_fashion.caffemodel"
    out, weights_out, packed = tmp_path / "k.prototxt", tmp_path / "k.caffemodel", tmp_path / "k.pack"
    code = quantize_cli.main(["--model", str(model), "--weights", str(weights), "--model_quantized", str(out),
                              "--weights_quantized", str(weights_out), "--packed", str(packed),
                              "--trimming_mode", "kmeans", "--kmeans_scope", "type", "--error_margin", "1",
                              "--iterations", "3", "--report", str(tmp_path / "r"), "--quiet"])
    assert code == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    for stage in ("conv_params", "fc_params"):
        cands = [c for c in report["candidates"] if c["stage"] == stage]
        # from the widest down, stopping at the first failure
        assert [c["bit_width"] for c in cands] == [4, 3, 2, 1][:len(cands)]
        assert all(c["passed"] for c in cands[:-1]) and not cands[-1]["passed"]
        assert report["chosen"][stage] == min(c["bit_width"] for c in cands if c["passed"])
    # Bytes by hand: n weights of each type at their index width, one float32 codebook of 2^bits
    # entries per type (scope "type"), biases float32.
    original = Net.load(model, weights)
    bits_after = 0
    for layer_type, stage in (("Convolution", "conv_params"), ("InnerProduct", "fc_params")):
        n = sum(np.size(l.blobs[0]) for l in original.layers if l.type == layer_type)
        bits_after += n * report["chosen"][stage] + 2 ** report["chosen"][stage] * 32
    bits_before = sum(np.size(b) for l in original.layers for b in l.blobs) * 32
    bits_after += sum(np.size(b) for l in original.layers for b in l.blobs[1:]) * 32
    assert report["weight_bytes_before"] == bits_before // 8 == 1724320
    assert abs(report["weight_bytes_after"] - bits_after / 8) <= 0.5
    assert report["compression"] == pytest.approx(bits_before / bits_after, rel=1e-5)  # whole bytes
    assert abs(report["cost"]["totals"]["param_bytes"] - report["weight_bytes_after"]) <= 1
    written = caffe_io.read_net_text(out)
    assert [l.type for l in written.layer] == [l.type for l in caffe_io.read_net_text(model).layer]
    net = Net.load(out, weights_out)
    for layer_type, stage in (("Convolution", "conv_params"), ("InnerProduct", "fc_params")):
        # scope "type": one codebook of 2^bits values for all layers of a type
        values = np.concatenate([np.ravel(l.blobs[0]) for l in net.layers if l.type == layer_type])
        assert len(np.unique(values)) == 2 ** report["chosen"][stage]
    for a, b in zip(original.layers, net.layers):
        for x, y in zip(a.blobs[1:], b.blobs[1:]):
            np.testing.assert_array_equal(x, y)
    rebuilt = net_with_packed(Net.load(out), packed)
    for a, b in zip(net.layers, rebuilt.layers):
        for x, y in zip(a.blobs, b.blobs):
            np.testing.assert_array_equal(x, y)
    assert "k-means net:" in capsys.readouterr().out
