"""What the torch model hands the solver: each learnable blob once (a blob shared through
``param { name }`` appears once, with its owner's multipliers), in the order Caffe's
``Net::learnable_params`` lists them (layer order, then blob index)."""
import dataclasses


@dataclasses.dataclass
class LearnableParam:
    """One learnable blob: ``tensor`` is a ``torch.nn.Parameter`` whose ``.grad`` the solver
    reads (the sum over the ``iter_size`` passes, as Caffe accumulates diffs)."""
    layer: str              # the owning layer's name
    index: int              # the blob's index in that layer (0 weights, 1 bias, ...)
    tensor: object          # torch.nn.Parameter
    lr_mult: float = 1.0
    decay_mult: float = 1.0
    name: str = ""          # param { name } when shared, else ""
