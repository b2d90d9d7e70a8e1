"""Build ``examples/lenet_fashion``: train a LeNet on real Fashion-MNIST (PyTorch, CPU, seeded),
then write it as Caffe files (train/test prototxt, caffemodel) with a test LMDB of the first
1,000 test images and a train LMDB of the first 640 training images (the 10 TRAIN batches of 64
that Ristretto's range analysis reads). Needs the ``example`` extra (torch) and Debian's
dataset-fashion-mnist (``apt-get install dataset-fashion-mnist``)."""
import gzip
import os
import pathlib
import sys

import numpy as np

from .. import caffe_io
from ..atomic import write_text
from ..lmdb_write import make_datum, write_lmdb
from .common import make_parser, run
from .flag_types import positive_int, seed

DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"
SCALE = 0.00390625  # 1/256, as Caffe's LeNet example: inputs in [0, 0.996]

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


def build_torch_lenet(torch):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))


def train(images, labels, epochs, seed):
    import torch
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = build_torch_lenet(torch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.from_numpy(images[:, None].astype(np.float32) * SCALE)
    y = torch.from_numpy(labels.astype(np.int64))
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            index = order[start:start + 64]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[index]), y[index])
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}/{epochs}: last batch loss {loss.item():.3f}", file=sys.stderr)
    return model


def torch_accuracy(model, images, labels):
    import torch
    with torch.no_grad():
        logits = model(torch.from_numpy(images[:, None].astype(np.float32) * SCALE)).numpy()
    return float((logits.argmax(1) == labels).mean())


def caffe_blobs(model):
    """LeNet weights in Caffe's layout (the same OIHW / (out, in) order as torch's)."""
    names = {0: "conv1", 2: "conv2", 5: "ip1", 7: "ip2"}
    return {name: [model[i].weight.detach().numpy(), model[i].bias.detach().numpy()]
            for i, name in names.items()}


PROG = "make_lenet_fashion"


def build_parser():
    parser = make_parser(PROG, __doc__)
    parser.add_argument("--data_dir", default=DEFAULT_DATA,
                        help=f"folder of the idx .gz files (default {DEFAULT_DATA})")
    parser.add_argument("--out", default="examples/lenet_fashion",
                        help="the example folder to (re)write (default examples/lenet_fashion)")
    parser.add_argument("--epochs", type=positive_int, default=6,
                        help="training epochs (default 6)")
    parser.add_argument("--seed", type=seed, default=1,
                        help="seed of the weight initialisation and the shuffling (default 1)")
    parser.add_argument("--test_images", type=positive_int, default=1000,
                        help="test images stored in the example's test LMDB (default 1000)")
    parser.add_argument("--train_images", type=positive_int, default=640,
                        help="training images stored in the train LMDB (default 640)")
    return parser


def make_main(argv=None):
    args = build_parser().parse_args(argv)
    data = pathlib.Path(args.data_dir)
    train_x = read_idx(data / "train-images-idx3-ubyte.gz")
    train_y = read_idx(data / "train-labels-idx1-ubyte.gz")
    test_x = read_idx(data / "t10k-images-idx3-ubyte.gz")
    test_y = read_idx(data / "t10k-labels-idx1-ubyte.gz")
    model = train(train_x, train_y, args.epochs, args.seed)
    full = torch_accuracy(model, test_x, test_y)
    print(f"float top-1 on the 10,000 test images: {full:.4f}")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lmdb_path = out / "fashion_test_lmdb"
    if lmdb_path.exists():
        import shutil
        shutil.rmtree(lmdb_path)
    count = write_lmdb(lmdb_path, (make_datum(img, lab) for img, lab in
                                   zip(test_x[:args.test_images], test_y[:args.test_images])),
                       map_size=1 << 26)
    train_path = out / "fashion_train_lmdb"
    if train_path.exists():
        import shutil
        shutil.rmtree(train_path)
    write_lmdb(train_path, (make_datum(img, lab) for img, lab in
                            zip(train_x[:args.train_images], train_y[:args.train_images])),
               map_size=1 << 26)
    # Caffe resolves data_param.source against the working directory: run from the repo root.
    text = NET_TEMPLATE.format(scale=SCALE, train_source=str(train_path),
                               test_source=str(lmdb_path))
    param = caffe_io.parse_net_text(text)
    blobs = caffe_blobs(model)
    for layer in param.layer:
        for array in blobs.get(layer.name, ()):
            layer.blobs.add().CopyFrom(caffe_io.array_to_blob(array))
    caffe_io.write_net_binary(param, out / "lenet_fashion.caffemodel")
    write_text(out / "lenet_train_test.prototxt", text)
    subset = torch_accuracy(model, test_x[:args.test_images], test_y[:args.test_images])
    print(f"wrote {out}: {count} test records; float top-1 on them: {subset:.4f}")
    return 0


def main(argv=None, prog=PROG):
    return run(make_main, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
