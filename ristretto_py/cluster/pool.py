"""The driver's side of a cluster: nets into the object store, evaluations cut into chunks
(``sources.plan_chunks``) and sent to the worker that owns each chunk, results gathered in
chunk order.

Every call returns a ``Pending`` at once; ``gather`` waits for any number of them together, so
independent candidates (a sensitivity grid, a search's speculative candidates) are in flight at
the same time, while their results come back as a list per candidate in batch order: the list a
single process computes, summed and scored in the same order, hence the same bytes.

Errors: a ``RistrettoError`` raised on a worker (an LMDB it cannot read, an image it cannot
decode) comes back as itself, saying that a worker raised it; a worker that died more often than
Ray restarts it is one line too. Ctrl-C cancels the calls in flight before it propagates (the
session then stops the workers).
"""
import dataclasses
import uuid

from ..errors import RistrettoError
from .sources import ImageSource, LmdbSource, StoredSource, absolute_paths, plan_chunks
from .worker import NetHandle


@dataclasses.dataclass(frozen=True)
class RecordJob:
    """One configuration of a cached search (``passes.sensitivity.CachedEvaluator``): its net,
    the float net, the reference configuration to resume from (``reference`` at layer index
    ``start``; else the float net's at ``float_start``; None: from the input), the snapshot
    points, the blobs to return, and whether to return distances / keep the record."""
    key: str
    net: NetHandle
    float_key: str
    float_net: NetHandle
    reference: str
    start: int
    float_start: int
    points: tuple
    keep: tuple
    distances: bool
    distance_names: tuple
    retain: bool
    compat: str
    seed: int


@dataclasses.dataclass
class Pending:
    """The chunks of one candidate in flight: (chunk, ObjectRef) in chunk order."""
    parts: list
    images: int
    batches: int
    key: str = None           # what the caller sent (a cached search's configuration)


class WorkerPool:
    def __init__(self, cluster, progress=True):
        self.cluster, self.progress = cluster, progress
        self.ray = cluster._ray
        self.actors = cluster.actors
        self._weights = {}        # id(NetParameter) -> (it, key, [ref])
        self._plans = {}          # id(batches) -> (batches, source, chunks, images per chunk)
        self.candidates = 0       # nets evaluated
        self.calls = 0            # chunks run

    # -- what goes to the workers ---------------------------------------------------------------
    def plan(self, batches):
        """(source, chunks, images per chunk) for a batch collection (kept per object)."""
        entry = self._plans.get(id(batches))
        if entry is None:
            from ..evaluators.classification import Batches
            chunks = plan_chunks(len(batches), len(self.actors))
            if isinstance(batches, Batches):
                source = LmdbSource(batches.layer, batches.phase, batches.seed,
                                    batches.data_source)
                images = [source.batch_size * (c.stop - c.start) for c in chunks]
            elif isinstance(batches, ImageSource):
                source = batches
                images = [len(source.paths[c.start * source.batch_size:c.stop * source.batch_size])
                          for c in chunks]
            else:
                source = StoredSource(batches, chunks, self.ray.put)
                images = [sum(len(next(iter(batches[i].values()))) for i in range(c.start, c.stop))
                          for c in chunks]
            entry = self._plans[id(batches)] = (batches, source, chunks, images)
        return entry[1:]

    def handle(self, param=None, weights=None, net=None, phase="TEST", source=None,
               weights_source=None):
        """A NetHandle for a NetParameter (``param`` with separate ``weights``, put once per
        run) or for a built ``net`` (its blobs travel with it)."""
        if net is not None:
            param, weights = net.to_proto(include_blobs=True), None
            phase, source = net.phase, net.source
        weights_key = weights_ref = None
        if weights is not None:
            entry = self._weights.get(id(weights))
            if entry is None:
                entry = self._weights[id(weights)] = (
                    weights, uuid.uuid4().hex, [self.ray.put(weights.SerializeToString())])
            _, weights_key, weights_ref = entry
        param = absolute_paths(param)
        return NetHandle(uuid.uuid4().hex, [self.ray.put(param.SerializeToString())],
                         weights_key, weights_ref, phase, source, weights_source)

    # -- calls ------------------------------------------------------------------------------------
    def forward(self, batches, handle, keep, options):
        """Submit the net ``handle`` on every chunk of ``batches``; returns a Pending whose
        result is the blobs ``keep`` per batch."""
        source, chunks, images = self.plan(batches)
        parts = [(c, self.actors[c.worker].forward.remote(source, c, handle, tuple(keep),
                                                          dict(options))) for c in chunks]
        return self._pending(parts, images, len(batches))

    def record(self, batches, job):
        """Submit one configuration of a cached search on every chunk of ``batches``."""
        source, chunks, images = self.plan(batches)
        parts = [(c, self.actors[c.worker].record.remote(source, c, job)) for c in chunks]
        return self._pending(parts, images, len(batches))

    def last_report(self, batches, handle, options):
        """(report, how the layers ran) of the runtime after the last batch of ``batches``
        (``worker.BatchWorker.report``)."""
        source, chunks, _ = self.plan(batches)
        last = chunks[-1]
        return self._get(self.actors[last.worker].report.remote(source, last, handle,
                                                                 dict(options)))

    def _pending(self, parts, images, batches):
        self.candidates += 1
        self.calls += len(parts)
        return Pending(parts, sum(images), batches)

    # -- results ----------------------------------------------------------------------------------
    def gather(self, pendings, description="evaluate"):
        """The results of ``pendings``: for each, its chunks' lists joined in chunk order."""
        ray = self.ray
        single = isinstance(pendings, Pending)
        pendings = [pendings] if single else list(pendings)
        sizes = {}
        for pending in pendings:
            per_chunk = pending.images / max(1, sum(c.stop - c.start for c, _ in pending.parts))
            for chunk, ref in pending.parts:
                sizes[ref] = round(per_chunk * (chunk.stop - chunk.start))
        waiting = [ref for pending in pendings for _, ref in pending.parts]
        done = {}
        bar = self._bar(description, sum(p.images for p in pendings))
        try:
            while waiting:
                ready, waiting = ray.wait(waiting, num_returns=1)
                for ref in ready:
                    done[ref] = self._get(ref)
                    if bar is not None:
                        bar.update(sizes[ref])
        except BaseException:        # an error, or Ctrl-C: nothing more is needed of the rest
            for ref in waiting:
                try:
                    ray.cancel(ref)
                except Exception:
                    pass
            raise
        finally:
            if bar is not None:
                bar.close()
        results = [_joined([done[ref] for _, ref in pending.parts]) for pending in pendings]
        return results[0] if single else results

    def _bar(self, description, total):
        if not self.progress:
            return None
        from tqdm import tqdm
        return tqdm(total=total, desc=f"{description} [{len(self.actors)} workers]",
                    unit="image", leave=False, disable=None)

    def _get(self, ref):
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, RistrettoError):
                error = type(cause)(f"{cause.message} (on a worker of the cluster "
                                    f"{self.cluster.spec})", path=cause.path, layer=cause.layer)
                raise error from None
            if isinstance(cause, (MemoryError, OSError)):
                raise cause from None
            raise
        except ray.exceptions.ActorDiedError as exc:
            raise RistrettoError(f"a worker of the cluster {self.cluster.spec} died and Ray gave "
                                 f"up restarting it ({_first_line(exc)})") from None


def _joined(parts):
    """Chunk results (lists, or dicts of lists) joined in order."""
    if parts and isinstance(parts[0], dict):
        return {key: [item for part in parts for item in part[key]] for key in parts[0]}
    return [item for part in parts for item in part]


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
