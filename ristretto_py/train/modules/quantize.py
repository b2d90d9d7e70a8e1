"""ristretto-py's ActivationQuantize in torch: the numpy layer's quantizer in the forward pass
(the rules live there and in ``numerics``), the identity in the backward pass."""
from .base import TorchLayer, register, straight_through, to_numpy


@register
class ActivationQuantize(TorchLayer):
    type_name = "ActivationQuantize"

    def forward(self, bottoms):
        x = bottoms[0]
        return [straight_through(x, self.impl.forward([to_numpy(x)], [])[0])]
