"""Caffe's solver files in Python: reading (text format, Caffe's upgrades of old spellings such
as Ristretto's demo solver), refusals of unknown and unsupported fields by name, the checks of
each value, and where the nets and snapshots are (paths as Caffe resolves them)."""
import os

import numpy as np
import pytest

from ristretto_py.errors import FormatError, RistrettoError, UnsupportedError
from ristretto_py.train.solver_file import check_snapshot_prefix, read_solver, solver_nets


def f32(value):
    """A solver field's value as Caffe holds it (float32)."""
    return float(np.float32(value))

NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 2 } }
"""

BASE = """net: "net.prototxt"
base_lr: 0.01
lr_policy: "fixed"
max_iter: 100
"""


def write_solver(folder, text, name="solver.prototxt"):
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(NET)
    return tmp_path


def read(workdir, text):
    write_solver(workdir, text)
    return read_solver("solver.prototxt")        # the working directory is workdir


def test_ristretto_demo_solver(tmp_path, monkeypatch):
    # models/SqueezeNet/RistrettoDemo/solver_finetune.prototxt of Ristretto (pmgysel/caffe)
    demo = tmp_path / "models" / "SqueezeNet" / "RistrettoDemo"
    demo.mkdir(parents=True)
    (demo / "quantized.prototxt").write_text(NET)
    (demo / "solver_finetune.prototxt").write_text("""# Ristretto SqueezeNet Example
# Fine-tuning of 8-bit dynamic fixed point network

test_iter: 2000
test_interval: 100
base_lr: 0.000001
display: 10
max_iter: 2000
iter_size: 32 #global batch size = batch_size * iter_size
lr_policy: "fixed"
momentum: 0.9
momentum2: 0.999
delta: 0.00000001
weight_decay: 0.0002
snapshot: 100
snapshot_prefix: "models/SqueezeNet/RistrettoDemo/squeezenet"
solver_mode: GPU
random_seed: 42
net: "models/SqueezeNet/RistrettoDemo/quantized.prototxt"
average_loss: 40
test_initialization: true
solver_type: ADAM
""")
    monkeypatch.chdir(tmp_path)                     # Caffe's root, as the demo expects
    path = "models/SqueezeNet/RistrettoDemo/solver_finetune.prototxt"
    param = read_solver(path)
    assert param.type == "Adam" and not param.HasField("solver_type")
    assert param.momentum2 == f32(0.999) and param.delta == f32(1e-8)
    assert param.iter_size == 32 and param.random_seed == 42
    assert param.snapshot_prefix == "models/SqueezeNet/RistrettoDemo/squeezenet"
    nets = solver_nets(param, path)
    assert nets.train.source == "models/SqueezeNet/RistrettoDemo/quantized.prototxt"
    assert nets.train.phase == "TRAIN" and nets.train.field == "net"
    assert [(t.phase, t.test_iter, t.field) for t in nets.tests] == [("TEST", 2000, "net")]
    assert nets.train.net_param.layer[1].name == "ip"
    check_snapshot_prefix(param, path)
    # Run from the demo's own folder, the relative net path no longer resolves: Caffe reads
    # it relative to the working directory, not to the solver file.
    monkeypatch.chdir(demo)
    with pytest.raises(RistrettoError) as err:
        solver_nets(read_solver("solver_finetune.prototxt"), "solver_finetune.prototxt")
    message = str(err.value)
    assert message.startswith("solver_finetune.prototxt: line 19: net: no such file: ")
    assert "working directory" in message and "\n" not in message


def test_net_relative_to_the_working_directory_not_the_solver(tmp_path, monkeypatch):
    sub = tmp_path / "exp"
    sub.mkdir()
    (sub / "net.prototxt").write_text(NET)
    write_solver(sub, BASE)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RistrettoError) as err:
        solver_nets(read_solver("exp/solver.prototxt"), "exp/solver.prototxt")
    message = str(err.value)
    assert message.startswith("exp/solver.prototxt: line 1: net: no such file: 'net.prototxt'")
    assert "relative to the solver's folder" in message
    monkeypatch.chdir(sub)
    assert solver_nets(read_solver("solver.prototxt"), "solver.prototxt").train.source == \
        "net.prototxt"


@pytest.mark.parametrize("enum, name", [("SGD", "SGD"), ("NESTEROV", "Nesterov"),
                                        ("ADAGRAD", "AdaGrad"), ("RMSPROP", "RMSProp"),
                                        ("ADADELTA", "AdaDelta"), ("ADAM", "Adam")])
def test_solver_type_enum_upgraded(workdir, enum, name):
    extra = "delta: 1e-6\n" if name != "SGD" else ""
    param = read(workdir, BASE + extra + f"solver_type: {enum}\n")
    assert param.type == name and not param.HasField("solver_type")


def test_solver_type_and_type(workdir):
    assert read(workdir, BASE + 'solver_type: ADAM\ntype: "Adam"\n').type == "Adam"
    with pytest.raises(RistrettoError) as err:
        read(workdir, BASE + 'solver_type: ADAM\ntype: "SGD"\n')
    assert str(err.value).startswith("solver.prototxt: line 5: solver_type: ")
    assert "ADAM" in str(err.value) and '"SGD"' in str(err.value)


def test_unknown_field_named_with_line(workdir):
    with pytest.raises(FormatError) as err:
        read(workdir, BASE + "base_learning_rate: 0.1\n")
    assert str(err.value) == ("solver.prototxt: line 5, column 1: unknown solver field "
                              "'base_learning_rate' (Caffe's SolverParameter has no such field)")


def test_malformed_value(workdir):
    with pytest.raises(FormatError) as err:
        read(workdir, BASE + 'momentum: "high"\n')
    assert str(err.value).startswith("solver.prototxt: line 5, column ")
    assert "momentum" in str(err.value)


@pytest.mark.parametrize("extra, field", [
    ("snapshot_format: HDF5\n", "snapshot_format"),
    ("snapshot_diff: true\n", "snapshot_diff"),
])
def test_unsupported_fields_refused_by_name(workdir, extra, field):
    with pytest.raises(UnsupportedError) as err:
        read(workdir, BASE + extra)
    assert str(err.value).startswith(f"solver.prototxt: line 5: {field}: ")
    assert "\n" not in str(err.value)


def test_harmless_fields_accepted(workdir):
    param = read(workdir, BASE + "debug_info: true\nlayer_wise_reduce: false\nsolver_mode: CPU\n"
                 "device_id: 1\nsnapshot_format: BINARYPROTO\nsnapshot_diff: false\n")
    assert param.debug_info


NO_POLICY = "net: \"net.prototxt\"\nbase_lr: 0.01\nmax_iter: 100\n"


@pytest.mark.parametrize("text, start", [
    ("net: \"net.prototxt\"\nlr_policy: \"fixed\"\nmax_iter: 100\n", "base_lr: missing"),
    (BASE.replace("0.01", "0"), "line 2: base_lr: must be > 0, not 0"),
    (BASE.replace("0.01", "-0.5"), "line 2: base_lr: must be > 0, not -0.5"),
    (BASE.replace("100", "0"), "line 4: max_iter: must be > 0, not 0"),
    (NO_POLICY, "lr_policy: missing"),
    (NO_POLICY + 'lr_policy: "cosine"\n', 'line 4: lr_policy: unknown policy "cosine"'),
    (NO_POLICY + 'lr_policy: "step"\ngamma: 0.1\n', 'line 4: lr_policy: "step" needs stepsize'),
    (NO_POLICY + 'lr_policy: "step"\nstepsize: 10\n', 'line 4: lr_policy: "step" needs gamma'),
    (NO_POLICY + 'lr_policy: "step"\ngamma: 0.1\nstepsize: 0\n',
     "line 6: stepsize: must be > 0"),
    (NO_POLICY + 'lr_policy: "step"\ngamma: -0.1\nstepsize: 5\n', "line 5: gamma: must be >= 0"),
    (NO_POLICY + 'lr_policy: "multistep"\ngamma: 0.1\n',
     'line 4: lr_policy: "multistep" needs stepvalue'),
    (NO_POLICY + 'lr_policy: "multistep"\ngamma: 0.1\nstepvalue: 50\nstepvalue: 20\n',
     "line 6: stepvalue: must be >= 0 and strictly increasing, not [50, 20]"),
    (NO_POLICY + 'lr_policy: "inv"\ngamma: 0.1\n', 'line 4: lr_policy: "inv" needs power'),
    (NO_POLICY + 'lr_policy: "inv"\npower: 0.75\n', 'line 4: lr_policy: "inv" needs gamma'),
    (NO_POLICY + 'lr_policy: "exp"\n', 'line 4: lr_policy: "exp" needs gamma'),
    (NO_POLICY + 'lr_policy: "poly"\n', 'line 4: lr_policy: "poly" needs power'),
    (NO_POLICY + 'lr_policy: "sigmoid"\ngamma: 0.1\n', 'line 4: lr_policy: "sigmoid" needs stepsize'),
    (BASE + "iter_size: 0\n", "line 5: iter_size: must be >= 1, not 0"),
    (BASE + "momentum: 1.0\n", "line 5: momentum: must be in [0, 1), not 1"),
    (BASE + "momentum: -0.1\n", "line 5: momentum: must be in [0, 1)"),
    (BASE + 'type: "AdaGrad"\nmomentum: 0.9\n', "line 6: momentum: must be 0 (or absent) for the AdaGrad"),
    (BASE + 'type: "RMSProp"\nrms_decay: 1\n', "line 6: rms_decay: must be in [0, 1)"),
    (BASE + 'type: "Adam"\nmomentum2: 1\n', "line 6: momentum2: must be in [0, 1)"),
    (BASE + 'type: "Adam"\ndelta: 0\n', "line 6: delta: must be > 0 for the Adam solver"),
    (BASE + 'type: "Adagrad"\n', 'line 5: type: unknown solver type "Adagrad" (Caffe\'s names are case-sensitive: "AdaGrad")'),
    (BASE + 'type: "LBFGS"\n', 'line 5: type: unknown solver type "LBFGS"'),
    (BASE + 'regularization_type: "L3"\n', 'line 5: regularization_type: must be "L1" or "L2"'),
    (BASE + "weight_decay: -0.1\n", "line 5: weight_decay: must be >= 0"),
    (BASE + "average_loss: 0\n", "line 5: average_loss: must be >= 1"),
    (BASE + "test_iter: 0\ntest_interval: 10\n", "line 5: test_iter: must be > 0"),
    (BASE + "test_iter: 10\n", "test_interval: must be > 0 when there are test nets (1 here"),
    (BASE.replace('net: "net.prototxt"', 'train_net: "net.prototxt"\ntest_net: "net.prototxt"')
     + "test_iter: 10\ntest_iter: 10\ntest_interval: 5\n",
     "line 6: test_iter: given 2 times for 1 test nets"),
    (BASE.replace('net: "net.prototxt"', 'train_net: "net.prototxt"\ntest_net: "net.prototxt"')
     + "test_interval: 5\n", "test_iter: given 0 times for 1 test nets"),
    (BASE + 'train_net: "net.prototxt"\n', "line 5: train_net: the train net is given twice (net and train_net)"),
    (BASE.replace('net: "net.prototxt"\n', ""), "no train net: give one of net, net_param, train_net"),
    (BASE + "test_iter: 5\ntest_interval: 5\ntest_state { stage: \"a\" }\ntest_state { stage: \"b\" }\n",
     "line 7: test_state: given 2 times for 1 test nets"),
])
def test_each_validation_message(workdir, text, start):
    with pytest.raises(RistrettoError) as err:
        read(workdir, text)
    message = str(err.value)
    assert message.startswith("solver.prototxt: " + start), message
    assert "\n" not in message


def test_snapshot_prefix_defaults_as_caffe(workdir):
    assert read(workdir, BASE).snapshot_prefix == "solver"
    assert read_solver(workdir / "solver.prototxt").snapshot_prefix == str(workdir / "solver")
    (workdir / "snaps").mkdir()
    assert read(workdir, BASE + 'snapshot_prefix: "snaps"\n').snapshot_prefix == \
        os.path.join("snaps", "solver")
    assert read(workdir, BASE + 'snapshot_prefix: "snaps/lenet"\n').snapshot_prefix == "snaps/lenet"


def test_snapshot_prefix_folder_must_exist(workdir):
    path = write_solver(workdir, BASE + 'snapshot: 10\nsnapshot_prefix: "missing/lenet"\n')
    param = read_solver(path)
    with pytest.raises(RistrettoError) as err:
        check_snapshot_prefix(param, path)
    assert "line 6: snapshot_prefix: the folder 'missing' of 'missing/lenet' does not exist" in \
        str(err.value)


def test_train_and_test_nets_embedded_and_from_files(workdir):
    text = ("train_net_param { " + NET.replace("\n", " ") + " }\n"
            'test_net: "net.prototxt"\n'
            "test_net_param { " + NET.replace("\n", " ").replace('"tiny"', '"other"') + " }\n"
            "test_iter: 3\ntest_iter: 4\ntest_interval: 10\n"
            'base_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 5\n'
            "train_state { level: 2 stage: \"fine\" }\n")
    path = write_solver(workdir, text)
    nets = solver_nets(read_solver(path), path)
    assert nets.train.field == "train_net_param" and nets.train.source.endswith("train_net_param")
    assert (nets.train.phase, nets.train.level, nets.train.stages) == ("TRAIN", 2, ("fine",))
    assert nets.train.net_param.state.level == 2
    # Caffe's order: test_net_param first, then test_net files, each with its test_iter
    assert [(t.field, t.net_param.name, t.test_iter, t.phase) for t in nets.tests] == \
        [("test_net_param", "other", 3, "TEST"), ("test_net", "tiny", 4, "TEST")]


def test_generic_net_tests_once_per_test_iter(workdir):
    path = write_solver(workdir, BASE + "test_iter: 5\ntest_iter: 6\ntest_interval: 10\n"
                        'test_state { stage: "a" }\ntest_state { stage: "b" }\n'
                        'weights: "w1.caffemodel, w2.caffemodel"\nweights: "w3.caffemodel"\n')
    for name in ("w1", "w2", "w3"):
        (workdir / f"{name}.caffemodel").write_bytes(b"")
    nets = solver_nets(read_solver(path), path)
    assert [(t.field, t.test_iter, t.stages) for t in nets.tests] == \
        [("net", 5, ("a",)), ("net", 6, ("b",))]
    assert nets.weights == ["w1.caffemodel", "w2.caffemodel", "w3.caffemodel"]
    os.remove(workdir / "w2.caffemodel")
    with pytest.raises(RistrettoError) as err:
        solver_nets(read_solver(path), path)
    assert "line 10: weights: no such file: 'w2.caffemodel'" in str(err.value)


def test_net_state_of_the_net_file_is_merged(workdir):
    (workdir / "net.prototxt").write_text(NET + 'state { stage: "base" level: 1 }\n')
    path = write_solver(workdir, BASE + 'train_state { stage: "extra" }\n')
    train = solver_nets(read_solver(path), path).train
    # NetState::MergeFrom: the phase first, then the net's state, then train_state
    assert (train.phase, train.level, train.stages) == ("TRAIN", 1, ("base", "extra"))
