"""Normalisation and per-channel affine layers in torch: BatchNorm, Scale, Bias, LRN, Softmax.

BatchNorm (Caffe's ``batch_norm_layer.cpp``): three blobs, mean * s, variance * s and the
factor s. With ``use_global_stats`` (default: true in TEST, false in TRAIN; the field, when
given, wins in both phases) it normalises with the stored statistics (s = 0 means zeros).
Otherwise it normalises with the batch's mean and biased variance over every axis but the
channels, and updates its blobs as Caffe does: s = f s + 1, blob0 = f blob0 + mean,
blob1 = f blob1 + m / (m - 1) var, where f is ``moving_average_fraction`` and m the number of
values per channel (1 when m = 1). ``--frozen_bn`` (``TrainContext.frozen_batch_norm``) forces
the stored statistics in TRAIN too, so they stay bit-identical while the rest trains. The blobs are running statistics, never trained: their
gradient is not computed and the solver gets them with lr_mult 0 (Caffe adds those ParamSpecs
itself and refuses any other lr_mult).

Scale and Bias broadcast their operand (a learned blob or bottom 1) from ``axis``; Scale's
default filler is constant 1 (``scale_param.filler``), its bias's ``bias_filler`` (0); Bias's
``bias_param.filler`` (0). LRN is ACROSS_CHANNELS ``x (k + alpha/n sum x^2)^-beta`` or
WITHIN_CHANNEL ``x (1 + alpha avg(x^2))^-beta`` (AVE pooling, window n, pad (n-1)/2).
"""
import torch
import torch.nn.functional as F

from ...layers.base import normalize_axis
from ...layers.normalization import _broadcast_shape
from .base import TorchLayer, constant_filler, register
from .pooling import average_pool


@register
class BatchNorm(TorchLayer):
    type_name = "BatchNorm"
    has_blobs = True

    def setup(self):
        p = self.spec.batch_norm_param
        self.eps = float(p.eps)
        self.fraction = float(p.moving_average_fraction)
        self.fixed_global = bool(p.use_global_stats) if p.HasField("use_global_stats") else None
        for i, spec in enumerate(self.spec.param[:3]):
            if spec.lr_mult != 0:
                raise self.error(f"param {i} has lr_mult {spec.lr_mult}: BatchNorm's statistics "
                                 "are not learnable parameters (Caffe requires lr_mult 0)")

    @classmethod
    def statistics_blobs(cls, spec):
        return (0, 1, 2)

    @property
    def use_global_stats(self):
        if self.context.frozen_batch_norm:
            return True
        return self.phase == "TEST" if self.fixed_global is None else self.fixed_global

    def forward(self, bottoms):
        return [self.normalize(bottoms[0])]

    def normalize(self, x, weight=None, bias=None):
        """BatchNorm of ``x``, then ``weight * y + bias`` per channel when given (a following
        in-place Scale, fused by ``TorchNet`` into torch's one kernel)."""
        if x.dim() < 2:
            raise self.error(f"needs a bottom of at least 2 axes (N, C, ...), got {list(x.shape)}")
        if self.use_global_stats:
            factor = float(self.blobs[2].detach().reshape(-1)[0])
            scale = 0.0 if factor == 0 else 1.0 / factor
            mean = (self.blob(0) * scale).detach().reshape(-1)
            var = (self.blob(1) * scale).detach().reshape(-1)
            return F.batch_norm(x, mean, var, weight, bias, training=False, eps=self.eps)
        # torch's fused kernel normalises with the batch's mean and biased variance, as Caffe.
        # With momentum 1 it also hands back the batch's mean and its unbiased variance (the
        # m / (m - 1) correction Caffe applies to its blob), at no extra pass.
        per_channel = x.numel() // max(1, x.shape[1])
        if per_channel < 2:                   # Caffe's correction is then 1; torch's undefined
            with torch.no_grad():
                var, mean = torch.var_mean(x, dim=(0,) + tuple(range(2, x.dim())), correction=0)
            self._update(mean, var)
            return F.batch_norm(x, None, None, weight, bias, training=True, momentum=0.0,
                                eps=self.eps)
        # Both buffers initialised: torch computes (1 - momentum) * old + momentum * new, and
        # 0 * NaN from uninitialised memory would be NaN.
        mean = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
        var = torch.zeros_like(mean)
        y = F.batch_norm(x, mean, var, weight, bias, training=True, momentum=1.0, eps=self.eps)
        self._update(mean, var)
        return y

    @torch.no_grad()
    def _update(self, mean, var):
        """Caffe's running statistics, from the batch's mean and (corrected) variance."""
        f = self.fraction
        mean_blob, var_blob, factor_blob = self.blobs[0], self.blobs[1], self.blobs[2]
        factor_blob.mul_(f).add_(1.0)
        mean_blob.mul_(f).add_(mean.detach().reshape(mean_blob.shape))
        var_blob.mul_(f).add_(var.detach().reshape(var_blob.shape))


class _Affine(TorchLayer):
    has_blobs = True
    def operand(self, value, x, bottoms):
        axis, shape = self.impl._operand_shape([tuple(b.shape) for b in bottoms])
        return value.reshape(_broadcast_shape(x.dim(), axis, shape))


@register
class Scale(_Affine):
    type_name = "Scale"

    @classmethod
    def fillers(cls, spec, count):
        p = spec.scale_param
        scale = p.filler if p.HasField("filler") else constant_filler(1.0)
        fillers = [scale, p.bias_filler] if count == 2 or not p.bias_term else [p.bias_filler]
        return fillers[:count]

    def channel_affine(self, x):
        """(weight, bias or None) as per-channel vectors when this one-bottom Scale multiplies
        axis 1 of ``x`` by its own blob, one value per channel (what BatchNorm can fuse);
        else None."""
        if x.dim() < 2:
            return None
        weight = self.blob(0)
        if weight.numel() != x.shape[1] or self.impl._operand_shape([tuple(x.shape)]) != \
                (1, (x.shape[1],)):
            return None
        bias = self.blob(1).reshape(-1) if self.impl.bias_term else None
        return weight.reshape(-1), bias

    def forward(self, bottoms):
        x = bottoms[0]
        two = len(bottoms) > 1
        y = x * self.operand(bottoms[1] if two else self.blob(0), x, bottoms)
        if self.impl.bias_term:
            y = y + self.operand(self.blob(0 if two else 1), x, bottoms)
        return [y]


@register
class Bias(_Affine):
    type_name = "Bias"

    @classmethod
    def fillers(cls, spec, count):
        return [spec.bias_param.filler]

    def forward(self, bottoms):
        x = bottoms[0]
        value = bottoms[1] if len(bottoms) > 1 else self.blob(0)
        return [x + self.operand(value, x, bottoms)]


@register
class LRN(TorchLayer):
    type_name = "LRN"

    def forward(self, bottoms):
        return [lrn(bottoms[0], self.impl)]


def lrn(x, impl):
    """Caffe's LRN of ``x`` with the parameters of the numpy layer ``impl`` (also the float
    form LRNRistretto's gradient passes through)."""
    size, half = impl.size, (impl.size - 1) // 2
    alpha, beta, k = float(impl.alpha), float(impl.beta), float(impl.k)
    squares = x * x
    if getattr(impl, "across", True):
        # The mean of n channels (zero-padded at both ends) is alpha/n times the sum over n.
        mean = F.avg_pool3d(squares.unsqueeze(1), (size, 1, 1), stride=1,
                            padding=(half, 0, 0), count_include_pad=True).squeeze(1)
        scale = k + alpha * mean
    else:
        mean = average_pool(squares, (size, size), (1, 1), (half, half), tuple(x.shape[2:]))
        scale = 1.0 + alpha * mean
    return x * torch.pow(scale, -beta)


@register
class Softmax(TorchLayer):
    type_name = "Softmax"

    def forward(self, bottoms):
        x = bottoms[0]
        return [torch.softmax(x, dim=normalize_axis(self.impl.axis_param, x.dim(),
                                                    self.layer_name))]
