"""The floating-point quirk family of ``refcert fuzz`` (``--family fp``; issue 11, item 5).

Small ReLU networks (1 or 2 inputs, float32 or float64 weights) whose float execution differs from the
real-valued function of the same weights, with properties whose thresholds sit at or within a few ulps
of the exact optimum.  Everything follows from an ``FpSpec``; ``random_spec(seed, index)`` draws it, so
(seed, index) alone reproduces a case byte for byte (as in ``cases``).

Semantics of the known answer (the guarantee stated in issue 11): the weights are the float values
stored in the ONNX file, the VNN-LIB constants are exact decimals (``Fraction(text)``), and
    sat  iff  some real input of the real box makes the real-valued network violate the property,
decided exactly by ``rational``.  ``fp_check.float_check`` records separately whether onnxruntime's
execution of the file (in its dtype) violates the property at some float input of the box.

Constructions (``QUIRKS``); the property is on output ``target``; u is the input x or, with ``deep``,
relu(x + o) computed by an extra layer; σ = ±1 and the neuron order are random:
  absorption    y = w (s u + a)^+ + σ B − σ B   (B a constant bias, ulp(B) >= 1, swallows the small term)
  cancellation  y = σ ((K u0 + v u1 + c)^+ − (K u0)^+)   (K ≈ 2^p: real c + v u1, float K u0 + c rounded)
  near_tie      an ordinary random 2–4 neuron layer; only the threshold is the quirk
  tiny_box      a box of width 10^-5..10^-10 (float64: ..10^-18) around c, often narrower than one ulp
                (holding one float or none); y = σ (g Σ ±(u_i − c_i))^+, g = 2^k with g · width ≈ 1
  tiny_scale    an ordinary box, hidden neurons 2^-k (s u + a) (k = 17..40: ranges below 10^-5) and output
                weights 2^k w: the real outputs are O(1), the hidden values tiny
  huge_bias     y = σ ((s u + v u1 + a + B)^+ − (B)^+), B = 2^30..2^120 (2^70..2^1000 in float64): the
                real function is s u + v u1 + (fl(a + B) − B), absorbed even in float64 arithmetic
The threshold is the exact optimum of y over the box (min for 'le', max for 'ge', either for 'band') moved
by a gap toward the sat side (side = +1) or the unsat side (−1): 'tie' (none), 'ulp64' / 'ulp32' (1–4 ulps
of the optimum), 'abs' (10^-4..10^-10), 'quirk' (the construction's own scale, e.g. ulp(B)/2).
'cmp_le' / 'cmp_ge' put the threshold into the network (a constant output, a float) and compare outputs.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np

from refcert.fuzz import rational as r

QUIRKS = ("absorption", "cancellation", "near_tie", "tiny_box", "tiny_scale", "huge_bias")
PROPS = ("le", "ge", "band", "cmp_le", "cmp_ge")
GAPS = ("tie", "ulp64", "ulp32", "abs", "quirk")
DTYPES = {"float32": np.float32, "float64": np.float64}
PRECISION = {"float32": 24, "float64": 53}


@dataclass(frozen=True)
class FpSpec:
    """Everything that determines an fp case."""
    seed: int              # draws magnitudes, box, decoys and gap (separate streams)
    quirk: str             # one of QUIRKS
    dtype: str             # 'float32' | 'float64': weights, input and output of the ONNX file
    n_inputs: int          # 1 or 2
    deep: bool             # an extra layer relu(x + o) before the quirk's layer
    decoys: int            # extra hidden neurons with ordinary weights, feeding the other outputs
    n_outputs: int
    target: int            # the output the property is about
    prop: str              # one of PROPS
    side: int              # +1: threshold on the sat side of the real optimum, -1: on the unsat side
    gap: str               # one of GAPS


@dataclass
class Core:
    """A construction: hidden neurons over u (rows, biases), the target's output weights and bias,
    the box as decimal strings, and the gap scale for 'quirk' (None: half an ulp of the optimum)."""
    W: np.ndarray
    b: np.ndarray
    w_out: np.ndarray
    b_out: float
    box: list
    scale: Fraction | None


@dataclass
class FpCase:
    spec: FpSpec
    layers: list             # [(W, b)] in spec.dtype; ReLU between layers
    onnx: bytes
    lower: tuple             # the exact box (Fractions), from box_text
    upper: tuple
    box_text: list           # [(lo, hi)] decimal strings as written in the VNN-LIB file
    atoms: list              # VNN-LIB atoms of the property (a conjunction)
    C: list                  # the same as rows C y <= d over the outputs (Fractions)
    d: list
    answer: str              # real semantics: 'sat' | 'unsat'
    witness: tuple | None    # a real point of the box violating the property (Fractions)
    float_x: np.ndarray | None   # a float input of the box where onnxruntime violates, or None
    float_method: str        # 'exhaustive' (every float of the box), 'sampled', or 'empty' (no float in the box)
    float_points: int        # how many float inputs were evaluated
    depth: Fraction = Fraction(0)   # max over region vertices of min_k (d − C y)_k: how deep the real
                                    # violation goes (< 0: how far from one; exact for one-row properties)

    @property
    def dtype(self):
        return DTYPES[self.spec.dtype]

    @property
    def divergent(self):
        """The real answer and the float execution disagree."""
        return (self.answer == "sat") != (self.float_x is not None)

    def size(self):
        """What shrinking minimises."""
        params = sum(W.size + b.size for W, b in self.layers)
        return (params, self.spec.n_inputs, self.spec.decoys, int(self.spec.deep), self.spec.n_outputs)


def random_spec(seed: int, index: int) -> FpSpec:
    rng = np.random.default_rng([seed, index, 11])
    quirk = str(rng.choice(QUIRKS))
    prop = str(rng.choice(PROPS, p=[.3, .3, .1, .15, .15]))
    n_outputs = 1 + prop.startswith("cmp") + int(rng.integers(0, 2))
    gap_p = [.25, .25, .25, .1, .15] if quirk == "near_tie" else [.15, .1, .15, .15, .45]
    return FpSpec(seed=int(rng.integers(2**31)), quirk=quirk, dtype="float64" if rng.random() < 0.1 else "float32",
                  n_inputs=2 if rng.random() < 0.3 else 1, deep=quirk != "tiny_box" and rng.random() < 0.25,
                  decoys=int(rng.choice([0, 0, 1, 2, 3])), n_outputs=n_outputs,
                  target=int(rng.integers(n_outputs)), prop=prop, side=1 if rng.random() < 0.5 else -1,
                  gap=str(rng.choice(GAPS, p=gap_p)))


# ---- constructions: (rng, dtype, precision, n_inputs) -> Core
def _box(rng, n):
    """Random boxes in [1/16, 1.3]: hundredths (not floats) or sixty-fourths (exact floats)."""
    out = []
    for _ in range(n):
        den = 100 if rng.random() < 0.5 else 64
        lo = int(rng.integers(den // 16, den - 1))
        hi = lo + int(rng.integers(1, den // 3))
        out.append((r.exact_decimal(Fraction(lo, den)), r.exact_decimal(Fraction(hi, den))))
    return out


def _sign(rng):
    return 1.0 if rng.random() < 0.5 else -1.0


def _big(rng, dt, k):
    return dt(2.0 ** k * (1.0 if rng.random() < 0.5 else rng.uniform(1, 2)))


def _absorption(rng, dt, p, n):
    B = _big(rng, dt, p + int(rng.integers(-1, 6)))
    small = [dt(_sign(rng) * rng.uniform(0.5, 4))] + [dt(rng.uniform(-1, 1)) for _ in range(n - 1)]
    a, w, sigma = dt(rng.uniform(-1, 2)), dt(_sign(rng) * rng.uniform(0.5, 2)), _sign(rng)
    if rng.random() < 0.5:   # B added as a neuron, subtracted as the output bias
        W, b, w_out, b_out = [small, [0.0] * n], [a, B], [w, sigma], -sigma * B
    else:                    # two equal neurons B with opposite output weights
        W, b, w_out, b_out = [small, [0.0] * n, [0.0] * n], [a, B, B], [w, sigma, -sigma], 0.0
    return _core(rng, dt, W, b, w_out, b_out, _box(rng, n), r.ulp(Fraction(float(B)), dt) / 2)


def _cancellation(rng, dt, p, n):
    K = _big(rng, dt, p + int(rng.integers(-2, 4)))
    c = dt(rng.choice([1.0, -1.0, 0.5, -0.5, rng.uniform(-2, 2)]))
    v = [dt(rng.uniform(-1, 1)) for _ in range(n - 1)]
    sigma = _sign(rng)
    W, b = [[K] + v, [K] + [0.0] * (n - 1)], [c, 0.0]
    return _core(rng, dt, W, b, [sigma, -sigma], 0.0, _box(rng, n), abs(Fraction(float(c))) / 2)


def _near_tie(rng, dt, p, n):
    width = int(rng.integers(2, 5))
    W, b = rng.uniform(-1, 1, (width, n)), rng.uniform(-0.5, 0.5, width)
    return _core(rng, dt, W, b, rng.uniform(-1, 1, width), rng.uniform(-0.5, 0.5), _box(rng, n), None)


def _tiny_box(rng, dt, p, n):
    exponent = int(rng.integers(5, 11)) if dt == np.float32 else int(rng.integers(5, 19))
    width = Fraction(1, 10 ** exponent)
    g = dt(2.0 ** (round(np.log2(10.0 ** exponent)) + int(rng.integers(-2, 3))))
    box, row, bias = [], [], Fraction(0)
    for _ in range(n):
        c = dt(0.5) if rng.random() < 0.3 else dt(rng.uniform(0.1, 0.9))
        center = Fraction(float(c))
        if rng.random() < 0.3:   # between two floats: the box holds no float at all
            center += r.ulp(center, dt) / 2
        box.append((r.exact_decimal(center - width / 2), r.exact_decimal(center + width / 2)))
        s = _sign(rng)
        row.append(s * g)
        bias -= Fraction(float(s * g)) * Fraction(float(c))       # exact: g is a power of two
    return _core(rng, dt, [row], [float(bias)], [_sign(rng)], 0.0, box, Fraction(float(g)) * width / 8)


def _tiny_scale(rng, dt, p, n):
    k = int(rng.integers(17, 41))
    width = int(rng.integers(1, 3))
    W = [[2.0 ** -k * rng.uniform(-2, 2) for _ in range(n)] for _ in range(width)]
    b = [2.0 ** -k * rng.uniform(-1, 1) for _ in range(width)]
    w_out = [2.0 ** k * rng.uniform(-2, 2) for _ in range(width)]
    return _core(rng, dt, W, b, w_out, rng.uniform(-0.5, 0.5), _box(rng, n), Fraction(1, 16))


def _huge_bias(rng, dt, p, n):
    k = int(rng.integers(30, 121)) if dt == np.float32 else int(rng.integers(70, 1001))
    B = _big(rng, dt, k)
    s = dt(_sign(rng) * rng.uniform(0.5, 4))
    v = [dt(rng.uniform(-1, 1)) for _ in range(n - 1)]
    a, sigma = dt(rng.uniform(-1, 1)), _sign(rng)
    if rng.random() < 0.5:
        W, b, w_out, b_out = [[s] + v, [0.0] * n], [a + B, B], [sigma, -sigma], 0.0
    else:
        W, b, w_out, b_out = [[s] + v], [a + B], [sigma], -sigma * B
    box = _box(rng, n)
    return _core(rng, dt, W, b, w_out, b_out, box, abs(Fraction(float(s))) / 4)


def _core(rng, dt, W, b, w_out, b_out, box, scale):
    """Round to dtype and shuffle the neuron order."""
    W, b, w_out = (np.asarray(v, dtype=np.float64).astype(dt) for v in (W, b, w_out))
    order = rng.permutation(len(b))
    return Core(W[order], b[order], w_out[order], dt(b_out), box, scale)


CONSTRUCTIONS = {"absorption": _absorption, "cancellation": _cancellation, "near_tie": _near_tie,
                 "tiny_box": _tiny_box, "tiny_scale": _tiny_scale, "huge_bias": _huge_bias}


def network(spec: FpSpec, core: Core, threshold=0.0):
    """[(W, b)]: optional deep layer, core + decoy neurons, outputs (target, comparison output, others)."""
    dt, n = DTYPES[spec.dtype], spec.n_inputs
    rng = np.random.default_rng([spec.seed, 2])
    layers = []
    if spec.deep:
        offsets = rng.integers(0, 9, n) / 16
        layers.append((np.eye(n, dtype=dt), offsets.astype(dt)))
    k = len(core.b)
    W = np.concatenate([core.W, rng.uniform(-1, 1, (spec.decoys, n)).astype(dt)])
    b = np.concatenate([core.b, rng.uniform(-0.5, 0.5, spec.decoys).astype(dt)])
    layers.append((W, b))
    out_W = np.zeros((spec.n_outputs, k + spec.decoys), dtype=dt)
    out_b = rng.uniform(-1, 1, spec.n_outputs).astype(dt)
    out_W[:, k:] = rng.uniform(-1, 1, (spec.n_outputs, spec.decoys)).astype(dt)
    out_W[spec.target] = np.concatenate([core.w_out, np.zeros(spec.decoys, dtype=dt)])
    out_b[spec.target] = core.b_out
    if spec.prop.startswith("cmp"):   # a constant output holding the threshold
        other = comparison_output(spec)
        out_W[other], out_b[other] = 0, dt(threshold)
    layers.append((out_W, out_b))
    return layers


def comparison_output(spec: FpSpec) -> int:
    return (spec.target + 1) % spec.n_outputs


def _gap(spec, core, optimum, dt, rng):
    if spec.gap == "tie":
        return Fraction(0)
    if spec.gap in ("ulp64", "ulp32"):
        return int(rng.integers(1, 5)) * r.ulp(optimum, DTYPES["float" + spec.gap[3:]])
    if spec.gap == "abs":
        return Fraction(1, 10 ** int(rng.integers(4, 11)))
    return core.scale if core.scale is not None else r.ulp(optimum, dt) / 2


def _decimal(value, side):
    """A decimal string for ``value`` (exact when it terminates), else just on ``side`` (+1 above, −1 below)."""
    text = r.exact_decimal(value)
    if text is None:
        tiny = Fraction(1, 2 ** 200) * max(1, abs(value))
        text = r.decimal_between(*sorted((value, value + side * tiny)))
    return text


def _threshold(spec, core, items, dt, rng):
    """(atoms, C, d, constant output or None) of the property, the threshold placed by side and gap."""
    m, t = spec.n_outputs, spec.target
    e = [[Fraction(int(j == i)) for j in range(m)] for i in range(m)]
    low, high = r.extremes(items, e[t])
    kind = spec.prop
    if kind == "band":
        kind = "ge" if rng.random() < 0.5 else "le"
    optimum = low if kind.endswith("le") else high
    gap = _gap(spec, core, optimum, dt, rng)
    toward_sat = 1 if kind.endswith("le") else -1         # 'le' is sat for thresholds >= min
    target = optimum + toward_sat * spec.side * gap
    if spec.prop.startswith("cmp"):
        value = dt(float(target))
        o = comparison_output(spec)
        C = [[e[t][j] - e[o][j] for j in range(m)]] if kind == "cmp_le" else [[e[o][j] - e[t][j] for j in range(m)]]
        atom = f"(<= Y_{t} Y_{o})" if kind == "cmp_le" else f"(<= Y_{o} Y_{t})"
        return [atom], C, [Fraction(0)], value
    text = _decimal(target, toward_sat * spec.side or 1)
    d = Fraction(text)
    if kind == "le":
        atoms, C, ds = [f"(<= Y_{t} {text})"], [e[t]], [d]
    else:
        atoms, C, ds = [f"(>= Y_{t} {text})"], [[-v for v in e[t]]], [-d]
    if spec.prop == "band":   # a second, loose bound on the far side: the unsafe set is a band
        width = (core.scale or Fraction(1, 4)) * 4 + (high - low)
        far = _decimal(d - width if kind == "le" else d + width, -toward_sat)
        atoms.append(f"(>= Y_{t} {far})" if kind == "le" else f"(<= Y_{t} {far})")
        C.append([-v for v in e[t]] if kind == "le" else e[t])
        ds.append(-Fraction(far) if kind == "le" else Fraction(far))
    return atoms, C, ds, None


def build(spec: FpSpec) -> FpCase:
    """The case of ``spec``: network, ONNX bytes, exact box and property, real answer, float behaviour."""
    from refcert.fuzz import fp_check
    dt = DTYPES[spec.dtype]
    core = CONSTRUCTIONS[spec.quirk](np.random.default_rng([spec.seed, 1]), dt, PRECISION[spec.dtype],
                                     spec.n_inputs)
    lower = tuple(Fraction(lo) for lo, _ in core.box)
    upper = tuple(Fraction(hi) for _, hi in core.box)
    layers = network(spec, core)
    items = r.regions(r.to_fractions(layers), lower, upper)
    atoms, C, d, constant = _threshold(spec, core, items, dt, np.random.default_rng([spec.seed, 3]))
    if constant is not None:
        layers = network(spec, core, constant)
        items = r.regions(r.to_fractions(layers), lower, upper)
    witness, corners = r.solve(items, C, d)
    depth = -min(fp_check.margin(C, d, r.forward(r.to_fractions(layers), v)) for v in r.vertices(items) + corners)
    case = FpCase(spec, layers, fp_check.onnx_model(layers, dt), lower, upper, core.box, atoms, C, d,
                  "sat" if witness is not None else "unsat", witness, None, "", 0, depth)
    extra = r.vertices(items) + corners + ([witness] if witness is not None else [])
    case.float_x, case.float_method, case.float_points = fp_check.float_check(case, extra)
    return case


def make_case(seed: int, index: int) -> FpCase:
    """Case ``index`` of campaign ``seed``."""
    return build(random_spec(seed, index))


def shrink_candidates(spec: FpSpec):
    """Smaller specs: fewer decoys, no deep layer, one input, fewer outputs (same quirk, gap and side)."""
    out = []
    if spec.decoys:
        out += [replace(spec, decoys=0)] + ([replace(spec, decoys=spec.decoys - 1)] if spec.decoys > 1 else [])
    if spec.deep:
        out.append(replace(spec, deep=False))
    if spec.n_inputs > 1:
        out.append(replace(spec, n_inputs=1))
    least = 2 if spec.prop.startswith("cmp") else 1
    if spec.n_outputs > least:
        out.append(replace(spec, n_outputs=spec.n_outputs - 1, target=min(spec.target, spec.n_outputs - 2)))
    return out
