"""The README's chain from PyTorch: a small CNN with BatchNorms trained a few seconds on
Fashion-MNIST -> torch.onnx.export -> tools/convert_onnx -> tools/fold_bn -> tools/quantize
--data -> tools/export_onnx --quantized qdq, scored at each step on the bundled 1,000 test
images (examples/torch_chain/chain.py), plus tools/kmeans on the converted net."""
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHAIN = ROOT / "examples" / "torch_chain" / "chain.py"
FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")

pytest.importorskip("torch")
sys.path.insert(0, str(CHAIN.parent))
import chain  # noqa: E402


def _score(capsys, argv):
    capsys.readouterr()
    assert chain.main(["score"] + argv) == 0
    line = capsys.readouterr().out.strip()
    assert line.endswith("on 1000 images"), line
    return float(line.split()[1])


def test_pytorch_to_qdq_chain_scored_at_each_step(tmp_path, capsys, monkeypatch):
    assert FASHION.is_dir(), "install Debian's dataset-fashion-mnist (CI does: apt-get install)"
    from ristretto_py import Net
    from ristretto_py.cli import convert_onnx, evaluate, export_onnx, fold_bn, kmeans, quantize
    monkeypatch.chdir(ROOT)
    done = subprocess.run([sys.executable, str(CHAIN), "train", "--out", str(tmp_path), "--steps", "150"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    torch_score = float(done.stdout.split("top-1 ")[1].split()[0])
    assert torch_score > 0.7
    assert _score(capsys, ["--onnx", str(tmp_path / "net.onnx")]) == torch_score
    net, weights = tmp_path / "net.prototxt", tmp_path / "net.caffemodel"
    assert convert_onnx.main(["--input", str(tmp_path / "net.onnx"), "--out_model", str(net),
                              "--out_weights", str(weights)]) == 0
    assert _score(capsys, ["--model", str(net), "--weights", str(weights)]) == torch_score
    assert [layer.type for layer in Net.load(net).layers].count("BatchNorm") == 2
    folded, folded_weights = tmp_path / "folded.prototxt", tmp_path / "folded.caffemodel"
    assert fold_bn.main(["--model", str(net), "--weights", str(weights), "--out_model", str(folded),
                         "--out_weights", str(folded_weights)]) == 0
    capsys.readouterr()
    assert "BatchNorm" not in {layer.type for layer in Net.load(folded).layers}
    assert _score(capsys, ["--model", str(folded), "--weights", str(folded_weights)]) == torch_score
    quantized = tmp_path / "q.prototxt"
    assert quantize.main(["--model", str(folded), "--weights", str(folded_weights), "--data",
                          "examples/lenet_fashion/fashion_test_lmdb", "--data_scale", str(1 / 255),
                          "--model_quantized", str(quantized), "--trimming_mode", "dynamic_fixed_point",
                          "--widths", "conv=8,fc=8,act=8", "--all_layers", "--iterations", "10",
                          "--quiet"]) == 0
    assert "within the margin" in capsys.readouterr().out
    assert evaluate.main(["--model", str(quantized), "--weights", str(folded_weights), "--iterations", "10",
                          "--backend", "fixed", "--json", "--quiet"]) == 0
    fixed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["scores"]["accuracy"]
    assert fixed > torch_score - 0.02
    assert export_onnx.main(["--model", str(quantized), "--weights", str(folded_weights), "--output",
                             str(tmp_path / "q.onnx"), "--quantized", "qdq"]) == 0
    capsys.readouterr()
    # onnxruntime on the QDQ file scores what the integer backend scored, image for image
    assert _score(capsys, ["--onnx", str(tmp_path / "q.onnx")]) == pytest.approx(fixed, abs=1e-6)
    assert kmeans.main(["--model", str(folded), "--weights", str(folded_weights), "--clusters", "16",
                        "--out_weights", str(tmp_path / "k.caffemodel"), "--seed", "0"]) == 0
    capsys.readouterr()
    assert _score(capsys, ["--model", str(folded), "--weights", str(tmp_path / "k.caffemodel")]) > torch_score - 0.05


def test_onnxruntime_quantized_model_converts_to_a_description_that_scores_like_it(tmp_path, capsys):
    """onnxruntime's static quantizer (QDQ, int8, per channel, calibrated on 100 test images) on
    the torch net; tools/convert_onnx --model_quantized; the description on the numpy runtime
    against the QDQ model on onnxruntime, image by image."""
    assert FASHION.is_dir(), "install Debian's dataset-fashion-mnist (CI does: apt-get install)"
    import numpy as np
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from ristretto_py import Net
    from ristretto_py.cli import convert_onnx
    from ristretto_py.runtime import make_runtime
    done = subprocess.run([sys.executable, str(CHAIN), "train", "--out", str(tmp_path), "--steps", "150"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    images, labels = chain.test_images()

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter({"image": images[i:i + 1]} for i in range(0, 1000, 10))

        def get_next(self):
            return next(self.batches, None)
    quantize_static(str(tmp_path / "net.onnx"), str(tmp_path / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    files = [tmp_path / n for n in ("f.prototxt", "f.caffemodel", "q.prototxt")]
    assert convert_onnx.main(["--input", str(tmp_path / "q.onnx"), "--out_model", str(files[0]),
                              "--out_weights", str(files[1]), "--model_quantized", str(files[2])]) == 0
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(tmp_path / "q.onnx"), options, providers=["CPUExecutionProvider"])
    theirs = np.concatenate([session.run(None, {"image": images[i:i + 1]})[0] for i in range(1000)])
    net = Net.load(files[2], files[1]).with_input_shapes({"image": (100, 1, 28, 28)})
    assert sum(layer.type in ("ConvolutionRistretto", "FcRistretto") for layer in net.layers) == 4
    runtime = make_runtime(net, "numpy")
    ours = np.concatenate([runtime.forward({"image": images[i:i + 100]})[net.output_blobs[-1]]
                           for i in range(0, 1000, 100)])
    assert np.mean(ours.argmax(1) == theirs.argmax(1)) >= 0.98       # 99.6% at 300 training steps
    assert abs(chain.top1(ours, labels) - chain.top1(theirs, labels)) <= 0.01
