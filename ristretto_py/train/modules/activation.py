"""Element-wise activations in torch: ReLU (leaky), PReLU (learned slopes, filler default
constant 0.25), Sigmoid, TanH, AbsVal, Power, Clip and Dropout.

The forms follow Caffe's so that autograd gives its backward: ReLU and PReLU take the slope
where x <= 0; Sigmoid is ``0.5 tanh(0.5 x) + 0.5``. Dropout in TRAIN keeps each value with
probability ``1 - ratio`` (a Bernoulli mask from the net's seeded torch generator) and scales
the kept ones by ``1 / (1 - ratio)``; in TEST it is the identity (the same tensor, as the numpy
runtime hands the same array on).
"""
import torch

from .base import TorchLayer, constant_filler, register


@register
class ReLU(TorchLayer):
    type_name = "ReLU"

    def forward(self, bottoms):
        x = bottoms[0]
        slope = self.impl.negative_slope
        if slope == 0.0:
            return [torch.relu(x)]
        return [torch.where(x > 0, x, x * slope)]


@register
class PReLU(TorchLayer):
    type_name = "PReLU"
    has_blobs = True

    @classmethod
    def fillers(cls, spec, count):
        p = spec.prelu_param
        return [p.filler if p.HasField("filler") else constant_filler(0.25)]

    def forward(self, bottoms):
        x = bottoms[0]
        slope = self.blob(0).reshape(-1)
        if self.impl.channel_shared:
            slope = slope.reshape(())
        else:
            slope = slope.reshape((1, -1) + (1,) * (x.dim() - 2))
        return [torch.where(x > 0, x, x * slope)]


@register
class Sigmoid(TorchLayer):
    type_name = "Sigmoid"

    def forward(self, bottoms):
        return [0.5 * torch.tanh(0.5 * bottoms[0]) + 0.5]


@register
class TanH(TorchLayer):
    type_name = "TanH"

    def forward(self, bottoms):
        return [torch.tanh(bottoms[0])]


@register
class AbsVal(TorchLayer):
    type_name = "AbsVal"

    def forward(self, bottoms):
        return [torch.abs(bottoms[0])]


@register
class Power(TorchLayer):
    type_name = "Power"

    def forward(self, bottoms):
        impl = self.impl
        y = bottoms[0] * impl.scale + impl.shift
        if impl.power != 1.0:
            y = torch.pow(y, impl.power)
        return [y]


@register
class Clip(TorchLayer):
    type_name = "Clip"

    def forward(self, bottoms):
        return [torch.clamp(bottoms[0], float(self.impl.low), float(self.impl.high))]


@register
class Dropout(TorchLayer):
    type_name = "Dropout"

    def setup(self):
        self.ratio = float(self.spec.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio}")

    def forward(self, bottoms):
        x = bottoms[0]
        if self.phase != "TRAIN":
            return [x]
        keep = torch.full_like(x, 1.0 - self.ratio)
        mask = torch.bernoulli(keep, generator=self.context.generator)
        return [x * mask * (1.0 / (1.0 - self.ratio))]
