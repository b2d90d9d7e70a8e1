"""Evaluations on a Ray cluster (``--cluster``): the batches of one evaluation split across
workers, independent candidates in flight together, and answers equal to one process's.

* ``spec``: what ``--cluster`` and ``--device`` name.
* ``session``: the cluster of one run (a local Ray started for it, or one attached to) and its
  workers, one Ray actor per CPU.
* ``sources``: the batches as a worker reads them (its own LMDB range, its images, or batches
  from the object store) and the plan that splits an evaluation into chunks.
* ``worker``: the actor: it loads a candidate net once from the object store and runs its chunks.
* ``pool``: the driver's side: submit candidates, gather their chunks in a fixed order (so sums
  and scores are the single process's), progress over images, Ray errors as one line.
"""
from .spec import ClusterSpec, parse_cluster, parse_device

__all__ = ["ClusterSpec", "parse_cluster", "parse_device"]
