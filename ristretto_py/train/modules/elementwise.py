"""Eltwise in torch: SUM with one coefficient per bottom, PROD, and MAX with Caffe's choice of
the bottom that receives the gradient.

Caffe's MAX compares bottoms 0 and 1 with ``a > b`` (a tie goes to bottom 1), then each later
bottom with ``b > max`` (a tie stays with the earlier one); only the chosen bottom gets the
gradient. The choice is computed the same way here and the output gathered from it, so autograd
routes the gradient as Caffe's mask does (``torch.maximum`` would split ties in two).
"""
import torch

from .base import TorchLayer, register


@register
class Eltwise(TorchLayer):
    type_name = "Eltwise"

    def forward(self, bottoms):
        operation = self.impl.operation
        if operation == "PROD":
            y = bottoms[0] * bottoms[1]
            for x in bottoms[2:]:
                y = y * x
            return [y]
        if operation == "MAX":
            return [_caffe_max(bottoms)]
        coefficients = self.impl._coefficients(len(bottoms))
        terms = [x if c == 1 else x * c for x, c in zip(bottoms, coefficients)]
        y = terms[0] + terms[1]
        for term in terms[2:]:
            y = y + term
        return [y]


def _caffe_max(bottoms):
    with torch.no_grad():
        best = torch.where(bottoms[0] > bottoms[1], bottoms[0], bottoms[1])
        choice = (bottoms[0] <= bottoms[1]).to(torch.int64)
        for index, x in enumerate(bottoms[2:], 2):
            better = x > best
            best = torch.where(better, x, best)
            choice = torch.where(better, torch.full_like(choice, index), choice)
    stacked = torch.stack(bottoms)
    return torch.gather(stacked, 0, choice.unsqueeze(0)).squeeze(0)
