"""Decide a VNN-LIB property on a network: ``sat``, ``unsat``, ``unknown`` or ``timeout`` (VNN-COMP).

The unsafe set is a union of disjuncts (box, C, d) (``refcert.io.vnnlib.read_vnnlib``): the property
is *sat* iff some x with lower ≤ x ≤ upper has C net(x) ≤ d (every row).  ``verify`` works on the
disjuncts still open, cheapest method first:
1. the box centres (a concrete point may already violate);
2. the abstract domains in the given order: a disjunct is proved infeasible when some row has a sound
   lower bound of C_i y − d_i above 0 over the box (C is applied as a final ``linear`` layer, as in
   ``refcert.spec``, so relational domains keep correlations);
3. PGD inside each box on max_i (C_i y − d_i) (Madry et al. ICLR'18, Sec. 2, with this objective);
4. branch and bound until decided, the deadline or its budget (``refcert.bab``): input splitting for nets
   with at most INPUT_SPLIT_DIMS inputs, else ReLU splitting with α,β-CROWN bounds; PGD runs on the worst
   open subproblem now and then;
5. with ``complete=True``, the exact MILP of ``refcert.exact.find_violation`` (Tjeng et al. ICLR'19) looks
   for a counterexample in what is still open (the last resort, for small nets).
*unsat* and *sat* carry the guarantee of proofs/floating_point.md, for the real box (VNN-LIB decimals read
exactly) and every execution in ``execution`` precision (default: the ONNX file's dtype; VNN-COMP checks
with onnxruntime in float32): *unsat* needs every disjunct proved by a sound bound (a strict unsafe row
C_i y < d_i is refuted by a bound ≥ d_i, a non-strict one by a bound > d_i); *sat* needs a point of the
execution precision inside the real box (exact test) at which an execution in that precision (refcert's
own forward pass; what a VNN-COMP checker re-runs) violates every row of one disjunct, compared exactly.
An exact MILP's
"infeasible" rests on a solver's tolerances, so under the sound policy it proves nothing: branch and
bound proves, the MILP only finds counterexamples.
Time limits (``timeout``, ``deadline``) are checked in every loop (disjuncts, domain passes between
layers, PGD steps, α iterations, branch-and-bound rounds); the MILP runs in a child process killed at the deadline
(``refcert.exact.find_violation``), so no step overruns by more than about one layer of a domain pass.
Running out of time gives ``timeout``: only proved verdicts are ``sat`` or ``unsat``.
Bounds are computed on a float64 copy of the net.  Boxes are given flat in VNN-LIB (ONNX) order, which
is the C order of the net's input (an ONNX file's transposed input is a ``Permute`` layer inside the
net), and counterexamples are returned in that order.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from fractions import Fraction

from refcert import autodiff as ad
from refcert import domains as domain_registry
from refcert import bab, fp, interpret, nn
from refcert.domains import alpha
from refcert.spec import elided, last_affine, through
from refcert.autodiff import Tensor
from refcert.certify import check_domains
from refcert.exact import ExactUndecided, find_violation
from refcert.io import vnnlib

DEFAULT_DOMAINS = ("deepzono", "deeppoly", "alpha-crown")
STATUSES = ("sat", "unsat", "unknown", "timeout")
#: most input-box pieces ``complete`` splits a disjunct into (sound domains on each piece)
#: nets with at most this many inputs are split on their inputs, larger ones on their ReLUs (refcert.bab)
INPUT_SPLIT_DIMS = 16
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
    """One disjunct: the box in refcert layout (1, *shape) (rounded outward), its output polytope C y ≤ d
    (``spec``: a vnnlib.Constraint with strict rows and d rounded both ways), and the real box
    (``exact``: Fractions (lower, upper) in refcert order, then which of those bounds are strict)."""
    lower: np.ndarray
    upper: np.ndarray
    C: np.ndarray   # (k, outputs)
    d: np.ndarray   # (k,)
    spec: object = None
    exact: tuple = None


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


def _units(net64, disjuncts, shape) -> list:
    """Validate the disjuncts against the net; boxes shaped as its input."""
    n = int(np.prod(shape))
    units = []
    for b, disjunct in enumerate(disjuncts):
        lower, upper, specs = disjunct
        lower, upper = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (lower, upper))
        if lower.size != n or upper.size != n:
            raise ValueError(f"the property has {lower.size} inputs but the network takes {n} "
                             f"(input shape {tuple(shape)})")
        if not np.all(np.isfinite(lower) & np.isfinite(upper)):
            raise ValueError(f"input box {b} is not finite")
        exact_lower = getattr(disjunct, "exact_lower", None) or [Fraction(float(v)) for v in lower]
        exact_upper = getattr(disjunct, "exact_upper", None) or [Fraction(float(v)) for v in upper]
        strict_lower = list(getattr(disjunct, "strict_lower", None) or [False] * n)
        strict_upper = list(getattr(disjunct, "strict_upper", None) or [False] * n)
        lower, upper = lower.reshape((1,) + tuple(shape)), upper.reshape((1,) + tuple(shape))
        for entry in specs:
            C, d = entry[0], entry[1]
            spec = entry if hasattr(entry, "strict") else vnnlib.constraint(C, d)
            C, d = np.atleast_2d(np.asarray(C, dtype=np.float64)), np.asarray(d, dtype=np.float64).reshape(-1)
            units.append(_Unit(lower, upper, C, d, spec, (exact_lower, exact_upper, strict_lower, strict_upper)))
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


def _refuted(unit: _Unit, lower: np.ndarray) -> np.ndarray:
    """Does a sound lower bound of C y (per row) put some exact row outside the unsafe set?  lower: (rows,)
    gives a bool, (B, rows) — a batch of subproblems, branch and bound's — one bool per subproblem."""
    spec = unit.spec
    above = np.where(spec.strict, lower >= np.asarray(spec.d_upper), lower > np.asarray(spec.d_upper))
    return np.any(above & np.asarray(spec.exact_rows), axis=-1)


def _inner_box(unit: _Unit, dtype: str):
    """(lower, upper) in ``dtype``: the floats of that precision that lie in the real box (may be empty);
    a strict input bound (``X_i > a``) excludes a itself."""
    def side(values, strict, direction):
        out = np.array([vnnlib.rounded(q, direction) for q in values], dtype=np.float64).astype(dtype)
        wrong_side = [(Fraction(float(v)) < q or (s and Fraction(float(v)) == q)) if direction > 0 else
                      (Fraction(float(v)) > q or (s and Fraction(float(v)) == q))
                      for v, q, s in zip(out, values, strict)]  # the cast rounded onto or past the bound
        out = np.where(wrong_side, np.nextafter(out, np.array(direction * np.inf, dtype=dtype)), out)
        return out.reshape(unit.lower.shape)
    strict_lower, strict_upper = unit.exact[2], unit.exact[3]
    return side(unit.exact[0], strict_lower, +1), side(unit.exact[1], strict_upper, -1)


def _check(net64, net32, unit: _Unit, x, execution: str):
    """(x, y32) if x — moved into the floats of the execution precision that lie in the real box — is a
    counterexample a VNN-COMP checker confirms: an execution in that precision (refcert's own forward pass)
    violates every row of the disjunct, compared exactly.  That refutes (b) of the guarantee.  A point
    where only the real network violates refutes (a) but is no checkable counterexample: None."""
    lower, upper = _inner_box(unit, execution)
    if np.any(lower > upper) or not np.all(unit.spec.exact_rows):
        return None
    x = np.clip(np.asarray(x, dtype=np.float64).reshape(unit.lower.shape).astype(execution), lower, upper)
    y64, y32 = _forward(net64, x.astype(np.float64))[0], _forward(net32, x.astype(np.float32))[0].astype(np.float64)
    y_p = y32 if execution == "float32" else y64
    return (x.astype(np.float64), y32) if _violates(unit, y_p) else None


def _violates(unit: _Unit, y) -> bool:
    """Exactly: does the output y (floats) lie in the disjunct's unsafe polytope?  An infinite output is
    compared as the float arithmetic of C y gives it; NaN violates nothing."""
    spec = unit.spec
    y = np.asarray(y, dtype=np.float64)
    finite = bool(np.all(np.isfinite(y)))
    exact_y = [Fraction(float(v)) for v in y] if finite else None
    for row, d, strict in zip(unit.C, spec.d_lower, spec.strict):
        if finite:
            value, bound = sum(Fraction(float(c)) * v for c, v in zip(row, exact_y) if c != 0), Fraction(float(d))
        else:
            with np.errstate(invalid="ignore"):
                value, bound = float(np.sum(row[row != 0] * y[row != 0])), float(d)
            if not np.isinf(value):  # finite or NaN: no infinite violation to judge exactly
                return False
        if not (value < bound if strict else value <= bound):
            return False
    return True


class _Expired(Exception):
    """The deadline passed; the message says during what.  ``verify`` turns it into ``timeout``."""


def _on_time(deadline, doing: str):
    if time.monotonic() > deadline:
        raise _Expired(doing)


def _layers(module) -> list:
    """The layers of ``module`` in order, nested Sequentials opened (a Residual stays one layer)."""
    if getattr(module, "structure", None) == "sequential":
        return [inner for layer in module.layers for inner in _layers(layer)]
    return [module]


def _spec_bounds(net64, element, C, deadline=math.inf, doing="during a domain pass"):
    """Sound (lower, upper) of C y over ``element`` (flat, (rows,)): the net under the policy's execution
    precision, the rows C (not executed by the network) with execution 'exact' (``spec.through``, one
    layer at a time).  Gives up (_Expired) before a step that would likely end past ``deadline``: one
    taking 1.5 times the longest step so far (DeepPoly's steps grow with depth)."""
    layers = _layers(net64) + [nn.Flatten()]
    last = last_affine(layers)  # the element before it gives the elided bound (``spec.elided``)
    steps = [lambda e, layer=layer: interpret.run([layer], e) for layer in layers]
    steps.append(lambda e: through([], e, Tensor(C[None])))
    longest, hidden = 0.0, None
    with ad.no_grad():
        for k, step in enumerate(steps):
            if k == last:
                hidden = element
            start = time.monotonic()
            _on_time(deadline - 1.5 * longest, doing)
            element = step(element)
            longest = max(longest, time.monotonic() - start)
        with alpha.use(deadline=deadline):  # alpha-crown stops optimising at the deadline (any α is sound)
            low, high = element.bounds()
        folded = None if hidden is None else elided(hidden, layers[last], layers[last + 1:], Tensor(C[None]))
        if folded is not None:
            low, high = ad.maximum(low, folded[0]), ad.minimum(high, folded[1])
    return low.numpy().reshape(-1), high.numpy().reshape(-1)


def _domain_lower(net64, name, group: list, lower=None, upper=None, deadline=math.inf) -> list:
    """Sound lower bounds of C y over the box, one (k,) array per unit of ``group`` (units that share one
    box; ``lower``/``upper`` override it, for a piece of a split box): one run of domain ``name`` with every
    unit's rows stacked into one specification layer."""
    C = np.concatenate([unit.C for unit in group])
    lower = group[0].lower if lower is None else lower
    upper = group[0].upper if upper is None else upper
    element = domain_registry.get(name).from_bounds(Tensor(lower), Tensor(upper))
    low = _spec_bounds(net64, element, C, deadline, f"while running domain {name!r}")[0]
    return np.split(low, np.cumsum([unit.d.size for unit in group])[:-1])


def _pgd(net64, unit: _Unit, steps, restarts, rng, deadline, starts=None) -> np.ndarray:
    """Points (restarts (+ starts), *shape) sorted by max_i (C_i y − d_i), lowest first: sign-gradient steps of
    size 2.5·radius/steps projected to the box (the first restart starts at the centre, then the given
    ``starts`` (m, *shape) inside the box, then random points)."""
    lower, upper = unit.lower, unit.upper
    z = lower + rng.random((restarts,) + lower.shape[1:]) * (upper - lower)   # zero-width coordinates too
    z[0] = (lower[0] + upper[0]) / 2
    if starts is not None and len(starts):
        z = np.concatenate([z[:1], np.clip(np.asarray(starts, dtype=z.dtype), lower, upper), z[1:]])
        restarts = z.shape[0]
    alpha = 2.5 * (upper - lower) / 2 / max(steps, 1)
    C, d = Tensor(unit.C.T), Tensor(unit.d)
    best, best_gap = z.copy(), np.full(restarts, np.inf)
    for step in range(steps + 1):
        if time.monotonic() > deadline:
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
           attack_steps: int = 50, restarts: int = 4, input_shape=None, execution=None,
           confirm=None, deadline=None) -> VerifyOutcome:
    """Decide the unsafe set ``disjuncts`` = [(lower, upper, [(C, d), ...]), ...] on ``net``.

    ``input_shape`` (no batch) defaults to ``net.input_shape`` (set by ``load_onnx``), else the box size;
    ``timeout`` seconds of wall clock from this call (None: no limit); ``deadline`` a ``time.monotonic()``
    value to answer by (the CLI passes its process start + ``--timeout``; with ``timeout`` too, the earlier
    wins); past it the answer is ``timeout``, within about one layer of a domain pass; ``execution`` 'float32' |
    'float64' (default: ``net.onnx_dtype`` from ``load_onnx``, else the net's dtype); ``confirm``: an optional
    second execution, x (flat, ONNX order, execution dtype) -> outputs (flat), that must violate too before
    ``sat`` (the CLI passes onnxruntime on the file itself, what a VNN-COMP checker runs).  Raises ValueError
    for properties that do not fit the net or a net with non-finite parameters.  Returns a
    ``VerifyOutcome`` (module docstring).
    """
    began = time.monotonic()
    for what, value in (("timeout", timeout), ("deadline", deadline)):
        if value is not None and not float(value) >= 0:  # NaN fails too
            raise ValueError(f"{what} must be a number of seconds >= 0 (or None), got {value!r}")
    deadline = min(math.inf if timeout is None else began + timeout, math.inf if deadline is None else deadline)
    names = check_domains(domains)  # unknown names, and point or exactline, fail before any work
    if int(attack_steps) < 0 or int(restarts) < 1 or int(seed) < 0:
        raise ValueError(f"need attack_steps >= 0, restarts >= 1 and seed >= 0, got {attack_steps}, {restarts}, "
                         f"{seed}")
    nn.check_finite(net)
    execution = fp.check_execution(execution) or fp.policy().execution or getattr(net, "onnx_dtype", None) \
        or nn.parameter_dtype(net) or "float32"
    if execution == "exact":
        raise ValueError("verify needs an execution precision (float32 or float64): a counterexample is a float")
    try:
        nn.check_range(net, execution)
    except ValueError as err:  # the error model does not cover this precision: no verdict either way
        return VerifyOutcome("unknown", None, None, time.monotonic() - began, {},
                             f"no guarantee for {execution} executions: {err}")
    with fp.use(execution=execution):
        return _verify(net, disjuncts, names, began, deadline, complete, seed, attack_steps, restarts,
                       input_shape, execution, confirm)


def _verify(net, disjuncts, names, began, deadline, complete, seed, attack_steps, restarts, input_shape,
            execution, confirm) -> VerifyOutcome:
    net64, net32 = _constant_copy(net, "float64"), _constant_copy(net, "float32")
    input_shape = input_shape or getattr(net, "input_shape", None) or (np.size(disjuncts[0][0]) if disjuncts else 0,)
    units = _units(net64, disjuncts, tuple(input_shape))
    proved = {}
    rng = np.random.default_rng(seed)
    def check(unit, x):
        found = _check(net64, net32, unit, x, execution)
        if found is None or confirm is None:
            return found
        y = np.asarray(confirm(found[0].reshape(-1).astype(execution)), dtype=np.float64).reshape(-1)
        return found if _violates(unit, y) else None

    def outcome(status, message, found=None):
        x, y = (None, None) if found is None else found
        if x is not None:
            x = x.reshape(-1)
        return VerifyOutcome(status, x, y, time.monotonic() - began, proved, message)

    def prove(method):
        proved[method] = proved.get(method, 0) + 1

    try:
        return _decide(net64, units, names, deadline, complete, attack_steps, restarts, rng, check, prove, outcome)
    except _Expired as err:  # nothing partial is kept: only a proved verdict is sat or unsat
        return outcome("timeout", f"timed out {err}")


def _decide(net64, units, names, deadline, complete, attack_steps, restarts, rng, check, prove, outcome):
    """The methods of the module docstring in turn; raises _Expired at the deadline."""
    open_units = []
    for unit in units:
        lows, highs, strict_lows, strict_highs = unit.exact
        if any(lo > hi or (lo == hi and (sl or sh)) for lo, hi, sl, sh in zip(lows, highs, strict_lows, strict_highs)):
            prove("empty box")  # no x at all: nothing to violate
        else:
            open_units.append(unit)
    for unit in open_units:
        _on_time(deadline, "while checking the box centres")
        found = check(unit, (unit.lower + unit.upper) / 2)
        if found is not None:
            return outcome("sat", "the centre of an input box violates the property", found)
    for name in names:
        still_open, boxes = [], {}
        for unit in open_units:  # units of one disjunct share their box arrays
            boxes.setdefault(id(unit.lower), []).append(unit)
        for group in boxes.values():
            _on_time(deadline, f"while running domain {name!r}")
            y_centre = _forward(net64, (group[0].lower + group[0].upper) / 2)[0]
            for unit, lower in zip(group, _domain_lower(net64, name, group, deadline=deadline)):
                if np.any(lower > unit.C @ y_centre):  # a sound bound covers every float64 pass
                    raise RuntimeError(f"domain {name!r} is unsound: its lower bound {lower.max():.6g} exceeds "
                                       f"the value at the box centre; refusing to verify")
                if _refuted(unit, lower):
                    prove(name)
                else:
                    still_open.append(unit)
        open_units = still_open
    if not open_units:
        return outcome("unsat", "every disjunct proved infeasible")
    for unit in open_units:
        _on_time(deadline, "during the attack")
        for point in _pgd(net64, unit, int(attack_steps), int(restarts), rng, deadline):
            found = check(unit, point)
            if found is not None:
                return outcome("sat", "PGD found a counterexample", found)
    _on_time(deadline, "during the attack")
    return _search(net64, open_units, deadline, complete, rng, check, prove, outcome, attack_steps)


def _search(net64, open_units, deadline, complete, rng, check, prove, outcome, attack_steps) -> VerifyOutcome:
    """What the domains and PGD leave open, until decided or the deadline: branch and bound
    (``refcert.bab``: input splitting for nets with at most INPUT_SPLIT_DIMS inputs, else ReLU splitting
    with α,β-CROWN bounds), a PGD attack on the worst open subproblem every round; then, with ``complete``,
    the exact MILP looks for a counterexample (its point is checked soundly; its "none" is a proof only
    without the sound policy, as it rests on solver tolerances)."""
    undecided = []
    for unit in open_units:
        _on_time(deadline, "during branch and bound")
        refuted = partial(_refuted, unit)
        rounds = [0]

        def attack(lower, upper, starts, unit=unit):
            rounds[0] += 1
            if rounds[0] % 4 != 2:  # now and then: on the whole box (ReLU splits: from the most promising
                return None         # subproblems' bound corners), the most promising piece (inputs)
            piece = dataclasses.replace(unit, lower=lower, upper=upper)
            for point in _pgd(net64, piece, max(int(attack_steps) // 2, 1), 2, rng, deadline, starts):
                found = check(unit, point)
                if found is not None:
                    return found
            return None
        method = bab.input_split if unit.lower.size <= INPUT_SPLIT_DIMS else bab.relu_split
        status, found = method(net64, unit.lower, unit.upper, unit.C, refuted, deadline, attack,
                               goal=unit.spec.d_upper)
        if status == "sat":
            return outcome("sat", "an attack inside branch and bound found a counterexample", found)
        if status == "unsat":
            prove("input splitting" if method is bab.input_split else "branch and bound")
            continue
        _on_time(deadline, "during branch and bound")
        note = "branch and bound reached its budget"
        if complete:
            try:  # past a finite deadline, the MILP's child process is killed (HiGHS may overrun time_limit)
                x = find_violation(net64, unit.lower, unit.upper, unit.C, unit.d,
                                   time_limit=min(deadline - time.monotonic(), 1e7), deadline=deadline)
            except ExactUndecided as err:
                _on_time(deadline, "during the exact MILP search")
                x, note = None, str(err)
            except ValueError as err:  # a layer the MILP cannot encode (sigmoid, tanh)
                x, note = None, f"exact search not possible: {err}"
            else:
                note = "the MILP found no violation"
            if x is not None:
                found = check(unit, x)
                if found is not None:
                    return outcome("sat", "the exact MILP search found a counterexample", found)
                note = "the MILP's violation does not hold in the sound re-check (a floating-point near-tie)"
            elif note == "the MILP found no violation" and not fp.policy().sound:
                prove("milp")
                continue
        undecided.append(note)
    if undecided:
        return outcome("unknown", f"{len(undecided)} disjunct(s) undecided: {undecided[0]}")
    return outcome("unsat", "every disjunct proved infeasible")
