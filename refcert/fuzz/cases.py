"""Fuzz cases: small random networks with benchmark quirks, properties near the decision boundary, and
their known answers.  Everything follows from a ``Spec`` (a few integers, flags and one weight seed),
and ``random_spec(seed, index)`` draws the spec, so (seed, index) alone reproduces a case byte for byte.

Known answer (the exact MILP oracle ``refcert.exact.find_violation``, with a margin ``tau``):
``sat`` when some disjunct has a point with  C y <= d - tau  (the witness, re-checked in float64 by the
refcert net and in float32 by onnxruntime); ``unsat`` when no disjunct has a point with C y <= d + tau;
otherwise (the optimum is within tau of the threshold, where float32 verifiers may legitimately
differ, or the MILP is undecided) ``unknown``.  Sigmoid nets have no exact oracle: ``sat`` only from a
sampled, validated witness, else ``unknown``.  tau = 2 * TOL_Y * (1 + max|d|), so a "sat" claim on an
unsat case can never pass the counterexample check of the runner, whose slack is TOL_Y * (1 + max|d|).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from refcert import nn
from refcert.autodiff import no_grad
from refcert.exact import ExactUndecided, exact_bounds, find_violation
from refcert.fuzz import quirks as q

TOL_Y = 1e-4          # slack (relative to 1 + max|d|) when re-checking a claimed counterexample
TOL_X = 1e-6          # slack on the input box (Marabou prints counterexamples with 6 decimals)
PROPS = ("lower", "upper", "robust", "conj", "linear")


@dataclass(frozen=True)
class Spec:
    """Everything that determines a case.  input_shape is refcert's (no batch): (n,) or (C, H, W)."""
    weight_seed: int
    input_shape: tuple
    hidden: tuple            # widths of the hidden fully connected layers
    conv_channels: int       # 0: no convolution
    maxpool: bool
    residual: bool
    activation: str          # 'relu' or 'sigmoid'
    n_outputs: int
    quirks: tuple            # subset of quirks.QUIRKS
    prop: str                # one of PROPS
    n_fixed: int             # input coordinates with lower == upper
    side: int                # +1: threshold on the sat side of the optimum, -1: unsat side
    gap: float               # |d - optimum| as a fraction of the output range


@dataclass
class Case:
    spec: Spec
    net: nn.Sequential       # float64 parameters holding float32 values
    onnx: bytes
    lower: np.ndarray        # refcert order, (n,)
    upper: np.ndarray
    disjuncts: list          # [(C, d)] over the flat outputs, all on the box [lower, upper]
    answer: str              # 'sat' | 'unsat' | 'unknown'
    witness: np.ndarray | None   # refcert order, (n,)

    def vnnlib_disjuncts(self):
        """[(lower, upper, [(C, d), ...])] in the ONNX input order, for write_vnnlib."""
        to = (lambda v: q.to_onnx_order(v, self.spec.input_shape, self.spec.quirks))
        return [(to(self.lower), to(self.upper), [(C, d) for C, d in self.disjuncts])]

    def size(self):
        """What shrinking minimises: parameters, then quirks, free inputs and specification rows."""
        params = sum(int(np.prod(p.shape)) for p in self.net.parameters())
        free = int(np.sum(self.lower < self.upper))
        return (params, len(self.spec.quirks), free, sum(C.shape[0] for C, _ in self.disjuncts))


def random_spec(seed: int, index: int, attempt: int = 0) -> Spec:
    rng = np.random.default_rng([seed, index, attempt])
    image = rng.random() < 0.4
    input_shape = ((1, 4, 4) if rng.random() < 0.6 else (2, 5, 5)) if image else (int(rng.integers(2, 17)),)
    activation = "sigmoid" if rng.random() < 0.1 else "relu"
    allowed = ["sub_div", "final_relu"] + (["nhwc", "reshape"] if image else ["matmul_first"])
    quirks = tuple(sorted(k for k in allowed if rng.random() < 0.25))
    props = ["lower", "upper", "conj", "linear"] + ([] if "final_relu" in quirks else ["robust", "robust"])
    prop = str(rng.choice(props, p=None if len(props) == 4 else [.2, .2, .1, .1, .2, .2]))
    n_in = int(np.prod(input_shape))
    return Spec(weight_seed=int(rng.integers(2**31)), input_shape=input_shape,
                hidden=tuple(int(w) for w in rng.integers(3, 9, size=int(rng.integers(1, 3)))),
                conv_channels=int(rng.integers(2, 4)) if image else 0,
                maxpool=bool(image and rng.random() < 0.3), residual=bool(rng.random() < 0.2),
                activation=activation, n_outputs=int(rng.integers(2, 5)), quirks=quirks, prop=prop,
                n_fixed=int(rng.integers(1, n_in)) if rng.random() < 0.25 else 0,
                side=1 if rng.random() < 0.5 else -1,
                gap=1e-3 if rng.random() < 0.3 else float(np.round(rng.uniform(0.02, 0.3), 3)))


def build_net(spec: Spec) -> nn.Sequential:
    """The random network of ``spec``: float64 parameters rounded to float32 values."""
    rng = np.random.default_rng(spec.weight_seed)
    act = nn.ReLU if spec.activation == "relu" else nn.Sigmoid
    layers, shape = [], spec.input_shape
    if "sub_div" in spec.quirks:
        channels = shape[0] if len(shape) == 3 else 1
        layers.append(nn.Normalize(np.round(rng.uniform(0.2, 0.6, channels), 3),
                                   np.round(rng.uniform(0.3, 1.5, channels), 3), dtype="float64"))
    if spec.conv_channels:
        k, stride = (2, 1) if shape[1] == 4 else (3, 2)
        layers += [nn.Conv2d(shape[0], spec.conv_channels, k, stride=stride, padding=int(rng.integers(0, 2)),
                             rng=rng, dtype="float64"), act()]
        if spec.maxpool:
            layers.append(nn.MaxPool2d(2, stride=2))
        layers.append(nn.Flatten())
    with no_grad():
        n = int(np.prod(nn.Sequential(*layers)(np.zeros((1,) + shape)).shape[1:]))
    if spec.residual:
        layers.append(nn.Residual(nn.Sequential(nn.Linear(n, n, rng=rng, dtype="float64"), act(),
                                                nn.Linear(n, n, rng=rng, dtype="float64"))))
    for width in spec.hidden:
        layers += [nn.Linear(n, width, rng=rng, dtype="float64"), act()]
        n = width
    layers.append(nn.Linear(n, spec.n_outputs, rng=rng, dtype="float64"))
    if "final_relu" in spec.quirks:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers).astype("float32").astype("float64")


def _rows(spec: Spec, rng):
    """The specification rows before thresholds: a list of disjuncts, each C (k, m)."""
    m = spec.n_outputs
    e = np.eye(m)
    j, k = rng.choice(m, size=2, replace=False)
    if spec.prop == "lower":
        return [e[j:j + 1]]
    if spec.prop == "upper":
        return [-e[j:j + 1]]
    if spec.prop == "robust":   # some y_k >= y_label
        return [(e[j] - e[i])[None] for i in range(m) if i != j]
    if spec.prop == "conj":
        return [np.stack([e[j], -e[k]])]
    return [np.round(rng.uniform(-1, 1, (1, m)), 2)]


def _outputs(net, x):
    with no_grad():
        return net(np.asarray(x, dtype=np.float64)).numpy().reshape(len(x), -1)


def build(spec: Spec) -> Case:
    """The case of ``spec``: net, ONNX bytes, box, thresholds placed near the optimum, known answer."""
    rng = np.random.default_rng([spec.weight_seed, 1])
    net = build_net(spec)
    n = int(np.prod(spec.input_shape))
    center, radius = rng.uniform(0.1, 0.9, n), rng.uniform(0.02, 0.25, n)
    lower = np.round(np.clip(center - radius, 0, 1) * 256) / 256
    upper = np.maximum(np.round(np.clip(center + radius, 0, 1) * 256) / 256, lower + 1 / 256)
    fixed = rng.choice(n, size=spec.n_fixed, replace=False)
    upper[fixed] = lower[fixed]
    box = (lower.reshape((1,) + spec.input_shape), upper.reshape((1,) + spec.input_shape))
    rows = _rows(spec, rng)
    samples = lower + rng.random((256, n)) * (upper - lower)
    if spec.prop == "conj":     # thresholds from a random point: y_j <= y_j(x0) + g, y_k >= y_k(x0) - g
        ys = _outputs(net, samples.reshape((-1,) + spec.input_shape))
        spread = float(np.max(np.ptp(ys @ rows[0].T, axis=0))) + 1e-3
        d_list = [np.float32(rows[0] @ ys[0] + spec.side * spec.gap * spread).astype(np.float64)]
    else:
        stacked = np.concatenate(rows)
        head = nn.Linear(spec.n_outputs, stacked.shape[0], dtype="float64")
        head.params["weight"].value[...] = stacked
        head.params["bias"].value[...] = 0.0
        probe = nn.Sequential(*net.layers, head)
        if spec.activation == "relu":
            lo, hi = (b.reshape(-1) for b in exact_bounds(probe, *box)[:2])
        else:
            values = _outputs(probe, samples.reshape((-1,) + spec.input_shape))
            lo, hi = values.min(0), values.max(0)
        optimum, spread = lo.min(), float(np.max(hi - lo)) + 1e-3
        d = float(np.float32(optimum + spec.side * spec.gap * spread))
        if spec.prop == "robust":   # fold d into the label's bias: rows y_label - y_i <= 0 (plain VNN-LIB)
            label = int(np.argmax(rows[0][0]))
            bias = net.layers[-1].params["bias"].value
            bias[label] = np.float32(bias[label] - d)
            d = 0.0
        d_list = [np.full(C.shape[0], d) for C in rows]
    disjuncts = [(C, np.asarray(d, dtype=np.float64)) for C, d in zip(rows, d_list)]
    onnx = q.onnx_bytes(net, spec.input_shape, spec.quirks)
    answer, witness = _answer(spec, net, onnx, box, disjuncts, samples)
    return Case(spec, net, onnx, lower, upper, disjuncts, answer, witness)


def violation(case: Case, x, float32_onnx: bool):
    """min over disjuncts of max_k (C y - d)_k at x (refcert order): <= 0 iff x violates the property.

    float32_onnx: evaluate the ONNX file with onnxruntime (float32), else the refcert net in float64."""
    x = np.asarray(x, dtype=np.float64).reshape(1, -1)
    if float32_onnx:
        y = q.run_onnxruntime(case.onnx, q.to_onnx_order(x, case.spec.input_shape, case.spec.quirks),
                              case.spec.input_shape, case.spec.quirks)[0].astype(np.float64)
    else:
        y = _outputs(case.net, x.reshape((1,) + case.spec.input_shape))[0]
    return min(float(np.max(C @ y - d)) for C, d in case.disjuncts)


def _answer(spec, net, onnx, box, disjuncts, samples):
    tau = 2 * TOL_Y * (1 + max(float(np.abs(d).max()) for _, d in disjuncts))
    probe = Case(spec, net, onnx, box[0].ravel(), box[1].ravel(), disjuncts, "unknown", None)
    if spec.activation != "relu":   # no exact oracle: a validated sampled witness, else unknown
        for x in samples:
            if violation(probe, x, False) <= -tau and violation(probe, x, True) <= -tau:
                return "sat", x
        return "unknown", None
    try:
        for C, d in disjuncts:
            x = find_violation(net, *box, C, d - tau)
            if x is not None and violation(probe, x.ravel(), False) <= 0 and violation(probe, x.ravel(), True) <= 0:
                return "sat", x.ravel()
        if all(find_violation(net, *box, C, d + tau) is None for C, d in disjuncts):
            return "unsat", None
    except ExactUndecided:
        pass
    return "unknown", None


def make_case(seed: int, index: int, attempts: int = 4) -> Case:
    """Case ``index`` of campaign ``seed``: redraws (up to ``attempts``) while the answer is unknown."""
    for attempt in range(attempts):
        case = build(random_spec(seed, index, attempt))
        if case.answer != "unknown" or case.spec.activation != "relu":
            return case
    return case


def shrink_candidates(spec: Spec):
    """Smaller specs: drop a hidden layer, halve a width, drop conv/pool/residual/a quirk, fix inputs, one row."""
    out = []
    for i in range(len(spec.hidden)):
        if len(spec.hidden) > 1:
            out.append(replace(spec, hidden=spec.hidden[:i] + spec.hidden[i + 1:]))
        if spec.hidden[i] > 1:
            out.append(replace(spec, hidden=spec.hidden[:i] + (spec.hidden[i] // 2,) + spec.hidden[i + 1:]))
    if spec.residual:
        out.append(replace(spec, residual=False))
    if spec.maxpool:
        out.append(replace(spec, maxpool=False))
    if spec.conv_channels > 1:
        out.append(replace(spec, conv_channels=spec.conv_channels - 1))
    out += [replace(spec, quirks=tuple(k for k in spec.quirks if k != drop)) for drop in spec.quirks]
    n_in = int(np.prod(spec.input_shape))
    if spec.n_fixed < n_in - 1:
        out.append(replace(spec, n_fixed=min(n_in - 1, spec.n_fixed + max(1, (n_in - spec.n_fixed) // 2))))
    if spec.prop in ("robust", "conj", "linear"):
        out.append(replace(spec, prop="lower"))
    if spec.n_outputs > 2:
        out.append(replace(spec, n_outputs=spec.n_outputs - 1))
    return out


def unfinished(outcome):
    """(class, detail) for an outcome that decided nothing — 'crash' (an error) or 'incomplete' (unknown,
    timeout) — else None: the start of every family's classification."""
    if outcome.status == "error":
        return "crash", outcome.message
    if outcome.status in ("unknown", "timeout"):
        return "incomplete", outcome.status
    return None
