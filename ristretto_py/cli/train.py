"""``tools/train``: Caffe's ``caffe train`` (and Ristretto's fine-tuning) in Python, on PyTorch.

``--solver`` names a Caffe solver prototxt; ``--weights`` fine-tunes from a caffemodel (layers it
does not hold keep their fillers, as Caffe's CopyTrainedLayersFrom); ``--snapshot`` resumes from
a ``.solverstate``. Snapshots (``<snapshot_prefix>_iter_N.caffemodel`` and ``.solverstate``)
are written as training goes and stay when it fails later; Ctrl-C or SIGTERM writes one and
stops. The log follows Caffe's layout; ``--report DIR`` adds ``train.json`` (every logged value
and the quantization table: per learned layer its quantizer, widths, saturated share of the
weights and packed weight bytes) and ``curves.png``."""
import json
import os
import sys

from .. import atomic, caffe_io
from ..errors import RistrettoError
from ..net import Net
from ..passes.training_report import activation_saturation, format_rows, quantization_rows
from .common import add_memory_argument, make_parser, run

PROG = "train"
REPORT_FILES = ("train.json", "curves.png")


def build_parser():
    parser = make_parser(PROG, __doc__)
    parser.add_input("--solver", required=True, metavar="PROTOTXT",
                     help="the solver definition (Caffe's SolverParameter, text format)")
    parser.add_input("--weights", metavar="CAFFEMODEL[,CAFFEMODEL]",
                     help="fine-tune from these weights (comma-separated; replaces the solver's "
                          "weights field)")
    parser.add_input("--snapshot", metavar="SOLVERSTATE",
                     help="resume from this solver state (and the weights it names)")
    parser.add_argument("--gpu", metavar="ID",
                        help="as Caffe's -gpu: train on this CUDA device when torch has one "
                             "(otherwise on the CPU, with one line saying so)")
    parser.add_argument("--qat", choices=("weights", "activations"), default="weights",
                        help="weights (default, Ristretto's fine-tuning: only the weights are "
                             "trimmed in TRAIN) or activations (Ristretto layers also trim their "
                             "inputs and outputs in TRAIN, gradient zero where they saturate)")
    parser.add_argument("--frozen_bn", action="store_true",
                        help="BatchNorm layers normalise with their stored statistics in TRAIN "
                             "too and never update them (use_global_stats forced)")
    parser.add_report(REPORT_FILES, help="write train.json and curves.png here")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_memory_argument(parser)
    return parser


def _engine():
    try:
        from ..train import engine
    except ImportError as exc:
        if "torch" in str(exc):
            raise RistrettoError("tools/train needs PyTorch: pip install -e \".[train]\"") from None
        raise
    return engine


def _device(engine, param, gpu):
    wanted = gpu is not None or param.solver_mode == param.GPU
    if not wanted:
        return "cpu"
    if engine.torch.cuda.is_available():
        index = int(gpu.split(",")[0]) if gpu and gpu.split(",")[0].isdigit() else param.device_id
        return f"cuda:{index}"
    print("solver_mode GPU (or --gpu): torch finds no CUDA device here; training on the CPU",
          file=sys.stderr)
    return "cpu"


def _build(source):
    return Net.from_proto(source.net_param, phase=source.phase, level=source.level,
                          stages=tuple(source.stages), source=source.source)


def load_weights(model, paths):
    """Copy the blobs of each caffemodel into the model by layer name (later files win)."""
    for path in paths:
        model.load_blobs(caffe_io.read_net_binary(path), source=path)


def train_main(argv=None):
    args = build_parser().parse_args(argv)
    from ..train.snapshot import restore, write_snapshot
    from ..train.solver_file import check_snapshot_prefix, read_solver, solver_nets
    if args.weights and args.snapshot:
        raise RistrettoError("give --snapshot to resume training or --weights to fine-tune, "
                             "not both")
    param = read_solver(args.solver)
    if args.weights is not None:
        del param.weights[:]
        param.weights.extend(w.strip() for w in args.weights.split(",") if w.strip())
    if args.snapshot:
        del param.weights[:]
    nets = solver_nets(param, args.solver)
    check_snapshot_prefix(param, args.solver)
    engine = _engine()
    seed = int(param.random_seed) if param.random_seed >= 0 else 0
    engine.torch.manual_seed(seed)
    device = _device(engine, param, args.gpu)
    from ..train.trainer import Trainer
    trainer = Trainer(param, _build(nets.train), [_build(s) for s in nets.tests], engine,
                      seed=seed, device=device, progress=not args.quiet,
                      quantize_activations=args.qat == "activations",
                      frozen_batch_norm=args.frozen_bn)
    try:
        load_weights(trainer.model, nets.weights)
        if args.snapshot:
            learned = restore(trainer.solver, args.snapshot)
            if learned:
                load_weights(trainer.model, [learned])
            trainer.iteration = trainer.solver.iter
            print(f"Restoring previous solver status from {args.snapshot} (iteration "
                  f"{trainer.iteration})")
            trainer.fast_forward()

        def snapshot(current):
            with atomic.immediately():       # snapshots stay even if training fails later
                return write_snapshot(current.solver, current.trained_net(),
                                      param.snapshot_prefix, current.iteration)

        print(f"Solving {nets.train.net_param.name or os.path.basename(nets.train.source)} "
              f"on {device} (seed {seed}; trimmed in TRAIN: {args.qat}"
              f"{'; BatchNorm frozen' if args.frozen_bn else ''})")
        trainer.solve(snapshot)
        rows = quantization_rows(trainer.trained_net(), _saturation(trainer))
    finally:
        trainer.close()
    if any(r["quantizer"] != "float32" for r in rows):
        print("\n".join(format_rows(rows)))
    if args.report:
        write_report(args.report, trainer.log, rows)
    return 0


def _saturation(trainer):
    """The activation saturation shares of the first test net on its next batch (None without
    a test net or quantized layers)."""
    if not trainer.test_nets or not any(
            layer.type.endswith("Ristretto") or layer.type == "ActivationQuantize"
            for layer in trainer.test_nets[0].layers):
        return None
    batch = trainer.sample_batch(0)
    return activation_saturation(trainer.test_models[0].to_net(), batch)


def write_report(directory, log, quantization=()):
    """``train.json`` (every logged value) and ``curves.png`` (loss and test outputs)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    atomic.make_directory(directory)
    data = {"train": log.train, "test": log.test, "snapshots": log.snapshots,
            "quantization": list(quantization)}
    atomic.write_text(os.path.join(directory, "train.json"), json.dumps(data, indent=2) + "\n")
    figure, (loss_axes, test_axes) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    if log.train:
        loss_axes.plot([e["iter"] for e in log.train], [e["loss"] for e in log.train])
    loss_axes.set_xlabel("iteration")
    loss_axes.set_ylabel("smoothed training loss")
    names = sorted({name for entry in log.test for name in entry["outputs"]})
    for name in names:
        points = [(e["iter"], e["outputs"][name]) for e in log.test
                  if isinstance(e["outputs"].get(name), float)]
        if points:
            test_axes.plot(*zip(*points), marker="o", label=name)
    test_axes.set_xlabel("iteration")
    test_axes.set_ylabel("test outputs")
    if names:
        test_axes.legend(fontsize="small")
    figure.tight_layout()
    with atomic.atomic_output(os.path.join(directory, "curves.png")) as handle:
        figure.savefig(handle, format="png", metadata={"Software": None})
    plt.close(figure)


def main(argv=None, prog=PROG):
    return run(train_main, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
