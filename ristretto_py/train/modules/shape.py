"""Layers that only move data, in torch: Concat, Slice, Split, Flatten, Reshape, Permute, Crop.

Shapes come from the numpy layers' rules. Split hands on the very tensor (its tops share the
bottom's data, as in Caffe and the numpy runtime; autograd sums their gradients); Flatten and
Reshape give views, so a Ristretto layer that later trims one of them in place (TEST phase)
rebinds the others too, as ``rebind_trimmed`` does in the numpy runtime.
"""
import torch

from ...layers.base import normalize_axis
from .base import TorchLayer, register


@register
class Concat(TorchLayer):
    type_name = "Concat"

    def forward(self, bottoms):
        axis = normalize_axis(self.impl.axis_param, bottoms[0].dim(), self.layer_name)
        return [torch.cat(bottoms, dim=axis)]


@register
class Slice(TorchLayer):
    type_name = "Slice"

    def forward(self, bottoms):
        axis, sizes = self.impl._sizes(tuple(bottoms[0].shape))
        return list(torch.split(bottoms[0], sizes, dim=axis))


@register
class Split(TorchLayer):
    type_name = "Split"

    def forward(self, bottoms):
        return [bottoms[0]] * len(self.impl.layer.tops)


class _Reshaping(TorchLayer):
    def forward(self, bottoms):
        x = bottoms[0]
        return [x.reshape(self.impl.output_shapes([tuple(x.shape)])[0])]


@register
class Flatten(_Reshaping):
    type_name = "Flatten"


@register
class Reshape(_Reshaping):
    type_name = "Reshape"


@register
class Permute(TorchLayer):
    type_name = "Permute"

    def forward(self, bottoms):
        x = bottoms[0]
        return [x.permute(self.impl._order(x.dim())).contiguous()]


@register
class Crop(TorchLayer):
    type_name = "Crop"

    def forward(self, bottoms):
        _, starts, out = self.impl._plan(tuple(bottoms[0].shape), tuple(bottoms[1].shape))
        index = tuple(slice(s, s + n) for s, n in zip(starts, out))
        return [bottoms[0][index]]
