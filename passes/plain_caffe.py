"""Plain Caffe from a quantized description: stock layer types with the weights as the
quantized net computes with them, so BVLC Caffe and OpenCV's importer load the files.

* ConvolutionRistretto, DeconvolutionRistretto, FcRistretto become Convolution,
  Deconvolution, InnerProduct with their trimmed weights and bias (NEAREST, the ``compat``
  build's ties); LRNRistretto becomes LRN. Their input and output trimming cannot be written
  with stock layers and is dropped.
* ``weight_quantization_param`` (training-time quantizers): the quantized weights, baked.
* ConvolutionHWCE becomes Convolution with its quantclipped kernel; the input and output
  clipping is dropped.
* ActivationQuantize layers (in place) are removed.

Everything dropped is listed, layer by layer. The edit works on the NetParameter as read (every
phase's layers), the weights on the TEST net.
"""
import dataclasses

from ristretto_py import numerics
from ristretto_py.errors import NetError
from ristretto_py.layers.base import RunContext
from ristretto_py.protos import caffe_pb2

STOCK = {"ConvolutionRistretto": "Convolution", "DeconvolutionRistretto": "Deconvolution",
         "FcRistretto": "InnerProduct", "LRNRistretto": "LRN", "ConvolutionHWCE": "Convolution"}
EXTENSION_FIELDS = ("quantization_param", "weight_quantization_param", "hwce_param",
                    "activation_quantization_param")


@dataclasses.dataclass
class PlainExport:
    param: object            # NetParameter: the stock description, every phase
    net: object              # the TEST Net with the baked weights (for the caffemodel)
    baked: list              # layer names whose weights were replaced
    dropped: list            # (layer name, what was dropped)


def _baked_blobs(layer, impl, compat):
    """The blobs the layer computes with in TEST, or None when they are stored as computed."""
    if not layer.blobs:
        return None
    context = RunContext(compat, None)
    if layer.type in ("ConvolutionRistretto", "DeconvolutionRistretto", "FcRistretto"):
        if impl.precision.rounding == numerics.STOCHASTIC and impl.weight_quantizer is None:
            raise NetError("its STOCHASTIC rounding draws new weights on every pass: no fixed "
                           "weights to bake (use NEAREST)", layer=layer.name)
        return impl.trim_params(list(layer.blobs), context)
    if layer.type == "ConvolutionHWCE":
        return [impl._clip(layer.blobs[0], "kernel")] + list(layer.blobs[1:])
    if getattr(impl, "weight_quantizer", None) is not None:
        return impl.quantized_params(list(layer.blobs))
    return None


def _dropped(layer):
    if layer.type in ("ConvolutionRistretto", "DeconvolutionRistretto", "FcRistretto"):
        return "input and output trimming"
    if layer.type == "LRNRistretto":
        return "mini-float rounding of every intermediate"
    if layer.type == "ConvolutionHWCE":
        return "input and output quantclip"
    if layer.type == "ActivationQuantize":
        return "the layer (an activation quantizer)"
    return None


def plain_caffe(param, net, compat="gpu"):
    """PlainExport of the NetParameter ``param`` and its TEST ``net`` (with weights)."""
    baked, dropped, layers = [], [], []
    for layer, impl in zip(net.layers, net.impls):
        blobs = _baked_blobs(layer, impl, compat)
        what = _dropped(layer)
        if what:
            dropped.append((layer.name, what))
        if layer.type == "ActivationQuantize":
            if layer.bottoms != layer.tops:
                raise NetError("an ActivationQuantize layer that is not in place cannot be "
                               "removed without renaming its readers", path=net.source,
                               layer=layer.name)
            continue
        spec = _stock_spec(layer.spec)
        if blobs is not None:
            baked.append(layer.name)
        layers.append(layer.replace(spec=spec, blobs=blobs))
    edited = caffe_pb2.NetParameter()
    edited.CopyFrom(param)
    del edited.layer[:]
    for spec in param.layer:
        if spec.type != "ActivationQuantize":
            edited.layer.add().CopyFrom(_stock_spec(spec))
    return PlainExport(edited, net.with_layers(layers), baked, dropped)


def _stock_spec(spec):
    stock = caffe_pb2.LayerParameter()
    stock.CopyFrom(spec)
    stock.type = STOCK.get(spec.type, spec.type)
    for field in EXTENSION_FIELDS:
        stock.ClearField(field)
    stock.ClearField("blobs")
    return stock
