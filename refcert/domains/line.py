"""Line domains for segment specifications: ExactLine and ApproxLine (REFERENCES.md, "Line specifications").

ExactLine (Sotoudeh & Thakur, "Computing linear restrictions of neural networks", NeurIPS'19, Sec. 3)
partitions the input segment x(t) = x_from + t (x_to − x_from), t ∈ [0, 1], into pieces on which a
piecewise-linear network is affine, and keeps every piece's exact image.  ApproxLine (Mirman, Gehr,
Vechev, "Robustness certification of generative models", PLDI'21, Sec. 4) keeps the same list of parts
but may replace runs of neighbouring pieces by their bounding box when there are more than ``budget``.

One element type serves both (``line_element``: ``LineElement``, its ``Parts``, ``segment``; re-exported
here).  This module is the line domains' top layer: ExactLine's transformers (shared by ApproxLine),
both domains' tables and their registration; it builds on ``line_approx`` (relaxation to a budget,
residual add, ApproxLine's sigmoid/tanh) and ``line_element``.  Floating point: the parts are computed in
plain float arithmetic; under the sound policy, verdicts use ``line_certify.confirm``, which re-bounds
every part's input piece in a sound domain (proofs/floating_point.md §6).  Not differentiable through
split points: these domains certify, they are not meant for DiffAI training.  Proofs: proofs/exactline.md,
proofs/approxline.md.
"""
from __future__ import annotations

import numpy as np

from refcert import autodiff as ad
from refcert import backends, domains
from refcert.autodiff import Tensor
from refcert.domains import point
from refcert.domains.line_approx import OWN_TRANSFORMERS, add, relax
from refcert.domains.line_approx import from_bounds as from_bounds_approx
from refcert.domains.line_element import (  # noqa: F401  (re-exported: the element and its splitting)
    LineElement, Parts, _flat_numpy, _map, segment, sign_crossings, split, subdivide)


# --- transformers -----------------------------------------------------------------------------------

def _affine(element: LineElement, op: str, params: dict) -> LineElement:
    """An affine op: segment endpoints map exactly; a box maps its center exactly and its radius by |L|."""
    def item(parts: Parts, b: int) -> Parts:
        q = dict(params)
        if op == "linear" and q["weight"].ndim == 3:  # per-input specification weight C (batch, out, in)
            q["weight"] = Tensor(q["weight"].value[b, ...])
            q["bias"] = None if q["bias"] is None else Tensor(q["bias"].value[b, ...])
        start = point.TRANSFORMERS[op](parts.start, **q)
        end = point.TRANSFORMERS[op](parts.end, **q)
        if not parts.is_box.any():
            return Parts(parts.t, start, end, parts.is_box)
        xp = backends.current().xp
        center = (start.value + end.value) / 2
        radius = _abs_linear(op, Tensor((parts.end.value - parts.start.value) / 2), q).value
        box = xp.reshape(backends.current().asarray(parts.is_box), (-1,) + (1,) * (start.ndim - 1))
        return Parts(parts.t, Tensor(xp.where(box, center - radius, start.value)),
                     Tensor(xp.where(box, center + radius, end.value)), parts.is_box)
    return _map(element, item, op, params)


def _abs_linear(op: str, r: Tensor, q: dict) -> Tensor:
    """|L| r for the linear part L of an affine op (interval arithmetic radius; r ≥ 0)."""
    if op == "linear":
        return point.linear(r, weight=ad.abs(q["weight"]), bias=None)
    if op == "conv2d":
        return point.conv2d(r, weight=ad.abs(q["weight"]), bias=None, stride=q["stride"], padding=q["padding"])
    if op == "normalize":
        return point.scale_by_std(r, std=ad.abs(q["std"]), feature_ndim=r.ndim - 1)
    if op == "batchnorm":
        return point.scale_channels(r, scale=ad.abs(q["scale"]), feature_ndim=r.ndim - 1)
    return point.TRANSFORMERS[op](r, **q)  # flatten, permute, avg_pool2d: linear with non-negative weights


def linear(x, *, weight, bias):
    return _affine(x, "linear", {"weight": weight, "bias": bias})


def conv2d(x, *, weight, bias, stride, padding):
    return _affine(x, "conv2d", {"weight": weight, "bias": bias, "stride": stride, "padding": padding})


def normalize(x, *, mean, std):
    return _affine(x, "normalize", {"mean": mean, "std": std})


def batchnorm(x, *, scale, shift):
    return _affine(x, "batchnorm", {"scale": scale, "shift": shift})


def flatten(x):
    return _affine(x, "flatten", {})


def permute(x, **params):
    return _affine(x, "permute", params)


def avg_pool2d(x, *, kernel_size, stride, padding=0):
    return _affine(x, "avg_pool2d", {"kernel_size": kernel_size, "stride": stride, "padding": padding})


def relu(element: LineElement) -> LineElement:
    """ExactLine, Sec. 3: split each segment where a coordinate changes sign, then ReLU the endpoints.

    Sound and exact: between consecutive split points every coordinate keeps its sign, so ReLU is
    affine there; a box goes by interval ReLU (monotone).  Then ApproxLine relaxes to its budget."""
    def item(parts: Parts, b: int) -> Parts:
        m, s = sign_crossings(_flat_numpy(parts.start), _flat_numpy(parts.end))
        parts = split(parts, m, s)
        return Parts(parts.t, ad.relu(parts.start), ad.relu(parts.end), parts.is_box)
    return relax(_map(element, item, "relu", {}))


def _windows(x: np.ndarray, kernel_size: int, stride: int, padding: int) -> np.ndarray:
    """(M, C, H, W) -> (M, C·Ho·Wo, k²): the entries of each max-pool window (padding = −inf)."""
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=-np.inf)
    Ho = (x.shape[2] - kernel_size) // stride + 1
    Wo = (x.shape[3] - kernel_size) // stride + 1
    cols = [x[:, :, i:i + stride * (Ho - 1) + 1:stride, j:j + stride * (Wo - 1) + 1:stride]
            for i in range(kernel_size) for j in range(kernel_size)]
    return np.stack(cols, axis=-1).reshape(x.shape[0], -1, kernel_size * kernel_size)


#: most refinement rounds for max-pool before refusing (each round splits at argmax changes)
MAXPOOL_ROUNDS = 64


def max_pool2d(element: LineElement, *, kernel_size, stride, padding=0) -> LineElement:
    """ExactLine, Sec. 3 (max-pool): split segments until one window entry is maximal at both ends
    of every piece (then, all entries being affine, it is maximal throughout: max is affine there);
    boxes go by max of lowers and max of uppers (monotone)."""
    def item(parts: Parts, b: int) -> Parts:
        for _ in range(MAXPOOL_ROUNDS):
            seg = ~parts.is_box
            if not seg.any():
                break
            va = _windows(np.asarray(backends.to_numpy(parts.start.value))[seg], kernel_size, stride, padding)
            vb = _windows(np.asarray(backends.to_numpy(parts.end.value))[seg], kernel_size, stride, padding)
            tol = 1e-12 * (1.0 + np.abs(np.nan_to_num(np.concatenate([va, vb]), neginf=0)).max(initial=0.0))
            a, bb = va.argmax(-1), vb.argmax(-1)
            max_a, max_b = va.max(-1), vb.max(-1)
            a_at_b = np.take_along_axis(vb, a[..., None], -1)[..., 0]
            b_at_a = np.take_along_axis(va, bb[..., None], -1)[..., 0]
            kink = (a_at_b < max_b - tol) & (b_at_a < max_a - tol)
            m, j = np.nonzero(kink)
            if m.size == 0:
                break
            d0 = max_a[m, j] - b_at_a[m, j]          # y_a − y_b at the start (> 0)
            d1 = a_at_b[m, j] - max_b[m, j]          # y_a − y_b at the end (< 0)
            parts = split(parts, np.nonzero(seg)[0][m], d0 / (d0 - d1))
        else:
            raise RuntimeError(f"{element.domain}: max_pool2d still has argmax changes after "
                               f"{MAXPOOL_ROUNDS} refinement rounds; refusing rather than returning an unsound piece")
        return Parts(parts.t, point.max_pool2d(parts.start, **params), point.max_pool2d(parts.end, **params),
                     parts.is_box)
    params = {"kernel_size": kernel_size, "stride": stride, "padding": padding}
    return relax(_map(element, item, "max_pool2d", params))


def _not_piecewise_linear(op: str):
    def refuse(element, **params):
        raise NotImplementedError(f"exactline cannot run {op}: it is not piecewise linear, so no finite set "
                                  f"of pieces is exact; use domain 'approxline' (sound boxes) instead")
    return refuse


def from_bounds_exact(lower, upper) -> LineElement:
    """Only a degenerate box (lower == upper, a point) is a segment; anything else is refused."""
    lower, upper = ad.as_tensor(lower), ad.as_tensor(upper)
    if lower.shape != upper.shape or not bool(np.all(lower.numpy() == upper.numpy())):
        raise ValueError("line domains hold segments; use refcert.domains.line.segment(x_from, x_to) "
                         "(exactline accepts from_bounds only for lower == upper)")
    return segment(lower, upper)


EXACTLINE = {
    "linear": linear, "conv2d": conv2d, "normalize": normalize, "batchnorm": batchnorm, "flatten": flatten, "permute": permute,
    "avg_pool2d": avg_pool2d, "max_pool2d": max_pool2d, "relu": relu,
    "sigmoid": _not_piecewise_linear("sigmoid"), "tanh": _not_piecewise_linear("tanh"), "add": add,
}
TRANSFORMERS = EXACTLINE
APPROXLINE = {**EXACTLINE, **OWN_TRANSFORMERS}
domains.register("exactline", EXACTLINE, from_bounds_exact)
domains.register("approxline", APPROXLINE, from_bounds_approx)
