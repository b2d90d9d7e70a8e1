"""Caffe's solver file (``solver.prototxt``): read, upgrade, validate, and find its nets.

``read_solver(path)`` parses a text ``SolverParameter`` and does what Caffe's
``ReadSolverParamsFromTextFileOrDie`` does (``src/caffe/util/upgrade_proto.cpp``):

* ``UpgradeSolverAsNeeded``: the deprecated enum ``solver_type: ADAM`` becomes ``type: "Adam"``
  (Caffe refuses a file giving both; we accept both when they name the same solver and refuse
  them when they disagree);
* ``UpgradeSnapshotPrefixProperty``: without ``snapshot_prefix`` the prefix is the solver file's
  path without its extension (``solver.prototxt`` -> ``solver``, as the path was given); a prefix
  that is an existing folder becomes ``folder/<solver file stem>``.

Then it refuses, each in one line naming the file, the line and the field, what we cannot honour
(``snapshot_format: HDF5``, ``snapshot_diff: true``) and every value Caffe would stop on or that
could only be a mistake (see ``check_values``).

Paths. Caffe opens ``net``, ``train_net``, ``test_net``, ``weights`` and ``snapshot_prefix``
exactly as written: ``Solver::InitTrainNet``/``InitTestNets`` (``src/caffe/solver.cpp``) call
``ReadNetParamsFromTextFileOrDie(param_.net(), ...)`` and ``SnapshotFilename`` is
``param_.snapshot_prefix() + "_iter_" + N + ext``; ``tools/caffe.cpp`` never changes directory.
So a relative path is relative to the *working directory*, not to the solver file's folder
(Ristretto's own ``models/SqueezeNet/RistrettoDemo/solver_finetune.prototxt`` says
``net: "models/SqueezeNet/RistrettoDemo/quantized.prototxt"``, to be run from Caffe's root).
``solver_nets`` follows that rule and returns the paths as written.

No torch here: the command-line layer can read and check a solver without it.
"""
import dataclasses
import os
import re

from google.protobuf import text_format

from .. import caffe_io
from ..errors import FormatError, RistrettoError, UnsupportedError
from ..legacy_ristretto import upgrade_text
from ..protos import caffe_pb2
from ..upgrade import upgrade_net

# Caffe's registered solver types (SolverRegistry names, case-sensitive) and how many history
# blobs each keeps per learnable parameter (AdaDeltaPreSolve / AdamPreSolve add a second set).
SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
HISTORY_SETS = {"SGD": 1, "Nesterov": 1, "AdaGrad": 1, "RMSProp": 1, "AdaDelta": 2, "Adam": 2}

# SGDSolver::GetLearningRate's policies and the fields each needs.
LR_POLICIES = {
    "fixed": (),
    "step": ("gamma", "stepsize"),
    "exp": ("gamma",),
    "inv": ("gamma", "power"),
    "multistep": ("gamma", "stepvalue"),
    "poly": ("power",),          # and max_iter, which every solver needs
    "sigmoid": ("gamma", "stepsize"),
}

# UpgradeSolverType's table.
_OLD_TYPES = {caffe_pb2.SolverParameter.SGD: "SGD", caffe_pb2.SolverParameter.NESTEROV: "Nesterov",
              caffe_pb2.SolverParameter.ADAGRAD: "AdaGrad",
              caffe_pb2.SolverParameter.RMSPROP: "RMSProp",
              caffe_pb2.SolverParameter.ADADELTA: "AdaDelta",
              caffe_pb2.SolverParameter.ADAM: "Adam"}

# Which field gives the train net (Solver::InitTrainNet accepts exactly one).
TRAIN_NET_FIELDS = ("net", "net_param", "train_net", "train_net_param")


@dataclasses.dataclass
class NetSource:
    """One net the solver builds, as Caffe's InitTrainNet/InitTestNets build it.

    ``net_param`` is the upgraded NetParameter with ``state`` set to the NetState Caffe merges
    (the phase, then the net file's own ``state``, then ``train_state``/``test_state``), so
    ``Net.from_proto(s.net_param, phase=s.phase, level=s.level, stages=s.stages,
    source=s.source)`` builds the layers Caffe builds."""
    net_param: object         # caffe_pb2.NetParameter
    phase: str                # "TRAIN" or "TEST" (a net's own state may say otherwise)
    level: int
    stages: tuple
    source: str               # the net file as written, or "<solver>: net_param"
    field: str                # the solver field it came from: net, train_net, test_net, ...
    test_iter: int = 0        # for a test net: test_iter of its position, else 0


@dataclasses.dataclass
class SolverNets:
    train: NetSource
    tests: list               # NetSource, in Caffe's order (test_net_param, test_net, generic)
    weights: list             # caffemodels of the ``weights`` field, split at commas, in order


# -- reading -------------------------------------------------------------------------------------
def read_solver(path):
    """Read a text solver file; return its SolverParameter upgraded (``type`` set,
    ``solver_type`` cleared, ``snapshot_prefix`` filled in as Caffe does) and checked
    (``check_supported``, ``check_values``, ``check_net_fields``). Raises FormatError for a
    malformed file, UnsupportedError for a field we do not honour, RistrettoError for a bad
    value, each one line naming the file (and line)."""
    path = os.fspath(path)
    text = _read_text(path)
    param = parse_solver_text(text, path)
    upgrade_snapshot_prefix(param, path)
    lines = field_lines(text)
    check_supported(param, path, lines)
    check_values(param, path, lines)
    check_net_fields(param, path, lines)
    return param


def parse_solver_text(text, path=None):
    """Parse solver prototxt text into an upgraded SolverParameter (``upgrade_solver_type``
    applied, embedded nets upgraded); no value checks."""
    param = caffe_pb2.SolverParameter()
    try:
        text_format.Parse(upgrade_text(text), param)
    except text_format.ParseError as exc:
        raise FormatError(_describe_parse_error(exc), path=path) from None
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"malformed solver prototxt: {exc}", path=path) from None
    upgrade_solver_type(param, path, field_lines(text))
    for field in ("net_param", "train_net_param"):
        if param.HasField(field):
            upgrade_net(getattr(param, field), path)
    for net in param.test_net_param:
        upgrade_net(net, path)
    return param


def _read_text(path):
    data = caffe_io.read_bytes(path, "solver file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise FormatError(f"line {line}: not UTF-8 text (is this a binary file?)",
                          path=path) from None


_UNKNOWN_FIELD = re.compile(r'Message type "caffe\.(\w+)" has no field named "([^"]+)"\.?')


def _describe_parse_error(exc):
    line = getattr(exc, "GetLine", lambda: None)()
    column = getattr(exc, "GetColumn", lambda: None)()
    text = re.sub(r"^\d+:\d+\s*:\s*", "", str(exc))
    unknown = _UNKNOWN_FIELD.search(text)
    if unknown:
        message, field = unknown.groups()
        if message == "SolverParameter":
            text = f"unknown solver field '{field}' (Caffe's SolverParameter has no such field)"
        else:
            text = f"unknown field '{field}' in a {message} (Caffe has no such field there)"
    else:
        text = f"malformed solver prototxt: {text}"
    return f"line {line}, column {column}: {text}" if line else text


def field_lines(text):
    """The line of each top-level field's first occurrence in prototxt ``text`` (for messages;
    nested messages' fields are not counted)."""
    lines, depth, line, i, n = {}, 0, 1, 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "\"'":
            i += 1
            while i < n and text[i] != c and text[i] != "\n":
                i += 2 if text[i] == "\\" else 1
            i += 1
        elif c in "{<":
            depth += 1
            i += 1
        elif c in "}>":
            depth -= 1
            i += 1
        elif c.isalpha() or c == "_":
            start = i
            while i < n and (text[i].isalnum() or text[i] == "_"):
                i += 1
            j = i
            while j < n and text[j] in " \t\r\n":
                j += 1
            if depth == 0 and j < n and text[j] in ":{<":
                lines.setdefault(text[start:i], line)
        else:
            i += 1
    return lines


def _where(field, lines):
    line = (lines or {}).get(field)
    return f"line {line}: " if line else ""


def _error(cls, field, message, path, lines):
    return cls(f"{_where(field, lines)}{field}: {message}", path=path)


# -- Caffe's upgrades ----------------------------------------------------------------------------
def upgrade_solver_type(param, path=None, lines=None):
    """Caffe's UpgradeSolverType: ``solver_type: X`` (enum) -> ``type: "X"``; in place."""
    if not param.HasField("solver_type"):
        return param
    old = _OLD_TYPES.get(param.solver_type)
    if old is None:      # cannot happen from text; guards a hand-built message
        raise _error(RistrettoError, "solver_type", f"unknown value {param.solver_type}",
                     path, lines)
    if param.HasField("type") and param.type != old:
        enum = caffe_pb2.SolverParameter.SolverType.Name(param.solver_type)
        raise _error(RistrettoError, "solver_type",
                     f"the old solver_type field says {enum} but type says \"{param.type}\": "
                     "give one of them", path, lines)
    param.type = old
    param.ClearField("solver_type")
    return param


def upgrade_snapshot_prefix(param, path):
    """Caffe's UpgradeSnapshotPrefixProperty: no prefix -> the solver path without its
    extension; a prefix naming an existing folder -> ``folder/<solver stem>``; in place."""
    path = os.fspath(path)
    if not param.HasField("snapshot_prefix"):
        param.snapshot_prefix = os.path.splitext(path)[0]
    elif os.path.isdir(param.snapshot_prefix):
        stem = os.path.splitext(os.path.basename(path))[0]
        param.snapshot_prefix = os.path.join(param.snapshot_prefix, stem)
    return param


# -- checks --------------------------------------------------------------------------------------
def check_supported(param, path=None, lines=None):
    """Refuse fields that parse but that we do not honour."""
    if param.snapshot_format != caffe_pb2.SolverParameter.BINARYPROTO:
        raise _error(UnsupportedError, "snapshot_format",
                     "HDF5 snapshots are not supported: remove the field (or write "
                     "BINARYPROTO) to get .caffemodel and .solverstate files", path, lines)
    if param.snapshot_diff:
        raise _error(UnsupportedError, "snapshot_diff",
                     "writing gradients into snapshots is not supported: remove the field",
                     path, lines)
    # Harmless fields, accepted: solver_mode and device_id (the trainer picks the device),
    # debug_info (Caffe's per-layer logging), layer_wise_reduce (multi-GPU all-reduce timing),
    # random_seed (seeds our generators; Caffe's random streams cannot be reproduced).


def check_values(param, path=None, lines=None):
    """The value checks: Caffe's CHECKs (Solver::Init, GetLearningRate, the solvers'
    constructor_sanity_check, InitTestNets) and values that can only be mistakes. Does not
    look at which fields give the nets (``check_net_fields``)."""
    def fail(field, message):
        raise _error(RistrettoError, field, message, path, lines)

    if param.HasField("solver_type"):
        upgrade_solver_type(param, path, lines)
    if param.type not in SOLVER_TYPES:
        hint = next((t for t in SOLVER_TYPES if t.lower() == param.type.lower()), None)
        fail("type", f"unknown solver type \"{param.type}\""
             + (f" (Caffe's names are case-sensitive: \"{hint}\")" if hint else "")
             + f"; known: {', '.join(SOLVER_TYPES)}")
    if not param.HasField("base_lr"):
        fail("base_lr", "missing: give the base learning rate (> 0)")
    if not param.base_lr > 0:
        fail("base_lr", f"must be > 0, not {param.base_lr:g}")
    if not param.HasField("max_iter"):
        fail("max_iter", "missing: give the number of iterations (> 0)")
    if param.max_iter <= 0:
        fail("max_iter", f"must be > 0, not {param.max_iter}")
    policy = param.lr_policy
    if not param.HasField("lr_policy"):
        fail("lr_policy", f"missing: give one of {', '.join(LR_POLICIES)}")
    if policy not in LR_POLICIES:
        fail("lr_policy", f"unknown policy \"{policy}\"; known: {', '.join(LR_POLICIES)}")
    for field in LR_POLICIES[policy]:
        present = len(param.stepvalue) if field == "stepvalue" else param.HasField(field)
        if not present:
            fail("lr_policy", f"\"{policy}\" needs {field}, which is missing")
    if param.HasField("gamma") and param.gamma < 0:
        fail("gamma", f"must be >= 0, not {param.gamma:g}")
    if "stepsize" in LR_POLICIES[policy] and param.stepsize <= 0:
        fail("stepsize", f"must be > 0 for lr_policy \"{policy}\", not {param.stepsize}")
    if policy == "multistep":
        values = list(param.stepvalue)
        if values[0] < 0 or any(b <= a for a, b in zip(values, values[1:])):
            fail("stepvalue", f"must be >= 0 and strictly increasing, not {values}")
    if param.iter_size < 1:
        fail("iter_size", f"must be >= 1, not {param.iter_size}")
    if not 0 <= param.momentum < 1:
        fail("momentum", f"must be in [0, 1), not {param.momentum:g}")
    if param.type in ("AdaGrad", "RMSProp") and param.momentum != 0:
        fail("momentum", f"must be 0 (or absent) for the {param.type} solver, as Caffe checks; "
             f"not {param.momentum:g}")
    if param.type == "RMSProp" and not 0 <= param.rms_decay < 1:
        fail("rms_decay", f"must be in [0, 1), not {param.rms_decay:g}")
    if param.type == "Adam" and not 0 <= param.momentum2 < 1:
        fail("momentum2", f"must be in [0, 1), not {param.momentum2:g}")
    if param.type in ("AdaGrad", "RMSProp", "AdaDelta", "Adam") and not param.delta > 0:
        fail("delta", f"must be > 0 for the {param.type} solver, not {param.delta:g}")
    if param.weight_decay < 0:
        fail("weight_decay", f"must be >= 0, not {param.weight_decay:g}")
    if param.regularization_type not in ("L1", "L2"):
        fail("regularization_type",
             f"must be \"L1\" or \"L2\", not \"{param.regularization_type}\"")
    if param.average_loss < 1:
        fail("average_loss", f"must be >= 1, not {param.average_loss}")
    for field in ("display", "snapshot", "test_interval"):
        if getattr(param, field) < 0:
            fail(field, f"must be >= 0, not {getattr(param, field)}")
    for value in param.test_iter:
        if value <= 0:
            fail("test_iter", f"must be > 0, not {value}")


def check_net_fields(param, path=None, lines=None):
    """Which fields give the nets, as Solver::InitTrainNet and InitTestNets require; returns
    the number of test nets. No file is opened here (``solver_nets`` does that)."""
    def fail(field, message):
        raise _error(RistrettoError, field, message, path, lines)

    given = [f for f in TRAIN_NET_FIELDS if param.HasField(f)]
    if not given:
        raise RistrettoError("no train net: give one of " + ", ".join(TRAIN_NET_FIELDS),
                             path=path)
    if len(given) > 1:
        fail(given[1], f"the train net is given twice ({' and '.join(given)}): give exactly "
             f"one of {', '.join(TRAIN_NET_FIELDS)}")
    generic = param.HasField("net") or param.HasField("net_param")
    explicit = len(param.test_net) + len(param.test_net_param)
    count = len(param.test_iter)
    if generic:
        if count < explicit:
            fail("test_iter", f"given {count} times for {explicit} test nets (test_net, "
                 "test_net_param): give one test_iter per test net")
        tests = count            # the remaining test_iter values each test the generic net
    else:
        if count != explicit:
            fail("test_iter", f"given {count} times for {explicit} test nets (test_net, "
                 "test_net_param): give one test_iter per test net")
        tests = explicit
    if len(param.test_state) and len(param.test_state) != tests:
        fail("test_state", f"given {len(param.test_state)} times for {tests} test nets: give "
             "it once per test net or not at all")
    if tests and param.test_interval <= 0:
        fail("test_interval", f"must be > 0 when there are test nets ({tests} here, from "
             "test_iter): give how often to test")
    return tests


# -- nets, weights and the snapshot folder -------------------------------------------------------
def solver_nets(param, path):
    """The train net, the test nets and the ``weights`` files of a solver read by
    ``read_solver`` from ``path``, as Caffe builds them. Net files are read relative to the
    working directory (as Caffe does); a missing one is a one-line RistrettoError naming the
    solver and the field."""
    path = os.fspath(path)
    lines = _lines_of(path)
    tests_count = check_net_fields(param, path, lines)

    def state(net_param, phase, extra):
        merged = caffe_pb2.NetState(phase=caffe_pb2.Phase.Value(phase))
        merged.MergeFrom(net_param.state)
        if extra is not None:
            merged.MergeFrom(extra)
        net_param.state.CopyFrom(merged)
        return caffe_pb2.Phase.Name(merged.phase), merged.level, tuple(merged.stage)

    def from_file(field, value):
        _check_file(field, value, path, lines, "net")
        return caffe_io.read_net_text(value), value, field

    def embedded(field, message):
        net = caffe_pb2.NetParameter()
        net.CopyFrom(message)
        return net, f"{path}: {field}", field

    # InitTrainNet: exactly one of the four fields (check_net_fields) gives the train net.
    if param.HasField("train_net_param"):
        train, source, field = embedded("train_net_param", param.train_net_param)
    elif param.HasField("train_net"):
        train, source, field = from_file("train_net", param.train_net)
    elif param.HasField("net_param"):
        train, source, field = embedded("net_param", param.net_param)
    else:
        train, source, field = from_file("net", param.net)
    phase, level, stages = state(train, "TRAIN", param.train_state)
    train_source = NetSource(train, phase, level, stages, source, field)

    # InitTestNets: test_net_param, then test_net files, then the generic net once per
    # remaining test_iter.
    made = [embedded("test_net_param", message) for message in param.test_net_param]
    made += [from_file("test_net", value) for value in param.test_net]
    for _ in range(tests_count - len(made)):
        made.append(embedded("net_param", param.net_param) if param.HasField("net_param")
                    else from_file("net", param.net))
    tests = []
    for index, (net, source, field) in enumerate(made):
        extra = param.test_state[index] if len(param.test_state) else None
        phase, level, stages = state(net, "TEST", extra)
        tests.append(NetSource(net, phase, level, stages, source, field,
                               test_iter=param.test_iter[index]))

    weights = []
    for entry in param.weights:
        for name in entry.split(","):      # LoadNetWeights: boost::split on ',' then trim
            name = name.strip()
            _check_file("weights", name, path, lines, "caffemodel")
            weights.append(name)
    return SolverNets(train_source, tests, weights)


def check_snapshot_prefix(param, path=None):
    """Caffe's CheckSnapshotWritePermissions, earlier and as one line: when the solver will
    write snapshots (``snapshot > 0`` or ``snapshot_after_train``), the prefix's folder must be
    an existing, writable folder (relative to the working directory, as Caffe writes it)."""
    if not (param.snapshot > 0 or param.snapshot_after_train):
        return
    folder = os.path.dirname(param.snapshot_prefix) or "."
    lines = _lines_of(path) if path else None
    if not os.path.isdir(folder):
        raise _error(RistrettoError, "snapshot_prefix",
                     f"the folder '{folder}' of '{param.snapshot_prefix}' does not exist "
                     f"(Caffe resolves it relative to the working directory, {os.getcwd()})",
                     path, lines)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _error(RistrettoError, "snapshot_prefix",
                     f"cannot write snapshots into the folder '{folder}'", path, lines)


def _check_file(field, value, path, lines, kind):
    if os.path.isfile(value):
        return
    hint = ""
    beside = os.path.join(os.path.dirname(path), value)
    if not os.path.isabs(value) and os.path.dirname(path) and os.path.isfile(beside):
        hint = (f"; it exists relative to the solver's folder, but Caffe reads it relative to "
                f"the working directory: run from '{os.path.dirname(path)}' or fix the path")
    what = "no such file" if not os.path.isdir(value) else "is a directory, not a file"
    raise _error(RistrettoError, field,
                 f"{what}: '{value}' (the {kind} file, read relative to the working directory "
                 f"{os.getcwd()}{hint})", path, lines)


def _lines_of(path):
    try:
        with open(path, "rb") as handle:
            return field_lines(handle.read().decode("utf-8", "replace"))
    except OSError:
        return {}
