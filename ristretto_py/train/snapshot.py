"""Caffe's snapshots: ``<prefix>_iter_N.caffemodel`` (the net with its blobs) and
``<prefix>_iter_N.solverstate`` (a binary ``SolverState``), as ``Solver::Snapshot`` and
``SGDSolver::SnapshotSolverStateToBinaryProto`` write them, and ``Restore``.

The solverstate holds ``iter``, ``learned_net`` (the caffemodel's path exactly as written, i.e.
``snapshot_prefix + "_iter_N.caffemodel"``, relative to the working directory when the prefix
is), ``current_step`` and ``history``: one BlobProto (shape + float data, ``Blob::ToProto``)
per history blob in the solver's order (``Solver.history``: one per learnable parameter; for
AdaDelta and Adam a second set after the first).

Restoring (``RestoreSolverStateFromBinaryProto``) sets ``iter``, ``current_step`` and the
history, and Caffe loads ``learned_net`` as written (``ReadNetParamsFromBinaryFileOrDie(
state.learned_net())``), i.e. relative to the working directory; ``restore`` returns that path
for the caller to load the weights from. Caffe checks only the number of history blobs; we also
check their shapes, before changing anything.

Files are written atomically (``ristretto_py.atomic``). Inside ``atomic.all_or_nothing`` they
would appear only when the block ends: call ``write_snapshot`` outside such a block for
snapshots that must survive an interrupted run.
"""
import os

from google.protobuf import message as pb_message

from .. import atomic, caffe_io
from ..errors import FormatError, RistrettoError, UnsupportedError
from ..protos import caffe_pb2


def snapshot_paths(prefix, iteration):
    """``(caffemodel, solverstate)`` paths of the snapshot at ``iteration``, as Caffe's
    ``SnapshotFilename`` builds them: ``prefix + "_iter_" + str(iteration) + ext``."""
    prefix = os.fspath(prefix)
    return (f"{prefix}_iter_{int(iteration)}.caffemodel",
            f"{prefix}_iter_{int(iteration)}.solverstate")


def solver_state(solver, learned_net=None):
    """The ``SolverState`` message of ``solver`` (its ``iter``, ``current_step`` and history);
    ``learned_net`` is stored when given."""
    state = caffe_pb2.SolverState()
    state.iter = solver.iter
    if learned_net is not None:
        state.learned_net = os.fspath(learned_net)
    state.current_step = solver.current_step
    for array in solver.history_arrays():
        state.history.add().CopyFrom(caffe_io.array_to_blob(array))
    return state


def write_solver_state(path, solver, learned_net=None):
    """Write ``solver_state(solver, learned_net)`` to ``path``, atomically."""
    atomic.write_bytes(path, solver_state(solver, learned_net).SerializeToString())


def write_snapshot(solver, net, prefix=None, iteration=None):
    """Caffe's ``Solver::Snapshot``: write ``net`` (a ristretto_py ``Net`` with its blobs, or a
    NetParameter) as ``<prefix>_iter_N.caffemodel``, then the solver state as
    ``<prefix>_iter_N.solverstate`` with ``learned_net`` = that caffemodel path. ``prefix``
    defaults to the solver's ``snapshot_prefix``, ``iteration`` to ``solver.iter`` (Caffe
    snapshots after the update, so N counts the updates done). Returns both paths."""
    prefix = solver.param.snapshot_prefix if prefix is None else os.fspath(prefix)
    if not prefix:
        raise RistrettoError("snapshot_prefix: empty: cannot name the snapshot files",
                             path=getattr(solver, "path", None))
    model_path, state_path = snapshot_paths(prefix, solver.iter if iteration is None else iteration)
    if isinstance(net, caffe_pb2.NetParameter):
        caffe_io.write_net_binary(net, model_path)
    else:
        net.save(weights_path=model_path)
    write_solver_state(state_path, solver, learned_net=model_path)
    return model_path, state_path


def read_solver_state(path):
    """Read a binary ``.solverstate``; return the SolverState message. A truncated or foreign
    file is a one-line FormatError."""
    path = os.fspath(path)
    if path.endswith(".h5"):
        raise UnsupportedError("HDF5 solver states are not supported (only the binary "
                               ".solverstate Caffe writes with snapshot_format: BINARYPROTO)",
                               path=path)
    data = caffe_io.read_bytes(path, "solver state file")
    if not data:
        raise FormatError("is empty, not a Caffe solver state", path=path)
    state = caffe_pb2.SolverState()
    try:
        state.ParseFromString(data)
    except (pb_message.DecodeError, RecursionError, ValueError) as exc:
        raise FormatError(f"truncated or not a Caffe solver state ({exc})", path=path) from None
    if not state.HasField("iter"):
        raise FormatError("holds no iteration: truncated or not a Caffe solver state", path=path)
    return state


def restore(solver, path):
    """Caffe's ``Solver::Restore`` from a binary solverstate: check the history blobs against
    ``solver`` (count and shapes, one-line errors), then restore ``iter``, ``current_step`` and
    the history. Returns ``learned_net`` as written in the file (Caffe reads it relative to the
    working directory), or None when the file names none; the caller loads those weights."""
    path = os.fspath(path)
    state = read_solver_state(path)
    arrays = [caffe_io.blob_to_array(blob, path=path) for blob in state.history]
    arrays = [_legacy_shape(array, blob, h) for array, blob, h
              in zip(arrays, state.history, solver.history)]
    learned_net = state.learned_net if state.HasField("learned_net") else None
    if learned_net is not None and not os.path.isfile(learned_net):
        beside = os.path.join(os.path.dirname(path), os.path.basename(learned_net))
        hint = (f"; a file of that name is beside the solver state: '{beside}'"
                if os.path.isfile(beside) else "")
        raise RistrettoError(f"learned_net: no such file '{learned_net}' (Caffe reads it relative "
                             f"to the working directory {os.getcwd()}{hint})", path=path)
    try:
        solver.load_state(state.iter, state.current_step, arrays)
    except RistrettoError as exc:
        raise exc.with_context(path=path)
    return learned_net


def _legacy_shape(array, blob, history):
    """A pre-2015 blob (num/channels/height/width, no ``shape``) of the right size takes the
    parameter's shape, as Caffe's Blob::FromProto reshapes it."""
    if not blob.HasField("shape") and array.size == history.numel():
        return array.reshape(tuple(history.shape))
    return array
