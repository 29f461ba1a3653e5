"""Exact output bounds and complete verification of small piecewise-linear networks by MILP.

The encoding (Tjeng, Xiao, Tedrake, "Evaluating Robustness of Neural Networks with Mixed Integer
Programming", ICLR'19, Sec. 4.1; Cheng et al. 2017) is solved with HiGHS through
``scipy.optimize.milp``.  Every neuron is an affine expression ``A v + c`` over the MILP variables v
(input coordinates, ReLU/max outputs); an unstable ReLU y = max(0, z), l < 0 < u, adds y ∈ [0, u], a
binary δ and  y ≥ z,  y ≤ z − l(1 − δ),  y ≤ u δ, which is *exactly* the graph of ReLU on [l, u]
(δ = 1: y = z ≥ 0; δ = 0: y = 0 ≥ z).  l, u are interval bounds of the expression over the variables'
own bounds, hence sound.  Supported layers: linear, conv2d, normalize, batchnorm, flatten, permute, avg_pool2d (all affine,
turned into dense matrices by evaluating the layer on the unit vectors), relu, max_pool2d, Residual.
"Exact" means up to HiGHS's tolerances (about 1e-7); every point returned is re-evaluated by the
concrete network.  Proof and caveats: proofs/exact_milp.md.

Time: HiGHS can overrun its ``time_limit`` by far (its set-up of a model with millions of nonzeros is not
interruptible: seconds past a limit of one), so ``find_violation(deadline=)`` builds the model checking the
deadline between layers and solves it in a forked child process that is killed at the deadline.
"""
from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np

from refcert import domains, nn
from refcert.autodiff import no_grad
from refcert.certify import ball_domains

_AFFINE_OPS = ("linear", "conv2d", "normalize", "batchnorm", "flatten", "permute", "avg_pool2d")
_WIDEN = 1e-7  # relative + absolute widening of big-M bounds against rounding


class ExactUndecided(RuntimeError):
    """The MILP hit its time limit, or its answer sits within solver tolerance of the decision boundary."""


@dataclass
class _Program:
    """Variables (bounds, integrality) and rows  row_lo ≤ A v ≤ row_hi  of a MILP under construction."""
    lower: list
    upper: list
    integer: list
    rows: list          # (dense coefficient vector over the variables known at that time, lo, hi)

    def add_variables(self, lower, upper, integer):
        first = len(self.lower)
        self.lower += list(lower)
        self.upper += list(upper)
        self.integer += [integer] * len(lower)
        return first

    def add_row(self, coefficients, lo, hi):
        self.rows.append((np.asarray(coefficients, dtype=np.float64), lo, hi))

    def bounds(self, A, c):
        """Interval bounds of A v + c over the variables' bounds (A: (n, nvars))."""
        lower, upper = np.asarray(self.lower[:A.shape[1]]), np.asarray(self.upper[:A.shape[1]])
        lo = c + np.clip(A, 0, None) @ lower + np.clip(A, None, 0) @ upper
        hi = c + np.clip(A, 0, None) @ upper + np.clip(A, None, 0) @ lower
        slack = _WIDEN * (1.0 + np.abs(lo) + np.abs(hi))
        return lo - slack, hi + slack


def _pad(A, width):
    return np.pad(A, ((0, 0), (0, width - A.shape[1])))


def _affine_map(layer, shape):
    """(W, b, out_shape) with layer(x).flatten() = W x.flatten() + b, evaluated in float64."""
    n = int(np.prod(shape))
    with no_grad():
        basis = np.concatenate([np.zeros((1, n)), np.eye(n)]).reshape((n + 1,) + shape)
        out = layer(basis).numpy().astype(np.float64)
    flat = out.reshape(n + 1, -1)
    return (flat[1:] - flat[0]).T, flat[0], out.shape[1:]


def _relu(program, A, c):
    lo, hi = program.bounds(A, c)
    n = A.shape[0]
    A_out, c_out = np.zeros_like(A), np.zeros(n)
    active = lo >= 0
    A_out[active], c_out[active] = A[active], c[active]
    unstable = np.flatnonzero((lo < 0) & (hi > 0))
    if unstable.size == 0:
        return A_out, c_out
    y0 = program.add_variables(np.zeros(unstable.size), hi[unstable], False)
    d0 = program.add_variables(np.zeros(unstable.size), np.ones(unstable.size), True)
    width = len(program.lower)
    A_out = _pad(A_out, width)
    for k, i in enumerate(unstable):
        y, d, z = y0 + k, d0 + k, _pad(A[i:i + 1], width)[0]
        row = -z.copy(); row[y] += 1
        program.add_row(row, c[i], np.inf)                      # y - z >= 0
        row2 = row.copy(); row2[d] -= lo[i]
        program.add_row(row2, -np.inf, c[i] - lo[i])            # y - z - l δ <= -l
        row3 = np.zeros(width); row3[y], row3[d] = 1.0, -hi[i]
        program.add_row(row3, -np.inf, 0.0)                     # y - u δ <= 0
        A_out[i, y] = 1.0
    return A_out, c_out


def _max_pool(program, A, c, shape, layer):
    k, s, p = (layer.params[key] for key in ("kernel_size", "stride", "padding"))
    C, H, W = shape
    index = np.arange(C * H * W).reshape(shape)
    out_h, out_w = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    lo, hi = program.bounds(A, c)
    rows_A, rows_c = [], []
    for ch in range(C):
        for i in range(out_h):
            for j in range(out_w):
                window = index[ch, max(i * s - p, 0):min(i * s - p + k, H), max(j * s - p, 0):min(j * s - p + k, W)].ravel()
                best = window[np.argmax(lo[window])]
                candidates = window[hi[window] > lo[best]]          # others can never be the maximum
                if candidates.size == 1:
                    rows_A.append(A[candidates[0]]), rows_c.append(c[candidates[0]])
                    continue
                y = program.add_variables([lo[candidates].max()], [hi[candidates].max()], False)
                d0 = program.add_variables(np.zeros(candidates.size), np.ones(candidates.size), True)
                width = len(program.lower)
                one_hot = np.zeros(width); one_hot[d0:d0 + candidates.size] = 1.0
                program.add_row(one_hot, 1.0, 1.0)                  # exactly one δ_j = 1
                for m, q in enumerate(candidates):
                    z = _pad(A[q:q + 1], width)[0]
                    row = -z; row[y] += 1.0
                    program.add_row(row, c[q], np.inf)              # y >= z_q
                    big = hi[candidates].max() - lo[q]
                    row2 = row.copy(); row2[d0 + m] += big
                    program.add_row(row2, -np.inf, c[q] + big)      # y <= z_q + (U - l_q)(1 - δ_q)
                e = np.zeros(width); e[y] = 1.0
                rows_A.append(e), rows_c.append(0.0)
    width = len(program.lower)
    return np.stack([_pad(a[None], width)[0] for a in rows_A]), np.asarray(rows_c), (C, out_h, out_w)


def _encode(program, module, A, c, shape, deadline=math.inf):
    """The expression (A, c) of module's output, given the expression of its input of ``shape``."""
    if time.monotonic() > deadline:
        raise ExactUndecided("time limit reached while building the MILP")
    if isinstance(module, nn.Sequential):
        for layer in module.layers:
            A, c, shape = _encode(program, layer, A, c, shape, deadline)
        return A, c, shape
    if isinstance(module, nn.Residual):
        A1, c1, shape1 = _encode(program, module.block, A, c, shape, deadline)
        A2, c2, shape2 = _encode(program, module.shortcut, A, c, shape, deadline)
        if shape1 != shape2:
            raise ValueError(f"residual branches have shapes {shape1} and {shape2}")
        width = len(program.lower)
        return _pad(A1, width) + _pad(A2, width), c1 + c2, shape1
    if module.op in _AFFINE_OPS:
        W, b, out_shape = _affine_map(module, shape)
        return W @ A, W @ c + b, tuple(out_shape)
    if module.op == "relu":
        A, c = _relu(program, A, c)
        return A, c, shape
    if module.op == "max_pool2d":
        return _max_pool(program, A, c, shape, module)
    raise ValueError(f"exact MILP encoding supports piecewise-linear layers only, not {type(module).__name__} "
                     f"(op {module.op!r})")


def _build(net, lower, upper, deadline=math.inf):
    nn.check_evaluation_mode(net)
    lower, upper = (np.asarray(getattr(a, "value", a), dtype=np.float64) for a in (lower, upper))
    if lower.shape != upper.shape or lower.shape[:1] != (1,):
        raise ValueError(f"exact bounds take one box (batch 1): lower {lower.shape}, upper {upper.shape}")
    if np.any(lower > upper) or not np.all(np.isfinite(lower) & np.isfinite(upper)):
        raise ValueError("the input box must be finite with lower <= upper")
    shape = lower.shape[1:]
    n = int(np.prod(shape))
    program = _Program(list(lower.ravel()), list(upper.ravel()), [False] * n, [])
    A, c, out_shape = _encode(program, net, np.eye(n), np.zeros(n), shape, deadline)
    return program, _pad(A, len(program.lower)), c, shape, out_shape


def _solve(program, objective, time_limit, deadline=None):
    """HiGHS's result; with a finite ``deadline`` (monotonic) where fork exists, in a child process killed
    then (ExactUndecided)."""
    from scipy.optimize import Bounds, LinearConstraint, milp  # a missing scipy fails here, in this process
    if deadline is not None and math.isfinite(deadline) and "fork" in multiprocessing.get_all_start_methods():
        return _in_child(lambda: _solve(program, objective, time_limit), deadline)
    width = len(program.lower)
    constraints = []
    if program.rows:
        M = np.stack([_pad(r[None], width)[0] for r, _, _ in program.rows])
        constraints.append(LinearConstraint(M, [lo for _, lo, _ in program.rows], [hi for _, _, hi in program.rows]))
    with _stdout_silenced():
        result = milp(objective, integrality=np.asarray(program.integer, dtype=int),
                      bounds=Bounds(program.lower, program.upper), constraints=constraints,
                      options={"time_limit": float(time_limit), "mip_rel_gap": 0.0})
    return result


def _in_child(task, deadline):
    """task() run in a forked child process; ExactUndecided if it has not answered by ``deadline``."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)

    def child():
        try:
            answer = task()
        except BaseException as err:  # re-raised in the parent
            answer = err
        with contextlib.suppress(BaseException):  # unpicklable, or the parent gone: it sees no answer
            send.send(answer)

    process = context.Process(target=child, daemon=True)
    for stream in (sys.stdout, sys.stderr):  # the child flushes its copies of their buffers when it ends
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()
    with warnings.catch_warnings():  # Python 3.12+ warns about fork in a threaded process; the child only
        warnings.simplefilter("ignore", DeprecationWarning)  # solves, and is killed if it ever hangs
        process.start()
    send.close()
    try:
        if not receive.poll(max(0.0, deadline - time.monotonic())):
            raise ExactUndecided("time limit reached: the MILP solver was stopped at the deadline")
        answer = receive.recv()
    except EOFError:
        raise ExactUndecided(f"the MILP solver process ended without an answer (exit code "
                             f"{process.exitcode})") from None
    finally:
        process.kill()
        process.join()
        receive.close()
    if isinstance(answer, BaseException):
        raise answer
    return answer


@contextlib.contextmanager
def _stdout_silenced():
    """Send file descriptor 1 to /dev/null: some HiGHS builds print a debug line
    ("HighsMipSolverData::transformNewIntegerFeasibleSolution ...") from C++ that ``disp=False`` keeps."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):   # no real stdout (e.g. captured in a notebook)
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def exact_bounds(net, lower, upper, time_limit: float = 60.0):
    """Exact (lo, hi, argmin_points, argmax_points) of every output over the box [lower, upper].

    lower, upper: (1, *shape).  lo, hi: (1, *out_shape); argmin/argmax_points: (outputs, *shape), the
    inputs attaining each output's minimum / maximum (net(argmax_points[i]) has output i = hi[i]).
    """
    program, A, c, shape, out_shape = _build(net, lower, upper)
    n = int(np.prod(shape))
    m = A.shape[0]
    lo, hi = np.zeros(m), np.zeros(m)
    arg = {-1: np.zeros((m,) + shape), 1: np.zeros((m,) + shape)}
    for i in range(m):
        for sign in (1, -1):   # minimise sign * output_i
            result = _solve(program, sign * A[i], time_limit)
            if result.status != 0:
                raise ExactUndecided(f"MILP for output {i} ended with status {result.status}: {result.message}")
            (lo if sign == 1 else hi)[i] = sign * result.fun + c[i]
            box = (np.asarray(program.lower[:n]), np.asarray(program.upper[:n]))
            arg[sign][i] = np.clip(result.x[:n], *box).reshape(shape)   # undo tolerance-sized overshoot
    return lo.reshape((1,) + out_shape), hi.reshape((1,) + out_shape), arg[1], arg[-1]


def find_violation(net, lower, upper, C, d, time_limit: float = 60.0, deadline=None):
    """A point x in the box with C net(x) <= d (checked on the concrete net), or None if none exists.

    C: (k, outputs), d: (k,).  Maximises t subject to C y + t <= d; t* < 0 proves there is no such x.
    Raises ExactUndecided on a time-out or when t* is within solver tolerance of 0 and the concrete
    check disagrees.  ``time_limit``: HiGHS's own limit (seconds; it may overrun it); ``deadline``: a
    ``time.monotonic()`` value by which the call returns (building included; module docstring).
    """
    program, A, c, shape, _ = _build(net, lower, upper, math.inf if deadline is None else deadline)
    C, d = np.atleast_2d(np.asarray(C, dtype=np.float64)), np.atleast_1d(np.asarray(d, dtype=np.float64))
    if C.shape != (d.size, A.shape[0]):
        raise ValueError(f"C must be (k, {A.shape[0]}) and d (k,); got {C.shape} and {d.shape}")
    t = program.add_variables([-np.inf], [np.inf], False)
    width = len(program.lower)
    CA = _pad(C @ A, width)
    for row, rhs in zip(CA, d - C @ c):
        row = row.copy(); row[t] = 1.0
        program.add_row(row, -np.inf, rhs)
    objective = np.zeros(width); objective[t] = -1.0
    if deadline is not None:
        time_limit = min(time_limit, deadline - time.monotonic())
        if not time_limit > 0:
            raise ExactUndecided("time limit reached while building the MILP")
    result = _solve(program, objective, time_limit, deadline)
    if result.status != 0:
        raise ExactUndecided(f"violation search ended with status {result.status}: {result.message}")
    n = int(np.prod(shape))
    box_lower, box_upper = np.asarray(program.lower[:n]), np.asarray(program.upper[:n])
    x = np.clip(result.x[:n], box_lower, box_upper).reshape((1,) + shape)   # undo tolerance-sized overshoot
    with no_grad():
        y = net(x).numpy().astype(np.float64).reshape(-1)
    holds = bool(np.all(C @ y <= d))
    t_star = -result.fun
    if holds:
        return x[0]
    if t_star < -1e-6 * (1.0 + np.abs(d).max()):
        return None
    raise ExactUndecided(f"MILP optimum t* = {t_star:.3g} is within tolerance of 0 and the concrete check "
                         f"fails by {np.max(C @ y - d):.3g}")


def width_ratios(net, lower, upper, names=None, time_limit: float = 60.0, min_width: float = 1e-9):
    """How tight each domain is on the box: {name: (outputs,) array of domain width / exact width}.

    A sound domain has every ratio >= 1 (up to the MILP's tolerance); 1 means exact.  Outputs whose exact
    width is below ``min_width`` get nan (a ratio to zero says nothing).  ``names``: domains to compare
    (default every L∞-ball domain, ``certify.ball_domains()``); one that cannot run the net raises.
    """
    lo, hi, _, _ = exact_bounds(net, lower, upper, time_limit)
    exact = (hi - lo).reshape(-1)
    wide = exact >= min_width
    ratios = {}
    for name in names or ball_domains():
        with no_grad():
            dlo, dhi = net(domains.get(name).from_bounds(lower, upper)).bounds()
        width = (dhi.numpy() - dlo.numpy()).astype(np.float64).reshape(-1)
        ratios[name] = np.where(wide, width / np.where(wide, exact, 1.0), np.nan)
    return ratios
