"""``tools/quantize --finetune SOLVER``: fine-tuning in the loop of the dynamic fixed point
search (``passes/finetune_search``). Each candidate description is trained with ``tools/train``
from the float weights (``--weights``), with the solver file's hyperparameters: its ``net`` is
replaced by the candidate, its snapshots go to a temporary folder and its own test passes are
turned off (the search scores the fine-tuned net on its own batches). The best fine-tuned
weights are written to ``--weights_quantized``; its description to ``--model_quantized``."""
import contextlib
import io
import os
import tempfile

from google.protobuf import text_format

from .. import atomic, caffe_io
from ..caffe_io import write_net_text
from ..errors import RistrettoError
from ..net import Net
from ..passes import ristretto_edit as edit
from ..passes.finetune_search import STAGES, finetune_search

NET_FIELDS = ("net", "net_param", "train_net", "train_net_param", "test_net", "test_net_param")


def add_finetune_arguments(parser):
    parser.add_input("--finetune", metavar="SOLVER",
                     help="dynamic_fixed_point: fine-tune the chosen net with this Caffe solver "
                          "file (from --weights) and score it again, then try narrower widths "
                          "with fine-tuning in the loop; writes --weights_quantized")
    parser.add_argument("--finetune_qat", choices=("weights", "activations"),
                        default="activations",
                        help="with --finetune: what tools/train trims in TRAIN (default "
                             "activations: weights, inputs and outputs; weights: Ristretto's)")


class SolverTuner:
    """``tune(param, tag) -> (weights path, score)`` for ``finetune_search``."""

    def __init__(self, solver_path, quantizer, directory, qat, quiet):
        from ..train.solver_file import read_solver
        self.solver = read_solver(solver_path)
        self.solver_path, self.quantizer = solver_path, quantizer
        self.directory, self.qat, self.quiet = directory, qat, quiet

    def _solver_file(self, description, tag):
        solver = type(self.solver)()
        solver.CopyFrom(self.solver)
        for field in NET_FIELDS:
            solver.ClearField(field)
        solver.ClearField("test_iter")
        solver.net = description
        solver.test_interval = 0
        solver.test_initialization = False
        solver.snapshot = 0
        solver.snapshot_after_train = True
        solver.snapshot_prefix = os.path.join(self.directory, tag)
        solver.ClearField("weights")
        path = os.path.join(self.directory, f"{tag}_solver.prototxt")
        with open(path, "w") as handle:
            handle.write(text_format.MessageToString(solver))
        return path, int(solver.max_iter)

    def __call__(self, param, tag):
        from . import train as train_cli
        description = os.path.join(self.directory, f"{tag}.prototxt")
        with atomic.immediately():
            write_net_text(param, description)
        solver, iterations = self._solver_file(description, tag)
        print(f"Fine-tuning the {tag.replace('_', '/')} net: {iterations} iterations of "
              f"{self.solver_path} (--qat {self.qat})", flush=True)
        argv = ["--solver", solver, "--weights", self.quantizer.weights_path, "--qat", self.qat]
        if self.quiet:
            argv.append("--quiet")
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            train_cli.train_main(argv)
        weights = os.path.join(self.directory, f"{tag}_iter_{iterations}.caffemodel")
        net = Net.from_proto(edit.with_phase(param, "TEST"), caffe_io.read_net_binary(weights),
                             phase="TEST", source=description, weights_source=weights)
        score = self.quantizer.evaluate(param, f"fine-tuned {tag}", net=net)
        return weights, float(score)


def run_finetune(args, quantizer, result, narrow):
    """Fine-tune (and search narrower widths when ``narrow``); write the best description and
    weights; return (best, tried) of ``finetune_search``."""
    if not args.weights_quantized:
        raise RistrettoError("--finetune writes the fine-tuned weights: give --weights_quantized")
    with tempfile.TemporaryDirectory(prefix="ristretto_finetune_") as directory:
        tuner = SolverTuner(args.finetune, quantizer, directory, args.finetune_qat, args.quiet)
        best, tried = finetune_search(quantizer, result, tuner, narrow)
        with open(best.weights, "rb") as handle:
            atomic.write_bytes(args.weights_quantized, handle.read())
    write_net_text(best.param, args.model_quantized)
    return best, tried


def finetune_lines(tried, best, score_name):
    lines = [f"Fine-tuning in the loop ({score_name}, before -> after fine-tuning):"]
    for candidate in tried:
        widths = "/".join(str(candidate.widths.get(s, "-")) for s in STAGES)
        mark = "passed" if candidate.passed else "failed"
        chosen = "  <- written" if candidate is best else ""
        lines.append(f"  conv/fc/act {widths:10s} {candidate.before:.4f} -> "
                     f"{candidate.after:.4f}  {mark}{chosen}")
    return lines
