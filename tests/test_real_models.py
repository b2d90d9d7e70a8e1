"""Real pretrained models, on real images, against OpenCV's Caffe importer (independent
reference) and between our two backends."""
import cv2
import numpy as np
import pytest

from ristretto_py import Net
from ristretto_py.runtime import NumpyRuntime, OnnxRuntime

pytestmark = pytest.mark.slow

# model -> (input size W,H, mean B,G,R, scale), as the models' users prepare images
PREPARATION = {
    "res10_ssd": ((300, 300), (104.0, 177.0, 123.0), 1.0),
    "open_nsfw": ((224, 224), (104.0, 117.0, 123.0), 1.0),
    "mtcnn_pnet": ((64, 48), (127.5, 127.5, 127.5), 0.0078125),
    "mtcnn_rnet": ((24, 24), (127.5, 127.5, 127.5), 0.0078125),
    "mtcnn_onet": ((48, 48), (127.5, 127.5, 127.5), 0.0078125),
}


def _image_batch(real_models, name, batch=1):
    (width, height), mean, scale = PREPARATION[name]
    paths = real_models("mtcnn_pnet").images   # multiple-faces.jpg, jeep.jpg
    arrays = []
    for i in range(batch):
        image = cv2.imread(str(paths[i % len(paths)]))
        assert image is not None
        image = cv2.resize(image, (width, height)).astype(np.float32)
        arrays.append(((image - np.float32(mean)) * np.float32(scale)).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(arrays))


def _load(real_models, name, batch=1):
    files = real_models(name)
    x = _image_batch(real_models, name, batch)
    net = Net.load(files.prototxt, files.caffemodel)
    data = net.input_blobs[0]
    if net.shapes()[data] != x.shape:
        net = net.with_input_shapes({data: x.shape})
    return files, net, data, x


def _per_layer_outputs(net, data, x):
    seen = {}

    def observer(layer, bottoms, tops):
        seen[layer.name] = tops[0].copy()
    blobs = NumpyRuntime(net).forward({data: x}, observer=observer)
    return seen, blobs


def _assert_close(ours, reference, tolerance, what):
    ours = np.asarray(ours, np.float64).ravel()
    reference = np.asarray(reference, np.float64).ravel()
    assert ours.size == reference.size, f"{what}: {ours.size} values vs {reference.size}"
    scale = max(np.abs(reference).max(), 1e-30)
    error = np.abs(ours - reference).max() / scale
    assert error <= tolerance, f"{what}: max error {error:.3g} of the largest magnitude"


@pytest.mark.parametrize("name", ["open_nsfw", "res10_ssd", "mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet"])
def test_every_layer_agrees_with_opencv(real_models, name):
    files, net, data, x = _load(real_models, name)
    seen, _ = _per_layer_outputs(net, data, x)
    # Every layer but the input is compared. OpenCV lists each Caffe layer under its own name,
    # in-place ones (BatchNorm, Scale, ReLU, PReLU, Dropout) included, and forward(name) gives
    # that layer's own output, not the blob's final value. DetectionOutput is compared row by
    # row in test_res10_detections_agree_with_opencv (OpenCV pads its output to keep_top_k rows).
    sources = {l.name for l in net.source_layers}
    wanted = [l for l in net.layers if l.name not in sources and l.type != "DetectionOutput"]
    assert all(len(l.tops) == 1 for l in wanted), "forward(name) gives a layer's first output only"
    assert len(wanted) == len(net.layers) - len(net.source_layers) - (name == "res10_ssd")
    reference = cv2.dnn.readNetFromCaffe(str(files.prototxt), str(files.caffemodel))
    reference.enableFusion(False)
    reference.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    reference.setInput(x)
    names = [l.name for l in wanted]
    missing = sorted(set(names) - set(reference.getLayerNames()) | set(names) - set(seen))
    assert not missing, f"{name}: layers not compared: {missing}"
    outputs = reference.forward(names)
    for layer_name, expected in zip(names, outputs):
        _assert_close(seen[layer_name], expected, 1e-4, f"{name} layer {layer_name}")
        assert np.any(seen[layer_name] != 0), f"{name} layer {layer_name}: all zero"


def test_res10_detections_agree_with_opencv(real_models):
    files, net, data, x = _load(real_models, "res10_ssd")
    ours = NumpyRuntime(net).forward({data: x})["detection_out"].reshape(-1, 7)
    reference = cv2.dnn.readNetFromCaffe(str(files.prototxt), str(files.caffemodel))
    reference.enableFusion(False)
    reference.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    reference.setInput(x)
    theirs = reference.forward("detection_out").reshape(-1, 7)
    # Caffe (and we) output one row per kept detection; OpenCV pads to keep_top_k rows of zeros.
    kept = theirs[:, 2] > 0
    assert np.all(theirs[~kept] == 0)
    theirs = theirs[kept]
    # every detection above the layer's confidence threshold (0.01), not only the confident ones
    assert len(ours) == len(theirs) and len(ours) >= 10
    assert np.sum(ours[:, 2] > 0.3) >= 3, "the test image shows several faces"
    assert np.all(ours[:, :2] == [0, 1])            # image 0, class 1 (face)
    order = lambda rows: rows[np.lexsort((rows[:, 3], -np.round(rows[:, 2], 4)))]
    np.testing.assert_allclose(order(ours), order(theirs), rtol=0, atol=2e-4)


@pytest.mark.parametrize("name,batch", [("open_nsfw", 2), ("res10_ssd", 1), ("mtcnn_pnet", 2),
                                        ("mtcnn_onet", 3)])
def test_onnxruntime_backend_agrees_with_numpy(real_models, name, batch):
    _, net, data, x = _load(real_models, name, batch)
    expected = NumpyRuntime(net).forward({data: x})
    got = OnnxRuntime(net, all_blobs=True).forward({data: x})
    assert set(got) == set(expected)
    for blob in expected:
        _assert_close(got[blob], expected[blob], 1e-5, f"{name} blob {blob}")
