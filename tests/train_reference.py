"""Helpers of the training tests: small hand nets, the numpy runtime as the reference of the
torch forward, and central differences of the numpy runtime as the reference of torch's
gradients.

The numpy runtime computes in float32; the differences are taken in float64 from its outputs
with a step ``h`` large enough that float32 rounding stays far below the tolerance, on inputs
chosen away from kinks (ReLU at 0, ties of MAX) by more than the step. The torch side runs in
float64, so its gradients are exact to the reference's accuracy."""
import numpy as np
import torch

from ristretto_py import Net
from ristretto_py.runtime import NumpyRuntime
from ristretto_py.train.model import TorchNet
from conftest import net_param


def make_net(text, blobs=None, phase="TEST"):
    """A Net of ``phase`` from prototxt text and blobs {layer name: [arrays]}."""
    return Net.from_proto(net_param(text, blobs), phase=phase)


def input_layer(shapes):
    """An Input layer text with one top per (name, shape) item."""
    tops = " ".join(f'top: "{name}"' for name in shapes)
    dims = " ".join("shape { " + " ".join(f"dim: {d}" for d in s) + " }" for s in shapes.values())
    return f'layer {{ name: "input" type: "Input" {tops} input_param {{ {dims} }} }}\n'


def assert_forward_matches(net, inputs, tolerance=2e-6, seed=0, compat="gpu"):
    """Every blob of the float32 TorchNet within ``tolerance`` of the largest magnitude of the
    numpy runtime's blob (exactly equal when tolerance is 0); returns the torch blobs."""
    reference = NumpyRuntime(net, compat=compat, seed=seed).forward(inputs)
    model = TorchNet(net, seed=seed, compat=compat)
    with torch.no_grad():
        ours = model(inputs)
    assert set(reference) <= set(ours)
    for name, value in reference.items():
        mine = ours[name].numpy()
        assert mine.shape == value.shape, f"{name}: {mine.shape} vs {value.shape}"
        if tolerance == 0:
            np.testing.assert_array_equal(mine, value, err_msg=name)
            continue
        scale = max(float(np.abs(value).max()), 1e-30) if value.size else 1.0
        error = float(np.abs(mine.astype(np.float64) - value).max()) / scale if value.size else 0.0
        assert error <= tolerance, f"{name}: {error:.3g} of the largest magnitude"
    return ours


def projections(net, inputs, names, seed=1):
    """Fixed random weights for each named blob: the objective is sum(P * blob)."""
    blobs = NumpyRuntime(net).forward(inputs)
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(np.shape(blobs[n])) for n in names}


def numpy_objective(net, inputs, weights, seed=0):
    blobs = NumpyRuntime(net, seed=seed).forward(inputs)
    return sum(float(np.sum(np.asarray(blobs[n], np.float64) * w)) for n, w in weights.items())


def torch_gradients(net, inputs, weights, wrt_inputs=(), phase=None, loss=False):
    """Gradients of sum(P * blob) (or of the model's total loss, ``loss=True``) in float64:
    ({input name: grad}, {(layer, blob index): grad}, the model)."""
    model = TorchNet(net, dtype=torch.float64)
    if phase:
        model.set_phase(phase)
    tensors = {n: torch.tensor(np.asarray(v, np.float64), requires_grad=n in wrt_inputs)
               for n, v in inputs.items()}
    blobs = model(tensors)
    if loss:
        objective = model.losses(blobs)
    else:
        objective = sum((blobs[n] * torch.as_tensor(w)).sum() for n, w in weights.items())
    objective.backward()
    input_grads = {n: np.zeros(tensors[n].shape) if tensors[n].grad is None
                   else tensors[n].grad.numpy() for n in wrt_inputs}   # None: no path
    blob_grads = {}
    for module in model.layer_modules:
        for i, p in enumerate(module.blobs):
            blob_grads[(module.layer_name, i)] = None if p.grad is None else p.grad.numpy()
    return input_grads, blob_grads, model


def _with_blob(net, targets, index, delta):
    """``net`` with ``delta`` added at flat ``index`` of every (layer, blob) in ``targets``."""
    layers = []
    for layer in net.layers:
        blobs, changed = list(layer.blobs), False
        for name, i in targets:
            if name == layer.name:
                blobs[i] = np.array(blobs[i], np.float32)
                blobs[i].reshape(-1)[index] += np.float32(delta)
                changed = True
        layers.append(layer.replace(blobs=blobs) if changed else layer)
    return net.with_layers(layers)


def central_difference(evaluate, value, index, h):
    """(f(x + h e_i) - f(x - h e_i)) / (actual float32 step), from ``evaluate(delta)``."""
    x = np.float32(value.reshape(-1)[index])
    up, down = np.float32(x + np.float32(h)), np.float32(x - np.float32(h))
    return (evaluate(up - x) - evaluate(down - x)) / (float(up) - float(down))


def check_gradients(net, inputs, weights, wrt_inputs=(), wrt_blobs=(), h=1e-2, samples=8,
                    rtol=5e-4, phase=None, seed=3, objective=None, torch_grads=None):
    """Compare torch's float64 gradients of sum(P * blob) with central differences of the
    numpy runtime at ``samples`` random coordinates of each input in ``wrt_inputs`` and of each
    blob in ``wrt_blobs`` ((layer, index), or a tuple of them for a shared blob, whose copies
    move together). Tolerance: ``rtol`` of the largest gradient magnitude seen."""
    objective = objective or (lambda n, x: numpy_objective(n, x, weights))
    input_grads, blob_grads, _ = torch_grads or torch_gradients(net, inputs, weights,
                                                                wrt_inputs, phase)
    rng = np.random.default_rng(seed)
    pairs = []
    for name in wrt_inputs:
        value = np.asarray(inputs[name], np.float32)
        for index in rng.choice(value.size, min(samples, value.size), replace=False):
            def evaluate(delta, name=name, index=index, value=value):
                changed = value.copy()
                changed.reshape(-1)[index] += delta
                return objective(net, dict(inputs, **{name: changed}))
            pairs.append((name, central_difference(evaluate, value, index, h),
                          input_grads[name].reshape(-1)[index]))
    for target in wrt_blobs:
        targets = target if isinstance(target[0], tuple) else (target,)
        value = net.layer(targets[0][0]).blobs[targets[0][1]]
        grad = blob_grads[targets[0]]
        assert grad is not None, f"{targets[0]} received no gradient"
        for index in rng.choice(value.size, min(samples, value.size), replace=False):
            def evaluate(delta, index=index):
                return objective(_with_blob(net, targets, index, delta), inputs)
            pairs.append((targets, central_difference(evaluate, value, index, h),
                          grad.reshape(-1)[index]))
    scale = max(max(abs(float(g)) for _, _, g in pairs), 1e-3)
    for what, reference, ours in pairs:
        assert abs(reference - ours) <= rtol * scale + 1e-6, \
            f"{what}: torch {ours:.6g}, central difference {reference:.6g} (scale {scale:.3g})"
    return pairs
