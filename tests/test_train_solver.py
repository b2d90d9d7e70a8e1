"""Caffe's solver in Python: learning-rate policies and update rules (the solver files are
tested in test_train_solver_file.py).

The expected numbers are written by hand from Caffe's formulas (``SGDSolver::GetLearningRate``,
``src/caffe/solvers/*_solver.cpp``) or computed in this file with scalar Python math, one
element at a time; never by the module under test."""
import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from ristretto_py.errors import RistrettoError
from ristretto_py.protos import caffe_pb2
from ristretto_py.train.params import LearnableParam
from ristretto_py.train.solver import Solver, learning_rate
from ristretto_py.train.solver_file import parse_solver_text


def solver_param(text):
    param = caffe_pb2.SolverParameter()
    text_format.Parse(text, param)
    return param


def f32(value):
    """A solver field's value as Caffe holds it (float32)."""
    return float(np.float32(value))


# -- the two-parameter hand case -----------------------------------------------------------------
W0 = [[1.0, -2.0, 0.0], [0.5]]          # layer "ip" blob 0 (weights) and blob 1 (bias)
GRADS = [                                # the summed diffs Caffe's backward would leave
    [[0.3, -0.1, 0.2], [0.2]],
    [[-0.2, 0.4, 0.05], [0.1]],
    [[0.1, 0.1, -0.3], [-0.3]],
]
LR_MULT = [1.0, 2.0]
DECAY_MULT = [1.0, 0.0]


def make_params(weights=W0, lr_mult=LR_MULT, decay_mult=DECAY_MULT):
    return [LearnableParam("ip", i, torch.nn.Parameter(torch.tensor(w, dtype=torch.float32)),
                           lr_mult=lr_mult[i], decay_mult=decay_mult[i])
            for i, w in enumerate(weights)]


def run(param_text, grads=GRADS, weights=W0, lr_mult=LR_MULT, decay_mult=DECAY_MULT):
    solver = Solver(solver_param(param_text), make_params(weights, lr_mult, decay_mult))
    rates = []
    for step in grads:
        for p, g in zip(solver.params, step):
            p.tensor.grad = torch.tensor(g, dtype=torch.float32)
        rates.append(solver.apply_update())
    return solver, [p.tensor.detach().numpy().astype(np.float64) for p in solver.params], rates


def reference(kind, *, base_lr, momentum=0.0, weight_decay=0.0, reg="L2", delta=1e-8,
              rms_decay=0.99, momentum2=0.999, iter_size=1, clip=-1.0, grads=GRADS,
              weights=W0, lr_mult=LR_MULT, decay_mult=DECAY_MULT):
    """Caffe's update rules, scalar by scalar, with a fixed learning rate."""
    w = [list(map(float, x)) for x in weights]
    h = [[0.0] * len(x) for x in w]
    h2 = [[0.0] * len(x) for x in w]
    for it, step in enumerate(grads):
        g = [list(map(float, x)) for x in step]
        norm = math.sqrt(sum(v * v for x in g for v in x))
        if clip >= 0 and norm > clip:
            g = [[v * clip / norm for v in x] for x in g]
        for i in range(len(w)):
            local_rate = base_lr * lr_mult[i]
            local_decay = weight_decay * decay_mult[i]
            for j in range(len(w[i])):
                d = g[i][j] / iter_size
                if reg == "L2":
                    d += local_decay * w[i][j]
                else:
                    d += local_decay * (0.0 if w[i][j] == 0 else math.copysign(1.0, w[i][j]))
                if kind == "SGD":
                    h[i][j] = momentum * h[i][j] + local_rate * d
                    update = h[i][j]
                elif kind == "Nesterov":
                    old = h[i][j]
                    h[i][j] = momentum * h[i][j] + local_rate * d
                    update = (1 + momentum) * h[i][j] - momentum * old
                elif kind == "AdaGrad":
                    h[i][j] += d * d
                    update = local_rate * d / (math.sqrt(h[i][j]) + delta)
                elif kind == "RMSProp":
                    h[i][j] = rms_decay * h[i][j] + (1 - rms_decay) * d * d
                    update = local_rate * d / (math.sqrt(h[i][j]) + delta)
                elif kind == "AdaDelta":
                    h[i][j] = momentum * h[i][j] + (1 - momentum) * d * d
                    d = d * math.sqrt((h2[i][j] + delta) / (h[i][j] + delta))
                    h2[i][j] = momentum * h2[i][j] + (1 - momentum) * d * d
                    update = local_rate * d
                elif kind == "Adam":
                    t = it + 1
                    h[i][j] = momentum * h[i][j] + (1 - momentum) * d
                    h2[i][j] = momentum2 * h2[i][j] + (1 - momentum2) * d * d
                    correction = math.sqrt(1 - momentum2 ** t) / (1 - momentum ** t)
                    update = local_rate * correction * h[i][j] / (math.sqrt(h2[i][j]) + delta)
                w[i][j] -= update
    return w, h, h2


def assert_moved_like(actual, expected, start=W0, rtol=2e-5):
    """Compare the displacement of every weight from its start (so small steps count), to
    within float32 rounding of the weights themselves (a few ulps)."""
    for a, e, s in zip(actual, expected, start):
        a, e, s = np.asarray(a, np.float64), np.asarray(e, np.float64), np.asarray(s, np.float64)
        ulps = 4 * np.spacing(np.abs(e).astype(np.float32)).astype(np.float64)
        assert np.all(np.abs((a - s) - (e - s)) <= rtol * np.abs(e - s) + ulps), (a - s, e - s)


CASES = {
    "SGD": ('type: "SGD" momentum: 0.9', dict(momentum=0.9)),
    "Nesterov": ('type: "Nesterov" momentum: 0.9', dict(momentum=0.9)),
    "AdaGrad": ('type: "AdaGrad" delta: 1e-6', dict(delta=1e-6)),
    "RMSProp": ('type: "RMSProp" rms_decay: 0.9 delta: 1e-6', dict(rms_decay=0.9, delta=1e-6)),
    "AdaDelta": ('type: "AdaDelta" momentum: 0.95 delta: 1e-6', dict(momentum=0.95, delta=1e-6)),
    "Adam": ('type: "Adam" momentum: 0.9 momentum2: 0.999 delta: 1e-8',
             dict(momentum=0.9, momentum2=0.999, delta=1e-8)),
}


@pytest.mark.parametrize("kind", list(CASES))
@pytest.mark.parametrize("reg", ["L2", "L1"])
def test_each_solver_type_matches_caffe_formulas(kind, reg):
    text, options = CASES[kind]
    base_lr = 1.0 if kind == "AdaDelta" else 0.1
    solver, weights, rates = run(f'{text} base_lr: {base_lr} lr_policy: "fixed" max_iter: 10 '
                                 f'weight_decay: 0.05 regularization_type: "{reg}"')
    expected, h, h2 = reference(kind, base_lr=base_lr, weight_decay=0.05, reg=reg, **options)
    assert_moved_like(weights, expected)
    assert rates == [f32(base_lr)] * 3
    assert solver.iter == 3
    # The history Caffe keeps: h (and for AdaDelta/Adam the second set after the first).
    n = len(W0)
    for i in range(n):
        np.testing.assert_allclose(solver.history[i].numpy(), h[i], rtol=2e-5, atol=1e-9)
        if kind in ("AdaDelta", "Adam"):
            np.testing.assert_allclose(solver.history[n + i].numpy(), h2[i], rtol=2e-5, atol=1e-12)
    assert len(solver.history) == (2 * n if kind in ("AdaDelta", "Adam") else n)
    assert all(t.dtype == torch.float32 for t in solver.history)
    # Each type moves the weights somewhere else: the case tells them apart.
    assert not np.allclose(weights[0], W0[0])


def test_sgd_momentum_by_hand():
    # w = 1, g = 0.5 each iteration, lr 0.1, momentum 0.9:
    # h1 = 0.05, w = 0.95; h2 = 0.045 + 0.05 = 0.095, w = 0.855; h3 = 0.0855 + 0.05 = 0.1355, w = 0.7195
    _, weights, _ = run('base_lr: 0.1 lr_policy: "fixed" max_iter: 3 momentum: 0.9',
                        grads=[[[0.5]]] * 3, weights=[[1.0]], lr_mult=[1.0], decay_mult=[1.0])
    assert weights[0][0] == pytest.approx(0.7195, rel=1e-6)


def test_sgd_l2_decay_and_multipliers_by_hand():
    # bias: lr_mult 2, decay_mult 0: w = 0.5 - 2 * 0.1 * 0.2 = 0.46 (no decay)
    # weights: w = 1 - 0.1 * (0.3 + 0.05 * 1) = 0.965; w = -2 - 0.1 * (-0.1 + 0.05 * -2) = -1.98
    #          w = 0 - 0.1 * (0.2 + 0) = -0.02
    _, weights, _ = run('base_lr: 0.1 lr_policy: "fixed" max_iter: 3 weight_decay: 0.05',
                        grads=GRADS[:1])
    np.testing.assert_allclose(weights[0], [0.965, -1.98, -0.02], rtol=1e-6)
    np.testing.assert_allclose(weights[1], [0.46], rtol=1e-6)


def test_sgd_l1_decay_by_hand():
    # sign(0) = 0, as caffe_cpu_sign: w = 0 moves only by its gradient
    _, weights, _ = run('base_lr: 0.1 lr_policy: "fixed" max_iter: 3 weight_decay: 0.05 '
                        'regularization_type: "L1"', grads=GRADS[:1])
    np.testing.assert_allclose(weights[0], [1 - 0.1 * 0.35, -2 - 0.1 * (-0.15), -0.02], rtol=1e-6)


def test_adam_first_step_is_the_rate_times_the_sign():
    # t = 1: m = 0.1 g, v = 0.001 g^2, correction = sqrt(0.001) / 0.1, so the update is
    # lr * g / (|g| + 1e-8 / sqrt(0.001)) ~ lr * sign(g)
    _, weights, _ = run('type: "Adam" base_lr: 0.01 lr_policy: "fixed" max_iter: 1 '
                        'momentum: 0.9 momentum2: 0.999', grads=GRADS[:1])
    np.testing.assert_allclose(weights[0], [0.99, -1.99, -0.01], rtol=1e-5)
    np.testing.assert_allclose(weights[1], [0.48], rtol=1e-5)   # lr_mult 2


def test_adam_old_spellings_solver_type_enum():
    # Ristretto's SqueezeNet demo spelling: solver_type: ADAM with momentum2 and delta
    param = parse_solver_text('base_lr: 0.01 lr_policy: "fixed" max_iter: 3 momentum: 0.9 '
                              'momentum2: 0.999 delta: 0.00000001 solver_type: ADAM')
    solver = Solver(param, make_params())
    for step in GRADS:
        for p, g in zip(solver.params, step):
            p.tensor.grad = torch.tensor(g)
        solver.apply_update()
    expected, _, _ = reference("Adam", base_lr=0.01, momentum=0.9)
    assert_moved_like([p.tensor.detach().numpy() for p in solver.params], expected)


def test_iter_size_divides_the_summed_gradient():
    solver, weights, _ = run('base_lr: 0.1 lr_policy: "fixed" max_iter: 3 momentum: 0.5 '
                             'iter_size: 4 weight_decay: 0.01')
    expected, _, _ = reference("SGD", base_lr=0.1, momentum=0.5, iter_size=4, weight_decay=0.01)
    assert_moved_like(weights, expected)
    # by hand, first step of the bias: 0.5 - 2 * 0.1 * 0.2 / 4 = 0.49
    _, weights, _ = run('base_lr: 0.1 lr_policy: "fixed" max_iter: 1 iter_size: 4', grads=GRADS[:1])
    assert weights[1][0] == pytest.approx(0.49, rel=1e-6)


def test_gradient_clipping_scales_by_the_global_norm():
    # first step's norm: sqrt(0.09 + 0.01 + 0.04 + 0.04) = sqrt(0.18) = 0.424264
    solver, weights, _ = run('base_lr: 0.1 lr_policy: "fixed" max_iter: 1 clip_gradients: 0.2',
                             grads=GRADS[:1])
    scale = 0.2 / math.sqrt(0.18)
    np.testing.assert_allclose(weights[0], [1 - 0.1 * 0.3 * scale, -2 + 0.1 * 0.1 * scale,
                                            -0.1 * 0.2 * scale], rtol=1e-6)
    np.testing.assert_allclose(weights[1], [0.5 - 2 * 0.1 * 0.2 * scale], rtol=1e-6)
    assert solver.last_clip == pytest.approx((math.sqrt(0.18), scale), rel=1e-6)
    # a norm under the threshold changes nothing
    _, weights, _ = run('base_lr: 0.1 lr_policy: "fixed" max_iter: 1 clip_gradients: 0.5',
                        grads=GRADS[:1])
    np.testing.assert_allclose(weights[1], [0.46], rtol=1e-6)


def test_clipping_sees_the_summed_gradient_before_iter_size():
    # Caffe clips before Normalize: with iter_size 2 the norm is that of the sum (0.4243 > 0.3)
    _, weights, _ = run('base_lr: 0.1 lr_policy: "fixed" max_iter: 1 clip_gradients: 0.3 '
                        'iter_size: 2', grads=GRADS[:1])
    scale = 0.3 / math.sqrt(0.18)
    assert weights[1][0] == pytest.approx(0.5 - 2 * 0.1 * 0.2 * scale / 2, rel=1e-6)
    text = 'type: "Adam" base_lr: 0.1 lr_policy: "fixed" max_iter: 3 clip_gradients: 0.3 ' \
           'momentum: 0.9 iter_size: 2 weight_decay: 0.01'
    _, weights, _ = run(text)
    expected, _, _ = reference("Adam", base_lr=0.1, momentum=0.9, clip=0.3, iter_size=2,
                               weight_decay=0.01)
    assert_moved_like(weights, expected)


def test_lr_mult_zero_keeps_the_weights_but_history_follows_caffe():
    solver, weights, _ = run('type: "Adam" base_lr: 0.1 lr_policy: "fixed" max_iter: 3 '
                             'momentum: 0.9 weight_decay: 0.1',
                             lr_mult=[0.0, 1.0], decay_mult=[1.0, 1.0])
    np.testing.assert_array_equal(weights[0], np.float32(W0[0]))
    # m after one step = 0.1 * (g + 0.1 w), as Caffe's AdamSolver computes it for every param
    expected, h, _ = reference("Adam", base_lr=0.1, momentum=0.9, weight_decay=0.1,
                               lr_mult=[0.0, 1.0], decay_mult=[1.0, 1.0])
    np.testing.assert_allclose(solver.history[0].numpy(), h[0], rtol=2e-5)
    assert_moved_like(weights[1:], expected[1:], start=W0[1:])


def test_grads_are_cleared_and_missing_grads_count_as_zero():
    solver = Solver(solver_param('base_lr: 0.1 lr_policy: "fixed" max_iter: 3 momentum: 0.9'),
                    make_params())
    solver.params[0].tensor.grad = torch.tensor([1.0, 0.0, 0.0])
    solver.apply_update()
    assert all(p.tensor.grad is None for p in solver.params)
    assert solver.params[1].tensor.item() == 0.5               # no grad, no decay: unchanged
    solver.apply_update()                                      # no grads at all: momentum moves
    assert solver.params[0].tensor[0].item() == pytest.approx(1 - 0.1 - 0.09, rel=1e-6)


def test_learning_rate_does_not_change_the_state_and_apply_update_takes_an_iteration():
    solver = Solver(solver_param('base_lr: 1 lr_policy: "multistep" gamma: 0.5 stepvalue: 2 '
                                 'max_iter: 10'), make_params())
    assert solver.learning_rate(5) == 0.5      # one step at most per call, as Caffe
    assert solver.current_step == 0 and solver.iter == 0
    assert solver.apply_update(iteration=7) == 0.5
    assert solver.iter == 8 and solver.current_step == 1


# -- learning-rate policies ----------------------------------------------------------------------
def rates(text, iterations):
    param = solver_param(text + " max_iter: 100000")
    out, step = [], 0
    for iteration in iterations:
        rate, step = learning_rate(param, iteration, step)
        out.append(rate)
    return out, step


@pytest.mark.parametrize("text, iterations, expected", [
    ('base_lr: 0.01 lr_policy: "fixed"', [0, 5, 1000], [0.01, 0.01, 0.01]),
    ('base_lr: 0.01 lr_policy: "step" gamma: 0.1 stepsize: 10', [0, 9, 10, 19, 25],
     [0.01, 0.01, 0.001, 0.001, 0.0001]),
    ('base_lr: 0.01 lr_policy: "exp" gamma: 0.9', [0, 1, 3], [0.01, 0.009, 0.00729]),
    # 0.01 * (1 + 1e-4 * iter) ^ -0.75: 2^-0.75 = 0.5946035575, 4^-0.75 = 0.3535533906
    ('base_lr: 0.01 lr_policy: "inv" gamma: 0.0001 power: 0.75', [0, 10000, 30000],
     [0.01, 0.005946035575, 0.003535533906]),
    ('base_lr: 0.1 lr_policy: "poly" power: 2', [0, 50000, 90000, 100000],
     [0.1, 0.025, 0.001, 0.0]),
    # 0.1 / (1 + exp(-0.5 (iter - 10))): e^1 = 2.718281828
    ('base_lr: 0.1 lr_policy: "sigmoid" gamma: 0.5 stepsize: 10', [8, 10, 12],
     [0.1 / 3.718281828, 0.05, 0.1 / (1 + 1 / 2.718281828)]),
])
def test_lr_policies_by_hand(text, iterations, expected):
    got, _ = rates(text, iterations)
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_step_policy_sets_current_step():
    _, step = rates('base_lr: 0.01 lr_policy: "step" gamma: 0.1 stepsize: 10', [25])
    assert step == 2


def test_multistep_across_its_steps():
    got, step = rates('base_lr: 1 lr_policy: "multistep" gamma: 0.5 stepvalue: 2 stepvalue: 4',
                      range(7))
    assert got == [1, 1, 0.5, 0.5, 0.25, 0.25, 0.25]
    assert step == 2
    # Caffe advances one step per call: a state at step 0 asked about iteration 10 is at step 1
    param = solver_param('base_lr: 1 lr_policy: "multistep" gamma: 0.5 stepvalue: 2 '
                         'stepvalue: 4 max_iter: 10')
    assert learning_rate(param, 10, 0) == (0.5, 1)
    assert learning_rate(param, 10, 2) == (0.25, 2)


def test_apply_update_uses_the_policy():
    solver, weights, used = run('base_lr: 0.1 lr_policy: "step" gamma: 0.5 stepsize: 2 '
                                'max_iter: 10', grads=[[[1.0]]] * 3, weights=[[0.0]],
                                lr_mult=[1.0], decay_mult=[1.0])
    assert used == pytest.approx([0.1, 0.1, 0.05], rel=1e-6)
    assert weights[0][0] == pytest.approx(-0.25, rel=1e-6)
    assert solver.current_step == 1


# -- solver files --------------------------------------------------------------------------------
def test_solver_rejects_unchecked_values_built_in_python():
    with pytest.raises(RistrettoError) as err:
        Solver(solver_param('base_lr: 0.1 lr_policy: "step" max_iter: 10 gamma: 0.1'),
               make_params())
    assert 'lr_policy: "step" needs stepsize' in str(err.value)
