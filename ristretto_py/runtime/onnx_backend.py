"""The onnxruntime backend: runs a Net exported to ONNX in an onnxruntime session (CPU, or a
CUDA device chosen with ``select_gpu`` when onnxruntime has a CUDA provider); layers without an
ONNX form (the export's tail, e.g. DetectionOutput) then run in numpy."""
import numpy as np

from ..errors import NetError, RistrettoError
from ..layers.base import RunContext
from .numpy_backend import feed_inputs, rebind_trimmed
from .onnx_export import export_onnx


_gpu = None     # CUDA device for new sessions (select_gpu), or None for the CPU


def select_gpu(device):
    """Run the sessions created from now on on CUDA device ``device`` (None: on the CPU). The
    caller checks that onnxruntime offers the CUDA provider (the tools' ``--gpu`` does)."""
    global _gpu
    _gpu = device


def _providers():
    if _gpu is None:
        return ["CPUExecutionProvider"]
    return [("CUDAExecutionProvider", {"device_id": int(_gpu)}), "CPUExecutionProvider"]


class OnnxRuntime:
    """Same interface as ``NumpyRuntime``: ``forward(inputs) -> {blob: array}``.

    ``all_blobs=True`` returns every named blob, as the numpy runtime does; ``False`` returns
    only the net's outputs, which lets onnxruntime fuse layers freely (faster)."""

    name = "onnxruntime"

    def __init__(self, net, all_blobs=True, threads=None, compat="gpu", seed=0):
        import onnxruntime as ort
        if not net.has_weights:
            raise NetError("the net has layers without weights: load a caffemodel",
                           path=net.source)
        self.net = net
        self.context = RunContext(compat, np.random.default_rng(seed))
        self.export = export_onnx(net, all_blobs=all_blobs, compat=compat)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(self.export.model.SerializeToString(), options,
                                            providers=_providers())

    def forward(self, inputs, observer=None):
        if observer is not None:
            raise NetError("the onnxruntime backend cannot observe single layers; use numpy")
        net = self.net
        blobs = feed_inputs(net, inputs)
        feeds = {i.name: blobs[i.name] for i in self.session.get_inputs()}
        names = list(self.export.outputs)
        values = self.session.run([self.export.outputs[n] for n in names], feeds)
        blobs.update(zip(names, (np.asarray(v, dtype=np.float32) for v in values)))
        for index in self.export.tail:
            layer, impl = net.layers[index], net.impl(index)
            bottoms = [blobs[b] for b in layer.bottoms]
            given = list(bottoms)
            try:
                tops = impl.run(given, layer.blobs, self.context)
            except RistrettoError as exc:
                raise exc.with_context(path=net.source, layer=layer.name)
            rebind_trimmed(blobs, bottoms, given)     # inputs trimmed in place (Ristretto)
            blobs.update(zip(layer.tops, tops))
        return blobs
