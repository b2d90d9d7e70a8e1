"""The Ray actor that runs chunks of evaluations (``BatchWorker``), and ``NetHandle``, a net as
the object store holds it.

A worker keeps what it read and built between calls: its chunks of batches (while they fit in
half of its memory limit), the weights of the run, the last candidate nets with their runtimes,
and for cached searches the blobs recorded for the float net and the latest configurations.
Everything it keeps can be rebuilt from a call's arguments, so a worker that Ray restarts after
a crash answers the retried call exactly as the first one would have.
"""
import collections
import dataclasses
import os

import numpy as np

from .. import memory_budget

NETS_KEPT = 2          # candidate nets (with their runtimes) a worker keeps
RECORDS_KEPT = 2       # recorded configurations besides the float net's (a search's reference
                       # and its latest trial)


@dataclasses.dataclass(frozen=True)
class NetHandle:
    """A net in the object store: its NetParameter (with blobs for a built net) and, when
    separate, the weights' NetParameter, each a one-element list around an ObjectRef (so that
    Ray does not resolve it before a worker needs it)."""
    key: str
    param: list
    weights_key: str = None
    weights: list = None
    phase: str = "TEST"
    source: str = None
    weights_source: str = None


class _Kept(collections.OrderedDict):
    """A small least-recently-used store."""

    def __init__(self, size):
        super().__init__()
        self.size = size

    def get(self, key, default=None):
        if key in self:
            self.move_to_end(key)
            return self[key]
        return default

    def put(self, key, value):
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class BatchWorker:
    """One worker of a cluster (a Ray actor; ``session`` wraps it with ``ray.remote``)."""

    def __init__(self, device="cpu", threads=1):
        self.device, self.threads = device, threads
        self._chunks, self._chunk_bytes = {}, 0
        self._weights = _Kept(1)
        self._nets = _Kept(NETS_KEPT)            # built nets, by handle
        self._runtimes = _Kept(NETS_KEPT)        # their runtimes, by handle and options
        self._float_records = {}            # (float net, chunk) -> (blobs, snapshots)
        self._records = _Kept(RECORDS_KEPT)  # configuration -> {chunk: (blobs, snapshots)}
        if device == "cuda":
            from ..errors import RistrettoError
            from ..runtime import onnx_backend
            from .session import cuda_available
            usable, why = cuda_available()
            if not usable:
                raise RistrettoError(f"--device cuda on a worker: {why}")
            onnx_backend.select_gpu(0)     # Ray sets CUDA_VISIBLE_DEVICES to this worker's GPU

    def where(self):
        """(process id, node id): for reports, and for tests that stop a worker."""
        import ray
        return os.getpid(), ray.get_runtime_context().get_node_id()

    # -- what a worker keeps ------------------------------------------------------------------
    def _batches(self, source, chunk):
        key = (source.key, chunk.start, chunk.stop)
        if key in self._chunks:
            return self._chunks[key]
        batches = source.read(chunk.start, chunk.stop)
        size = sum(array.nbytes for batch in batches for array in batch.values())
        if memory_budget.fits(self._chunk_bytes + size, 0.5):
            self._chunks[key] = batches
            self._chunk_bytes += size
        return batches

    def _net(self, handle):
        """The net of ``handle``, built once for all the chunks of a candidate."""
        net = self._nets.get(handle.key)
        if net is None:
            net = self._build(handle)
            self._nets.put(handle.key, net)
        return net

    def _build(self, handle):
        from ..net import Net
        from ..protos import caffe_pb2
        import ray
        weights = None
        if handle.weights is not None:
            weights = self._weights.get(handle.weights_key)
            if weights is None:
                weights = caffe_pb2.NetParameter.FromString(ray.get(handle.weights[0]))
                self._weights.put(handle.weights_key, weights)
        param = caffe_pb2.NetParameter.FromString(ray.get(handle.param[0]))
        return Net.from_proto(param, weights, phase=handle.phase, source=handle.source,
                              weights_source=handle.weights_source)

    def _runtime(self, handle, options):
        from ..runtime import make_runtime
        options = dict(options)
        backend = options.pop("backend", "numpy")
        if backend == "onnxruntime":
            options.setdefault("threads", self.threads)
        key = (handle.key, backend, tuple(sorted(options.items())))
        runtime = self._runtimes.get(key)
        if runtime is None:
            runtime = make_runtime(self._net(handle), backend, **options)
            self._runtimes.put(key, runtime)
        return runtime

    # -- the calls ------------------------------------------------------------------------------
    def forward(self, source, chunk, handle, keep, options):
        """The blobs ``keep`` of the net ``handle`` for each batch of ``chunk``."""
        runtime = self._runtime(handle, options)
        outputs = []
        for batch in self._batches(source, chunk):
            blobs = runtime.forward(batch)
            outputs.append({name: blobs[name] for name in keep})
        return outputs

    def report(self, source, chunk, handle, options):
        """(the runtime's report, its ``describe_how``) after the last batch of ``chunk``
        (``--backend fixed``: overflows, values off the emulation, which layers ran in
        integers): that batch is run again, so the answer does not depend on what this worker
        ran before."""
        runtime = self._runtime(handle, options)
        runtime.forward(self._batches(source, chunk)[-1])
        how = runtime.describe_how() if hasattr(runtime, "describe_how") else None
        return dict(getattr(runtime, "report", {})), how

    def record(self, source, chunk, job):
        """A cached search's evaluation of one configuration on ``chunk`` (``job``: see
        ``pool.RecordJob``): the kept blobs per batch, and with ``job.distances`` the per-image
        L2 distance of every blob written from layer ``job.distance_start`` on to the float
        net's. The computation resumes from the reference's or the float net's snapshots when
        this worker still holds them; otherwise it runs the whole net (the same values)."""
        from ..runtime import NumpyRuntime
        batches = self._batches(source, chunk)
        where = (source.key, chunk.start, chunk.stop)
        float_blobs, float_snaps = self._float_record(source, chunk, job)
        if job.key == job.float_key:
            blobs, snaps = float_blobs, float_snaps
        else:
            runtime = NumpyRuntime(self._net(job.net), compat=job.compat, seed=job.seed)
            base = self._records.get(job.reference, {}).get(where) if job.reference else None
            start = job.start
            if base is None:
                base, start = (float_blobs, float_snaps), job.float_start
            blobs, snaps = [], []
            for i, batch in enumerate(batches):
                if start is None:
                    b, s = runtime.record(batch, job.points)
                else:
                    b, s = runtime.resume(base[1][i][start], start,
                                          record=[p for p in job.points if p > start])
                    s = {**{k: v for k, v in base[1][i].items() if k <= start}, **s}
                blobs.append(b)
                snaps.append(s)
            if job.retain:
                kept = self._records.get(job.key) or {}
                kept[where] = (blobs, snaps)
                self._records.put(job.key, kept)
        result = {"outputs": [{name: b[name] for name in job.keep} for b in blobs]}
        if job.distances:
            result["distances"] = [_distances(b, f, job.distance_names)
                                   for b, f in zip(blobs, float_blobs)]
        return result

    def _float_record(self, source, chunk, job):
        from ..runtime import NumpyRuntime
        key = (job.float_key, source.key, chunk.start, chunk.stop)
        kept = self._float_records.get(key)
        if kept is None:
            if any(k[0] != job.float_key for k in self._float_records):
                self._float_records.clear()          # another run's float net
            runtime = NumpyRuntime(self._net(job.float_net), compat=job.compat, seed=job.seed)
            recorded = [runtime.record(batch, job.points) for batch in self._batches(source, chunk)]
            kept = ([b for b, _ in recorded], [s for _, s in recorded])
            self._float_records[key] = kept
        return kept


def _distances(blobs, float_blobs, names):
    """Per-image L2 distance of each named non-scalar blob to the float net's."""
    result = {}
    for name in names:
        value = blobs[name]
        if np.ndim(value) == 0:
            continue
        result[name] = np.linalg.norm(
            (value.astype(np.float64) - float_blobs[name]).reshape(len(value), -1), axis=1)
    return result
