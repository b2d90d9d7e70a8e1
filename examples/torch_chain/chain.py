"""A PyTorch model through ristretto-py's tools (README "From PyTorch to a QDQ file"): trains a
small CNN with BatchNorms on Fashion-MNIST with PyTorch, exports it with ``torch.onnx.export``,
and scores any step of the chain on the bundled test LMDB (1,000 real Fashion-MNIST images):

    python examples/torch_chain/chain.py train --out DIR [--steps 300 --seed 0]
    python examples/torch_chain/chain.py score --onnx DIR/net.onnx            # onnxruntime
    python examples/torch_chain/chain.py score --model M.prototxt --weights W.caffemodel

``train`` needs torch (``pip install -e ".[train]"``) and Debian's dataset-fashion-mnist
(``/usr/share/datasets/fashion-mnist``); ``score`` needs neither. Pixels are scaled to [0, 1]
(``--data_scale 0.00392156862745098`` for ``tools/quantize --data``). Each command prints one
line; ``score`` prints ``top-1 0.xxx on N images`` (Caffe's Accuracy rule: a tie is wrong).
"""
import argparse
import gzip
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEST_LMDB = ROOT / "examples" / "lenet_fashion" / "fashion_test_lmdb"
FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")


def test_images():
    """(images N x 1 x 28 x 28 float32 in [0, 1], labels) of the bundled test LMDB."""
    from ristretto_py.lmdb_data import LmdbReader, datum_pixels
    reader = LmdbReader(TEST_LMDB)
    try:
        records = [reader.next_datum()[1] for _ in range(reader.count)]
    finally:
        reader.close()
    images = np.stack([datum_pixels(d) for d in records]).astype(np.float32) / 255
    return images, np.array([d.label for d in records])


def _idx(path):
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(data[3])]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def build(torch):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))


def train(out, steps, seed):
    import torch
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    x = torch.from_numpy(_idx(FASHION / "train-images-idx3-ubyte.gz")[:, None].astype(np.float32) / 255)
    y = torch.from_numpy(_idx(FASHION / "train-labels-idx1-ubyte.gz").astype(np.int64))
    net = build(torch)
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    net.train()
    for step in range(steps):
        batch = order[(step * 64) % len(x):][:64]
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x[batch]), y[batch]).backward()
        optimizer.step()
    net.eval()
    images, labels = test_images()
    with torch.no_grad():
        accuracy = top1(net(torch.from_numpy(images)).numpy(), labels)
    out.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(net, (torch.from_numpy(images[:1]),), str(out / "net.onnx"), dynamo=False,
                      opset_version=17, input_names=["image"], output_names=["logits"],
                      training=torch.onnx.TrainingMode.PRESERVE)     # BatchNorms kept: fold_bn folds them
    print(f"torch: top-1 {accuracy:.3f} on {len(labels)} images after {steps} steps; wrote {out / 'net.onnx'}")


def score_onnx(path):
    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image, *others = session.get_inputs()
    # A file exported from a net with Data layers (tools/quantize --data) also takes the label
    # and passes it through: feed it anything, read the other output.
    inputs = {o.name for o in others}
    output = next(o.name for o in session.get_outputs() if o.name not in inputs)
    extra = {o.name: np.zeros([1 if not isinstance(d, int) else d for d in o.shape], np.float32)
             for o in others}
    images, labels = test_images()
    outputs = np.concatenate([session.run([output], {image.name: images[i:i + 1], **extra})[0]
                              for i in range(len(images))])
    return top1(outputs, labels), len(labels)


def top1(outputs, labels):
    """Caffe's Accuracy rule: right when no other class scores at least the true class's score
    (a tie counts as wrong; quantized logits tie)."""
    true = outputs[np.arange(len(labels)), labels][:, None]
    return float(np.mean((outputs >= true).sum(1) == 1))


def score_caffe(model, weights):
    from ristretto_py import Net
    from ristretto_py.runtime import make_runtime
    images, labels = test_images()
    net = Net.load(model, weights).with_input_shapes({"image": (100, 1, 28, 28)})
    runtime = make_runtime(net, "numpy")
    output = net.output_blobs[-1]
    outputs = np.concatenate([runtime.forward({"image": images[i:i + 100]})[output]
                              for i in range(0, len(images), 100)])
    return top1(outputs, labels), len(labels)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    t = commands.add_parser("train")
    t.add_argument("--out", type=pathlib.Path, required=True)
    t.add_argument("--steps", type=int, default=300)
    t.add_argument("--seed", type=int, default=0)
    s = commands.add_parser("score")
    s.add_argument("--onnx", type=pathlib.Path)
    s.add_argument("--model", type=pathlib.Path)
    s.add_argument("--weights", type=pathlib.Path)
    args = parser.parse_args(argv)
    if args.command == "train":
        train(args.out, args.steps, args.seed)
        return 0
    if (args.onnx is None) == (args.model is None):
        parser.error("score: give --onnx FILE or --model PROTOTXT --weights CAFFEMODEL")
    accuracy, count = score_onnx(args.onnx) if args.onnx else score_caffe(args.model, args.weights)
    print(f"top-1 {accuracy:.3f} on {count} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
