"""BatchNorm folding: the folded nets against OpenCV running the unfolded originals (open_nsfw,
res10), hand-built nets for the cases that cannot fold (after Concat, a blob with other readers),
an InnerProduct fold, a bias added where there was none, and the command line."""
import cv2
import numpy as np
import pytest

from ristretto_py import Net
from ristretto_py.cli import fold_bn as fold_cli
from ristretto_py.passes.fold_bn import fold_batchnorm, parameter_count
from ristretto_py.runtime import NumpyRuntime
from conftest import close_to, opencv_forward, write_model
from test_cli import ROOT

RNG = np.random.default_rng(21)


def _image(real_models, size, mean):
    image = cv2.imread(str(real_models("mtcnn_pnet").images[0]))
    return cv2.dnn.blobFromImage(image, 1.0, (size, size), mean)


@pytest.mark.slow
def test_open_nsfw_folds_all_53_pairs_and_matches_opencv(real_models, tmp_path, capsys):
    files = real_models("open_nsfw")
    out_model, out_weights = tmp_path / "folded.prototxt", tmp_path / "folded.caffemodel"
    assert fold_cli.main(["--model", str(files.prototxt), "--weights", str(files.caffemodel),
                          "--out-model", str(out_model), "--out-weights", str(out_weights)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("folded bn_") == 53 and "layers: 229 -> 123" in printed
    original, folded = Net.load(files.prototxt, files.caffemodel), Net.load(out_model, out_weights)
    assert len(original.layers) - len(folded.layers) == 106
    assert not any(layer.type in ("BatchNorm", "Scale") for layer in folded.layers)
    x = _image(real_models, 224, (104, 117, 123))
    reference = opencv_forward(files.prototxt, files.caffemodel, x, "prob")
    ours = NumpyRuntime(folded).forward({"data": x})
    assert close_to(ours["prob"], reference, 1e-4)
    # an intermediate blob too: the last pooling (not rewritten in place afterwards)
    pool = [l for l in folded.layers if l.type == "Pooling"][-1]
    assert close_to(ours[pool.tops[0]], opencv_forward(files.prototxt, files.caffemodel, x, pool.name), 1e-4)


@pytest.mark.slow
def test_res10_folds_and_replaces_and_matches_opencv(real_models):
    files = real_models("res10_ssd")
    original = Net.load(files.prototxt, files.caffemodel)
    folded, report = fold_batchnorm(original)
    assert report.folded and report.replaced        # data_bn follows the input: replaced
    assert ("data_bn", "data_scale", "Convolution") in report.replaced
    x = _image(real_models, 300, (104, 177, 123))
    ours = NumpyRuntime(folded).forward({"data": x})
    for blob in ("mbox_loc", "mbox_conf_flatten"):
        assert close_to(ours[blob], opencv_forward(files.prototxt, files.caffemodel, x, blob), 1e-4)


INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }\n'


def _bn_blobs(channels, factor=2.0):
    mean = RNG.standard_normal(channels).astype(np.float32)
    var = RNG.random(channels).astype(np.float32) + 0.5
    return [mean * factor, var * factor, np.array([factor], np.float32)]


def _scale_blobs(channels):
    return [RNG.standard_normal(channels).astype(np.float32), RNG.standard_normal(channels).astype(np.float32)]


def test_batchnorm_after_concat_becomes_a_depthwise_convolution(tmp_path):
    text = INPUT + (
        'layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" convolution_param { num_output: 2 kernel_size: 1 } }\n'
        'layer { name: "cat" type: "Concat" bottom: "data" bottom: "c1" top: "cat" }\n'
        'layer { name: "bn" type: "BatchNorm" bottom: "cat" top: "cat" }\n'
        'layer { name: "sc" type: "Scale" bottom: "cat" top: "cat" scale_param { bias_term: true } }\n'
        'layer { name: "relu" type: "ReLU" bottom: "cat" top: "cat" }\n'
        'layer { name: "c2" type: "Convolution" bottom: "cat" top: "c2" convolution_param { num_output: 4 kernel_size: 3 } }\n')
    blobs = {"c1": [RNG.standard_normal((2, 3, 1, 1)), RNG.standard_normal(2)],
             "bn": _bn_blobs(5), "sc": _scale_blobs(5),
             "c2": [RNG.standard_normal((4, 5, 3, 3)), RNG.standard_normal(4)]}
    model, weights = write_model(tmp_path, text, blobs)
    folded, report = fold_batchnorm(Net.load(model, weights))
    assert report.replaced == [("bn", "sc", "Convolution")] and not report.folded
    dw = folded.layer("bn")
    assert dw.spec.convolution_param.group == 5 and dw.blobs[0].shape == (5, 1, 1, 1)
    assert dw.tops[0] != "cat" and folded.layer("c2").bottoms == dw.tops
    # BatchNorm (mean, var: 5 each, factor: 1) and Scale (5 + 5) become 5 weights + 5 biases
    assert parameter_count(folded) == parameter_count(Net.load(model, weights)) - 21 + 10
    x = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
    assert close_to(NumpyRuntime(folded).forward({"data": x})["c2"],
                    opencv_forward(model, weights, x, "c2"), 1e-5)


def test_fold_through_renamed_chain_and_other_readers(tmp_path):
    # conv1 -> bn1 (new name) -> sc1 (new name): folds, conv1 writes "s1" directly.
    # conv2 (no bias) is also read by an Eltwise: its BatchNorm cannot fold and is replaced.
    text = INPUT + (
        'layer { name: "conv1" type: "Convolution" bottom: "data" top: "c1" convolution_param { num_output: 3 kernel_size: 3 pad: 1 } }\n'
        'layer { name: "bn1" type: "BatchNorm" bottom: "c1" top: "b1" batch_norm_param { eps: 0.001 } }\n'
        'layer { name: "sc1" type: "Scale" bottom: "b1" top: "s1" scale_param { bias_term: true } }\n'
        'layer { name: "conv2" type: "Convolution" bottom: "s1" top: "c2" convolution_param { num_output: 3 kernel_size: 1 bias_term: false } }\n'
        'layer { name: "bn2" type: "BatchNorm" bottom: "c2" top: "b2" }\n'
        'layer { name: "sum" type: "Eltwise" bottom: "c2" bottom: "b2" top: "sum" }\n'
        'layer { name: "conv3" type: "Convolution" bottom: "sum" top: "c3" convolution_param { num_output: 2 kernel_size: 1 bias_term: false } }\n'
        'layer { name: "bn3" type: "BatchNorm" bottom: "c3" top: "c3" }\n')
    blobs = {"conv1": [RNG.standard_normal((3, 3, 3, 3)), RNG.standard_normal(3)], "bn1": _bn_blobs(3),
             "sc1": _scale_blobs(3), "conv2": [RNG.standard_normal((3, 3, 1, 1))], "bn2": _bn_blobs(3, 0.0),
             "conv3": [RNG.standard_normal((2, 3, 1, 1))], "bn3": _bn_blobs(2)}
    model, weights = write_model(tmp_path, text, blobs)
    folded, report = fold_batchnorm(Net.load(model, weights))
    assert [f[0] for f in report.folded] == ["bn1", "bn3"]
    assert report.replaced == [("bn2", None, "Convolution")]
    assert folded.layer("conv1").tops == ("s1",)
    conv3 = folded.layer("conv3")
    assert conv3.spec.convolution_param.bias_term and len(conv3.blobs) == 2      # a bias was added
    x = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
    ours = NumpyRuntime(folded).forward({"data": x})
    for blob, layer in (("s1", "sc1"), ("sum", "sum"), ("c3", "bn3")):
        assert close_to(ours[blob], opencv_forward(model, weights, x, layer), 1e-5)


def test_inner_product_fold_and_nothing_to_fold(tmp_path, capsys):
    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 6 } } }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 5 } }\n'
            'layer { name: "bn" type: "BatchNorm" bottom: "fc" top: "fc" }\n'
            'layer { name: "sc" type: "Scale" bottom: "fc" top: "fc" }\n')
    model, weights = write_model(tmp_path, text, {"fc": [RNG.standard_normal((5, 6)), RNG.standard_normal(5)],
                                                  "bn": _bn_blobs(5), "sc": [RNG.standard_normal(5)]})
    net = Net.load(model, weights)
    folded, report = fold_batchnorm(net)
    assert report.folded == [("bn", "sc", "fc")] and len(folded.layers) == 2
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    assert close_to(NumpyRuntime(folded).forward({"data": x})["fc"],
                    NumpyRuntime(net).forward({"data": x})["fc"], 1e-6)
    out_model, out_weights = tmp_path / "f.prototxt", tmp_path / "f.caffemodel"
    args = ["--out-model", str(out_model), "--out-weights", str(out_weights)]
    assert fold_cli.main(["--model", str(model), "--weights", str(weights)] + args) == 0
    capsys.readouterr()
    again = ["--out_model", str(tmp_path / "g.prototxt"), "--out_weights", str(tmp_path / "g.caffemodel")]
    assert fold_cli.main(["--model", str(out_model), "--weights", str(out_weights)] + again) == 0
    assert "nothing to fold" in capsys.readouterr().out
    # Folding in place would overwrite the inputs: refused, the files untouched.
    before = out_weights.read_bytes()
    assert fold_cli.main(["--model", str(out_model), "--weights", str(out_weights)] + args) == 2
    assert "names the same file as --model" in capsys.readouterr().err
    assert out_weights.read_bytes() == before
    # --weights is required: a usage error, exit code 2
    assert fold_cli.main(["--model", str(model), "--out-model", "x", "--out-weights", "y"]) == 2


def test_the_folded_training_net_keeps_its_train_data_layer(tmp_path, capsys):
    """tools/fold_bn on a training net (Data layers per phase): the TRAIN Data layer is written
    first, the TEST net is folded, and the result loads in both phases."""
    lmdb = ROOT / "examples" / "lenet_fashion" / "fashion_test_lmdb"
    data = ('layer { name: "data" type: "Data" top: "data" top: "label" include { phase: PHASE } '
            'transform_param { scale: 0.00390625 } data_param { source: "' + str(lmdb) +
            '" batch_size: 4 backend: LMDB } }\n')
    text = (data.replace("PHASE", "TRAIN") + data.replace("PHASE", "TEST") +
            'layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" '
            'convolution_param { num_output: 3 kernel_size: 3 } }\n'
            'layer { name: "bn" type: "BatchNorm" bottom: "c1" top: "c1" }\n'
            'layer { name: "sc" type: "Scale" bottom: "c1" top: "c1" scale_param { bias_term: true } }\n'
            'layer { name: "ip" type: "InnerProduct" bottom: "c1" top: "ip" '
            'inner_product_param { num_output: 10 } }\n'
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" '
            'include { phase: TRAIN } }\n')
    blobs = {"c1": [RNG.standard_normal((3, 1, 3, 3)), RNG.standard_normal(3)],
             "bn": _bn_blobs(3), "sc": _scale_blobs(3),
             "ip": [RNG.standard_normal((10, 3 * 26 * 26)), RNG.standard_normal(10)]}
    model, weights = write_model(tmp_path, text, blobs)
    out_model, out_weights = tmp_path / "folded.prototxt", tmp_path / "folded.caffemodel"
    assert fold_cli.main(["--model", str(model), "--weights", str(weights), "--out_model",
                          str(out_model), "--out_weights", str(out_weights)]) == 0
    printed = capsys.readouterr().out
    assert "kept the source layers of other phases: data" in printed
    assert "left out layers of other phases: loss" in printed
    train = Net.load(out_model, out_weights, phase="TRAIN")
    test = Net.load(out_model, out_weights)
    assert [l.type for l in train.layers] == ["Data", "Convolution", "InnerProduct"]
    assert [l.type for l in test.layers] == ["Data", "Convolution", "InnerProduct"]
    assert train.layers[0].spec.include[0].phase == 0       # the TRAIN one
