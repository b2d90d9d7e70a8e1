"""Ristretto's ``quantize``, decision for decision (DESIGN section 4).

1. Score the float TEST net over ``iterations`` batches (the baseline).
2. Range analysis over 10 batches of the TRAIN net (``passes.ranges``), read as the
   integer-length rule asks: after the whole forward pass for "ristretto" (as both of its builds
   read it), each layer's true input and output for "safe".
3. Trimming mode:
   * dynamic_fixed_point: 16, 8, 4, 2, 1 bits for all Convolution weights (stop after the first
     failure), then for all InnerProduct weights, then for all layer activations; each part
     keeps the smallest width passing before the first failure (32 if none); the combination
     is scored once and written.
   * minifloat: exponent bits from the ranges; 16, 8, 4 total bits while bits - 1 - exp > 0.
   * integer_power_of_2_weights: exponents [-8, -1] and 8-bit fixed-point activations, no search.
   A candidate passes while score + margin/100 >= baseline (scores are float32 as in Caffe), or
   as another measure (``evaluators.scores``: agreement, l2/cosine distance, LFW) says.

The float net's batches are read once and every candidate is evaluated on them; the baseline
and the range analysis are computed once per run.
"""
import dataclasses


from ristretto_py import caffe_io
from ristretto_py.errors import NetError
from ristretto_py.evaluators.classification import Batches, fetch_batches
from ristretto_py.evaluators.scores import AccuracyScore
from ristretto_py.net import Net
from ristretto_py.progress import progress as show_progress
from ristretto_py.runtime import make_runtime

from . import ranges as range_analysis
from . import ristretto_edit as edit

MODES = ("dynamic_fixed_point", "minifloat", "integer_power_of_2_weights")
RANGE_BATCHES = 10
HALVINGS = (16, 8, 4, 2, 1)


@dataclasses.dataclass
class Candidate:
    stage: str        # conv_params | fc_params | activations | minifloat | final
    bit_width: int
    score: float
    passed: bool


@dataclasses.dataclass
class QuantizeResult:
    mode: str
    baseline: float
    candidates: list
    chosen: dict                # e.g. {"conv_params": 8, "fc_params": 4, "activations": 16}
    final_score: float
    quantized: object           # the NetParameter written (Ristretto's edited description)
    ranges: dict                # layer name -> LayerRange
    lengths: dict               # layer name -> IntegerLengths
    exp_bits: int = None
    forward_passes: int = 0
    images_per_pass: int = 0


class RistrettoQuantizer:
    """One run of the quantize search. ``evaluate`` can be called for any NetParameter.

    ``measure`` (an ``evaluators.scores.Score``) is what the search keeps within its margin
    (default: Ristretto's, the accuracy of ``score_blob`` or the first scalar output, margin
    ``error_margin`` points). ``data`` are the batches every candidate is scored on (default:
    ``iterations`` batches of the TEST net's Data layer) and ``calibration`` those of the range
    analysis (default: 10 batches of the TRAIN net's Data layer, as Ristretto). ``formats``
    (keywords of ``ristretto_edit.parameter_formats``: bias format, per-channel weights) is
    applied to every dynamic-fixed-point net the search builds."""

    def __init__(self, model, weights, iterations, trimming_mode, error_margin,
                 backend="numpy", compat="gpu", integer_length="ristretto", score_blob=None,
                 seed=0, progress=True, net_param=None, measure=None, data=None,
                 calibration=None, formats=None, all_layers=False):
        if trimming_mode not in MODES + ("kmeans", "hwce"):
            raise ValueError(f"trimming mode must be one of {MODES}, not {trimming_mode!r}")
        if iterations < 1:
            raise ValueError("iterations must be at least 1")
        self.model_path, self.weights_path = str(model), str(weights)
        self.param = net_param if net_param is not None else upgrade_text_net(model)
        self.weights = caffe_io.read_net_binary(weights)
        self.iterations = iterations
        self.mode = trimming_mode
        self.margin = float(error_margin)
        self.backend, self.compat, self.seed = backend, compat, seed
        self.rule = integer_length
        self.score_blob = score_blob
        self.measure = measure if measure is not None else AccuracyScore(score_blob, error_margin)
        self.formats = dict(formats or {})
        if all_layers and trimming_mode != "dynamic_fixed_point":
            raise ValueError("formats for every layer (--all_layers) are dynamic fixed point")
        self.all_layers = bool(all_layers)
        self.progress = progress
        self.forward_passes = 0
        self._test_batches, self._calibration = data, calibration
        self._baseline = None
        self.pool = None          # a ristretto_py.cluster pool: evaluations run on its workers

    # -- evaluation ---------------------------------------------------------------------------
    def build(self, param, phase="TEST"):
        return Net.from_proto(edit.with_phase(param, phase), self.weights, phase=phase,
                              source=self.model_path, weights_source=self.weights_path)

    def check_scoring(self):
        """Refuse a net the measure cannot score (Ristretto scores the first output: without an
        Accuracy layer that would be the loss, where higher is worse)."""
        self.measure.check(self.build(self.param))

    def test_batches(self):
        if self._test_batches is None:
            net = self.build(self.param)
            self._test_batches = fetch_batches(net, self.iterations, seed=self.seed,
                                               probe=self.pool is None)
        return self._test_batches

    def calibration_batches(self, train_net):
        """The batches of the range analysis (and of other calibrations): given batches, or
        RANGE_BATCHES batches of the TRAIN net's Data layer, reading its own LMDB or the one
        named by a ``calibration`` string (its transform_param kept)."""
        if self._calibration is None or isinstance(self._calibration, str):
            source = self._calibration
            if source is not None and not any(l.type == "Data" for l in train_net.source_layers):
                raise NetError("the calibration data is an LMDB, but the net has no Data layer "
                               "whose transform_param applies to it (a deploy net): give a "
                               "folder of images, or --data", path=source)
            self._calibration = fetch_batches(train_net, RANGE_BATCHES, data_source=source,
                                              seed=self.seed)
        return self._calibration

    def use(self, measure=None, data=None, calibration=None):
        """Score with ``measure`` on ``data`` and calibrate on ``calibration`` (batches, or an
        LMDB path read through the TRAIN net's Data layer); None keeps the default."""
        if measure is not None:
            self.measure = measure
        if data is not None:
            self._test_batches = data
        if calibration is not None:
            self._calibration = calibration

    def on_cluster(self, pool):
        """Run the evaluations (not the observed passes) on the workers of ``pool``."""
        self.pool = pool

    def submit(self, param, net=None):
        """Send ``param`` (or a built TEST ``net``) to the cluster's workers; the measure's
        blobs per batch come back from ``pool.gather``."""
        batches = self.test_batches()
        handle = self.pool.handle(param=edit.with_phase(param, "TEST") if net is None else None,
                                  weights=self.weights, net=net, source=self.model_path,
                                  weights_source=self.weights_path)
        self.forward_passes += len(batches)
        return self.pool.forward(batches, handle, self.measure.blobs(),
                                 {"backend": self.backend, "compat": self.compat,
                                  "seed": self.seed})

    def outputs(self, param, description="evaluate", observer=None, net=None):
        """The blobs the measure reads, one dict per batch, of ``param`` (or a built ``net``)."""
        if self.pool is not None and observer is None:
            return self.pool.gather(self.submit(param, net), description)
        net = net if net is not None else self.build(param)
        backend = "numpy" if observer else self.backend
        runtime = make_runtime(net, backend, compat=self.compat, seed=self.seed)
        batches = self.test_batches()
        keep = self.measure.blobs()
        outputs = []
        for batch in show_progress(batches, description, "batch", self.progress, len(batches)):
            blobs = runtime.forward(batch, observer=observer) if observer else runtime.forward(batch)
            outputs.append({name: blobs[name] for name in keep})
        self.forward_passes += len(batches)
        return outputs

    def evaluate(self, param, description="evaluate", observer=None, net=None):
        """The measure's score of ``param`` (or of a built TEST ``net``) on the search's
        batches (accuracy: float32, as Caffe computes it)."""
        return self.measure(self.outputs(param, description, observer, net))

    def baseline(self):
        """The float net's score; the measure takes the float net's outputs as its reference."""
        if self._baseline is None:
            self.check_scoring()
            outputs = self.outputs(self.param, "float baseline")
            self.measure.bind(outputs)
            self._baseline = self.measure(outputs)
        return self._baseline

    def passes(self, score, baseline):
        return self.measure.passes(score, baseline)

    def formatted(self, param):
        """``param`` with the parameter formats of ``formats`` (bias, per-channel) applied."""
        if not self.formats:
            return param
        return edit.parameter_formats(param, self._ranges, rule=self.rule, **self.formats)

    def analyze(self):
        """Range analysis and integer lengths under the rule (computed once)."""
        if getattr(self, "_ranges", None) is None:
            train_net = self.build(self.param, "TRAIN")
            batches = self.calibration_batches(train_net)
            self.forward_passes += len(batches)
            # The reading follows the integer-length rule: "ristretto" reads as both builds do.
            self._ranges = range_analysis.analyze_ranges(train_net, batches, rule=self.rule,
                                                         progress=self.progress,
                                                         stock=self.all_layers)
            self._lengths = {name: edit.IntegerLengths(*self._integer_lengths(entry))
                             for name, entry in self._ranges.items()}
            if self.all_layers:
                self._lengths = edit.aligned_lengths(self.param, self._lengths)
        return self._ranges, self._lengths

    def _integer_lengths(self, entry):
        if entry.type in range_analysis.RANGED_TYPES:
            return range_analysis.integer_lengths(entry, self.rule)
        return range_analysis.stock_integer_lengths(entry, self.rule)

    def with_stock_formats(self, param, bw_act, bw_params=None):
        """``param`` with the stock layers' formats when ``all_layers`` (else unchanged)."""
        if not self.all_layers:
            return param
        return edit.stock_formats(param, self._lengths, bw_act, bw_params)

    # -- the run ------------------------------------------------------------------------------
    def run(self):
        baseline = self.baseline()
        found, lengths = self.analyze()
        runner = {"dynamic_fixed_point": self._dynamic_fixed_point,
                  "minifloat": self._minifloat,
                  "integer_power_of_2_weights": self._power_of_two}[self.mode]
        result = runner(baseline, found, lengths)
        result.forward_passes = self.forward_passes
        result.images_per_pass = self.images_per_pass()
        return result

    def images_per_pass(self):
        batches = self.test_batches()
        if isinstance(batches, Batches):        # known without reading the database
            return batches.images_per_batch
        return len(next(iter(batches[0].values())))

    def _halvings(self, stage, baseline, make_param):
        """Score 16, 8, 4, 2, 1 bits until the first failure; return candidates and the choice."""
        candidates, chosen = [], 32
        for bits in HALVINGS:
            score = self.evaluate(make_param(bits), f"{stage} {bits}-bit")
            ok = self.passes(score, baseline)
            candidates.append(Candidate(stage, bits, float(score), ok))
            if not ok:
                break
            chosen = bits
        return candidates, chosen

    def _dynamic_fixed_point(self, baseline, found, lengths):
        p, fmt = self.param, self.formatted
        conv, bw_conv = self._halvings("conv_params", baseline, lambda b: fmt(edit.dynamic_fixed_point(
            p, lengths, "Convolution", "Parameters", bw_conv=b)))
        fc, bw_fc = self._halvings("fc_params", baseline, lambda b: fmt(edit.dynamic_fixed_point(
            p, lengths, "InnerProduct", "Parameters", bw_fc=b)))
        stock = self.with_stock_formats
        act, bw_act = self._halvings("activations", baseline, lambda b: stock(fmt(edit.dynamic_fixed_point(
            p, lengths, "Convolution_and_InnerProduct", "Activations", bw_in=b, bw_out=b)), b))
        final = stock(fmt(edit.dynamic_fixed_point(p, lengths, "Convolution_and_InnerProduct",
                                                   "Parameters_and_Activations", bw_conv, bw_fc,
                                                   bw_act, bw_act)), bw_act, bw_conv)
        score = self.evaluate(final, "dynamic fixed point net")
        chosen = {"conv_params": bw_conv, "fc_params": bw_fc, "activations": bw_act}
        return QuantizeResult(self.mode, float(baseline), conv + fc + act, chosen, float(score),
                              edit.without_state(final), found, lengths)

    def _minifloat(self, baseline, found, lengths):
        exp_bits = range_analysis.minifloat_exponent_bits(found)
        candidates, chosen = [], 32
        bits = 16
        while bits - 1 - exp_bits > 0:
            score = self.evaluate(edit.minifloat(self.param, bits, exp_bits), f"minifloat {bits}-bit")
            ok = self.passes(score, baseline)
            candidates.append(Candidate("minifloat", bits, float(score), ok))
            if not ok:
                break
            chosen = bits
            bits //= 2
        final = edit.minifloat(self.param, chosen, exp_bits)
        # Ristretto writes this net without scoring it; its score is a candidate's, or for
        # 32 bits we score it so that the report can state it.
        scored = {c.bit_width: c.score for c in candidates}
        score = scored[chosen] if chosen in scored else float(self.evaluate(final, "minifloat net"))
        return QuantizeResult(self.mode, float(baseline), candidates, {"bit_width": chosen},
                              score, edit.without_state(final), found, lengths, exp_bits)

    def _power_of_two(self, baseline, found, lengths):
        param = edit.power_of_two_weights(self.param)
        param = edit.dynamic_fixed_point(param, lengths, "Convolution_and_InnerProduct",
                                         "Activations", bw_in=8, bw_out=8)
        score = self.evaluate(param, "power-of-two weights net")
        candidate = Candidate("final", 4, float(score), self.passes(score, baseline))
        return QuantizeResult(self.mode, float(baseline), [candidate],
                              {"exp_min": -8, "exp_max": -1, "activations": 8}, float(score),
                              edit.without_state(param), found, lengths)


def upgrade_text_net(path):
    """The prototxt as Ristretto reads it (upgraded, as ReadNetParamsFromTextFileOrDie does)."""
    param = caffe_io.read_net_text(path)
    if not len(param.layer):
        raise NetError("the prototxt has no layers", path=str(path))
    return param
