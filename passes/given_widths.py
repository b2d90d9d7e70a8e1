"""``tools/quantize --widths``: dynamic fixed point at widths the user gives, without a search.

Uniform widths, ``conv=8,fc=8,act=8`` (every Convolution's weights, every InnerProduct's weights,
the inputs and outputs of both; a part left out stays 32 bits), or per layer,
``conv1=8/8,ip1=4/8`` (weights/activations; ``-`` keeps a part at Ristretto's 32-bit default), or
a JSON/YAML file of the shape the per-layer report writes: ``{"conv1": {"weights": 8,
"activations": 8}, ...}`` (also ``[8, 8]`` per layer, or a whole ``report.json``/``pareto.json``
from ``--search per_layer``, whose choice is read). Integer lengths come from the range analysis
under the chosen rule, the parameter formats (bias, per channel) are applied, and the net is
scored once against the float net.
"""
import json
import os

from ristretto_py.errors import NetError, RistrettoError

from . import ristretto_edit as edit
from .ristretto_quantize import QuantizeResult

UNIFORM_KEYS = {"conv": "conv_params", "fc": "fc_params", "act": "activations"}
FILE_SUFFIXES = (".json", ".yaml", ".yml")


def parse_widths(text):
    """("uniform", {"conv_params": bw, "fc_params": bw, "activations": bw}) or
    ("per_layer", {layer: (bw_weights or None, bw_activations or None)})."""
    if text.lower().endswith(FILE_SUFFIXES) or os.path.isfile(text):
        return "per_layer", _read_file(text)
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise RistrettoError(f"--widths {text!r}: give conv=8,fc=8,act=8, conv1=8/8,... or a file")
    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise RistrettoError(f"--widths: {item!r} is not NAME=BITS or LAYER=W/A")
        pairs.append((name.strip(), value.strip()))
    if all(name in UNIFORM_KEYS and "/" not in value for name, value in pairs):
        widths = {key: 32 for key in UNIFORM_KEYS.values()}
        for name, value in pairs:
            widths[UNIFORM_KEYS[name]] = _bits(value, f"--widths {name}")
        return "uniform", widths
    layers = {}
    for name, value in pairs:
        weights, sep, activations = value.partition("/")
        if not sep:
            raise RistrettoError(f"--widths {name}={value}: per layer give WEIGHTS/ACTIVATIONS, "
                                 "e.g. 8/8 (or use conv=, fc=, act= for every layer)")
        layers[name] = (_bits(weights, f"--widths {name} weights", optional=True),
                        _bits(activations, f"--widths {name} activations", optional=True))
    return "per_layer", layers


def _bits(value, what, optional=False):
    if optional and str(value).strip() in ("-", "", "None", "null"):
        return None
    try:
        bits = int(value)
    except (TypeError, ValueError):
        raise RistrettoError(f"{what}: {value!r} is not a bit width") from None
    if not 1 <= bits <= 32:
        raise RistrettoError(f"{what}: {bits} bits is out of range (1 to 32)")
    return bits


def _read_file(path):
    from ristretto_py.text_files import read_text
    text = read_text(path, "a JSON or YAML mapping of layer widths")
    try:
        if path.lower().endswith((".yaml", ".yml")):
            import yaml
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:        # json and yaml raise their own error types
        raise RistrettoError(f"not valid {'YAML' if path.endswith(('yaml', 'yml')) else 'JSON'}: "
                             f"{' '.join(str(exc).split())}", path=path) from None
    if isinstance(data, dict) and isinstance(data.get("chosen"), dict):
        data = data["chosen"]                              # a per-layer report.json
    elif isinstance(data, dict) and isinstance(data.get("per_layer"), dict):
        data = data["per_layer"].get("config")              # a pareto.json
    if not isinstance(data, dict) or not data:
        raise RistrettoError("expected a mapping of layer name to widths", path=path)
    layers = {}
    for name, value in data.items():
        if isinstance(value, dict):
            value = (value.get("weights"), value.get("activations"))
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise RistrettoError(f"layer '{name}': expected {{weights: BITS, activations: BITS}} "
                                 f"or [BITS, BITS], not {value!r}", path=path)
        layers[str(name)] = tuple(_bits(v, f"layer '{name}'", optional=True) for v in value)
    return layers


def apply_widths(quantizer, widths):
    """Score the float net and the net at the given widths; a QuantizeResult (no candidates)."""
    kind, values = widths
    baseline = quantizer.baseline()
    found, lengths = quantizer.analyze()
    if kind == "uniform":
        param = edit.dynamic_fixed_point(quantizer.param, lengths, "Convolution_and_InnerProduct",
                                         "Parameters_and_Activations", values["conv_params"],
                                         values["fc_params"], values["activations"],
                                         values["activations"])
        param = quantizer.with_stock_formats(param, values["activations"], values["conv_params"])
        chosen = dict(values)
    else:
        unknown = sorted(set(values) - set(lengths))
        if unknown:
            raise NetError(f"--widths names {', '.join(unknown)}, not a Convolution or "
                           f"InnerProduct layer of the net (or, with --all_layers, a stock layer "
                           f"it formats: {', '.join(lengths)})",
                           path=quantizer.model_path)
        param = edit.per_layer_dynamic_fixed_point(quantizer.param, lengths, values)
        chosen = {name: {"weights": w, "activations": a} for name, (w, a) in values.items()}
    param = quantizer.formatted(param)
    score = quantizer.evaluate(param, "net at the given widths")
    result = QuantizeResult("dynamic_fixed_point", float(baseline), [], chosen,
                            float(score), edit.without_state(param), found, lengths)
    result.forward_passes = quantizer.forward_passes
    result.images_per_pass = quantizer.images_per_pass()
    return result
