"""The torch pieces the training loop works with, gathered in one namespace: the model, the
solver, the data feed and torch itself (importing this module imports torch)."""
import torch  # noqa: F401  (the loop reaches torch through this module)

from .data import TrainFeed  # noqa: F401
from .model import TorchNet  # noqa: F401
from .solver import Solver  # noqa: F401
