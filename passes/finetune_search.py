"""Ristretto's documented workflow, automated (``tools/quantize --finetune SOLVER``): after the
search picks dynamic fixed point widths, fine-tune the chosen net and score it again; then try
narrower widths, one part at a time (conv weights, fc weights, activations, one halving step of
the search's 16/8/4/2/1 each), fine-tuning every candidate, and keep a narrower width as long
as its fine-tuned score stays within the margin. A candidate that fails before fine-tuning but
passes after it is exactly what this search exists for.

The fine-tuning itself is a callable ``tune(param, tag) -> (weights path, score)`` given by the
caller (the CLI runs ``tools/train`` on a solver file), so this module holds only the order of
the search and its records.
"""
import dataclasses

from . import ristretto_edit as edit
from .ristretto_quantize import HALVINGS

STAGES = ("conv_params", "fc_params", "activations")


@dataclasses.dataclass
class FineTuned:
    """One candidate: its widths, its score before and after fine-tuning, whether it passed
    after fine-tuning, and where its fine-tuned weights are."""
    widths: dict
    before: float
    after: float
    passed: bool
    weights: str
    param: object = dataclasses.field(default=None, repr=False)

    def row(self):
        return {"widths": dict(self.widths), "before": self.before, "after": self.after,
                "passed": self.passed}


def narrower(bits):
    """The next width of the search's halvings below ``bits`` (None below 1 bit)."""
    smaller = [b for b in HALVINGS if b < bits]
    return smaller[0] if smaller else None


def widths_param(quantizer, widths):
    """The dynamic fixed point description at ``widths`` (conv_params, fc_params,
    activations), the search's integer lengths and parameter formats applied."""
    _, lengths = quantizer.analyze()
    param = edit.dynamic_fixed_point(quantizer.param, lengths, "Convolution_and_InnerProduct",
                                     "Parameters_and_Activations", widths["conv_params"],
                                     widths["fc_params"], widths["activations"],
                                     widths["activations"])
    return edit.without_state(quantizer.formatted(param))


def finetune_search(quantizer, result, tune, narrow=True):
    """(the best FineTuned, every FineTuned tried in order). ``result`` is the search's
    QuantizeResult (its ``chosen`` widths and ``quantized`` description); ``narrow`` False only
    fine-tunes the chosen net."""
    baseline = result.baseline
    weights, score = tune(result.quantized, "chosen")
    best = FineTuned(dict(result.chosen), float(result.final_score), float(score),
                     quantizer.passes(score, baseline), weights, result.quantized)
    tried = [best]
    if not (narrow and best.passed and all(stage in result.chosen for stage in STAGES)):
        return best, tried
    for stage in STAGES:
        while True:
            bits = narrower(best.widths[stage])
            if bits is None:
                break
            widths = dict(best.widths, **{stage: bits})
            param = widths_param(quantizer, widths)
            before = quantizer.evaluate(param, f"{stage} {bits}-bit before fine-tuning")
            tag = "_".join(f"{widths[s]}" for s in STAGES)
            weights, after = tune(param, tag)
            candidate = FineTuned(widths, float(before), float(after),
                                  quantizer.passes(after, baseline), weights, param)
            tried.append(candidate)
            if not candidate.passed:
                break
            best = candidate
    return best, tried
