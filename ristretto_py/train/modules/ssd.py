"""SSD's layers in torch: Normalize (learned scale, filler default constant 1). PriorBox and
DetectionOutput have no torch module: their numpy forward runs with no gradient (the prior
boxes depend on shapes only; the detections are a TEST-time decoding with NMS)."""
import torch

from .base import TorchLayer, constant_filler, register


@register
class Normalize(TorchLayer):
    type_name = "Normalize"
    has_blobs = True

    @classmethod
    def fillers(cls, spec, count):
        p = spec.norm_param
        return [p.scale_filler if p.HasField("scale_filler") else constant_filler(1.0)]

    def forward(self, bottoms):
        x = bottoms[0]
        impl = self.impl
        squares = (x * x).sum(dim=impl._reduce_axes(x.dim()), keepdim=True)
        norm = torch.sqrt(squares + impl.eps)
        scale = self.blob(0).reshape(-1)
        if impl.channel_shared:
            scale = scale.reshape(())
        else:
            scale = scale.reshape((1, -1) + (1,) * (x.dim() - 2))
        return [(x / norm) * scale]
