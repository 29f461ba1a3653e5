"""Exact rational analysis of small ReLU networks with one or two inputs (the oracle of ``fp_family``).

A network is a list of layers ``(W, b)`` (ReLU between layers, none after the last) whose entries are
``fractions.Fraction`` — the float32/float64 weights of an ONNX file converted exactly.  Everything here is
real arithmetic, no rounding anywhere:

* ``regions(layers, lower, upper)`` splits the input box into the linear regions of the network: convex
  polygons (or segments, or points) on which every neuron has a fixed ReLU phase, each with the exact
  affine output map.  With one or two inputs a region is a polygon, cut by the hyperplane of each
  pre-activation in turn (Sutherland–Hodgman clipping against a half-plane, closed on both sides, so a
  point on a kink belongs to both pieces).
* ``extremes`` gives min / max of a linear function of the outputs over the box: the function is linear
  on each region, so the extremes are attained at region vertices.
* ``solve`` decides  "∃ x in the box: C y(x) <= d"  exactly: the constraints are linear in x inside a region,
  so clip the region by each row; a non-empty remainder holds a witness (the average of its vertices).
* ``exact_decimal`` / ``decimal_between`` write rationals as VNN-LIB decimals that read back exactly with
  ``Fraction(text)``; ``float_floor`` / ``float_ceil`` / ``float_grid`` round rationals to float32/float64.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


def to_fractions(layers):
    """[(W, b)] of floats -> the same values as nested lists of Fractions (exact: floats are dyadic)."""
    return [([[Fraction(float(v)) for v in row] for row in np.asarray(W)],
             [Fraction(float(v)) for v in np.asarray(b)]) for W, b in layers]


def forward(layers, x):
    """The exact outputs at the point x (a sequence of Fractions)."""
    h = list(x)
    for i, (W, b) in enumerate(layers):
        h = [sum((w * v for w, v in zip(row, h)), Fraction(0)) + c for row, c in zip(W, b)]
        if i < len(layers) - 1:
            h = [max(v, Fraction(0)) for v in h]
    return h


# ---- convex polygons (vertex lists in cyclic order) of dimension <= 2 in R^n, n in {1, 2}
def _dedupe(points):
    out = []
    for p in points:
        if not out or p != out[-1]:
            out.append(p)
    while len(out) > 1 and out[0] == out[-1]:
        out.pop()
    return out


def box_polygon(lower, upper):
    """The box as a cyclic vertex list (degenerate sides collapse to segments or a point)."""
    if len(lower) == 1:
        return _dedupe([(lower[0],), (upper[0],)])
    if len(lower) == 2:
        (l0, l1), (h0, h1) = lower, upper
        return _dedupe([(l0, l1), (h0, l1), (h0, h1), (l0, h1)])
    raise ValueError(f"the exact oracle handles 1 or 2 inputs, got {len(lower)}")


def _value(affine, p):
    coefs, const = affine
    return sum((c * v for c, v in zip(coefs, p)), const)


def clip(poly, affine):
    """The part of the convex polygon where the affine function is <= 0 (Sutherland–Hodgman, one edge)."""
    values = [_value(affine, p) for p in poly]
    out = []
    for i, (p, fp) in enumerate(zip(poly, values)):
        q, fq = poly[(i + 1) % len(poly)], values[(i + 1) % len(poly)]
        if fp <= 0:
            out.append(p)
        if (fp < 0 < fq) or (fq < 0 < fp):
            t = fp / (fp - fq)
            out.append(tuple(a + t * (b - a) for a, b in zip(p, q)))
    return _dedupe(out)


def _negate(affine):
    coefs, const = affine
    return tuple(-c for c in coefs), -const


def _layer(W, b, h):
    """Affine maps of W h + b, h a list of affine maps (coefs, const) of the input."""
    n = len(h[0][0])
    return [(tuple(sum((w * a[0][k] for w, a in zip(row, h)), Fraction(0)) for k in range(n)),
             sum((w * a[1] for w, a in zip(row, h)), Fraction(0)) + c) for row, c in zip(W, b)]


def regions(layers, lower, upper):
    """[(polygon, output affine maps)] covering the box; the outputs are exactly affine on each polygon."""
    n = len(lower)
    identity = [(tuple(Fraction(int(i == k)) for k in range(n)), Fraction(0)) for i in range(n)]
    items = [(box_polygon(lower, upper), identity)]
    for index, (W, b) in enumerate(layers):
        items = [(poly, _layer(W, b, h)) for poly, h in items]
        if index == len(layers) - 1:
            break
        for j in range(len(b)):
            split = []
            for poly, h in items:
                values = [_value(h[j], p) for p in poly]
                off = h[:j] + [((Fraction(0),) * n, Fraction(0))] + h[j + 1:]
                if all(v <= 0 for v in values):
                    split.append((poly, off))
                elif all(v >= 0 for v in values):
                    split.append((poly, h))
                else:
                    split += [(clip(poly, h[j]), off), (clip(poly, _negate(h[j])), h)]
            items = [(poly, h) for poly, h in split if poly]
    return items


def _combine(row, outputs):
    """The affine map row . y(x) on a region."""
    n = len(outputs[0][0])
    return (tuple(sum((r * y[0][k] for r, y in zip(row, outputs)), Fraction(0)) for k in range(n)),
            sum((r * y[1] for r, y in zip(row, outputs)), Fraction(0)))


def extremes(items, row):
    """(min, max) of row . y over the box, exactly."""
    values = [_value(_combine(row, outputs), p) for poly, outputs in items for p in poly]
    return min(values), max(values)


def vertices(items):
    """Every region vertex (the kinks of the network on the box and the box corners)."""
    return sorted({p for poly, _ in items for p in poly})


def solve(items, C, d):
    """A point x of the box with C y(x) <= d (every row), as a tuple of Fractions, or None; exact.

    Also returns the vertices of the violating polygon (useful float candidates): (witness, [vertices])."""
    for poly, outputs in items:
        for row, bound in zip(C, d):
            coefs, const = _combine(row, outputs)
            poly = clip(poly, (coefs, const - bound))
            if not poly:
                break
        if poly:
            return tuple(sum(c) / len(poly) for c in zip(*poly)), poly
    return None, []


# ---- decimals and floats
def exact_decimal(value: Fraction, max_digits: int = 400):
    """The terminating decimal string equal to ``value``, or None when it has none (or is too long)."""
    den, twos, fives = value.denominator, 0, 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    k = max(twos, fives)
    if den != 1 or k > max_digits:
        return None
    digits = str(abs(value.numerator * 10 ** k // value.denominator)).rjust(k + 1, "0")
    text = digits[:len(digits) - k] + ("." + digits[len(digits) - k:] if k else "")
    text = (text.rstrip("0").rstrip(".") if "." in text else text) or "0"
    return ("-" if value < 0 else "") + text


def decimal_between(a: Fraction, b: Fraction, max_digits: int = 400):
    """The shortest decimal string s with a < Fraction(s) < b (a < b), fewest digits after the point."""
    if not a < b:
        raise ValueError(f"empty interval ({a}, {b})")
    for k in range(max_digits + 1):
        m = math.floor(a * 10 ** k) + 1
        if Fraction(m, 10 ** k) < b:
            return exact_decimal(Fraction(m, 10 ** k))
    raise ValueError("interval too narrow for the decimal digits allowed")


def float_floor(value: Fraction, dtype):
    """The largest float of ``dtype`` that is <= value."""
    f = dtype(float(value))
    while Fraction(float(f)) > value:
        f = np.nextafter(f, dtype(-np.inf))
    while Fraction(float(np.nextafter(f, dtype(np.inf)))) <= value:
        f = np.nextafter(f, dtype(np.inf))
    return f


def float_ceil(value: Fraction, dtype):
    """The smallest float of ``dtype`` that is >= value."""
    f = float_floor(value, dtype)
    return f if Fraction(float(f)) == value else np.nextafter(f, dtype(np.inf))


def float_grid(lo: Fraction, hi: Fraction, dtype, limit: int):
    """Every float of ``dtype`` in [lo, hi] in increasing order, or None if there are more than ``limit``."""
    out, f = [], float_ceil(lo, dtype)
    while Fraction(float(f)) <= hi:
        if len(out) == limit:
            return None
        out.append(f)
        f = np.nextafter(f, dtype(np.inf))
    return out


def ulp(value: Fraction, dtype):
    """The spacing of ``dtype`` floats at |value| (at least the smallest normal spacing)."""
    f = float_floor(abs(value), dtype)
    return Fraction(float(np.nextafter(f, dtype(np.inf)))) - Fraction(float(f))
