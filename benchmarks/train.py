"""Training speed of ``tools/train`` against a plain PyTorch loop over the same model and data, in
the same run. Run from the repository root after ``tools/make_lenet_fashion --lmdb_only``:

    python benchmarks/train.py [--iterations 300]

For the LeNet and the DenseNet examples it times ``--iterations`` solver iterations of
ristretto-py's trainer (the example's solver with tests and snapshots off: the Caffe net built
as a torch model, LMDB records decoded by the prefetch thread, Caffe's SGD update) and the same
number of steps of a hand-written ``torch.nn`` model of the same layers, trained by
``torch.optim.SGD`` on batches already in memory (no decoding at all). It prints images/s of
both and their ratio (the target is at least 0.8), after a warm-up of 20 iterations each.
"""
import argparse
import time

import torch
from torch import nn

from ristretto_py.cli.train import _build
from ristretto_py.train import engine
from ristretto_py.train.solver_file import read_solver, solver_nets
from ristretto_py.train.trainer import Trainer

WARM_UP = 20


def ours(solver_path, iterations):
    param = read_solver(solver_path)
    param.test_interval = 0
    del param.test_iter[:]
    param.snapshot = 0
    param.snapshot_after_train = False
    param.display = 0
    nets = solver_nets(param, solver_path)
    trainer = Trainer(param, _build(nets.train), [], engine, seed=1, progress=False,
                      echo=lambda line: None)
    batch = nets.train.net_param.layer[0].data_param.batch_size
    try:
        trainer.step(WARM_UP, None)
        start = time.perf_counter()
        trainer.step(iterations, None)
        seconds = time.perf_counter() - start
    finally:
        trainer.close()
    return iterations * batch / seconds, batch


def lenet():
    return nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2, ceil_mode=True), nn.Conv2d(20, 50, 5),
                         nn.MaxPool2d(2, 2, ceil_mode=True), nn.Flatten(), nn.Linear(800, 500),
                         nn.ReLU(inplace=True), nn.Linear(500, 10))


class DenseNet(nn.Module):
    """The layers of examples/densenet_fashion (BatchNorm + affine for Caffe's BN + Scale)."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        channels, self.blocks = 16, nn.ModuleList()
        for block in range(2):
            units = nn.ModuleList()
            for _ in range(3):
                units.append(nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                                           nn.Conv2d(channels, 12, 3, padding=1, bias=False)))
                channels += 12
            self.blocks.append(units)
            if block == 0:
                self.transition = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                                                nn.Conv2d(channels, channels // 2, 1, bias=False),
                                                nn.AvgPool2d(2, 2))
                channels //= 2
        self.final = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))

    def forward(self, x):
        x = self.conv0(x)
        for index, units in enumerate(self.blocks):
            for unit in units:
                x = torch.cat([x, unit(x)], 1)
            if index == 0:
                x = self.transition(x)
        return self.final(x)


def plain(model, batch, iterations, lr, decay):
    torch.manual_seed(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=decay)
    data = torch.rand(8, batch, 1, 28, 28)
    labels = torch.randint(0, 10, (8, batch))
    loss_fn = nn.CrossEntropyLoss()

    def steps(count):
        for i in range(count):
            optimizer.zero_grad()
            loss = loss_fn(model(data[i % 8]), labels[i % 8])
            loss.backward()
            optimizer.step()
    steps(WARM_UP)
    start = time.perf_counter()
    steps(iterations)
    return iterations * batch / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=300)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.iterations} iterations after {WARM_UP} of warm-up")
    for name, solver, make, lr, decay in (
            ("LeNet", "examples/lenet_fashion/lenet_solver.prototxt", lenet, 0.01, 5e-4),
            ("DenseNet", "examples/densenet_fashion/densenet_solver.prototxt", DenseNet, 0.1, 1e-4)):
        rate, batch = ours(solver, args.iterations)
        reference = plain(make(), batch, args.iterations, lr, decay)
        print(f"{name:9s} batch {batch}: tools/train {rate:8.0f} img/s, plain PyTorch "
              f"{reference:8.0f} img/s, ratio {rate / reference:.2f}")


if __name__ == "__main__":
    main()
