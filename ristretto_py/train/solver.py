"""Caffe's solvers in torch: the learning-rate policies of ``SGDSolver::GetLearningRate`` and the
update rules of ``src/caffe/solvers/*_solver.cpp`` (BVLC master, which Ristretto's fork shares).

One ``Solver.apply_update()`` is Caffe's ``SGDSolver::ApplyUpdate``, in its order:

1. ``rate = GetLearningRate()`` (``step`` sets ``current_step = iter / stepsize``; ``multistep``
   advances ``current_step`` by at most one, when ``iter >= stepvalue[current_step]``);
2. ``ClipGradients``: when ``clip_gradients >= 0`` and the global L2 norm of all diffs exceeds
   it, every diff is scaled by ``clip_gradients / norm`` (before the ``iter_size`` division);
3. per parameter ``Normalize`` (diff /= iter_size, when iter_size != 1), ``Regularize`` (local
   decay = weight_decay * decay_mult; L2: diff += decay * w, L1: diff += decay * sign(w)) and
   ``ComputeUpdateValue`` with local_rate = rate * lr_mult:
   * SGD:       h = momentum h + local_rate g;  update = h
   * Nesterov:  h' = momentum h + local_rate g;  update = (1+momentum) h' - momentum h
   * AdaGrad:   h += g^2;  update = local_rate g / (sqrt(h) + delta)
   * RMSProp:   h = rms_decay h + (1-rms_decay) g^2;  update = local_rate g / (sqrt(h) + delta)
   * AdaDelta:  h1 = momentum h1 + (1-momentum) g^2;  g' = g sqrt((h2 + delta) / (h1 + delta));
                h2 = momentum h2 + (1-momentum) g'^2;  update = local_rate g'
   * Adam:      m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2  (b1 = momentum, b2 = momentum2);
                update = local_rate sqrt(1-b2^t)/(1-b1^t) m / (sqrt(v) + delta), t = iter + 1
4. ``Net::Update``: w -= update; then ``iter += 1``.

Precision. Caffe's ``Dtype`` is float: the diffs, the weights and the history blobs are float32
and every element-wise step above rounds to float32, in the order written (``caffe_cpu_axpby``
is scale-then-axpy). We do the same steps on float32 torch tensors with float32 coefficients
(``local_rate``, ``local_decay``, ``1 - momentum``, ... rounded as Caffe's float arithmetic
rounds them). Caffe computes ``pow``/``exp`` of the rate and Adam's bias correction in double
(``pow(float, int)`` is double) and stores them as float; so do we. The one difference left is
below a float32 ulp per step: a BLAS may fuse ``a*x + y`` (FMA) or not, and ``pow(float, float)``
in ``inv``/``poly`` may be float or double depending on Caffe's headers. Doing the update in
float64 instead would not match Caffe better; it drifts from it by float32 rounding each step
(about 1e-7 relative per step; ``delta = 1e-8`` next to sqrt(h) ~ 1 vanishes in float32 but not
in float64). The histories are float32 tensors on the parameter's device.

Parameters with ``lr_mult == 0`` keep their weights (Caffe's update is 0 * ... for them); their
history blobs follow Caffe's formulas all the same (e.g. Adam's m and v absorb the weight decay
term), so a solverstate written here matches Caffe's.

Gradients: ``apply_update`` reads each ``LearnableParam.tensor.grad`` (None counts as zeros, as
Caffe's cleared diff), works on it in place, and sets it to None at the end (Caffe clears the
diffs at the start of the next iteration with ``ClearParamDiffs``; the effect is the same).
"""
import math

import numpy as np
import torch

from ..errors import RistrettoError
from ..protos import caffe_pb2
from .solver_file import HISTORY_SETS, check_values, upgrade_solver_type

_f32 = np.float32


def _c_pow(base, exponent):
    """C's pow on doubles: inf on overflow, nan for a negative base and a fractional power."""
    try:
        return math.pow(base, exponent)
    except OverflowError:
        return math.inf
    except ValueError:
        return math.nan


def _c_exp(value):
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf


def _f(value):
    """A float32 value as the Python float that holds it exactly."""
    return float(_f32(value))


def learning_rate(param, iteration, current_step=0):
    """``SGDSolver::GetLearningRate`` at ``iter_ = iteration``: returns ``(rate, current_step)``,
    the rate as a float32 value and the ``current_step`` Caffe holds afterwards (``step`` sets it
    to ``iteration // stepsize``; ``multistep`` advances it by at most one; the other policies
    leave it). ``param`` is a checked SolverParameter."""
    policy = param.lr_policy
    base_lr, gamma = float(param.base_lr), float(param.gamma)
    iteration = int(iteration)
    with np.errstate(all="ignore"):
        if policy == "fixed":
            rate = base_lr
        elif policy == "step":
            current_step = iteration // param.stepsize
            rate = base_lr * _c_pow(gamma, current_step)
        elif policy == "exp":
            rate = base_lr * _c_pow(gamma, iteration)
        elif policy == "inv":
            base = _f32(1) + _f32(gamma) * _f32(iteration)        # float arithmetic in Caffe
            rate = base_lr * _c_pow(float(base), -float(param.power))
        elif policy == "multistep":
            if current_step < len(param.stepvalue) and iteration >= param.stepvalue[current_step]:
                current_step += 1
            rate = base_lr * _c_pow(gamma, current_step)
        elif policy == "poly":
            base = _f32(1) - _f32(iteration) / _f32(param.max_iter)
            rate = base_lr * _c_pow(float(base), float(param.power))
        elif policy == "sigmoid":
            z = -_f32(gamma) * (_f32(iteration) - _f32(param.stepsize))
            rate = base_lr * (1.0 / (1.0 + _c_exp(float(z))))
        else:
            raise RistrettoError(f"lr_policy: unknown policy \"{policy}\"")
        return float(_f32(rate)), current_step


class Solver:
    """Caffe's solver of ``param.type`` over ``params`` (``LearnableParam`` in the order of
    Caffe's ``Net::learnable_params``).

    State (what a ``.solverstate`` holds): ``iter`` (updates done), ``current_step``, and
    ``history``, a list of float32 tensors in Caffe's order: one per parameter, and for
    AdaDelta and Adam a second set after the first (``history[n + i]`` belongs to ``params[i]``,
    n = len(params)); AdaDelta: squared gradients then squared updates; Adam: m then v."""

    def __init__(self, param, params, path=None):
        self.param = caffe_pb2.SolverParameter()
        self.param.CopyFrom(param)
        upgrade_solver_type(self.param, path)
        check_values(self.param, path)
        self.path = None if path is None else str(path)
        self.type = self.param.type
        self.params = list(params)
        self.iter = 0
        self.current_step = 0
        self.last_clip = None     # (l2 norm, scale factor) when the last update clipped
        self.history = [torch.zeros(tuple(p.tensor.shape), dtype=torch.float32,
                                    device=p.tensor.device)
                        for _ in range(HISTORY_SETS[self.type]) for p in self.params]

    # -- the learning rate ---------------------------------------------------------------------
    def learning_rate(self, iteration=None):
        """The rate Caffe's ``GetLearningRate`` returns at ``iteration`` (default: ``self.iter``,
        the next update's) from the current state, without changing the state. Caffe logs it
        as ``Iteration N, lr = <rate>`` (ostream's default, i.e. ``f"{rate:g}"``) when
        ``display`` divides N."""
        return learning_rate(self.param, self.iter if iteration is None else iteration,
                             self.current_step)[0]

    # -- one update ----------------------------------------------------------------------------
    def apply_update(self, iteration=None):
        """Caffe's ``ApplyUpdate`` at ``iter_ = iteration`` (default ``self.iter``); afterwards
        ``self.iter == iteration + 1``. Returns the learning rate used (a float)."""
        if iteration is not None:
            self.iter = int(iteration)
        rate, self.current_step = learning_rate(self.param, self.iter, self.current_step)
        with torch.no_grad():
            diffs = [self._diff(p) for p in self.params]
            self._clip(diffs)
            for index, (p, diff) in enumerate(zip(self.params, diffs)):
                self._normalize(diff)
                self._regularize(p, diff)
                update = self._update_value(index, p, diff, rate)
                if float(p.lr_mult) != 0:
                    p.tensor.sub_(update.to(p.tensor.dtype))
        self.iter += 1
        self.zero_grad()
        return rate

    def zero_grad(self):
        """Clear every parameter's gradient (set it to None)."""
        for p in self.params:
            p.tensor.grad = None

    def _diff(self, p):
        grad = p.tensor.grad
        if grad is None:
            return torch.zeros(tuple(p.tensor.shape), dtype=torch.float32, device=p.tensor.device)
        if tuple(grad.shape) != tuple(p.tensor.shape):
            raise RistrettoError(f"blob {p.index}: gradient of shape {list(grad.shape)} for a "
                                 f"parameter of shape {list(p.tensor.shape)}", layer=p.layer)
        grad = grad.detach()
        return grad if grad.dtype == torch.float32 else grad.to(torch.float32)

    def _clip(self, diffs):
        self.last_clip = None
        clip = _f32(self.param.clip_gradients)
        if clip < 0:
            return
        sumsq = _f32(0)
        for diff in diffs:
            sumsq = _f32(sumsq + _f32(torch.sum(diff * diff).item()))
        norm = _f32(np.sqrt(sumsq))
        if norm > clip:
            scale = _f32(clip / norm)
            self.last_clip = (float(norm), float(scale))
            for diff in diffs:
                diff.mul_(float(scale))

    def _normalize(self, diff):
        if self.param.iter_size != 1:
            diff.mul_(_f(_f32(1) / _f32(self.param.iter_size)))

    def _regularize(self, p, diff):
        decay = _f32(self.param.weight_decay) * _f32(p.decay_mult)
        if not decay:
            return
        weights = p.tensor.detach().to(torch.float32)
        if self.param.regularization_type == "L2":
            diff.add_(weights, alpha=float(decay))
        else:                                                  # "L1"
            diff.add_(torch.sign(weights), alpha=float(decay))

    def _update_value(self, index, p, g, rate):
        """ComputeUpdateValue: the value subtracted from the weights (g is changed in place)."""
        param = self.param
        local_rate = _f(_f32(rate) * _f32(p.lr_mult))
        momentum = _f32(param.momentum)
        delta = _f(param.delta)
        h = self.history[index]
        if self.type == "SGD":
            h.mul_(float(momentum)).add_(g, alpha=local_rate)
            return h.clone()
        if self.type == "Nesterov":
            previous = h.clone()
            h.mul_(float(momentum)).add_(g, alpha=local_rate)
            return previous.mul_(-float(momentum)).add_(h, alpha=_f(_f32(1) + momentum))
        if self.type == "AdaGrad":
            h.add_(g * g)
            return g.div_(torch.sqrt(h).add_(delta)).mul_(local_rate)
        if self.type == "RMSProp":
            rms_decay = _f32(param.rms_decay)
            h.mul_(float(rms_decay)).add_(g * g, alpha=_f(_f32(1) - rms_decay))
            return g.div_(torch.sqrt(h).add_(delta)).mul_(local_rate)
        n = len(self.params)
        if self.type == "AdaDelta":
            h2 = self.history[n + index]
            one_minus = _f(_f32(1) - momentum)
            h.mul_(float(momentum)).add_(g * g, alpha=one_minus)
            g.mul_(torch.sqrt((h2 + delta).div_(h + delta)))
            h2.mul_(float(momentum)).add_(g * g, alpha=one_minus)
            return g.mul_(local_rate)
        # Adam
        m, v = h, self.history[n + index]
        beta1, beta2 = _f32(param.momentum), _f32(param.momentum2)
        t = self.iter + 1
        correction = _f32(math.sqrt(1.0 - _c_pow(float(beta2), t)) /
                          (1.0 - _c_pow(float(beta1), t)))
        m.mul_(float(beta1)).add_(g, alpha=_f(_f32(1) - beta1))
        v.mul_(float(beta2)).add_(g * g, alpha=_f(_f32(1) - beta2))
        return (m / torch.sqrt(v).add_(delta)).mul_(_f(_f32(local_rate) * correction))

    # -- state ---------------------------------------------------------------------------------
    def history_arrays(self):
        """The history blobs as float32 numpy arrays, in Caffe's order."""
        return [h.detach().cpu().numpy().astype(np.float32, copy=True) for h in self.history]

    def check_history(self, arrays):
        """Raise a one-line RistrettoError when ``arrays`` (shapes, in Caffe's order) do not fit
        this solver's history: the count (Caffe's ``Incorrect length of history blobs``) or a
        shape."""
        expected = len(self.history)
        if len(arrays) != expected:
            sets = HISTORY_SETS[self.type]
            raise RistrettoError(
                f"holds {len(arrays)} history blobs but the {self.type} solver of this net "
                f"needs {expected} ({sets} per learnable parameter, {len(self.params)} "
                "parameters): a snapshot of another net or solver type")
        for index, (array, h) in enumerate(zip(arrays, self.history)):
            shape = tuple(np.shape(array))
            if shape != tuple(h.shape):
                p = self.params[index % len(self.params)]
                raise RistrettoError(
                    f"history blob {index} has shape {list(shape)} but the parameter it belongs "
                    f"to (layer '{p.layer}', blob {p.index}) has shape {list(h.shape)}")

    def load_state(self, iteration, current_step, arrays):
        """Restore ``iter``, ``current_step`` and the history (checked by ``check_history``)."""
        self.check_history(arrays)
        with torch.no_grad():
            for h, array in zip(self.history, arrays):
                h.copy_(torch.as_tensor(np.asarray(array, dtype=np.float32)))
        self.iter = int(iteration)
        self.current_step = int(current_step)
