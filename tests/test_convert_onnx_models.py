"""Whole models through the ONNX converter: the light model zoo that ships inside the onnx
package (its expected outputs, and the same graphs with seeded random weights against
onnxruntime), and small torch nets exported by torch.onnx.export against torch itself."""
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ristretto_py.convert.onnx_to_caffe import read_onnx
from ristretto_py.runtime import make_runtime
from conftest import close_to
from onnx_builders import LIGHT, agrees, convert


SLOW_LIGHT = ("bvlc_alexnet", "vgg19", "zfnet512")
LIGHT_MODELS = [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_LIGHT else name for name in
                ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
                 "squeezenet", "vgg19", "zfnet512")]


def _light_input(onnx_model):
    """onnx's backend test input for the light models: arange(n) / n in the input's shape."""
    initialized = {t.name for t in onnx_model.graph.initializer}
    value = next(v for v in onnx_model.graph.input if v.name not in initialized)
    shape = tuple(d.dim_value or 1 for d in value.type.tensor_type.shape.dim)
    count = int(np.prod(shape))
    return value.name, (np.arange(count).reshape(shape) / count).astype(np.float32)


def _randomized(onnx_model, seed=0):
    """The model with its ConstantOfShape weights (all 0.02 in the file) replaced by seeded random
    values, and the logits before its final Softmax made an output too."""
    rng = np.random.default_rng(seed)
    result = onnx.ModelProto()
    result.CopyFrom(onnx_model)
    shapes = {t.name: numpy_helper.to_array(t) for t in result.graph.initializer}
    kept = []
    for n in result.graph.node:
        if n.op_type == "ConstantOfShape" and n.input[0] in shapes:
            shape = tuple(int(d) for d in shapes[n.input[0]])
            values = (rng.uniform(-1, 1, shape) * np.sqrt(3.0 / np.prod(shape[1:])) if len(shape) > 1
                      else rng.uniform(0.5, 1.5, shape))
            result.graph.initializer.append(numpy_helper.from_array(values.astype(np.float32), n.output[0]))
        else:
            kept.append(n)
    del result.graph.node[:]
    result.graph.node.extend(kept)
    softmax = [n for n in kept if n.op_type == "Softmax"]
    if softmax:
        result.graph.output.append(helper.make_tensor_value_info(softmax[-1].input[0], TensorProto.FLOAT, None))
    return result


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_models(name):
    path = os.path.join(LIGHT, f"light_{name}.onnx")
    original = read_onnx(path)
    net, outputs = convert(original)
    blob, x = _light_input(original)
    expected = numpy_helper.to_array(onnx.load_tensor(os.path.join(LIGHT, f"light_{name}_output_0.pb")))
    ours = make_runtime(net, "numpy").forward({blob: x})[outputs[0]]
    assert ours.shape == expected.shape and close_to(ours, expected, 1e-4)
    # The file's weights are all 0.02, so its expected output is nearly uniform: the same graph
    # with random weights, against onnxruntime, on the output and the logits, says more.
    agrees(_randomized(original), {blob: np.random.default_rng(1).uniform(0, 1, x.shape).astype(np.float32)})


# -- torch nets exported with torch.onnx.export --------------------------------------------------
def _torch_nets():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    def bn(c):
        layer = nn.BatchNorm2d(c)
        with torch.no_grad():
            layer.weight.uniform_(0.5, 1.5), layer.bias.normal_(0, 0.2)
            layer.running_mean.normal_(0, 0.3), layer.running_var.uniform_(0.5, 2.0)
        return layer

    class Residual(nn.Module):
        def __init__(self, c, stride):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(c, 2 * c, 3, stride, 1, bias=False), bn(2 * c), nn.ReLU(),
                                      nn.Conv2d(2 * c, 2 * c, 3, 1, 1, bias=False), bn(2 * c))
            self.skip = nn.Sequential(nn.Conv2d(c, 2 * c, 1, stride, bias=False), bn(2 * c))

        def forward(self, x):
            return torch.relu(self.body(x) + self.skip(x))

    class InvertedResidual(nn.Module):
        def __init__(self, c, expand):
            super().__init__()
            h = c * expand
            self.body = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), bn(h), nn.ReLU6(),
                                      nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), bn(h), nn.ReLU6(),
                                      nn.Conv2d(h, c, 1, bias=False), bn(c))

        def forward(self, x):
            return x + self.body(x)

    class DenseLayer(nn.Module):
        def __init__(self, c, growth):
            super().__init__()
            self.body = nn.Sequential(bn(c), nn.ReLU(), nn.Conv2d(c, growth, 3, padding=1))

        def forward(self, x):
            return torch.cat([x, self.body(x)], 1)

    class Fire(nn.Module):
        def __init__(self, c, squeeze, expand):
            super().__init__()
            self.squeeze = nn.Sequential(nn.Conv2d(c, squeeze, 1), nn.ReLU())
            self.e1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU())
            self.e3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU())

        def forward(self, x):
            s = self.squeeze(x)
            return torch.cat([self.e1(s), self.e3(s)], 1)

    head = lambda c, n: [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, n)]     # noqa: E731
    torch.manual_seed(0)
    nets = {
        "resnet": nn.Sequential(nn.Conv2d(3, 8, 7, 2, 3, bias=False), bn(8), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                                Residual(8, 1 and 2), Residual(16, 1), *head(32, 10)),
        "mobilenet_v2": nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), bn(8), nn.ReLU6(),
                                      InvertedResidual(8, 4), InvertedResidual(8, 6), nn.Dropout(0.2), *head(8, 10)),
        "densenet": nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), DenseLayer(8, 4), DenseLayer(12, 4), bn(16),
                                  nn.ReLU(), nn.Conv2d(16, 8, 1), nn.AvgPool2d(2), DenseLayer(8, 4), bn(12),
                                  nn.ReLU(), *head(12, 10), nn.Softmax(dim=1)),
        "squeezenet": nn.Sequential(nn.Conv2d(3, 16, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
                                    Fire(16, 4, 8), Fire(16, 4, 8), nn.MaxPool2d(3, 2, ceil_mode=True),
                                    Fire(16, 8, 16), nn.Dropout(0.5), nn.Conv2d(32, 10, 1), nn.ReLU(),
                                    nn.AdaptiveAvgPool2d(1), nn.Flatten()),
    }
    return torch, {name: net.eval() for name, net in nets.items()}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")      # the TorchScript-based exporter
@pytest.mark.parametrize("name", ["resnet", "mobilenet_v2", "densenet", "squeezenet"])
def test_torch_nets(tmp_path, name):
    torch, nets = _torch_nets()
    net = nets[name]
    x = torch.from_numpy(np.random.default_rng(2).normal(0, 1, (2, 3, 33, 33)).astype(np.float32))
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=13, input_names=["image"],
                      output_names=["out"], dynamic_axes={"image": {0: "batch"}})
    with torch.no_grad():
        expected = net(x).numpy()
    caffe, outputs = convert(read_onnx(path), {"image": (2, 3, 33, 33)})
    ours = make_runtime(caffe, "numpy").forward({"image": x.numpy()})[outputs[0]]
    assert ours.shape == expected.shape and close_to(ours, expected, 1e-4)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torch_dynamo_export(tmp_path):
    """The newer torch.export-based exporter (opset 18: ReduceMean axes as an input, ...)."""
    torch, nets = _torch_nets()
    net = nets["mobilenet_v2"]
    x = torch.from_numpy(np.random.default_rng(3).normal(0, 1, (1, 3, 32, 32)).astype(np.float32))
    path = tmp_path / "m.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=True, external_data=False)
    with torch.no_grad():
        expected = net(x).numpy()
    caffe, outputs = convert(read_onnx(path))
    ours = make_runtime(caffe, "numpy").forward({caffe.input_blobs[0]: x.numpy()})[outputs[0]]
    assert close_to(ours, expected, 1e-4)
