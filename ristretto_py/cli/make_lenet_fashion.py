"""Build ``examples/lenet_fashion`` from Debian's dataset-fashion-mnist (``apt-get install
dataset-fashion-mnist``). Run from the repository root.

``--lmdb_only`` writes the two full LMDBs that ``lenet_solver.prototxt``, the fine-tuning and the
DenseNet example read: ``fashion_train_full_lmdb`` (the 60,000 training images) and
``fashion_test_full_lmdb`` (the 10,000 test images), plus the bundled small ones,
``fashion_test_lmdb`` (the first 1,000 test images) and ``fashion_train_lmdb`` (the first 640
training images: the 10 TRAIN batches of 64 Ristretto's range analysis reads). Without it, it
then trains the LeNet with ``tools/train`` on ``lenet_solver.prototxt`` (Caffe's LeNet solver,
needs the ``train`` extra: torch) and writes the final snapshot's weights as
``lenet_fashion.caffemodel`` with ``lenet_train_test.prototxt``. The bundled model was trained
before tools/train existed; retraining changes it, and with it the example's figures."""
import gzip
import pathlib
import shutil
import sys

import numpy as np

from .. import caffe_io
from ..atomic import immediately, write_text
from ..lmdb_write import make_datum, write_lmdb
from .common import make_parser, run

DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"
SCALE = 0.00390625  # 1/256, as Caffe's LeNet example: inputs in [0, 0.996]
EXAMPLE = pathlib.Path("examples/lenet_fashion")
SOLVER = EXAMPLE / "lenet_solver.prototxt"

PROG = "make_lenet_fashion"

NET_TEMPLATE = """name: "LeNetFashion"
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
  transform_param {{ scale: {scale} }}
  data_param {{ source: "{train_source}" batch_size: 64 backend: LMDB }} }}
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
  transform_param {{ scale: {scale} }}
  data_param {{ source: "{test_source}" batch_size: 100 backend: LMDB }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 20 kernel_size: 5 stride: 1 }} }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param {{ num_output: 50 kernel_size: 5 stride: 1 }} }}
layer {{ name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
  inner_product_param {{ num_output: 500 }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param {{ num_output: 10 }} }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
  include {{ phase: TEST }} }}
layer {{ name: "accuracy_top5" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy_top5"
  accuracy_param {{ top_k: 5 }} include {{ phase: TEST }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
"""


def read_idx(path):
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def build_parser():
    parser = make_parser(PROG, __doc__)
    parser.add_argument("--data_dir", default=DEFAULT_DATA,
                        help=f"folder of the idx .gz files (default {DEFAULT_DATA})")
    parser.add_argument("--lmdb_only", action="store_true",
                        help="write the LMDBs only (the full ones are kept when present)")
    parser.add_argument("--rebuild", action="store_true",
                        help="rewrite the full LMDBs even when they exist")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _write(path, images, labels, replace):
    if path.exists():
        if not replace:
            print(f"kept {path} ({len(images):,} records expected)")
            return
        shutil.rmtree(path)
    with immediately():          # training reads them before the tool ends
        count = write_lmdb(path, (make_datum(image, label) for image, label in zip(images, labels)),
                           map_size=1 << 30)
    print(f"wrote {path}: {count:,} records")


def make_main(argv=None):
    args = build_parser().parse_args(argv)
    data = pathlib.Path(args.data_dir)
    train_x = read_idx(data / "train-images-idx3-ubyte.gz")
    train_y = read_idx(data / "train-labels-idx1-ubyte.gz")
    test_x = read_idx(data / "t10k-images-idx3-ubyte.gz")
    test_y = read_idx(data / "t10k-labels-idx1-ubyte.gz")
    EXAMPLE.mkdir(parents=True, exist_ok=True)
    _write(EXAMPLE / "fashion_train_full_lmdb", train_x, train_y, args.rebuild)
    _write(EXAMPLE / "fashion_test_full_lmdb", test_x, test_y, args.rebuild)
    _write(EXAMPLE / "fashion_test_lmdb", test_x[:1000], test_y[:1000], args.rebuild)
    _write(EXAMPLE / "fashion_train_lmdb", train_x[:640], train_y[:640], args.rebuild)
    if args.lmdb_only:
        return 0
    from . import train as train_cli
    with_progress = [] if not args.quiet else ["--quiet"]
    code = train_cli.train_main(["--solver", str(SOLVER)] + with_progress)
    if code:
        return code
    from ..train.solver_file import read_solver
    param = read_solver(SOLVER)
    snapshot = f"{param.snapshot_prefix}_iter_{param.max_iter}.caffemodel"
    text = NET_TEMPLATE.format(scale=SCALE, train_source=EXAMPLE / "fashion_train_lmdb",
                               test_source=EXAMPLE / "fashion_test_lmdb")
    trained = caffe_io.read_net_binary(snapshot)
    caffe_io.write_net_binary(trained, EXAMPLE / "lenet_fashion.caffemodel")
    write_text(EXAMPLE / "lenet_train_test.prototxt", text)
    print(f"wrote {EXAMPLE / 'lenet_fashion.caffemodel'} from {snapshot}")
    return 0


def main(argv=None, prog=PROG):
    return run(make_main, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
