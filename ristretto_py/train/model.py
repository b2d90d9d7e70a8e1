"""``TorchNet``: a ``Net`` as a ``torch.nn.Module`` that trains as Caffe does.

It is built from the Net itself (no second model description): one module per layer from the
registry of ``modules``, the layer's blobs as ``torch.nn.Parameter`` (its caffemodel values, or
Caffe's fillers drawn from ``numpy.random.default_rng(seed)`` in layer order when the net has
none). Caffe's net-level rules:

* learnable parameters (``learnable_params``): every blob once, in layer order then blob
  index, as ``Net::AppendParam``: a blob whose ``param { name }`` was seen before is the same
  Parameter as its owner's (the owner's lr_mult/decay_mult, which a later layer may set when the
  owner left them unset); PERMISSIVE sharing reshapes the owner's blob. A blob whose lr_mult is
  0 gets no gradient (Caffe leaves ``param_propagate_down`` off; its ``.grad`` stays None).
  BatchNorm's three statistics are listed with lr_mult 0 (Caffe adds those ParamSpecs), so the
  list lines up with Caffe's ``.solverstate`` history; the forward pass updates them.
* loss: each top's ``loss_weight`` (a layer whose type ends in "Loss" weighs its top 0 by 1 when
  none is given; other tops 0); ``losses`` sums weight * sum(blob) over the weighted tops.
* ``propagate_down: false`` detaches that bottom.
* phases: ``set_phase`` switches Dropout, BatchNorm's default ``use_global_stats`` and
  Ristretto's trimming (STOCHASTIC weights in TRAIN; inputs, weights, outputs in TEST).
* a Ristretto layer in TEST trims its bottoms in place: the blob, and every blob holding the
  same tensor or a view of it (Split, Flatten, Reshape tops, Dropout in TEST), is rebound to
  the trimmed tensor, as the numpy runtime's ``rebind_trimmed`` does.

Stochastic rounding draws from ``numpy.random.default_rng(seed)`` in the numpy runtime's order
(input, weights, bias, output per Ristretto layer; TRAIN: weights, bias), so a TEST TorchNet
with STOCHASTIC layers draws what ``NumpyRuntime(net, seed=seed)`` draws. Dropout draws from a
torch generator seeded with ``seed`` on the model's device.
"""
import numpy as np
import torch

from ..errors import NetError, RistrettoError
from ..net import PHASES
from .modules import TrainContext, module_class
from .modules.fillers import fill
from .params import LearnableParam


class TorchNet(torch.nn.Module):
    """The torch model of ``net`` (a ristretto_py Net of either phase). See the module
    docstring; ``dtype`` float64 is for gradient checks. ``quantize_activations``: Ristretto
    layers trim their inputs and outputs in TRAIN too (``--qat activations``);
    ``frozen_batch_norm``: every BatchNorm normalises with its stored statistics in TRAIN too
    and never updates them (``--frozen_bn``)."""

    def __init__(self, net, seed=0, device="cpu", dtype=torch.float32, compat="gpu",
                 share_from=None, quantize_activations=False, frozen_batch_norm=False):
        super().__init__()
        self.net = net
        self.seed = int(seed)
        self.device = torch.device(device)
        self.dtype = dtype
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.seed)
        self.context = TrainContext(net.phase, compat, np.random.default_rng(self.seed),
                                    generator, self.device, bool(quantize_activations),
                                    bool(frozen_batch_norm))
        self.layer_modules = torch.nn.ModuleList(
            module_class(layer.type, impl)(impl, self.context)
            for layer, impl in zip(net.layers, net.impls))
        self._build_parameters(np.random.default_rng(self.seed))
        self._loss_tops = self._loss_weights()
        self._fused = self._fusable_batch_norms()
        self.set_phase(net.phase)
        if share_from is not None:
            self.share_from(share_from)

    # -- construction ---------------------------------------------------------------------
    def _blob_shapes(self, index, shapes):
        """The shapes of a layer's blobs: what its type expects, else those it carries."""
        layer, impl = self.net.layers[index], self.net.impls[index]
        if shapes is None:
            return [b.shape for b in layer.blobs]
        return [tuple(s) for s in impl.param_shapes([shapes[b] for b in layer.bottoms])]

    def _build_parameters(self, rng):
        try:
            shapes, problem = self.net.shapes(), None
        except RistrettoError as exc:     # e.g. a Data layer whose database is not here
            shapes, problem = None, exc
        owners = {}               # param name -> (Parameter, learnable index)
        self._learnable = []
        for index, (layer, module) in enumerate(zip(self.net.layers, self.layer_modules)):
            if shapes is None and not layer.blobs and module.has_blobs:
                raise NetError(f"has no blobs to load and the net's blob shapes cannot be "
                               f"inferred ({problem}), so {layer.type}'s fillers cannot run: "
                               "give the input shapes (Net.with_input_shapes) or weights",
                               layer=layer.name)
            expected = self._blob_shapes(index, shapes)
            if layer.blobs and len(layer.blobs) == len(expected):
                values = [np.reshape(b, s) for b, s in zip(layer.blobs, expected)]
            elif layer.blobs:
                values = list(layer.blobs)
            elif expected:
                fillers = module.fillers(layer.spec, len(expected))
                values = [fill(f, s, rng, layer.name) for f, s in zip(fillers, expected)]
            else:
                values = []
            statistics = set(module.statistics_blobs(layer.spec))
            parameters = []
            for i, value in enumerate(values):
                spec = layer.spec.param[i] if i < len(layer.spec.param) else None
                name = spec.name if spec is not None else ""
                if name and name in owners:
                    parameter, learnable = owners[name]
                    self._share(layer, i, spec, parameter, value, learnable)
                else:
                    parameter = torch.nn.Parameter(
                        torch.as_tensor(value).to(self.device, self.dtype))
                    learnable = len(self._learnable)
                    self._learnable.append(_new_learnable(layer, i, parameter, spec,
                                                          i in statistics))
                    if name:
                        owners[name] = (parameter, learnable)
                parameters.append(parameter)
            module.set_blobs(parameters, [np.shape(v) for v in values])
        for entry in self._learnable:
            entry.tensor.requires_grad_(entry.lr_mult != 0)

    def _share(self, layer, index, spec, parameter, value, learnable):
        """A blob shared through ``param { name }``: check the shape (STRICT) or the count
        (PERMISSIVE), merge the multipliers as Caffe does and copy the values this layer
        carries into the shared blob (Caffe's weight loading writes through the share)."""
        owner = self._learnable[learnable]
        permissive = spec.share_mode == spec.PERMISSIVE
        if (parameter.numel() != np.size(value)) if permissive else \
                (tuple(parameter.shape) != tuple(np.shape(value))):
            raise NetError(f"cannot share param '{spec.name}' of shape {list(parameter.shape)} "
                           f"owned by layer '{owner.layer}': this layer's blob {index} has shape "
                           f"{list(np.shape(value))}", layer=layer.name)
        for field in ("lr_mult", "decay_mult"):
            if not spec.HasField(field):
                continue
            mine = float(getattr(spec, field))
            if field in owner.explicit:
                if mine != getattr(owner, field):
                    raise NetError(f"shared param '{spec.name}' has mismatched {field} ({mine} "
                                   f"here, {getattr(owner, field)} in layer '{owner.layer}')",
                                   layer=layer.name)
            else:
                setattr(owner, field, mine)
                owner.explicit.add(field)
        if layer.blobs:
            with torch.no_grad():
                parameter.copy_(torch.as_tensor(np.asarray(value, np.float32)).reshape(
                    parameter.shape))

    def _fusable_batch_norms(self):
        """{BatchNorm layer index: index of the in-place Scale right after it} for Caffe's
        BatchNorm + Scale pairs (DenseNet, ResNet): torch's batch_norm applies the Scale's
        per-channel weight and bias in the same kernel. Only where the BatchNorm's top is
        written over by the Scale (in place), so no layer can see the unscaled blob."""
        fused = {}
        layers = self.net.layers
        for index in range(len(layers) - 1):
            norm, scale = layers[index], layers[index + 1]
            if (norm.type == "BatchNorm" and scale.type == "Scale" and len(norm.tops) == 1
                    and list(scale.bottoms) == list(norm.tops) == list(scale.tops)
                    and not norm.spec.propagate_down and not scale.spec.propagate_down
                    and not norm.spec.loss_weight and not scale.spec.loss_weight):
                fused[index] = index + 1
        return fused

    def _loss_weights(self):
        """[(layer index, top index, top name, weight)] for every top with a nonzero weight."""
        weighted = []
        for index, layer in enumerate(self.net.layers):
            weights = list(layer.spec.loss_weight)
            if not weights and layer.type.endswith("Loss"):
                weights = [1.0]
            if len(weights) > len(layer.tops):
                raise NetError(f"gives {len(weights)} loss_weight values for {len(layer.tops)} "
                               "tops", layer=layer.name)
            for top_index, weight in enumerate(weights):
                if weight:
                    weighted.append((index, top_index, layer.tops[top_index], float(weight)))
        return weighted

    # -- sharing with another TorchNet (Caffe's ShareTrainedLayersWith) --------------------
    def share_from(self, other):
        """Use ``other``'s Parameter objects (weights and BatchNorm statistics) for every layer
        of the same name: the TEST net of a solver sees the TRAIN net's values as they train."""
        replace = {}
        theirs = {m.layer_name: m for m in other.layer_modules}
        for module in self.layer_modules:
            source = theirs.get(module.layer_name)
            if source is None or not len(source.blobs):
                continue
            if len(source.blobs) != len(module.blobs):
                raise NetError(f"has {len(module.blobs)} blobs here but {len(source.blobs)} in "
                               "the net it shares with", layer=module.layer_name)
            for mine, their in zip(module.blobs, source.blobs):
                if tuple(mine.shape) != tuple(their.shape):
                    raise NetError(f"cannot share a blob of shape {list(their.shape)} with this "
                                   f"layer's {list(mine.shape)}", layer=module.layer_name)
                replace[id(mine)] = their
        for module in self.layer_modules:
            module.set_blobs([replace.get(id(p), p) for p in module.blobs], module.blob_shapes)
        for entry in self._learnable:
            entry.tensor = replace.get(id(entry.tensor), entry.tensor)
        return self

    # -- running ----------------------------------------------------------------------------
    def set_phase(self, phase):
        """TRAIN or TEST: torch's train()/eval() and Caffe's phase rules of every module."""
        if phase not in PHASES:
            raise ValueError(f"phase must be TRAIN or TEST, not {phase!r}")
        self.context.phase = phase
        self.train(phase == "TRAIN")
        return self

    def _tensor(self, value):
        if isinstance(value, torch.Tensor):
            return value.to(device=self.device, dtype=self.dtype)
        return torch.as_tensor(np.asarray(value), dtype=self.dtype, device=self.device)

    def forward(self, inputs):
        """Run the net on ``inputs`` (source blob name -> tensor or array; labels too).
        Returns every named blob (the last value written) as torch tensors."""
        unknown = set(inputs) - set(self.net.input_blobs)
        if unknown:
            raise NetError(f"inputs {sorted(unknown)} are not input blobs of the net (those are "
                           f"{self.net.input_blobs})", path=self.net.source)
        blobs = {name: self._tensor(value) for name, value in inputs.items()}
        skip = None
        for index, (layer, module) in enumerate(zip(self.net.layers, self.layer_modules)):
            if module.impl.is_source or index == skip:
                continue
            missing = [b for b in layer.bottoms if b not in blobs]
            if missing:
                raise NetError(f"no input given for blob '{missing[0]}'", path=self.net.source,
                               layer=layer.name)
            bottoms = [blobs[b] for b in layer.bottoms]
            for i, down in enumerate(layer.spec.propagate_down):
                if not down and i < len(bottoms):
                    bottoms[i] = bottoms[i].detach()
            given = list(bottoms)
            if index in self._fused:
                scale = self.layer_modules[self._fused[index]]
                affine = scale.channel_affine(bottoms[0])
                if affine is not None:      # BatchNorm and its in-place Scale in one kernel
                    try:
                        blobs[layer.tops[0]] = module.normalize(bottoms[0], *affine)
                    except RistrettoError as exc:
                        raise exc.with_context(path=self.net.source, layer=layer.name)
                    skip = self._fused[index]
                    continue
            try:
                tops = module(given)
            except RistrettoError as exc:
                raise exc.with_context(path=self.net.source, layer=layer.name)
            _rebind_trimmed(blobs, [blobs[b] for b in layer.bottoms], bottoms, given)
            for top, value in zip(layer.tops, tops):
                blobs[top] = value
        return blobs

    def losses(self, blobs):
        """The total loss: the sum of loss_weight * sum(blob) over the weighted tops."""
        total = torch.zeros((), device=self.device, dtype=self.dtype)
        for _, _, top, weight in self._loss_tops:
            total = total + weight * blobs[top].sum()
        return total

    # -- what the solver, the trainer and snapshots read ------------------------------------
    def learnable_params(self):
        """[LearnableParam] in Caffe's ``learnable_params`` order, shared blobs once (see the
        module docstring); the tensors are this model's Parameters."""
        return [LearnableParam(e.layer, e.index, e.tensor, e.lr_mult, e.decay_mult, e.name)
                for e in self._learnable]

    def output_blobs(self):
        """[(blob name, loss weight)] for the net's outputs, in Net.output_blobs order; the
        weight is that of the last layer writing the blob (0 for a non-loss output)."""
        weights = {}
        for index, layer in enumerate(self.net.layers):
            for top in layer.tops:
                weights[top] = 0.0
            for layer_index, _, top, weight in self._loss_tops:
                if layer_index == index:
                    weights[top] = weight
        return [(name, weights[name]) for name in self.net.output_blobs]

    def to_net(self):
        """A new Net of the same phase whose layers carry the current values as blobs (the
        shadow weights of Ristretto layers, BatchNorm's running statistics), for snapshots."""
        layers = []
        for layer, module in zip(self.net.layers, self.layer_modules):
            if not len(module.blobs):
                layers.append(layer)
                continue
            blobs = [module.blob(i).detach().cpu().numpy().astype(np.float32)
                     for i in range(len(module.blobs))]
            layers.append(layer.replace(blobs=blobs))
        return self.net.with_layers(layers)

    def reseed(self, *counter):
        """Restart the random draws (Dropout masks, stochastic rounding) from the seed and
        ``counter`` (e.g. the iteration): every iteration draws from its own streams, so a run
        resumed at iteration N draws what the uninterrupted run drew there."""
        sequence = np.random.SeedSequence([self.seed, *[int(c) for c in counter]])
        self.context.rng = np.random.default_rng(sequence)
        self.context.generator.manual_seed(int(sequence.generate_state(1, np.uint64)[0] >> 1))

    def load_blobs(self, weights_param, source=None):
        """Copy the blobs of a caffemodel's NetParameter into the model by layer name, as
        Caffe's CopyTrainedLayersFrom: a layer the file lacks keeps its values (fillers), a
        layer of the file the net lacks is named in a warning, a blob of another size is an
        error naming the layer."""
        import warnings

        from ..caffe_io import blob_to_array
        from ..errors import RistrettoWarning
        modules = {module.layer_name: module for module in self.layer_modules}
        ignored = []
        for spec in weights_param.layer:
            if not len(spec.blobs):
                continue
            module = modules.get(spec.name)
            if module is None:
                ignored.append(spec.name)
                continue
            if len(spec.blobs) != len(module.blobs):
                raise NetError(f"the weights file holds {len(spec.blobs)} blobs for this layer, "
                               f"the net has {len(module.blobs)}", path=source, layer=spec.name)
            for index, blob in enumerate(spec.blobs):
                value = blob_to_array(blob, path=source, layer=spec.name)
                target = module.blob(index)
                if value.size != target.numel():
                    raise NetError(f"blob {index} has shape {list(value.shape)} in the weights "
                                   f"file but {list(target.shape)} in the net", path=source,
                                   layer=spec.name)
                with torch.no_grad():
                    target.copy_(torch.as_tensor(value).reshape(target.shape))
        if ignored:
            shown = ", ".join(ignored[:8]) + (f" and {len(ignored) - 8} more" if len(ignored) > 8 else "")
            warnings.warn(f"{source}: {len(ignored)} layer(s) with weights match no layer of the "
                          f"net and are ignored: {shown}", RistrettoWarning, stacklevel=2)

    def layer_module(self, name):
        """The torch module of the layer called ``name``."""
        for module in self.layer_modules:
            if module.layer_name == name:
                return module
        raise NetError(f"no layer named '{name}' in the net", path=self.net.source)


class _Learnable:
    """The model's own record of one learnable blob (mutable while sharing is resolved)."""

    def __init__(self, layer, index, tensor, lr_mult, decay_mult, name, explicit):
        self.layer, self.index, self.tensor = layer, index, tensor
        self.lr_mult, self.decay_mult, self.name = lr_mult, decay_mult, name
        self.explicit = explicit


def _new_learnable(layer, index, parameter, spec, statistics):
    explicit = set()
    lr_mult, decay_mult, name = 1.0, 1.0, ""
    if spec is not None:
        name = spec.name
        if spec.HasField("lr_mult"):
            lr_mult = float(spec.lr_mult)
            explicit.add("lr_mult")
        if spec.HasField("decay_mult"):
            decay_mult = float(spec.decay_mult)
            explicit.add("decay_mult")
    if statistics:
        lr_mult = 0.0
        explicit.add("lr_mult")
    return _Learnable(layer.name, index, parameter, lr_mult, decay_mult, name, explicit)


def _rebind_trimmed(blobs, originals, before, after):
    """After a layer replaced bottoms in its list (``after`` vs ``before``; Ristretto's TEST
    input trimming), point every blob that held the replaced tensor, or a view of its data of
    the same size, at the replacement (in that blob's shape)."""
    for original, old, new in zip(originals, before, after):
        if new is old:
            continue
        for name, value in list(blobs.items()):
            if value is original or value is old:
                blobs[name] = new
            elif _shares_data(value, original):
                blobs[name] = new.reshape(value.shape)


def _shares_data(a, b):
    return (a.numel() == b.numel() and a.numel() > 0 and a.dtype == b.dtype
            and a.device == b.device and a.is_contiguous() and b.is_contiguous()
            and a.data_ptr() == b.data_ptr())


__all__ = ["TorchNet"]
