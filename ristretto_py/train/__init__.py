"""Training in Python, Caffe's way (``tools/train``): the torch engine that trains and fine-tunes
our ``Net`` (DESIGN section 8). Nothing outside this package imports torch.

* ``params``: ``LearnableParam``, what the model hands the solver.
* ``modules/`` and ``model``: one torch module per Caffe layer type with Caffe's forward rules,
  and ``TorchNet``, the torch model built from a ``Net`` (shared parameters, multipliers, loss
  weights, fillers, Ristretto's TRAIN-phase trimming).
* ``solver``: Caffe's SolverParameter, learning-rate policies and update rules.
* ``snapshot``: ``<prefix>_iter_N.caffemodel`` and ``.solverstate`` (Caffe's SolverState).
* ``data``: Data (LMDB) and ImageData layers in the TRAIN phase, with a prefetch thread.
* ``trainer``: the training loop of ``caffe train``.
"""
