"""The layers of SSD Caffe (weiliu89/caffe, branch ``ssd``): Normalize, PriorBox, DetectionOutput.

Normalize scales each item (or each spatial position) to unit L2 norm, then by a learned scale.
PriorBox emits the default boxes of one feature map; its output depends on shapes only, so the
ONNX export is a constant. DetectionOutput decodes the box predictions against the priors and
runs per-class greedy NMS; its output size depends on the data, so it has no ONNX form and the
onnxruntime backend runs it in numpy (the export's tail).
"""
import numpy as np

from .base import LayerImpl, register

FLT_MAX = float(np.finfo(np.float32).max)


def _legacy_dim(shape, axis):
    """Caffe's LegacyShape: axes a blob lacks count as 1 (num/channels/height/width)."""
    return int(shape[axis]) if axis < len(shape) else 1


@register
class Normalize(LayerImpl):
    """y = scale * x / sqrt(sum(x^2) + eps); the sum runs over C*H*W of each item
    (``across_spatial``, the default) or over the channels at each position. The scale is one
    value (``channel_shared``, the default) or one per channel."""
    type_name = "Normalize"

    def setup(self, spec):
        p = spec.norm_param
        self.across_spatial = bool(p.across_spatial)
        self.channel_shared = bool(p.channel_shared)
        self.eps = float(p.eps)

    def _check(self, shape):
        if not 2 <= len(shape) <= 4:
            raise self.error(f"needs a 2-D to 4-D bottom (N, C, H, W), got {list(shape)}")

    def output_shapes(self, bottom_shapes):
        self._check(bottom_shapes[0])
        return [tuple(bottom_shapes[0])]

    def param_shapes(self, bottom_shapes):
        self._check(bottom_shapes[0])
        # Caffe makes a 0-axis blob for a shared scale; it is saved without a shape and read
        # back as one value, hence (1,).
        return [(1,) if self.channel_shared else (int(bottom_shapes[0][1]),)]

    def _reduce_axes(self, ndim):
        return tuple(range(1, ndim)) if self.across_spatial else (1,)

    def _scale(self, blobs, ndim):
        scale = np.asarray(blobs[0], dtype=np.float32).reshape(-1)
        if self.channel_shared:
            return scale.reshape(())
        return scale.reshape((1, -1) + (1,) * (ndim - 2))

    def forward(self, bottoms, blobs):
        x = np.asarray(bottoms[0], dtype=np.float32)
        squares = np.sum(x * x, axis=self._reduce_axes(x.ndim), keepdims=True, dtype=np.float32)
        # Caffe adds eps to the sum of squares, then takes the root.
        norm = np.sqrt(squares + np.float32(self.eps))
        return [((x / norm) * self._scale(blobs, x.ndim)).astype(np.float32)]

    def macs(self, bottom_shapes, top_shapes):
        # One multiply-add for the sum of squares and one multiply for the scale per value.
        return 2 * int(np.prod(bottom_shapes[0]))

    def export_onnx(self, graph, io):
        ndim = len(io.bottom_shapes[0])
        squares = graph.node("ReduceSumSquare", [io.bottoms[0]],
                             axes=list(self._reduce_axes(ndim)), keepdims=1)[0]
        padded = graph.node("Add", [squares, graph.scalar(self.eps)])[0]
        norm = graph.node("Sqrt", [padded])[0]
        unit = graph.node("Div", [io.bottoms[0], norm])[0]
        scale = self._scale(io.blobs, ndim)
        scale = scale.reshape(scale.shape[1:]) if scale.ndim > 1 else scale
        graph.node("Mul", [unit, graph.constant(scale, "norm_scale")], io.tops)


@register
class PriorBox(LayerImpl):
    """Default boxes of one feature map, as (1, 2, H*W*num_priors*4): first the corners
    (xmin, ymin, xmax, ymax) divided by the image size, then the variances. Per cell and per
    min_size the order is: the min_size square, the sqrt(min_size*max_size) square (when
    max_size is given), then one box per aspect ratio other than 1.

    The image size comes from img_size / img_h+img_w, else from bottom 1's height and width.
    (SSD Caffe declares the bottom count with a misspelt method, so one bottom is accepted
    when the image size is explicit.)"""
    type_name = "PriorBox"
    bottoms_range = (1, 2)

    def setup(self, spec):
        p = spec.prior_box_param
        if not len(p.min_size):
            raise self.error("prior_box_param needs at least one min_size")
        if any(s <= 0 for s in p.min_size):
            raise self.error("min_size must be positive")
        if len(p.max_size) and len(p.max_size) != len(p.min_size):
            raise self.error(f"gives {len(p.max_size)} max_size for {len(p.min_size)} min_size")
        if any(hi <= lo for lo, hi in zip(p.min_size, p.max_size)):
            raise self.error("each max_size must be greater than its min_size")
        if any(not r > 0 for r in p.aspect_ratio):
            raise self.error("aspect_ratio values must be positive")
        # Aspect ratios: 1 first, then each new ratio (and its inverse with flip); a ratio
        # within 1e-6 of one already listed is skipped.
        ratios = [1.0]
        for ratio in (float(np.float32(r)) for r in p.aspect_ratio):
            if any(abs(ratio - known) < 1e-6 for known in ratios):
                continue
            ratios.append(ratio)
            if p.flip:
                ratios.append(float(np.float32(1.0 / ratio)))
        # Caffe reads each size into an int before use: fractional sizes are truncated.
        sizes = []  # (width, height) in pixels, in Caffe's order
        for i, min_value in enumerate(p.min_size):
            min_size = int(min_value)
            sizes.append((min_size, min_size))
            if len(p.max_size):
                side = np.sqrt(float(min_size * int(p.max_size[i])))
                sizes.append((side, side))
            for ratio in ratios:
                if abs(ratio - 1.0) < 1e-6:
                    continue
                root = np.sqrt(np.float32(ratio))
                sizes.append((min_size * root, min_size / root))
        self.box_sizes = np.asarray(sizes, dtype=np.float32)
        self.clip = bool(p.clip)
        if len(p.variance) > 1 and len(p.variance) != 4:
            raise self.error(f"variance takes 1 or 4 values, got {len(p.variance)}")
        if any(v <= 0 for v in p.variance):
            raise self.error("variance values must be positive")
        self.variance = [float(v) for v in p.variance] or [0.1]
        self.image_hw = self._image_size(p)
        self.step_hw = self._step(p)
        self.offset = float(p.offset)

    def _image_size(self, p):
        if p.HasField("img_h") or p.HasField("img_w"):
            if p.HasField("img_size"):
                raise self.error("give either img_size or img_h/img_w, not both")
            if p.img_h <= 0 or p.img_w <= 0:
                raise self.error("img_h and img_w must both be given and positive")
            return int(p.img_h), int(p.img_w)
        if p.HasField("img_size"):
            if p.img_size <= 0:
                raise self.error("img_size must be positive")
            return int(p.img_size), int(p.img_size)
        if len(self.layer.bottoms) < 2:
            raise self.error("needs the image as bottom 1 unless img_size or img_h/img_w is given")
        return None

    def _step(self, p):
        if p.HasField("step_h") or p.HasField("step_w"):
            if p.HasField("step"):
                raise self.error("give either step or step_h/step_w, not both")
            if not (p.step_h > 0 and p.step_w > 0):
                raise self.error("step_h and step_w must both be given and positive")
            return float(p.step_h), float(p.step_w)
        if p.HasField("step"):
            if not p.step > 0:
                raise self.error("step must be positive")
            return float(p.step), float(p.step)
        return None

    @property
    def num_priors(self):
        return len(self.box_sizes)

    def output_shapes(self, bottom_shapes):
        for shape in bottom_shapes:
            if len(shape) > 4:
                raise self.error(f"bottoms have at most 4 axes, got {list(shape)}")
        height, width = _legacy_dim(bottom_shapes[0], 2), _legacy_dim(bottom_shapes[0], 3)
        return [(1, 2, height * width * self.num_priors * 4)]

    def priors(self, feature_shape, image_shape):
        """The (1, 2, H*W*num_priors*4) array for these bottom shapes."""
        layer_h, layer_w = _legacy_dim(feature_shape, 2), _legacy_dim(feature_shape, 3)
        if self.image_hw is not None:
            img_h, img_w = self.image_hw
        else:
            img_h, img_w = _legacy_dim(image_shape, 2), _legacy_dim(image_shape, 3)
        if self.step_hw is not None:
            step_h, step_w = (np.float32(s) for s in self.step_hw)
        else:
            step_h = np.float32(np.float32(img_h) / np.float32(layer_h))
            step_w = np.float32(np.float32(img_w) / np.float32(layer_w))
        offset = np.float32(self.offset)
        # Centres in float32 as Caffe computes them, the corners in double, stored as float.
        center_x = ((np.arange(layer_w, dtype=np.float32) + offset) * step_w).astype(np.float64)
        center_y = ((np.arange(layer_h, dtype=np.float32) + offset) * step_h).astype(np.float64)
        half_w = self.box_sizes[:, 0].astype(np.float64) / 2.0
        half_h = self.box_sizes[:, 1].astype(np.float64) / 2.0
        shape = (layer_h, layer_w, self.num_priors)
        x = np.broadcast_to(center_x[None, :, None], shape)
        y = np.broadcast_to(center_y[:, None, None], shape)
        corners = np.stack([(x - half_w) / img_w, (y - half_h) / img_h,
                            (x + half_w) / img_w, (y + half_h) / img_h], axis=-1)
        corners = corners.astype(np.float32).reshape(-1)
        if self.clip:
            corners = np.clip(corners, np.float32(0), np.float32(1))
        variances = np.resize(np.asarray(self.variance, dtype=np.float32), corners.size)
        return np.stack([corners, variances])[None].astype(np.float32)

    def forward(self, bottoms, blobs):
        image_shape = bottoms[1].shape if len(bottoms) > 1 else None
        return [self.priors(bottoms[0].shape, image_shape)]

    def export_onnx(self, graph, io):
        image_shape = io.bottom_shapes[1] if len(io.bottom_shapes) > 1 else None
        priors = self.priors(io.bottom_shapes[0], image_shape)
        graph.node("Identity", [graph.constant(priors, "priors")], io.tops)


CODE_TYPES = {1: "CORNER", 2: "CENTER_SIZE", 3: "CORNER_SIZE"}


@register
class DetectionOutput(LayerImpl):
    """SSD's TEST-time detection: decode, per-class NMS, keep_top_k over the classes.

    Bottoms: loc (N, P*L*4) with L = 1 (share_location) or num_classes, conf (N, P*C) already
    softmaxed, priors (1, 2, P*4); an optional 4th bottom (the image, for Caffe's visualiser)
    is ignored, as are the save_output / visualize options (no files are written).
    Output (1, 1, D, 7), rows [image, label, score, xmin, ymin, xmax, ymax], images in order,
    labels ascending within an image, scores descending within a label. With no detection in
    the whole batch, Caffe emits one row per image [i, -1, -1, -1, -1, -1, -1].

    Where Caffe's CPU path aborts (share_location with background_label_id -1, which leaves
    the shared boxes undecoded; a prior of zero width or height under CENTER_SIZE or
    CORNER_SIZE coding) this follows its GPU path, which decodes every box.

    The shape rule gives (1, 1, 1, 7), the placeholder Caffe's Reshape sets before any forward
    pass: D is only known after the data is seen. Ties in score are broken by prior index
    (the stable sort of Caffe's CPU path; its GPU path and the keep_top_k sort leave tie order
    unspecified)."""
    type_name = "DetectionOutput"
    bottoms_range = (3, 4)
    onnx_exportable = False

    def setup(self, spec):
        p = spec.detection_output_param
        if not p.HasField("num_classes"):
            raise self.error("detection_output_param needs num_classes")
        self.num_classes = int(p.num_classes)
        if self.num_classes < 1:
            raise self.error("num_classes must be positive")
        self.share_location = bool(p.share_location)
        self.num_loc_classes = 1 if self.share_location else self.num_classes
        self.background = int(p.background_label_id)
        if p.code_type not in CODE_TYPES:
            raise self.error(f"unknown code_type {p.code_type}")
        self.code_type = CODE_TYPES[p.code_type]
        self.variance_in_target = bool(p.variance_encoded_in_target)
        self.keep_top_k = int(p.keep_top_k)
        self.confidence_threshold = (float(p.confidence_threshold)
                                     if p.HasField("confidence_threshold") else -FLT_MAX)
        nms = p.nms_param
        self.nms_threshold = float(nms.nms_threshold)
        if not self.nms_threshold >= 0:
            raise self.error("nms_threshold must be non-negative")
        self.eta = float(nms.eta)
        if not 0 < self.eta <= 1:
            raise self.error("nms_param.eta must be in (0, 1]")
        self.top_k = int(nms.top_k) if nms.HasField("top_k") else -1

    def _num_priors(self, bottom_shapes):
        loc, conf, prior = bottom_shapes[:3]
        if len(prior) > 4 or len(loc) > 4 or len(conf) > 4:
            raise self.error("bottoms have at most 4 axes")
        num_priors = _legacy_dim(prior, 2) // 4
        if _legacy_dim(loc, 0) != _legacy_dim(conf, 0):
            raise self.error(f"loc has {loc[0]} items but conf has {conf[0]}")
        # Caffe checks the channels and reads each item as that many values: trailing axes
        # of size other than 1 would make it stride wrongly, so they are refused here.
        for what, shape, need in (("loc", loc, num_priors * self.num_loc_classes * 4),
                                  ("conf", conf, num_priors * self.num_classes)):
            per_item = int(np.prod(shape[1:]))
            if per_item != need:
                raise self.error(f"{what} has {per_item} values per item but {num_priors} "
                                 f"priors need {need}")
        if int(np.prod(prior)) < 2 * num_priors * 4:
            raise self.error("the prior blob must hold boxes and variances (1, 2, P*4)")
        return num_priors

    def output_shapes(self, bottom_shapes):
        self._num_priors(bottom_shapes)
        return [(1, 1, 1, 7)]

    def decode(self, loc, prior_boxes, variances):
        """Boxes from predictions ``loc`` (..., P, L, 4) and priors (P, 4), float32."""
        f32 = np.float32
        prior = prior_boxes[:, None, :]
        var = np.ones_like(variances)[:, None, :] if self.variance_in_target \
            else variances[:, None, :]
        if self.code_type == "CORNER":
            return (prior + var * loc).astype(f32)
        width = prior[..., 2] - prior[..., 0]
        height = prior[..., 3] - prior[..., 1]
        if self.code_type == "CORNER_SIZE":
            scale = np.stack([width, height, width, height], axis=-1)
            return (prior + var * loc * scale).astype(f32)
        center_x = (prior[..., 0] + prior[..., 2]) / f32(2)
        center_y = (prior[..., 1] + prior[..., 3]) / f32(2)
        box_cx = var[..., 0] * loc[..., 0] * width + center_x
        box_cy = var[..., 1] * loc[..., 1] * height + center_y
        half_w = np.exp(var[..., 2] * loc[..., 2]) * width / f32(2)
        half_h = np.exp(var[..., 3] * loc[..., 3]) * height / f32(2)
        return np.stack([box_cx - half_w, box_cy - half_h, box_cx + half_w, box_cy + half_h],
                        axis=-1).astype(f32)

    def forward(self, bottoms, blobs):
        loc, conf, prior = bottoms[:3]
        num = loc.shape[0]
        num_priors = self._num_priors([b.shape for b in bottoms])
        prior = np.asarray(prior, dtype=np.float32).reshape(-1)
        prior_boxes = prior[:num_priors * 4].reshape(num_priors, 4)
        variances = prior[num_priors * 4:num_priors * 8].reshape(num_priors, 4)
        loc = np.asarray(loc, dtype=np.float32).reshape(num, num_priors, self.num_loc_classes, 4)
        boxes = self.decode(loc, prior_boxes, variances)          # (N, P, L, 4)
        areas = _box_areas(boxes)                                   # (N, P, L)
        scores = np.asarray(conf, dtype=np.float32).reshape(num, num_priors, self.num_classes)
        scores = scores.transpose(0, 2, 1)                          # (N, C, P)
        rows = []
        for image in range(num):
            labels, indices = [], []
            for label in range(self.num_classes):
                if label == self.background:
                    continue
                which = 0 if self.share_location else label
                kept = greedy_nms(boxes[image, :, which], areas[image, :, which],
                                  scores[image, label], self.confidence_threshold,
                                  self.nms_threshold, self.eta, self.top_k)
                labels.append(np.full(len(kept), label, dtype=np.int64))
                indices.append(kept)
            labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
            indices = np.concatenate(indices) if indices else np.zeros(0, np.int64)
            found = scores[image, labels, indices]
            if 0 <= self.keep_top_k < len(found):
                best = np.argsort(-found, kind="stable")[:self.keep_top_k]
                chosen = np.zeros(len(found), dtype=bool)
                chosen[best] = True   # keeps the label-ascending, score-descending row order
                labels, indices, found = labels[chosen], indices[chosen], found[chosen]
            which = 0 if self.share_location else labels
            rows.append(np.column_stack([
                np.full(len(found), image, dtype=np.float32), labels.astype(np.float32),
                found, boxes[image, indices, which]]).astype(np.float32))
        detections = np.concatenate(rows) if rows else np.zeros((0, 7), np.float32)
        if not len(detections):
            detections = np.full((num, 7), -1, dtype=np.float32)
            detections[:, 0] = np.arange(num)
        return [detections.reshape(1, 1, -1, 7)]


def _box_areas(boxes):
    """Caffe's BBoxSize for normalised boxes: width*height, 0 for an inverted box."""
    width = boxes[..., 2] - boxes[..., 0]
    height = boxes[..., 3] - boxes[..., 1]
    return np.where((width < 0) | (height < 0), np.float32(0), width * height).astype(np.float32)


def jaccard(box, area, others, other_areas):
    """Intersection over union of one box with each of ``others`` (float32, as Caffe)."""
    inter_w = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
    inter_h = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
    overlapping = (inter_w > 0) & (inter_h > 0)
    inter = np.where(overlapping, inter_w * inter_h, np.float32(0)).astype(np.float32)
    union = np.where(overlapping, (area + other_areas) - inter, np.float32(1))
    return np.where(overlapping, inter / union, np.float32(0)).astype(np.float32)


def greedy_nms(boxes, areas, scores, score_threshold, nms_threshold, eta, top_k):
    """Caffe's ApplyNMSFast: indices of the kept boxes, best score first.

    Candidates score above ``score_threshold``; they are ranked by score (ties: lower index
    first) and cut to ``top_k``. In rank order a candidate is kept when its overlap with every
    box kept so far is at most the threshold; after each kept box the threshold is multiplied
    by ``eta`` while it is above 0.5. The threshold only falls and the kept set only grows, so
    a rejected candidate stays rejected: the loop below runs once per kept box, tracking each
    candidate's largest overlap with the kept boxes."""
    candidates = np.nonzero(scores > np.float32(score_threshold))[0]
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    if top_k > -1:
        order = order[:top_k]
    ranked_boxes, ranked_areas = boxes[order], areas[order]
    worst_overlap = np.zeros(len(order), dtype=np.float32)
    threshold, eta = np.float32(nms_threshold), np.float32(eta)
    kept, start = [], 0
    while start < len(order):
        eligible = np.flatnonzero(worst_overlap[start:] <= threshold)
        if not len(eligible):
            break
        pick = start + int(eligible[0])
        kept.append(pick)
        rest = slice(pick + 1, None)
        overlap = jaccard(ranked_boxes[pick], ranked_areas[pick], ranked_boxes[rest],
                          ranked_areas[rest])
        worst_overlap[rest] = np.maximum(worst_overlap[rest], overlap)
        start = pick + 1
        if eta < 1 and threshold > 0.5:
            threshold = np.float32(threshold * eta)
    return order[np.asarray(kept, dtype=np.int64)]
