"""What every command-line tool shares: ``ToolParser`` (Caffe's flag spellings, declared input
and output paths checked before any work), the common flags, and ``run``, which turns a user
error into one line on stderr and exit code 2 and writes a tool's outputs all or nothing.

Flag spelling, one rule for every tool: the documented names use underscores, as Caffe's and
Ristretto's do (``--model_quantized``, ``--out_weights``); each flag also reads with hyphens
(``--out-weights``), with one dash (``-model X``, as ``caffe test`` takes it), and as
``--flag=value``; switches take ``--quiet=true|false`` too.
"""
import argparse
import contextlib
import contextvars
import json
import os
import re
import sys
import time
import warnings

from .. import atomic, memory_budget
from ..errors import RistrettoError, RistrettoWarning
from . import flag_types
from .paths import (check_distinct, check_new_directory, check_output_directory,
                    check_output_path)

USAGE_ERROR = 2
INTERRUPTED = 130
PROGRAM = contextvars.ContextVar("ristretto_py_program", default=None)
_NUMBER = re.compile(r"^-(\d|\.\d|inf\b|nan\b)", re.I)
_TRUE, _FALSE = ("true", "1", "yes", "y", "t"), ("false", "0", "no", "n", "f")


def run(main_fn, argv=None, prog=None):
    """Call ``main_fn(argv)`` and return the process exit code.

    A ``RistrettoError`` (bad model, weights, input, flag value) or an ``OSError`` (typically
    an output path that cannot be written) prints ``<tool>: error: <message>`` as a single
    line on stderr and gives 2; a usage error (argparse's, one line too) gives 2 and ``--help``
    0, returned rather than raised; Ctrl-C gives 130.
    ``RistrettoWarning``s print as ``<tool>: warning: <message>``. Outputs written through
    ``ristretto_py.atomic`` appear only when the tool succeeds. Anything else is a bug and
    keeps its traceback.
    """
    prog = prog or _program_name()
    token = PROGRAM.set(prog)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default", RistrettoWarning)
            warnings.showwarning = _warning_printer(prog)
            with atomic.all_or_nothing() as staging:
                code = main_fn(argv)
                code = 0 if code is None else int(code)
                if code:
                    staging.discard()
        return code
    except SystemExit as exc:          # argparse: --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else USAGE_ERROR
    except RistrettoError as exc:
        return _fail(prog, str(exc))
    except OSError as exc:
        return _fail(prog, describe_os_error(exc))
    except MemoryError:
        return _fail(prog, "ran out of memory; use a smaller batch or fewer iterations, or "
                           "set --memory_limit below the memory this machine really has")
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
    finally:
        PROGRAM.reset(token)
        memory_budget.reset_limit()
        _select_gpu(None)


def _warning_printer(prog):
    """Every warning as one ``<tool>: warning:`` line; others than ours say where they arose."""
    def show(message, category, filename, lineno, file=None, line=None):
        text = one_line(message)
        if not issubclass(category, RistrettoWarning):
            text += f" ({category.__name__} in {os.path.basename(filename)}:{lineno})"
        print(f"{prog}: warning: {text}", file=sys.stderr)
    return show


def _fail(prog, message):
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
    return USAGE_ERROR


def _program_name():
    name = os.path.basename(sys.argv[0] or "ristretto_py")
    return name[:-3] if name.endswith(".py") else name


def one_line(text):
    """Collapse every run of whitespace (newlines included) into one space."""
    return " ".join(str(text).split())


def describe_os_error(exc):
    reason = exc.strerror or str(exc)
    if exc.filename is not None:
        return f"{exc.filename}: {reason}"
    return reason


class ToolParser(argparse.ArgumentParser):
    """An ArgumentParser for one tool: its usage line names the command as it was called
    (``ristretto quantize`` or ``quantize``), it reads Caffe's spellings (module docstring),
    and the paths declared with ``add_input``/``add_output``/``add_report`` are checked once
    the flags are read, before any work."""

    def __init__(self, prog, description):
        super().__init__(prog=PROGRAM.get() or prog, description=description, allow_abbrev=False)
        self._inputs, self._outputs, self._reports, self._new_dirs = [], [], [], []
        self._aliases = {}

    # -- declaring flags ------------------------------------------------------------------
    def add_input(self, *names, **kwargs):
        action = self.add_argument(*names, **kwargs)
        self._inputs.append(action)
        return action

    def add_output(self, *names, **kwargs):
        action = self.add_argument(*names, **kwargs)
        self._outputs.append(action)
        return action

    def add_report(self, files, *names, **kwargs):
        """A report folder flag (default ``--report``) whose tool writes ``files`` into it."""
        names = names or ("--report",)
        kwargs.setdefault("metavar", "DIR")
        action = self.add_argument(*names, **kwargs)
        self._reports.append((action, tuple(files)))
        return action

    def add_new_directory(self, *names, **kwargs):
        action = self.add_argument(*names, **kwargs)
        self._new_dirs.append(action)
        return action

    def alias(self, old, new):
        """Accept the flag ``old`` as another name of ``new`` (not shown in --help)."""
        self._aliases[old] = new

    # -- reading them ---------------------------------------------------------------------
    def error(self, message):
        """A usage error: one line on stderr (the usage is a --help away) and exit code 2."""
        self.exit(USAGE_ERROR, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(self.caffe_spellings(args), namespace)

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        self._check_paths(parsed)
        if getattr(parsed, "memory_limit", None) is not None:
            memory_budget.set_limit(parsed.memory_limit)
        if getattr(parsed, "gpu", None) is not None:
            _announce_gpu(parsed)
        return parsed

    def caffe_spellings(self, argv):
        """``argv`` with every flag in its documented spelling (see the module docstring)."""
        actions = {s: a for a in self._actions for s in a.option_strings}
        out, index = [], 0
        while index < len(argv):
            token = argv[index]
            index += 1
            if token == "--":
                out += argv[index - 1:]
                break
            option, has_value, value = self._canonical(token, actions)
            if option is None:
                out.append(token)
                continue
            action = actions[option]
            if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) and has_value:
                truth = value.lower()
                if truth not in _TRUE + _FALSE:
                    self.error(f"argument {option}: expected true or false, not {value!r}")
                if (truth in _TRUE) == isinstance(action, argparse._StoreTrueAction):
                    out.append(option)
                continue
            if has_value:
                out.append(f"{option}={value}")
            elif (action.nargs is None and action.option_strings and index < len(argv)
                  and argv[index].startswith("-") and not argv[index].startswith("--")
                  and self._canonical(argv[index], actions)[0] is None):
                out.append(f"{option}={argv[index]}")     # a value such as -5 or -1,2,3
                index += 1
            else:
                out.append(option)
        return out

    def _canonical(self, token, actions):
        if not token.startswith("-") or token in ("-", "--") or _NUMBER.match(token):
            return None, False, ""
        if token in actions and not token.startswith("--"):
            return token, False, ""            # a short option such as -h
        body = token[2:] if token.startswith("--") else token[1:]
        name, eq, value = body.partition("=")
        for candidate in (f"--{name}", f"--{name.replace('-', '_')}"):
            candidate = self._aliases.get(candidate, candidate)
            if candidate in actions:
                return candidate, bool(eq), value
        return None, False, ""

    def _check_paths(self, parsed):
        def given(actions):
            pairs = []
            for action in actions:
                value = getattr(parsed, action.dest, None)
                flag = action.option_strings[0] if action.option_strings else action.dest
                for path in (value if isinstance(value, list) else [value]):
                    if path is not None:
                        pairs.append((flag, os.fspath(path)))
            return pairs
        inputs, outputs = given(self._inputs), given(self._outputs)
        for _, path in outputs:
            check_output_path(path)
        for _, path in given(self._new_dirs):
            check_new_directory(path)
        for action, files in self._reports:
            for flag, directory in given([action]):
                check_output_directory(directory)
                report_files = [(f"{flag} ({name})", os.path.join(directory, name)) for name in files]
                if os.path.isdir(directory):
                    for _, path in report_files:
                        check_output_path(path)
                outputs += report_files
        outputs += given(self._new_dirs)
        check_distinct(inputs, outputs)


def make_parser(prog, description):
    """The ToolParser of one tool."""
    return ToolParser(prog, description)


def add_model_arguments(parser, weights_required):
    parser.add_input("--model", required=True, metavar="PROTOTXT",
                     help="the net definition (.prototxt)")
    parser.add_input("--weights", required=weights_required, metavar="CAFFEMODEL",
                     help="the trained weights (.caffemodel)")


def add_backend_arguments(parser, fixed=True, compat=True, backends=None):
    """``--backend``, ``--gpu`` and (with ``fixed``) the fixed-point backend's flags; with
    ``compat``, ``--compat``."""
    from ..numerics import COMPAT_MODES
    from ..runtime import BACKENDS
    choices = sorted(backends or BACKENDS)
    parser.add_argument("--backend", choices=choices, default="numpy",
                        help="numpy (the reference runtime), onnxruntime (the net exported to "
                             "ONNX)" + (" or fixed (integer kernels of the accelerator)" if
                                        "fixed" in choices else "") + "; default numpy")
    parser.add_argument("--gpu", metavar="ID",
                        help="as Caffe's -gpu: with --backend onnxruntime, run on this CUDA "
                             "device when onnxruntime has a CUDA provider; otherwise a warning "
                             "says the run stays on the CPU")
    if compat:
        parser.add_argument("--compat", choices=COMPAT_MODES, default="gpu",
                            help="Ristretto build whose trimming to reproduce: gpu (its CUDA "
                                 "layers, default) or cpu")
    if fixed:
        parser.add_argument("--acc_bits", type=flag_types.int_range(8, 64), default=64,
                            metavar="BITS",
                            help="--backend fixed: accumulator width (8-64, default 64)")
        parser.add_argument("--overflow", choices=("wrap", "saturate"), default="wrap",
                            help="--backend fixed: what the accumulator does on overflow "
                                 "(default wrap)")


def add_memory_argument(parser):
    parser.add_argument("--memory_limit", type=flag_types.memory_size, metavar="SIZE",
                        help="the most memory the run may plan to use, e.g. 8G (default: the "
                             f"memory available now, or ${memory_budget.ENVIRONMENT}); larger "
                             "work is refused up front, and cached batches are read again "
                             "instead of kept")


def add_cluster_arguments(parser):
    """``--cluster`` and ``--device`` (``ristretto_py.cluster``)."""
    from ..cluster import parse_cluster, parse_device
    parser.add_argument("--cluster", type=parse_cluster, metavar="local:N|ray://HOST:PORT",
                        help="run the evaluations on Ray: local:N starts Ray here with N "
                             "workers, ray://HOST:PORT attaches to a running cluster (one worker "
                             "per CPU); results equal the single process's (needs the 'ray' "
                             "extra)")
    parser.add_argument("--device", type=parse_device, default="cpu",
                        help="cpu (default) or cuda: run the nets with onnxruntime's CUDA "
                             "provider (with --backend onnxruntime; needs onnxruntime-gpu and a "
                             "GPU on every worker)")


@contextlib.contextmanager
def cluster_session(args):
    """The run's ``ristretto_py.cluster.session.Cluster`` for ``--cluster`` (None without
    it), stopped when the block ends; ``--device cuda`` checked first."""
    device = getattr(args, "device", "cpu")
    if device == "cuda":
        if getattr(args, "backend", None) != "onnxruntime":
            raise RistrettoError("--device cuda runs onnxruntime's CUDA provider: add --backend "
                                 "onnxruntime")
        if getattr(args, "cluster", None) is None:
            from ..cluster.session import cuda_available
            ok, why = cuda_available()
            if not ok:
                raise RistrettoError(f"--device cuda: {why}")
            _select_gpu(0)
    if getattr(args, "cluster", None) is None:
        yield None
        return
    from ..cluster.session import Cluster
    with Cluster(args.cluster, device, progress=not getattr(args, "quiet", False)) as cluster:
        yield cluster


def write_run_record(directory, cluster, started):
    """``run.json`` in a report folder: the workers the run used and its wall time (apart from
    the report's other files, which do not depend on either)."""
    record = (cluster.describe() if cluster is not None else
              {"cluster": None, "workers": 1, "nodes": 1, "device": "cpu"})
    if cluster is not None and cluster.pool is not None:
        record.update(candidates=cluster.pool.candidates, chunks=cluster.pool.calls)
    record["wall_seconds"] = round(time.monotonic() - started, 3)
    atomic.write_text(os.path.join(directory, "run.json"), json.dumps(record, indent=2) + "\n")


def add_seed_argument(parser, what):
    parser.add_argument("--seed", type=flag_types.seed, default=0,
                        help=f"seed of {what} (0 to 2^32-1, default 0)")


def _announce_gpu(args):
    """Caffe's ``-gpu`` on a machine or backend without one: say where the run happens."""
    backend = getattr(args, "backend", "numpy")
    device = str(args.gpu).split(",")[0]
    if backend == "onnxruntime":
        import onnxruntime
        providers = onnxruntime.get_available_providers()
        if "CUDAExecutionProvider" in providers:
            if not device.isdigit():
                device = "0"
            _select_gpu(int(device))
            return
        reason = (f"this onnxruntime has no CUDA provider (it offers "
                  f"{', '.join(providers)})")
    else:
        reason = (f"the {backend} backend runs on the CPU (--backend onnxruntime uses a GPU "
                  "when onnxruntime has a CUDA provider)")
    warnings.warn(f"--gpu {args.gpu}: running on the CPU: {reason}", RistrettoWarning)


def _select_gpu(device):
    from ..runtime import onnx_backend
    onnx_backend.select_gpu(device)


def runtime_options(args):
    """Keyword options of make_runtime for the parsed flags."""
    options = {}
    if getattr(args, "compat", None):
        options["compat"] = args.compat
    if getattr(args, "seed", None) is not None:
        options["seed"] = args.seed
    if args.backend == "fixed":
        options.update(acc_bits=args.acc_bits, overflow=args.overflow)
    return options


def format_shape(shape):
    return "x".join(str(d) for d in shape) if len(shape) else "scalar"


def format_count(value):
    """An integer with thousands separators and, when large, a short form: 1,234,567 (1.23M)."""
    value = int(value)
    for limit, suffix in ((10 ** 9, "G"), (10 ** 6, "M"), (10 ** 3, "k")):
        if value >= limit:
            return f"{value:,} ({value / limit:.2f}{suffix})"
    return f"{value:,}"
