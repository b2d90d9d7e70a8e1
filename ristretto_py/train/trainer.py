"""The training loop of ``caffe train``: Caffe's ``Solver::Solve`` and ``Step`` in Python.

Per iteration: test every ``test_interval`` iterations (iteration 0 too unless
``test_initialization: false``), ``iter_size`` forward/backward passes whose gradients add up,
the loss smoothed over ``average_loss`` iterations, Caffe's log lines every ``display``
iterations, the solver's update, a snapshot every ``snapshot`` iterations. After ``max_iter``: a
last snapshot (``snapshot_after_train``), the last loss and the last test. Ctrl-C or SIGTERM
writes a snapshot before stopping, as Caffe's ``snapshot`` signal action does. A non-finite loss
stops at once, naming the iteration and the first layer whose output is not finite.

The TEST nets share the TRAIN net's weights (Caffe's ``ShareTrainedLayersWith``); each keeps its
Data layer's reader open, so successive tests read on through the database, as Caffe's do.

Resuming is exact: every iteration draws its Dropout masks and stochastic roundings from
streams seeded by (seed, iteration), and ``fast_forward`` reads past the batches the run before
the snapshot had read (the data feeds draw their crops and mirrors in sequence), so a run
resumed from a snapshot reaches the weights of the uninterrupted run.
"""
import contextlib
import dataclasses
import math
import signal
import time

import numpy as np

from ..errors import NetError, RistrettoError
from ..net import Net
from ..progress import progress as show_progress

LABELLED_TYPES = ("SoftmaxWithLoss", "Accuracy")
TEST_STREAM = 1 << 20        # the random streams of test nets: (iteration, TEST_STREAM + index)


@dataclasses.dataclass
class TrainLog:
    """Every value the loop logs: train lines and test results, for ``train.json``."""
    train: list = dataclasses.field(default_factory=list)   # {iter, loss, lr, outputs}
    test: list = dataclasses.field(default_factory=list)    # {iter, net, outputs}
    snapshots: list = dataclasses.field(default_factory=list)


class Trainer:
    """Train ``train_net`` (a TRAIN-phase ``Net``) with ``solver_param`` (a SolverParameter);
    ``test_nets``: TEST-phase Nets scored every ``test_interval`` iterations. ``engine``: the
    torch pieces (``ristretto_py.train.engine``). ``quantize_activations`` and
    ``frozen_batch_norm``: see ``TorchNet``."""

    def __init__(self, solver_param, train_net, test_nets, engine, seed=0, device="cpu",
                 progress=True, echo=print, quantize_activations=False, frozen_batch_norm=False):
        self.param, self.engine = solver_param, engine
        self.seed, self.device, self.progress, self.echo = seed, device, progress, echo
        self.train_net, self.test_nets = train_net, list(test_nets)
        self.model = engine.TorchNet(train_net, seed=seed, device=device,
                                     quantize_activations=quantize_activations,
                                     frozen_batch_norm=frozen_batch_norm)
        self.test_models = []
        for net in self.test_nets:
            model = engine.TorchNet(net, seed=seed, device=device)
            model.share_from(self.model)
            model.set_phase("TEST")
            self.test_models.append(model)
        self.model.set_phase("TRAIN")
        self.solver = engine.Solver(solver_param, self.model.learnable_params())
        self.iteration = 0
        self.log = TrainLog()
        self._feeds = {}
        self._stop = None
        self._check_outputs()

    # -- data ------------------------------------------------------------------------------
    def _feed(self, net, phase):
        """The open data feed of ``net`` (one per net, read on across calls)."""
        key = id(net)
        if key not in self._feeds:
            layers = [l for l in net.source_layers if l.type in ("Data", "ImageData")]
            if len(layers) != 1:
                raise NetError(f"the {phase} net needs exactly one Data or ImageData layer, it "
                               f"has {len(layers)}", path=net.source)
            self._feeds[key] = self.engine.TrainFeed(layers[0], phase, seed=self.seed)
        return self._feeds[key]

    def close(self):
        for feed in self._feeds.values():
            feed.close()
        self._feeds.clear()

    def _check_labels(self, net, batch):
        """Labels of SoftmaxWithLoss/Accuracy must index a class (or be the ignored label)."""
        shapes = net.shapes()
        for layer in net.layers:
            if layer.type not in LABELLED_TYPES or len(layer.bottoms) < 2:
                continue
            labels = batch.get(layer.bottoms[1])
            if labels is None:
                continue
            spec = layer.spec.loss_param if layer.type == "SoftmaxWithLoss" else layer.spec.accuracy_param
            axis = (layer.spec.softmax_param.axis if layer.type == "SoftmaxWithLoss"
                    else layer.spec.accuracy_param.axis) % len(shapes[layer.bottoms[0]])
            classes = shapes[layer.bottoms[0]][axis]
            labels = np.asarray(labels)
            valid = (labels >= 0) & (labels < classes) & (labels == np.round(labels))
            if spec.HasField("ignore_label"):
                valid |= labels == spec.ignore_label
            if not valid.all():
                bad = labels[~valid][0]
                raise NetError(f"label {bad:g} is out of range for {classes} classes (iteration "
                               f"{self.iteration})", path=net.source, layer=layer.name)

    def _check_outputs(self):
        if not any(weight for _, weight in self.model.output_blobs()):
            raise NetError("the TRAIN net has no loss (no *Loss layer and no loss_weight): there "
                           "is nothing to minimise", path=self.train_net.source)
        for net, model in zip(self.test_nets, self.test_models):
            if not model.output_blobs():
                raise NetError("the TEST net has no outputs to report", path=net.source)

    # -- one pass -----------------------------------------------------------------------------
    def _forward_backward(self):
        batch = self._feed(self.train_net, "TRAIN").next_batch()
        self._check_labels(self.train_net, batch)
        blobs = self.model.forward(batch)
        loss = self.model.losses(blobs)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise RistrettoError(f"the loss is {value} at iteration {self.iteration}: "
                                 f"{self._first_non_finite(blobs)}; lower base_lr or check the "
                                 "data", path=self.train_net.source)
        loss.backward()
        return value, blobs

    def _first_non_finite(self, blobs):
        for layer in self.train_net.layers:
            for top in layer.tops:
                value = blobs.get(top)
                if value is not None and not bool(self.engine.torch.isfinite(value).all()):
                    return f"layer '{layer.name}' is the first whose output '{top}' is not finite"
        return "no layer output is non-finite, the loss itself overflowed"

    def fast_forward(self):
        """After a restore at ``self.iteration``: read and drop the batches the run had read
        by then (training batches, and those of the tests it ran), so that every feed and its
        random draws continue where the uninterrupted run's were."""
        p, done = self.param, self.iteration
        feed = self._feed(self.train_net, "TRAIN")
        for _ in show_progress(range(done * max(1, p.iter_size)), "replaying the data", "batch",
                               self.progress):
            feed.next_batch()
        if p.test_interval:
            tests = sum(1 for k in range(0, done, p.test_interval) if k > 0 or p.test_initialization)
            for net, count in zip(self.test_nets, p.test_iter):
                test_feed = self._feed(net, "TEST")
                for _ in range(tests * count):
                    test_feed.next_batch()

    def test_all(self):
        for index, (net, model) in enumerate(zip(self.test_nets, self.test_models)):
            self._test(index, net, model)

    def _test(self, index, net, model):
        torch = self.engine.torch
        iterations = self.param.test_iter[index]
        feed = self._feed(net, "TEST")
        totals, loss = {}, 0.0
        outputs = model.output_blobs()
        model.reseed(self.iteration, TEST_STREAM + index)
        with torch.no_grad():
            for _ in show_progress(range(iterations), f"test net #{index}", "batch", self.progress):
                batch = feed.next_batch()
                self._check_labels(net, batch)
                blobs = model.forward(batch)
                if self.param.test_compute_loss:
                    loss += float(model.losses(blobs))
                for name, _ in outputs:
                    value = blobs[name].detach().cpu().numpy().astype(np.float64).ravel()
                    totals[name] = totals[name] + value if name in totals else value
        self.echo(f"Iteration {self.iteration}, Testing net (#{index})")
        if self.param.test_compute_loss:
            self.echo(f"Test loss: {loss / iterations:g}")
        results, number = {}, 0
        for name, weight in outputs:
            means = totals[name] / iterations
            for value in means:
                results.setdefault(name, []).append(float(value))
                self.echo(_output_line("Test", number, name, value, weight))
                number += 1
        self.log.test.append({"iter": self.iteration, "net": index,
                              "outputs": {k: v[0] if len(v) == 1 else v for k, v in results.items()}})
        return results

    # -- the loop ------------------------------------------------------------------------------
    def solve(self, snapshot_writer):
        """Caffe's Solve: train to ``max_iter``; ``snapshot_writer(trainer)`` writes a snapshot
        and returns its paths."""
        p = self.param
        with self._signals():
            self.step(p.max_iter - self.iteration, snapshot_writer)
            if self._stop is None:
                if p.snapshot_after_train and (not p.snapshot or self.iteration % p.snapshot):
                    self._snapshot(snapshot_writer)
                if p.test_interval and self.iteration % p.test_interval == 0:
                    self.test_all()
        if self._stop is not None:
            self.echo(f"{self._stop}: snapshot written, training stopped at iteration "
                      f"{self.iteration}")
            return False
        self.echo("Optimization Done.")
        return True

    def step(self, iterations, snapshot_writer):
        p = self.param
        start, stop = self.iteration, self.iteration + iterations
        window, smoothed = [], 0.0
        started = time.perf_counter()
        last_display = (self.iteration, started)
        while self.iteration < stop and self._stop is None:
            self.model.zero_grad(set_to_none=False)
            if p.test_interval and self.iteration % p.test_interval == 0 and (
                    self.iteration > 0 or p.test_initialization):
                self.test_all()
            display = p.display and self.iteration % p.display == 0
            self.model.reseed(self.iteration)
            loss, blobs = 0.0, None
            for _ in range(max(1, p.iter_size)):
                value, blobs = self._forward_backward()
                loss += value
            loss /= max(1, p.iter_size)
            window, smoothed = _smooth(window, loss, max(1, p.average_loss))
            if display:
                now = time.perf_counter()
                done, seconds = self.iteration - last_display[0], now - last_display[1]
                rate = f" ({done / seconds:.3g} iter/s, {seconds:.3g}s/{p.display} iters)" if done else ""
                self.echo(f"Iteration {self.iteration}{rate}, loss = {smoothed:g}")
                last_display = (self.iteration, now)
                self._log_train_outputs(blobs, smoothed)
            rate = self.solver.learning_rate(self.iteration)
            if display:
                self.echo(f"Iteration {self.iteration}, lr = {rate:g}")
                self.log.train[-1]["lr"] = rate
            self.solver.apply_update(self.iteration)
            self.iteration += 1
            if p.snapshot and self.iteration % p.snapshot == 0:
                self._snapshot(snapshot_writer)
        if self._stop is not None:
            self._snapshot(snapshot_writer)
        del start

    def _log_train_outputs(self, blobs, smoothed):
        entry = {"iter": self.iteration, "loss": smoothed, "outputs": {}}
        number = 0
        for name, weight in self.model.output_blobs():
            values = blobs[name].detach().cpu().numpy().astype(np.float64).ravel()
            for value in values:
                self.echo(_output_line("Train", number, name, value, weight))
                number += 1
            entry["outputs"][name] = float(values[0]) if values.size == 1 else values.tolist()
        self.log.train.append(entry)

    def _snapshot(self, writer):
        paths = writer(self)
        self.log.snapshots.append({"iter": self.iteration, "files": [str(p) for p in paths]})
        self.echo(f"Snapshotting to binary proto file {paths[0]}")
        self.echo(f"Snapshotting solver state to binary proto file {paths[1]}")

    @contextlib.contextmanager
    def _signals(self):
        """Ctrl-C and SIGTERM ask for a snapshot and a stop after the current iteration."""
        def request(signum, frame):
            self._stop = signal.Signals(signum).name
        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):      # not the main thread: no handlers
                previous[signum] = signal.signal(signum, request)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def sample_batch(self, index=0):
        """The next batch of test net ``index``'s data feed (numpy arrays by top name)."""
        return {name: np.asarray(value) for name, value in
                self._feed(self.test_nets[index], "TEST").next_batch().items()}

    def trained_net(self):
        """The TRAIN net with the current weights, as a ristretto_py Net."""
        return self.model.to_net()


def _smooth(window, loss, size):
    """Caffe's UpdateSmoothedLoss: the mean of the last ``size`` losses."""
    window = (window + [loss])[-size:]
    return window, sum(window) / len(window)


def _output_line(kind, number, name, value, weight):
    line = f"    {kind} net output #{number}: {name} = {value:g}"
    if weight:
        line += f" (* {weight:g} = {value * weight:g} loss)"
    return line


def load_net(param, phase, source, stages=()):
    """A Net for ``phase`` from a NetParameter, without weights (the model fills them)."""
    return Net.from_proto(param, phase=phase, source=source, stages=stages)
