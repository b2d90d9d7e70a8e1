"""ristretto-py's ActivationQuantize in torch: the numpy layer's quantizer in the forward pass
(the rules live there and in ``numerics``). The backward pass is the straight-through estimator
of quantization-aware training: the identity where the value lies inside the quantizer's range
and zero where it was clipped; for SIGN (BNN), range [-1, 1], that is hard-tanh's gradient."""
from .base import TorchLayer, register, saturating_straight_through, to_numpy


@register
class ActivationQuantize(TorchLayer):
    type_name = "ActivationQuantize"

    def forward(self, bottoms):
        x = bottoms[0]
        value = self.impl.forward([to_numpy(x)], [])[0]
        return [saturating_straight_through(x, value, (self.impl.low, self.impl.high))]
