"""Snapshots as Caffe writes them: ``<prefix>_iter_N.caffemodel`` + ``.solverstate``
(SolverState: iter, learned_net, history in Caffe's order, current_step), and resuming."""
import os

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from ristretto_py import Net, caffe_io
from ristretto_py.errors import FormatError, RistrettoError, UnsupportedError
from ristretto_py.protos import caffe_pb2
from ristretto_py.train.params import LearnableParam
from ristretto_py.train.snapshot import (read_solver_state, restore, snapshot_paths,
                                         solver_state, write_snapshot)
from ristretto_py.train.solver import Solver

from conftest import net_param

NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 2 } }
"""
W = [np.array([[1.0, -2.0], [0.5, 0.25]], np.float32), np.array([0.5, -0.5], np.float32)]
GRADS = [[[[0.3, -0.1], [0.2, 0.0]], [0.2, -0.1]],
         [[[-0.2, 0.4], [0.05, 0.1]], [0.1, 0.3]],
         [[[0.1, 0.1], [-0.3, 0.2]], [-0.3, 0.0]],
         [[[0.0, -0.2], [0.1, 0.1]], [0.05, 0.2]],
         [[[0.2, 0.3], [-0.1, -0.4]], [0.1, -0.2]]]

ADAM = ('type: "Adam" base_lr: 0.01 lr_policy: "multistep" gamma: 0.5 stepvalue: 1 '
        'stepvalue: 3 max_iter: 5 momentum: 0.9 momentum2: 0.999 weight_decay: 0.01 '
        'snapshot_prefix: "snaps/tiny"')


def solver_param(text):
    param = caffe_pb2.SolverParameter()
    text_format.Parse(text, param)
    return param


def make_solver(text=ADAM, weights=W):
    params = [LearnableParam("ip", i, torch.nn.Parameter(torch.tensor(w.copy())),
                             lr_mult=[1.0, 2.0][i], decay_mult=[1.0, 0.0][i])
              for i, w in enumerate(weights)]
    return Solver(solver_param(text), params)


def step(solver, grads):
    for p, g in zip(solver.params, grads):
        p.tensor.grad = torch.tensor(g, dtype=torch.float32)
    solver.apply_update()


def net_of(solver):
    """What TorchNet.to_net() hands over: the net with the solver's current weights."""
    blobs = [p.tensor.detach().numpy().copy() for p in solver.params]
    return Net.from_proto(net_param(NET, {"ip": blobs}))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "snaps").mkdir()
    return tmp_path


def test_snapshot_paths():
    assert snapshot_paths("snaps/lenet", 100) == ("snaps/lenet_iter_100.caffemodel",
                                                   "snaps/lenet_iter_100.solverstate")


def test_write_snapshot_as_caffe(workdir):
    solver = make_solver()
    for grads in GRADS[:3]:
        step(solver, grads)
    model, state_path = write_snapshot(solver, net_of(solver))
    assert (model, state_path) == ("snaps/tiny_iter_3.caffemodel", "snaps/tiny_iter_3.solverstate")
    weights = caffe_io.read_net_binary(model)
    ip = next(layer for layer in weights.layer if layer.name == "ip")
    np.testing.assert_array_equal(caffe_io.blob_to_array(ip.blobs[1]),
                                  solver.params[1].tensor.detach().numpy())
    # The SolverState, read with protobuf alone
    state = caffe_pb2.SolverState()
    with open(state_path, "rb") as handle:
        state.ParseFromString(handle.read())
    assert state.iter == 3
    assert state.learned_net == "snaps/tiny_iter_3.caffemodel"     # as written, as Caffe does
    assert state.current_step == 1                                  # stepvalue 1 passed, not 3
    # Adam: m of every parameter, then v of every parameter (AdamPreSolve's second set)
    assert len(state.history) == 4
    assert [list(h.shape.dim) for h in state.history] == [[2, 2], [2], [2, 2], [2]]
    for blob, h in zip(state.history, solver.history):
        np.testing.assert_array_equal(np.asarray(blob.data, np.float32), h.numpy().ravel())
    # m = 0.1 g after one step, ... v of the bias (decay_mult 0) is sum (1-b2) b2^k g^2 > 0
    assert np.all(np.asarray(state.history[3].data) > 0)
    assert not np.allclose(state.history[0].data, state.history[2].data)


def test_solverstate_round_trip(workdir):
    solver = make_solver()
    for grads in GRADS[:2]:
        step(solver, grads)
    _, state_path = write_snapshot(solver, net_of(solver))
    fresh = make_solver()
    learned = restore(fresh, state_path)
    assert learned == "snaps/tiny_iter_2.caffemodel"
    assert (fresh.iter, fresh.current_step) == (2, 1)
    for a, b in zip(fresh.history, solver.history):
        assert torch.equal(a, b)


@pytest.mark.parametrize("text", [
    ADAM,
    'type: "SGD" base_lr: 0.1 lr_policy: "step" gamma: 0.5 stepsize: 2 max_iter: 5 '
    'momentum: 0.9 weight_decay: 0.01 snapshot_prefix: "snaps/tiny"',
    'type: "AdaDelta" base_lr: 1 lr_policy: "fixed" max_iter: 5 momentum: 0.95 delta: 1e-6 '
    'snapshot_prefix: "snaps/tiny" clip_gradients: 0.3 iter_size: 2',
])
def test_resumed_solver_continues_exactly(workdir, text):
    straight = make_solver(text)
    for grads in GRADS:
        step(straight, grads)

    first = make_solver(text)
    for grads in GRADS[:2]:
        step(first, grads)
    _, state_path = write_snapshot(first, net_of(first))
    del first
    # resume: weights from learned_net (as the caller does), state from the solverstate
    probe = make_solver(text)
    learned = restore(probe, state_path)
    loaded = caffe_io.read_net_binary(learned)
    ip = next(layer for layer in loaded.layer if layer.name == "ip")
    resumed = make_solver(text, weights=[caffe_io.blob_to_array(b) for b in ip.blobs])
    assert restore(resumed, state_path) == learned
    for grads in GRADS[2:]:
        step(resumed, grads)
    assert resumed.iter == straight.iter == 5
    assert resumed.current_step == straight.current_step
    for a, b in zip(resumed.params, straight.params):
        assert torch.equal(a.tensor, b.tensor)
    for a, b in zip(resumed.history, straight.history):
        assert torch.equal(a, b)


def test_restore_a_state_written_by_hand(workdir):
    # A SolverState as Caffe's SGD solver writes it, built here with protobuf alone
    state = caffe_pb2.SolverState(iter=7, current_step=3)
    for values, shape in (([1, 2, 3, 4], [2, 2]), ([5, 6], [2])):
        blob = state.history.add()
        blob.shape.dim.extend(shape)
        blob.data.extend(values)
    (workdir / "s.solverstate").write_bytes(state.SerializeToString())
    solver = make_solver('base_lr: 0.1 lr_policy: "fixed" max_iter: 9 momentum: 0.5')
    assert restore(solver, "s.solverstate") is None          # no learned_net in the file
    assert (solver.iter, solver.current_step) == (7, 3)
    np.testing.assert_array_equal(solver.history[0].numpy(), [[1, 2], [3, 4]])
    # the next update: h = 0.5 h + 0.1 g, w -= h  (w0 = 1, h0 = 1, g = 0.3 -> w = 1 - 0.53)
    step(solver, GRADS[0])
    assert solver.params[0].tensor[0, 0].item() == pytest.approx(0.47, rel=1e-6)
    # the bias, lr_mult 2: h = 0.5 * 5 + 0.2 * 0.2 = 2.54
    assert solver.params[1].tensor[0].item() == pytest.approx(0.5 - 2.54, rel=1e-6)


def test_restore_legacy_four_axis_history(workdir):
    state = caffe_pb2.SolverState(iter=1)
    for values in ([1, 2, 3, 4], [5, 6]):
        blob = state.history.add()
        blob.num, blob.channels, blob.height, blob.width = 1, 1, 1, len(values)
        blob.data.extend(values)
    (workdir / "old.solverstate").write_bytes(state.SerializeToString())
    solver = make_solver('base_lr: 0.1 lr_policy: "fixed" max_iter: 9 momentum: 0.5')
    restore(solver, "old.solverstate")
    np.testing.assert_array_equal(solver.history[0].numpy(), [[1, 2], [3, 4]])


def write_state(workdir, solver, name="s.solverstate"):
    (workdir / name).write_bytes(solver_state(solver).SerializeToString())
    return name


def test_history_count_must_match(workdir):
    sgd = make_solver('base_lr: 0.1 lr_policy: "fixed" max_iter: 9 momentum: 0.5')
    name = write_state(workdir, sgd)
    adam = make_solver()
    before = [h.clone() for h in adam.history]
    with pytest.raises(RistrettoError) as err:
        restore(adam, name)
    assert str(err.value) == ("s.solverstate: holds 2 history blobs but the Adam solver of this "
                              "net needs 4 (2 per learnable parameter, 2 parameters): a snapshot "
                              "of another net or solver type")
    assert adam.iter == 0 and all(torch.equal(a, b) for a, b in zip(adam.history, before))


def test_history_shapes_must_match(workdir):
    other = make_solver(weights=[np.zeros((2, 3), np.float32), np.zeros(2, np.float32)])
    name = write_state(workdir, other)
    with pytest.raises(RistrettoError) as err:
        restore(make_solver(), name)
    assert str(err.value) == ("s.solverstate: history blob 0 has shape [2, 3] but the parameter "
                              "it belongs to (layer 'ip', blob 0) has shape [2, 2]")


def test_truncated_and_empty_solverstates(workdir):
    solver = make_solver()
    step(solver, GRADS[0])
    data = solver_state(solver, "x.caffemodel").SerializeToString()
    (workdir / "cut.solverstate").write_bytes(data[:len(data) // 2])
    with pytest.raises(FormatError) as err:
        restore(make_solver(), "cut.solverstate")
    assert str(err.value).startswith("cut.solverstate: truncated or not a Caffe solver state")
    (workdir / "empty.solverstate").write_bytes(b"")
    with pytest.raises(FormatError) as err:
        read_solver_state("empty.solverstate")
    assert str(err.value) == "empty.solverstate: is empty, not a Caffe solver state"
    with pytest.raises(FormatError) as err:
        read_solver_state("missing.solverstate")
    assert str(err.value) == "missing.solverstate: no such solver state file"
    with pytest.raises(UnsupportedError):
        read_solver_state("snaps/tiny_iter_5.solverstate.h5")


def test_blob_count_truncated_inside_the_data(workdir):
    state = caffe_pb2.SolverState(iter=1)
    blob = state.history.add()
    blob.shape.dim.extend([2, 2])
    blob.data.extend([1, 2, 3])                       # one value short
    state.history.add().CopyFrom(caffe_io.array_to_blob(np.zeros(2, np.float32)))
    (workdir / "short.solverstate").write_bytes(state.SerializeToString())
    with pytest.raises(FormatError) as err:
        restore(make_solver('base_lr: 0.1 lr_policy: "fixed" max_iter: 9'), "short.solverstate")
    assert "short.solverstate: blob declares shape [2, 2] (4 values) but holds 3" in str(err.value)


def test_learned_net_read_relative_to_the_working_directory(workdir, monkeypatch):
    solver = make_solver()
    step(solver, GRADS[0])
    _, state_path = write_snapshot(solver, net_of(solver))
    monkeypatch.chdir(workdir / "snaps")
    with pytest.raises(RistrettoError) as err:
        restore(make_solver(), "tiny_iter_1.solverstate")
    message = str(err.value)
    assert message.startswith("tiny_iter_1.solverstate: learned_net: no such file "
                              "'snaps/tiny_iter_1.caffemodel'")
    assert "beside the solver state" in message and "\n" not in message


def test_snapshot_of_a_net_parameter(workdir):
    solver = make_solver()
    param = net_param(NET, {"ip": W})
    model, state_path = write_snapshot(solver, param, prefix="snaps/other", iteration=0)
    assert os.path.isfile(model) and read_solver_state(state_path).learned_net == model
