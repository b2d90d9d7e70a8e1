"""The numpy reference runtime: runs a Net layer by layer in float32 with the registry's
forward functions, keeping every named blob.

A Ristretto layer trims its inputs in place in both of Ristretto's builds, so later readers of
those blobs see the trimmed values. Here no array is ever written for that: the layer hands the
trimmed array back in its ``bottoms`` list and the runtime rebinds the blob, and every blob
sharing its data, to it (``rebind_trimmed``). The caller's inputs, cached batches and the
snapshots of ``record`` therefore stay as they were."""
import numpy as np

from ..errors import NetError, RistrettoError
from ..layers.base import RunContext
from .memory import keep_freed_memory
from .threads import one_blas_thread


class NumpyRuntime:
    """Reference float32 execution of a Net. ``forward`` returns every named blob."""

    name = "numpy"

    def __init__(self, net, compat="gpu", seed=0):
        if not net.has_weights:
            raise NetError("the net has layers without weights: load a caffemodel",
                           path=net.source)
        self.net = net
        self.context = RunContext(compat, np.random.default_rng(seed))
        keep_freed_memory()

    def forward(self, inputs, observer=None):
        """Run the net on ``inputs`` (blob name -> N x C x H x W array).

        Returns a dict of every named blob (for in-place blobs, the last value written; a blob
        a Ristretto layer read holds its trimmed values). ``observer(layer, bottoms, tops)``, if
        given, sees each layer's arrays as it runs: the bottoms as the layer received them.
        """
        return self._run(feed_inputs(self.net, inputs), 0, observer, reuse=True)

    def record(self, inputs, indices):
        """Run the net and keep, for each layer index in ``indices``, the blobs as they were just
        before that layer ran (no array is overwritten in this run, so the snapshots stay valid).
        Returns (blobs, {index: snapshot}); ``resume`` continues from a snapshot."""
        snapshots = {}
        blobs = self._run(feed_inputs(self.net, inputs), 0, None, reuse=False,
                          snapshots=(set(indices), snapshots))
        return blobs, snapshots

    def resume(self, snapshot, start, observer=None, record=None):
        """Run layers ``start``... of the net from a snapshot of another run of a net whose
        layers before ``start`` compute the same (search caches use it: only the changed
        suffix is recomputed). The snapshot's arrays are never written to. With ``record``
        (layer indices), returns (blobs, snapshots) as ``record`` does."""
        if record is not None:
            snapshots = {}
            blobs = self._run(dict(snapshot), start, observer, reuse=False,
                              snapshots=(set(record), snapshots))
            return blobs, snapshots
        return self._run(dict(snapshot), start, observer, reuse=True,
                         foreign=set(map(id, snapshot.values())))

    def _run(self, blobs, start, observer, reuse, snapshots=None, foreign=frozenset()):
        with one_blas_thread():      # the same bytes on any core count (runtime.threads)
            return self._run_layers(blobs, start, observer, reuse, snapshots, foreign)

    def _run_layers(self, blobs, start, observer, reuse, snapshots, foreign):
        net = self.net
        for index in range(start, len(net.layers)):
            layer, impl = net.layers[index], net.impl(index)
            if snapshots is not None and index in snapshots[0]:
                snapshots[1][index] = dict(blobs)
            if impl.is_source:
                continue
            bottoms = [blobs[b] for b in layer.bottoms]
            candidate = _reusable(layer, blobs) if reuse else None
            self.context.reuse = None if candidate is None or id(candidate) in foreign else candidate
            given = list(bottoms)          # the layer may put trimmed inputs in this list
            try:
                tops = impl.run(given, layer.blobs, self.context)
            except RistrettoError as exc:
                raise exc.with_context(path=net.source, layer=layer.name)
            finally:
                self.context.reuse = None
            rebind_trimmed(blobs, bottoms, given)
            for top, value in zip(layer.tops, tops):
                blobs[top] = np.asarray(value, dtype=np.float32) if value.dtype != np.float32 else value
            if observer is not None:
                observer(layer, bottoms, tops)
        return blobs


def rebind_trimmed(blobs, before, after):
    """After a layer ran on the list ``after`` (a copy of ``before``, the arrays of its bottoms),
    rebind every blob holding an array the layer replaced (trimmed in place, as Ristretto's
    layers do in both builds) to the replacement. Blobs that share the replaced array's data
    follow too, as they do in Caffe: the same array (Split's tops) or a reshaped view of it
    (Flatten, Reshape). Nothing is written into any array."""
    for old, new in zip(before, after):
        if new is old:
            continue
        for name, value in list(blobs.items()):
            if value is old:
                blobs[name] = new
            elif shares_data(value, old):
                blobs[name] = np.reshape(new, value.shape)


def shares_data(a, b):
    """Whether ``a`` and ``b`` are two shapes of one buffer (a reshape view of the other)."""
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)) or a.size != b.size or not a.size:
        return False
    return (a.dtype == b.dtype and a.flags.c_contiguous and b.flags.c_contiguous
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def _reusable(layer, blobs):
    """The bottom array of a one-in one-out in-place layer when no other blob shares it (Split
    tops do), else None. Writing into it saves an allocation, and Caffe overwrites it too;
    observers must therefore copy arrays they keep."""
    if len(layer.bottoms) != 1 or layer.tops != layer.bottoms:
        return None
    array = blobs[layer.bottoms[0]]
    if sum(1 for value in blobs.values() if value is array) != 1 or not array.flags.writeable:
        return None
    return array


def feed_inputs(net, inputs):
    """Check and convert the arrays given for a net's source blobs; return the blob dict."""
    blobs = {}
    shapes = net.shapes() if _shapes_known(net) else {}
    for name in net.input_blobs:
        if name not in inputs:
            if shapes.get(name) is not None and len(shapes[name]) <= 1:
                continue  # a label top of a data layer: optional for a plain forward pass
            raise NetError(f"no input given for blob '{name}'", path=net.source)
        # A copy: in-place layers (an in-place ReLU on an input) must not touch the caller's.
        value = np.array(inputs[name], dtype=np.float32)
        expected = shapes.get(name)
        if expected is not None and tuple(value.shape[1:]) != tuple(expected[1:]):
            raise NetError(f"input '{name}' has shape {list(value.shape)} but the net expects "
                           f"{['N'] + list(expected[1:])}", path=net.source)
        blobs[name] = value
    unknown = set(inputs) - set(net.input_blobs)
    if unknown:
        raise NetError(f"inputs {sorted(unknown)} are not input blobs of the net "
                       f"(those are {net.input_blobs})", path=net.source)
    return blobs


def _shapes_known(net):
    try:
        net.shapes()
        return True
    except NetError:
        return False
