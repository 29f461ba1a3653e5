"""Decide a VNN-LIB property on a network: ``sat``, ``unsat``, ``unknown`` or ``timeout`` (VNN-COMP).

The unsafe set is a union of disjuncts (box, C, d) (``refcert.io.vnnlib.read_vnnlib``): the property
is *sat* iff some x with lower ≤ x ≤ upper has C net(x) ≤ d (every row).  ``verify`` works on the
disjuncts still open, cheapest method first:
1. the box centres (a concrete point may already violate);
2. the abstract domains in the given order: a disjunct is proved infeasible when some row has a sound
   lower bound of C_i y − d_i above 0 over the box (C is applied as a final ``linear`` layer, as in
   ``refcert.spec``, so relational domains keep correlations);
3. PGD inside each box on max_i (C_i y − d_i) (Madry et al. ICLR'18, Sec. 2, with this objective);
4. with ``complete=True``, the exact MILP of ``refcert.exact.find_violation`` (Tjeng et al. ICLR'19).
*unsat* needs every disjunct proved; *sat* needs a point that is re-checked inside its box and
violating on fresh forward passes in float64 **and** float32 (VNN-COMP checks with onnxruntime in
float32).  Bounds are computed on a float64 copy of the net.  Boxes are given flat in VNN-LIB (ONNX)
order and counterexamples are returned in that order (``net.input_permutation`` is undone).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np

from refcert import autodiff as ad
from refcert import domains as domain_registry
from refcert import interpret, nn
from refcert.autodiff import Tensor
from refcert.exact import ExactUndecided, find_violation
from refcert.spec import Specification

DEFAULT_DOMAINS = ("deepzono", "deeppoly")
STATUSES = ("sat", "unsat", "unknown", "timeout")
#: a row is proved only when lower(C_i y) − d_i > MARGIN·(1 + |d_i|): slack for float64 rounding
MARGIN = 1e-9
#: PGD stops early once max_i (C_i y − d_i) < −STRICT·(1 + max|d|); smaller violations keep searching
STRICT = 1e-4


@dataclass
class VerifyOutcome:
    status: str                      # one of STATUSES
    x: np.ndarray | None             # counterexample (sat only), flat, VNN-LIB/ONNX input order, float64
    y: np.ndarray | None             # its outputs on the float32 forward pass (what onnxruntime computes)
    seconds: float
    proved_by: dict = field(default_factory=dict)  # method -> number of disjuncts it proved infeasible
    message: str = ""


@dataclass
class _Unit:
    """One disjunct: the box in refcert layout (1, *shape) and its output polytope C y ≤ d."""
    lower: np.ndarray
    upper: np.ndarray
    C: np.ndarray   # (k, outputs)
    d: np.ndarray   # (k,)


def _constant_copy(net, dtype: str):
    """A copy of ``net`` in ``dtype`` whose parameters are constants (attacks need input gradients only)."""
    net = copy.deepcopy(net).astype(dtype)
    for p in net.parameters():
        p.requires_grad = False
    return net


def _forward(net, x) -> np.ndarray:
    """(batch, outputs) concrete outputs, a fresh pass in the net's own dtype."""
    with ad.no_grad():
        y = net(Tensor(x)).numpy()
    return y.reshape(y.shape[0], -1)


def _units(net64, disjuncts, shape, perm) -> list:
    """Validate the disjuncts against the net; boxes rearranged into the net's layout."""
    n = int(np.prod(shape))
    units = []
    for b, (lower, upper, specs) in enumerate(disjuncts):
        lower, upper = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (lower, upper))
        if lower.size != n or upper.size != n:
            raise ValueError(f"the property has {lower.size} inputs but the network takes {n} "
                             f"(input shape {tuple(shape)})")
        if not np.all(np.isfinite(lower) & np.isfinite(upper)):
            raise ValueError(f"input box {b} is not finite")
        if perm is not None:
            lower, upper = lower[perm], upper[perm]
        lower, upper = lower.reshape((1,) + tuple(shape)), upper.reshape((1,) + tuple(shape))
        for C, d in specs:
            C, d = np.atleast_2d(np.asarray(C, dtype=np.float64)), np.asarray(d, dtype=np.float64).reshape(-1)
            units.append(_Unit(lower, upper, C, d))
    if not units:
        raise ValueError("the property has no disjuncts (no input box with an output constraint)")
    try:
        outputs = _forward(net64, np.minimum(units[0].lower, units[0].upper)).shape[1]
    except Exception as err:  # a shape mismatch deep inside a layer: say what was fed in
        raise ValueError(f"the network cannot run on inputs of shape {tuple(shape)} ({err}); "
                         f"pass input_shape=") from err
    for u in units:
        if u.C.shape[1] != outputs or u.C.shape[0] != u.d.size:
            raise ValueError(f"the property constrains {u.C.shape[1]} outputs but the network has {outputs}")
    return units


def _check(net64, net32, unit: _Unit, x):
    """(x, y32) if x (clipped to the box, float32-representable where the box allows) violates on fresh
    float64 and float32 passes, else None."""
    x = np.clip(np.asarray(x, dtype=np.float64).reshape(unit.lower.shape), unit.lower, unit.upper)
    rounded = x.astype(np.float32).astype(np.float64)
    x = np.where((rounded >= unit.lower) & (rounded <= unit.upper), rounded, x)
    y64, y32 = _forward(net64, x)[0], _forward(net32, x.astype(np.float32))[0].astype(np.float64)
    if np.all(unit.C @ y64 <= unit.d) and np.all(unit.C @ y32 <= unit.d):
        return x, y32
    return None


def _domain_lower(net64, name, group: list) -> list:
    """Sound lower bounds of C y over the box, one (k,) array per unit of ``group`` (units that share one
    box): one run of domain ``name`` with every unit's rows stacked into one specification layer."""
    C = np.concatenate([unit.C for unit in group])
    element = domain_registry.get(name).from_bounds(Tensor(group[0].lower), Tensor(group[0].upper))
    layers = [net64, nn.Flatten(), Specification(Tensor(C[None]))]  # Flatten: outputs may be (1, 10, 1)
    with ad.no_grad():
        lower = interpret.run(layers, element).bounds()[0].numpy().reshape(-1)
    return np.split(lower, np.cumsum([unit.d.size for unit in group])[:-1])


def _pgd(net64, unit: _Unit, steps, restarts, rng, deadline) -> np.ndarray:
    """Points (restarts, *shape) sorted by max_i (C_i y − d_i), lowest first: sign-gradient steps of size
    2.5·radius/steps projected to the box (the first restart starts at the centre)."""
    lower, upper = unit.lower, unit.upper
    z = lower + rng.random((restarts,) + lower.shape[1:]) * (upper - lower)   # zero-width coordinates too
    z[0] = (lower[0] + upper[0]) / 2
    alpha = 2.5 * (upper - lower) / 2 / max(steps, 1)
    C, d = Tensor(unit.C.T), Tensor(unit.d)
    best, best_gap = z.copy(), np.full(restarts, np.inf)
    for step in range(steps + 1):
        if time.perf_counter() > deadline:
            break
        with ad.enable_grad():
            point = Tensor(z, requires_grad=True)
            y = ad.reshape(net64(point), shape=(restarts, -1))
            gap = ad.max(ad.matmul(y, C) - d, axis=-1)
            ad.sum(gap).backward()
        gap_value = gap.numpy()
        better = gap_value < best_gap
        best[better], best_gap[better] = z[better], gap_value[better]
        if np.any(best_gap < -STRICT * (1 + np.abs(unit.d).max())) or point.grad is None:
            break  # a clear violation (float32 rounding cannot undo it): stop early
        z = np.clip(z - alpha * np.sign(ad.as_tensor(point.grad).numpy()), lower, upper)
    return best[np.argsort(best_gap)]


def verify(net, disjuncts, domains=DEFAULT_DOMAINS, timeout=None, complete: bool = False, seed: int = 0,
           attack_steps: int = 50, restarts: int = 4, input_shape=None) -> VerifyOutcome:
    """Decide the unsafe set ``disjuncts`` = [(lower, upper, [(C, d), ...]), ...] on ``net``.

    ``input_shape`` (no batch) defaults to ``net.input_shape`` (set by ``load_onnx``), else the box size;
    ``timeout`` seconds of wall clock for the whole run (None: no limit).  Raises ValueError for
    properties that do not fit the net.  Returns a ``VerifyOutcome`` (module docstring).
    """
    began = time.perf_counter()
    deadline = math.inf if timeout is None else began + float(timeout)
    names = list(dict.fromkeys(domains))
    for name in names:
        domain_registry.get(name)  # unknown names fail before any work
    if int(attack_steps) < 0 or int(restarts) < 1:
        raise ValueError(f"need attack_steps >= 0 and restarts >= 1, got {attack_steps}, {restarts}")
    net64, net32 = _constant_copy(net, "float64"), _constant_copy(net, "float32")
    perm = getattr(net, "input_permutation", None)
    input_shape = input_shape or getattr(net, "input_shape", None) or (np.size(disjuncts[0][0]) if disjuncts else 0,)
    units = _units(net64, disjuncts, tuple(input_shape), perm)
    proved = {}
    rng = np.random.default_rng(seed)

    def outcome(status, message, found=None):
        x, y = (None, None) if found is None else found
        if x is not None:
            x = x.reshape(-1)
            if perm is not None:  # refcert flat position perm[j] holds ONNX flat element j
                x = x[np.argsort(perm)]
        return VerifyOutcome(status, x, y, time.perf_counter() - began, proved, message)

    def prove(method):
        proved[method] = proved.get(method, 0) + 1

    open_units = []
    for unit in units:
        if np.any(unit.lower > unit.upper):
            prove("empty box")  # no x at all: nothing to violate
        else:
            open_units.append(unit)
    for unit in open_units:
        found = _check(net64, net32, unit, (unit.lower + unit.upper) / 2)
        if found is not None:
            return outcome("sat", "the centre of an input box violates the property", found)
    for name in names:
        still_open, boxes = [], {}
        for unit in open_units:  # units of one disjunct share their box arrays
            boxes.setdefault(id(unit.lower), []).append(unit)
        for group in boxes.values():
            if time.perf_counter() > deadline:
                return outcome("timeout", f"timed out while running domain {name!r}")
            y_centre = _forward(net64, (group[0].lower + group[0].upper) / 2)[0]
            for unit, lower in zip(group, _domain_lower(net64, name, group)):
                centre = unit.C @ y_centre
                if np.any(lower > centre + 1e-6 * (1 + np.abs(centre))):
                    raise RuntimeError(f"domain {name!r} is unsound: its lower bound {lower.max():.6g} exceeds "
                                       f"the value at the box centre; refusing to verify")
                if np.any(lower - unit.d > MARGIN * (1 + np.abs(unit.d))):
                    prove(name)
                else:
                    still_open.append(unit)
        open_units = still_open
    if not open_units:
        return outcome("unsat", "every disjunct proved infeasible")
    for unit in open_units:
        for point in _pgd(net64, unit, int(attack_steps), int(restarts), rng, deadline):
            found = _check(net64, net32, unit, point)
            if found is not None:
                return outcome("sat", "PGD found a counterexample", found)
    if time.perf_counter() > deadline:
        return outcome("timeout", "timed out during the attack")
    if not complete:
        return outcome("unknown", f"{len(open_units)} of {len(units)} disjuncts neither proved nor falsified")
    undecided = []
    for unit in open_units:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return outcome("timeout", "timed out during the exact MILP search")
        try:
            x = find_violation(net64, unit.lower, unit.upper, unit.C, unit.d, time_limit=min(remaining, 1e7))
        except ExactUndecided as err:
            if time.perf_counter() > deadline:
                return outcome("timeout", "timed out during the exact MILP search")
            undecided.append(str(err))
            continue
        except ValueError as err:  # a layer the MILP cannot encode (sigmoid, tanh)
            return outcome("unknown", f"exact search not possible: {err}")
        if x is None:
            prove("milp")
            continue
        found = _check(net64, net32, unit, x)
        if found is not None:
            return outcome("sat", "the exact MILP search found a counterexample", found)
        undecided.append("MILP found a violation in float64 that the float32 re-check does not confirm")
    if undecided:
        return outcome("unknown", f"{len(undecided)} disjunct(s) undecided: {undecided[0]}")
    return outcome("unsat", "every disjunct proved infeasible")
