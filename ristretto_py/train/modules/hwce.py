"""ristretto-py's ConvolutionHWCE in torch: the kernel, the input and the output pass through
PULP HWCE's quantclip (the numpy layer's ``_clip``, i.e. ``numerics.quantclip``) in the forward
pass, in both phases, and straight through in the backward pass; the bias stays float."""
from .base import register, straight_through, to_numpy
from .conv import Convolution


@register
class ConvolutionHWCE(Convolution):
    type_name = "ConvolutionHWCE"

    def _clip(self, tensor, signal):
        return straight_through(tensor, self.impl._clip(to_numpy(tensor), signal))

    def weights(self):
        weight, bias = super().weights()
        return self._clip(weight, "kernel"), bias

    def forward(self, bottoms):
        y = super().forward([self._clip(bottoms[0], "input")])[0]
        return [self._clip(y, "output")]
