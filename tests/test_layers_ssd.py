"""SSD layers (Normalize, PriorBox, DetectionOutput) against OpenCV's Caffe importer, the
onnxruntime backend, a plain-loop transcription of Caffe's NMS and hand-computed cases.

OpenCV deviates from SSD Caffe in places; each test that meets a deviation works around it
and says so: the Caffe behaviour is what ristretto-py implements.
"""
import cv2
import numpy as np
import pytest

from conftest import net_param, write_model
from ristretto_py import caffe_io
from ristretto_py.errors import NetError
from ristretto_py.layers import ssd
from ristretto_py.net import Net
from ristretto_py.protos import caffe_pb2
from ristretto_py.runtime.numpy_backend import NumpyRuntime
from ristretto_py.runtime.onnx_backend import OnnxRuntime


def opencv_forward(tmp_path, text, inputs, layer, blobs=None):
    model, weights = write_model(tmp_path, text, blobs, stem="opencv")
    net = cv2.dnn.readNetFromCaffe(str(model), str(weights))
    for name, value in inputs.items():
        net.setInput(np.ascontiguousarray(value, dtype=np.float32), name)
    return net.forward(layer)


def numpy_forward(text, inputs, top, blobs=None):
    return NumpyRuntime(Net.from_proto(net_param(text, blobs))).forward(inputs)[top]


def assert_close(actual, expected, rtol=1e-5):
    assert actual.shape == expected.shape
    scale = max(float(np.abs(expected).max()), 1e-30)
    assert float(np.abs(actual - expected).max()) <= rtol * scale


# -- Normalize ------------------------------------------------------------------------------

def normalize_net(across, shared, channels, eps=0.01):
    return f"""
layer {{ name: "in" type: "Input" top: "data"
  input_param {{ shape {{ dim: 2 dim: {channels} dim: 5 dim: 7 }} }} }}
layer {{ name: "norm" type: "Normalize" bottom: "data" top: "out"
  norm_param {{ across_spatial: {str(across).lower()} channel_shared: {str(shared).lower()}
               eps: {eps} }} }}
"""


@pytest.mark.parametrize("across", [True, False])
@pytest.mark.parametrize("shared", [True, False])
def test_normalize_matches_opencv_and_onnx(tmp_path, across, shared):
    rng = np.random.default_rng(1)
    channels = 6
    scale = rng.uniform(0.5, 20, size=(1,) if shared else (channels,)).astype(np.float32)
    x = rng.normal(size=(2, channels, 5, 7)).astype(np.float32)
    x[0, :, 0, 0] = 0   # an all-zero position: only eps keeps the norm finite
    text = normalize_net(across, shared, channels)
    ours = numpy_forward(text, {"data": x}, "out", {"norm": [scale]})
    if across and not shared:
        # OpenCV requires C*H*W scale values when across_spatial: normalise with a unit
        # shared scale there and apply the per-channel scale here.
        ref = opencv_forward(tmp_path, normalize_net(True, True, channels), {"data": x}, "norm",
                             {"norm": [np.ones(1, np.float32)]}) * scale[None, :, None, None]
    else:
        ref = opencv_forward(tmp_path, text, {"data": x}, "norm", {"norm": [scale]})
    assert np.all(np.isfinite(ours))
    assert_close(ours, ref)
    net = Net.from_proto(net_param(text, {"norm": [scale]}))
    assert_close(OnnxRuntime(net).forward({"data": x})["out"], ours)


def test_normalize_adds_eps_before_the_root():
    # One position, channels (3, 4): sum of squares 25; eps 11 gives a norm of 6 (a norm of
    # 5 + 11 = 16 if eps were added after the root). Per-channel scale (2, 3).
    text = """
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "norm" type: "Normalize" bottom: "data" top: "out"
  norm_param { across_spatial: false channel_shared: false eps: 11 } }
"""
    out = numpy_forward(text, {"data": np.array([[3, 4]], np.float32)}, "out",
                        {"norm": [np.array([2, 3], np.float32)]})
    np.testing.assert_allclose(out, [[2 * 3 / 6, 3 * 4 / 6]], rtol=1e-6)


def test_normalize_scale_blob_size_is_checked():
    text = normalize_net(False, False, 4)
    with pytest.raises(NetError, match="shape"):
        Net.from_proto(net_param(text, {"norm": [np.ones(3, np.float32)]}))


# -- PriorBox -------------------------------------------------------------------------------

def prior_net(params, feature=(1, 8, 3, 5), image=(1, 3, 60, 100)):
    dims = lambda shape: " ".join(f"dim: {d}" for d in shape)
    return f"""
layer {{ name: "in" type: "Input" top: "feat" top: "img"
  input_param {{ shape {{ {dims(feature)} }} shape {{ {dims(image)} }} }} }}
layer {{ name: "pb" type: "PriorBox" bottom: "feat" bottom: "img" top: "pb"
  prior_box_param {{ {params} }} }}
"""


# OpenCV requires an explicit variance and clips by default (Caffe: variance 0.1 and no
# clipping by default), so every configuration states both.
PRIOR_CONFIGS = [
    "min_size: 40 clip: false variance: 0.1",
    "min_size: 40 clip: true variance: 0.2",
    "min_size: 10 max_size: 30 aspect_ratio: 2 aspect_ratio: 3 flip: true clip: true "
    "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2",
    "min_size: 10 max_size: 30 aspect_ratio: 2 aspect_ratio: 0.5 aspect_ratio: 3 flip: true "
    "clip: false offset: 0.2 variance: 0.1",
    "min_size: 10 min_size: 20 max_size: 15 max_size: 40 aspect_ratio: 2 flip: false "
    "clip: false variance: 0.1 variance: 0.2 variance: 0.3 variance: 0.4",
    "min_size: 12 aspect_ratio: 2 step: 7 clip: false variance: 0.1",
    "min_size: 12 max_size: 20 step_h: 9 step_w: 11 clip: false variance: 0.1",
]


@pytest.mark.parametrize("params", PRIOR_CONFIGS)
def test_priorbox_matches_opencv(tmp_path, params):
    rng = np.random.default_rng(2)
    inputs = {"feat": rng.random((1, 8, 3, 5), np.float32),
              "img": rng.random((1, 3, 60, 100), np.float32)}
    text = prior_net(params)
    ours = numpy_forward(text, inputs, "pb")
    assert ours.shape == Net.from_proto(net_param(text)).shapes()["pb"]
    assert_close(ours, opencv_forward(tmp_path, text, inputs, "pb"), rtol=1e-6)


@pytest.mark.parametrize("size_params, image_hw", [("img_size: 50", (50, 50)),
                                                   ("img_h: 50 img_w: 70", (50, 70))])
def test_priorbox_explicit_image_size(tmp_path, size_params, image_hw):
    # OpenCV ignores img_size / img_h / img_w and always measures bottom 1, so the reference
    # is OpenCV given an image of that size, while ours gets a 60x100 image and the parameter.
    base = "min_size: 10 max_size: 24 aspect_ratio: 2 clip: false variance: 0.1"
    feat = np.zeros((1, 8, 3, 5), np.float32)
    ours = numpy_forward(prior_net(f"{base} {size_params}"),
                         {"feat": feat, "img": np.zeros((1, 3, 60, 100), np.float32)}, "pb")
    ref = opencv_forward(tmp_path, prior_net(base, image=(1, 3) + image_hw),
                         {"feat": feat, "img": np.zeros((1, 3) + image_hw, np.float32)}, "pb")
    assert_close(ours, ref, rtol=1e-6)


def test_priorbox_hand_computed_order_truncation_and_defaults():
    # 1x1 feature map on a 20x20 image: one cell centred at (10, 10). Caffe reads min_size
    # and max_size into ints (10.7 -> 10, 30.9 -> 30; OpenCV keeps the fractions), drops the
    # duplicate ratio 0.5 (already the flip of 2) and defaults the variance to 0.1.
    text = prior_net("min_size: 10.7 max_size: 30.9 aspect_ratio: 2 aspect_ratio: 0.5",
                     feature=(1, 1, 1, 1), image=(1, 1, 20, 20))
    out = numpy_forward(text, {"feat": np.zeros((1, 1, 1, 1), np.float32),
                               "img": np.zeros((1, 1, 20, 20), np.float32)}, "pb")
    side = np.sqrt(300.0)
    wide, tall = (10 * np.sqrt(2), 10 / np.sqrt(2)), (10 / np.sqrt(2), 10 * np.sqrt(2))
    expected = []
    for width, height in [(10, 10), (side, side), wide, tall]:
        expected += [10 - width / 2, 10 - height / 2, 10 + width / 2, 10 + height / 2]
    assert out.shape == (1, 2, 16)
    np.testing.assert_allclose(out[0, 0], np.array(expected) / 20, rtol=1e-6)
    np.testing.assert_allclose(out[0, 1], np.full(16, 0.1), rtol=1e-7)


def test_priorbox_onnx_is_a_constant_of_batch_one():
    text = prior_net(PRIOR_CONFIGS[2])
    net = Net.from_proto(net_param(text))
    inputs = {"feat": np.ones((3, 8, 3, 5), np.float32),
              "img": np.ones((3, 3, 60, 100), np.float32)}
    ours = NumpyRuntime(net).forward(inputs)["pb"]
    onnx_out = OnnxRuntime(net, all_blobs=False).forward(inputs)["pb"]
    assert ours.shape == onnx_out.shape == (1, 2, 3 * 5 * 6 * 4)
    assert_close(onnx_out, ours, rtol=1e-6)


@pytest.mark.parametrize("params, message", [
    ("variance: 0.1", "min_size"),
    ("min_size: 10 max_size: 5", "greater"),
    ("min_size: 10 variance: 0.1 variance: 0.2", "variance"),
    ("min_size: 10 img_size: 10 img_h: 10 img_w: 10", "img_size"),
    ("min_size: 10 step: 4 step_h: 4 step_w: 4", "step"),
])
def test_priorbox_rejects_bad_parameters(params, message):
    with pytest.raises(NetError, match=message):
        Net.from_proto(net_param(prior_net(params)))


# -- DetectionOutput --------------------------------------------------------------------------

def detection_net(params, num, priors, classes, share=True, prior_channels=2):
    loc_width = priors * 4 * (1 if share else classes)
    return f"""
layer {{ name: "in" type: "Input" top: "loc" top: "conf" top: "prior"
  input_param {{ shape {{ dim: {num} dim: {loc_width} }}
                 shape {{ dim: {num} dim: {priors * classes} }}
                 shape {{ dim: 1 dim: {prior_channels} dim: {priors * 4} }} }} }}
layer {{ name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior"
  top: "det"
  detection_output_param {{ num_classes: {classes} share_location: {str(share).lower()}
                            {params} }} }}
"""


def synthetic_detection_inputs(rng, num, priors, classes, loc_classes, loc_scale=0.5):
    """Priors clustered on a coarse grid (so many overlap), random offsets, softmaxed scores."""
    centers = np.round(rng.uniform(0.2, 0.8, (priors, 2)) * 5) / 5
    centers += rng.normal(0, 0.02, (priors, 2))
    sizes = rng.uniform(0.1, 0.4, (priors, 2))
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1)
    variances = np.tile([0.1, 0.1, 0.2, 0.2], (priors, 1))
    prior = np.stack([boxes.reshape(-1), variances.reshape(-1)])[None].astype(np.float32)
    loc = rng.normal(0, loc_scale, (num, priors * loc_classes * 4)).astype(np.float32)
    logits = np.exp(rng.normal(0, 2, (num, priors, classes)))
    conf = (logits / logits.sum(-1, keepdims=True)).reshape(num, -1).astype(np.float32)
    return {"loc": loc, "conf": conf, "prior": prior}


def sorted_rows(rows):
    return rows[np.lexsort((-rows[:, 2], rows[:, 1], rows[:, 0]))]


def assert_caffe_row_order(rows):
    """Rows by image, then label ascending, then score descending (Caffe's output order)."""
    key = rows[:, 0] * 1000 + rows[:, 1]
    assert np.all(np.diff(key) >= 0)
    same_group = np.diff(key) == 0
    assert np.all(np.diff(rows[:, 2])[same_group] <= 0)


# OpenCV needs keep_top_k > 0 (it sizes its output as N*keep_top_k rows, zero-padded, and
# corrupts memory with -1), nms_threshold > 0, an explicit confidence_threshold to match
# Caffe's default of "all boxes" only above 0, and knows no CORNER_SIZE.
DETECTION_CONFIGS = [
    ("background_label_id: 0 nms_param { nms_threshold: 0.45 } code_type: CENTER_SIZE "
     "confidence_threshold: 0.3 keep_top_k: 500", True),
    ("background_label_id: 0 nms_param { nms_threshold: 0.45 top_k: 5 } code_type: CENTER_SIZE "
     "keep_top_k: 7 confidence_threshold: 0.2", True),
    ("background_label_id: 1 nms_param { nms_threshold: 0.3 } code_type: CORNER "
     "confidence_threshold: 0.2 keep_top_k: 500", False),
    ("background_label_id: -1 nms_param { nms_threshold: 0.5 top_k: 20 } code_type: CENTER_SIZE "
     "confidence_threshold: 0.25 keep_top_k: 30", False),
]


@pytest.mark.parametrize("params, share", DETECTION_CONFIGS)
def test_detection_output_matches_opencv(tmp_path, params, share):
    rng = np.random.default_rng(3)
    num, priors, classes = 2, 60, 4
    inputs = synthetic_detection_inputs(rng, num, priors, classes, 1 if share else classes)
    text = detection_net(params, num, priors, classes, share)
    ours = numpy_forward(text, inputs, "det")
    ref = opencv_forward(tmp_path, text, inputs, "det")[0, 0]
    ref = ref[np.any(ref != 0, axis=1)]   # OpenCV's zero padding
    assert ours.shape[:2] == (1, 1) and len(ref) > 10
    assert_caffe_row_order(ours[0, 0])
    np.testing.assert_allclose(sorted_rows(ours[0, 0]), sorted_rows(ref), atol=2e-6)
    assert Net.from_proto(net_param(text)).shapes()["det"] == (1, 1, 1, 7)


def test_detection_output_variance_in_target_matches_opencv(tmp_path):
    # OpenCV wants a one-channel prior blob here; Caffe always reads (1, 2, P*4) and simply
    # ignores the variances.
    rng = np.random.default_rng(4)
    num, priors, classes = 1, 50, 3
    inputs = synthetic_detection_inputs(rng, num, priors, classes, 1, loc_scale=0.05)
    params = ("background_label_id: 0 nms_param { nms_threshold: 0.4 } code_type: CENTER_SIZE "
              "variance_encoded_in_target: true confidence_threshold: 0.3 keep_top_k: 100")
    ours = numpy_forward(detection_net(params, num, priors, classes), inputs, "det")[0, 0]
    one_channel = dict(inputs, prior=inputs["prior"][:, :1])
    ref = opencv_forward(tmp_path, detection_net(params, num, priors, classes, prior_channels=1),
                         one_channel, "det")[0, 0]
    ref = ref[np.any(ref != 0, axis=1)]
    assert len(ref) > 5
    np.testing.assert_allclose(sorted_rows(ours), sorted_rows(ref), atol=2e-6)


def caffe_nms_reference(boxes, scores, score_threshold, nms_threshold, eta, top_k):
    """ApplyNMSFast written as Caffe's CPU code runs it: one box at a time, float32."""
    f32 = np.float32

    def size(b):
        return f32(0) if b[2] < b[0] or b[3] < b[1] else f32(b[2] - b[0]) * f32(b[3] - b[1])

    def overlap(a, b):
        if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
            return f32(0)
        width = f32(min(a[2], b[2]) - max(a[0], b[0]))
        height = f32(min(a[3], b[3]) - max(a[1], b[1]))
        if not (width > 0 and height > 0):
            return f32(0)
        inter = f32(width * height)
        return f32(inter / f32(f32(size(a) + size(b)) - inter))

    ranked = sorted(((s, i) for i, s in enumerate(scores) if s > score_threshold),
                    key=lambda pair: -pair[0])           # Python's sort is stable, as Caffe's
    if top_k > -1:
        ranked = ranked[:top_k]
    kept, threshold = [], f32(nms_threshold)
    for _, index in ranked:
        keep = all(overlap(boxes[index], boxes[k]) <= threshold for k in kept)
        if keep:
            kept.append(index)
            if eta < 1 and threshold > 0.5:
                threshold = f32(threshold * f32(eta))
    return kept


@pytest.mark.parametrize("eta, nms_threshold, top_k", [(1.0, 0.45, -1), (0.7, 0.9, -1),
                                                       (0.85, 0.75, 25), (0.5, 0.3, 10)])
def test_nms_matches_caffe_loop_with_eta_and_ties(eta, nms_threshold, top_k):
    # OpenCV ignores eta entirely, so the reference is the loop above. Scores on a coarse
    # grid produce ties, which Caffe's stable sort breaks by box index.
    for seed in range(15):
        rng = np.random.default_rng(seed)
        count = 80
        centers = np.round(rng.uniform(0, 1, (count, 2)) * 4) / 4 + rng.normal(0, 0.03, (count, 2))
        sizes = rng.uniform(0.05, 0.5, (count, 2))
        boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], 1).astype(np.float32)
        boxes[:3, 2:] = boxes[:3, :2] - 0.01   # inverted boxes: size 0
        scores = (rng.integers(0, 12, count) / 12).astype(np.float32)
        kept = ssd.greedy_nms(boxes, ssd._box_areas(boxes), scores, 0.1, nms_threshold, eta,
                              top_k)
        assert list(kept) == caffe_nms_reference(boxes, scores, 0.1, nms_threshold, eta, top_k)


def test_detection_output_eta_hand_computed():
    # Three priors decoded as themselves (CORNER code, zero offsets), one foreground class.
    # A and B overlap with IoU 0.6, C is apart. nms_threshold 0.7: B survives without eta;
    # with eta 0.8 the threshold drops to 0.56 once A is kept, and B is suppressed.
    priors = np.array([[0, 0, 1, 1], [0, 0.25, 1, 1.25], [2, 2, 3, 3]], np.float32) / 4
    area = np.array([1 / 16], np.float32)
    assert ssd.jaccard(priors[0], area[0], priors[1:2], area)[0] == pytest.approx(0.6)
    inputs = {"loc": np.zeros((1, 12), np.float32),
              "conf": np.array([[0.1, 0.9, 0.2, 0.8, 0.3, 0.7]], np.float32),
              "prior": np.stack([priors.reshape(-1), np.full(12, 0.1)])[None].astype(np.float32)}
    for eta, expected in [(1.0, [0.9, 0.8, 0.7]), (0.8, [0.9, 0.7])]:
        params = (f"background_label_id: 0 code_type: CORNER "
                  f"nms_param {{ nms_threshold: 0.7 eta: {eta} }}")
        out = numpy_forward(detection_net(params, 1, 3, 2), inputs, "det")
        np.testing.assert_allclose(out[0, 0, :, 2], expected, rtol=1e-6)


def test_nms_keeps_an_overlap_equal_to_the_threshold():
    # B lies inside A with half its area: IoU exactly 0.5 in float32. Caffe suppresses only
    # overlaps strictly above the threshold.
    boxes = np.array([[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.25]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    kept = ssd.greedy_nms(boxes, ssd._box_areas(boxes), scores, 0.0, 0.5, 1.0, -1)
    assert list(kept) == [0, 1]
    kept = ssd.greedy_nms(boxes, ssd._box_areas(boxes), scores, 0.0, 0.49, 1.0, -1)
    assert list(kept) == [0]


def test_detection_output_corner_size_and_keep_top_k_hand_computed():
    # CORNER_SIZE: corner + variance * offset * prior side. Per-class locations; keep_top_k 2
    # keeps the two best scores over both classes, rows ordered by label.
    prior_box = np.array([0.2, 0.2, 0.6, 0.4], np.float32)       # width 0.4, height 0.2
    offsets = np.array([[0, 0, 0, 0], [1, -1, 2, 0.5], [0, 1, 0, 1]], np.float32)
    inputs = {"loc": offsets.reshape(1, 12),
              "conf": np.array([[0.1, 0.5, 0.4]], np.float32),
              "prior": np.stack([prior_box, np.array([0.1, 0.1, 0.2, 0.2])])
              .reshape(1, 2, 4).astype(np.float32)}
    params = ("background_label_id: 0 code_type: CORNER_SIZE keep_top_k: 1 "
              "nms_param { nms_threshold: 0.5 }")
    out = numpy_forward(detection_net(params, 1, 1, 3, share=False), inputs, "det")
    side = np.array([0.4, 0.2, 0.4, 0.2])
    expected_box = prior_box + np.array([0.1, 0.1, 0.2, 0.2]) * offsets[1] * side
    np.testing.assert_allclose(out, [[[[0, 1, 0.5, *expected_box]]]], rtol=1e-6)


def test_detection_output_without_detections_emits_one_row_per_image():
    rng = np.random.default_rng(5)
    inputs = synthetic_detection_inputs(rng, 2, 20, 3, 1)
    params = ("background_label_id: 0 nms_param { nms_threshold: 0.45 } code_type: CENTER_SIZE "
              "confidence_threshold: 0.9999")
    out = numpy_forward(detection_net(params, 2, 20, 3), inputs, "det")
    expected = np.full((1, 1, 2, 7), -1, np.float32)
    expected[0, 0, :, 0] = [0, 1]
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("params, conf_width, message", [
    ("background_label_id: 0", 12, "num_classes"),
    ("num_classes: 3 nms_param { eta: 0 }", 12, "eta"),
    ("num_classes: 3", 10, "conf has 10 values"),
])
def test_detection_output_rejects_bad_parameters_and_shapes(params, conf_width, message):
    text = detection_net("", 1, 4, 3).replace("num_classes: 3", params)
    text = text.replace("dim: 12 }", f"dim: {conf_width} }}")
    with pytest.raises(NetError, match=message):
        Net.from_proto(net_param(text)).shapes()


def test_ssd_head_runs_in_onnxruntime_backend_with_numpy_tail():
    # PriorBox exports as a constant; DetectionOutput becomes the numpy tail.
    rng = np.random.default_rng(6)
    text = """
layer { name: "in" type: "Input" top: "feat" top: "img" top: "loc" top: "conf"
  input_param { shape { dim: 1 dim: 4 dim: 3 dim: 4 } shape { dim: 1 dim: 3 dim: 30 dim: 40 }
                shape { dim: 1 dim: 192 } shape { dim: 1 dim: 144 } } }
layer { name: "pb" type: "PriorBox" bottom: "feat" bottom: "img" top: "pb"
  prior_box_param { min_size: 8 max_size: 16 aspect_ratio: 2 clip: true
                    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }
layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "pb" top: "det"
  detection_output_param { num_classes: 3 background_label_id: 0 code_type: CENTER_SIZE
    nms_param { nms_threshold: 0.45 top_k: 30 } keep_top_k: 10 confidence_threshold: 0.2 } }
"""
    net = Net.from_proto(net_param(text))
    logits = np.exp(rng.normal(0, 2, (1, 48, 3)))
    inputs = {"feat": np.zeros((1, 4, 3, 4), np.float32),
              "img": np.zeros((1, 3, 30, 40), np.float32),
              "loc": rng.normal(0, 0.5, (1, 192)).astype(np.float32),
              "conf": (logits / logits.sum(-1, keepdims=True)).reshape(1, -1).astype(np.float32)}
    backend = OnnxRuntime(net, all_blobs=False)
    assert [net.layers[i].name for i in backend.export.tail] == ["det"]
    ours = NumpyRuntime(net).forward(inputs)["det"]
    assert 0 < ours.shape[2] <= 10
    assert_close(backend.forward(inputs)["det"], ours, rtol=1e-6)


@pytest.mark.slow
def test_ssd_layers_of_a_real_face_detector(real_models):
    # res10_ssd: each SSD layer, alone in a net with its weights, is fed the bottoms OpenCV
    # computes for a real image (the rest of the model is other families' work).
    files = real_models("res10_ssd")
    image = cv2.resize(cv2.imread(str(real_models("mtcnn_pnet").images[0])), (300, 300))
    data = cv2.dnn.blobFromImage(image, 1.0, (300, 300), (104, 177, 123))
    model = caffe_io.read_net_text(files.prototxt)
    weights = caffe_io.read_net_binary(files.caffemodel)
    reference = cv2.dnn.readNetFromCaffe(str(files.prototxt), str(files.caffemodel))
    reference.setInput(data)
    writer = {top: spec.name for spec in model.layer for top in spec.top}  # last writer
    ours = [spec for spec in model.layer
            if spec.type in ("Normalize", "PriorBox", "DetectionOutput")]
    assert len(ours) == 8
    wanted = sorted({writer[b] for spec in ours for b in spec.bottom if b != "data"}
                    | {spec.name for spec in ours})
    values = dict(zip(wanted, reference.forward(wanted)))
    for spec in ours:
        bottoms = {b: data if b == "data" else values[writer[b]] for b in spec.bottom}
        single = caffe_pb2.NetParameter()
        feed = single.layer.add(name="feed", type="Input", top=list(bottoms))
        for value in bottoms.values():
            feed.input_param.shape.add(dim=value.shape)
        single.layer.add().CopyFrom(spec)
        net = Net.from_proto(single, weights)
        out = NumpyRuntime(net).forward(bottoms)[spec.top[0]]
        expected = values[spec.name]
        if spec.type == "DetectionOutput":
            expected = expected[0, 0][np.any(expected[0, 0] != 0, axis=1)]
            assert len(expected) > 0
            np.testing.assert_allclose(sorted_rows(out[0, 0]), sorted_rows(expected), atol=1e-5)
        else:
            assert_close(out, expected)
