"""Certification of geometric specifications: is the prediction constant under every rotation, translation,
scaling, shearing, contrast and brightness change in a box of parameters (DeepG, Balunović et al., NeurIPS
2019), optionally with an L∞ ball on top?

For an image x with label t, a specification (``refcert.geometric.parse``: a box P of parameters) and a
radius eps, the set is S = {T_p(x) + δ : p ∈ P, |δ|∞ ≤ eps, T_p(x) + δ inside [min(clip₀, T_p(x)),
max(clip₁, T_p(x))]}: the ball is clipped, the transformed image is not (brightness may leave [0, 1]), with
T_p the real-valued transformation
(``refcert.geometric``'s convention).  The images a network is actually given are computed: refcert's
float64 ``transform`` (within ``geometric.float_error`` of T_p(x)), then rounded to the execution precision.
The set bounded here covers all of them: the pieces' pixel bounds hold for T_p(x) and for ``transform``'s
output, and are widened by the rounding to the execution precision (``_rounding``).

- ``verified``: P is cut into ``splits`` parts per parameter (``geometric.pieces``); for every piece the
  domain's sound lower bound of min_{j≠t} y_t − y_j over the piece's input set is > 0.  The input set of a
  piece is (``bounds``) either ``"interval"``: per-pixel intervals (``geometric.interval_bounds``) widened
  by eps, the ball's part clipped, a box; or ``"linear"``: DeepG's A p + b ± c (``geometric.linear_bounds``)
  with c widened by eps, built by ``Domain.from_affine`` with the piece as the parameter box, so the
  pixels stay correlated through the parameters (relational domains gain most).
- ``falsified``: a parameter p ∈ P (a grid in every piece, the box's corners and random points, then PGD
  in the eps ball around the worst image) whose image, rounded to the execution precision, the real network or an
  execution misclassifies (``verdicts.refuting``, exact); the point and p are returned.
- ``unknown``: neither.
"""
from __future__ import annotations

import math
import time

import numpy as np

from refcert import attacks, domains, fp, geometric, nn, spec
from refcert import autodiff as ad
from refcert.autodiff import Tensor
from refcert.verdicts import CONCRETE_BATCH, CertifyResult, check_domains, clean_margins, cross_check, refuting

BOUNDS = ("linear", "interval")
#: grid points per parameter and piece for the attack (at most ATTACK_POINTS images per input)
GRID, ATTACK_POINTS = 9, 2048


def certify_geometric(net, x, labels, spec_text, domain="deeppoly", splits: int = 1, bounds: str = "linear",
                      eps: float = 0.0, clip=(0.0, 1.0), attack: bool = True, pgd_steps: int = 40,
                      execution=None, rng=None, piece_batch: int = 16):
    """Certify each image of ``x`` (N, C, H, W) with ``labels`` on the specification ``spec_text`` (e.g.
    "rotate:15+brightness:0.05") or a ``geometric.Spec``; see the module docstring.  ``domain``: one name
    or a list (a list returns {name: CertifyResult}).  ``piece_batch``: pieces per abstract run."""
    geo = spec_text if isinstance(spec_text, geometric.Spec) else geometric.parse(spec_text)
    if bounds not in BOUNDS:
        raise ValueError(f"bounds must be one of {BOUNDS}, got {bounds!r}")
    names = check_domains([domain] if isinstance(domain, str) else domain)
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    if int(splits) != splits or splits < 1 or int(piece_batch) < 1:
        raise ValueError(f"splits and piece_batch must be positive integers, got {splits}, {piece_batch}")
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    if labels.size and not np.all(labels == np.round(labels)):
        raise ValueError("labels must be integers")
    labels = labels.astype(np.int64)
    if x.ndim != 4 or labels.shape[0] != x.shape[0]:
        raise ValueError(f"geometric specifications need images (N, C, H, W) and N labels, got x {x.shape} "
                         f"and {labels.shape[0]} labels")
    execution = fp.check_execution(execution) if execution is not None else fp.policy().execution
    execution = execution or nn.parameter_dtype(net)
    nn.check_finite(net)
    nn.check_range(net, execution)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)
    with fp.use(execution=execution):
        n_classes = spec.output_size(net)
        predicted, _ = clean_margins(net, x, labels, CONCRETE_BATCH)
        lower, upper = geometric.pieces(geo, splits)
        found = _attack(net, x, labels, geo, lower, upper, eps, clip, pgd_steps, rng, execution) if attack else {}
        results = {}
        for name in names:
            results[name] = _certify_one(net, x, labels, geo, name, lower, upper, bounds, eps, clip, execution,
                                         predicted, n_classes, found, int(piece_batch))
            results[name].extra.update(spec=geo.text, splits=int(splits), bounds=bounds)
    cross_check(results)
    return results[names[0]] if isinstance(domain, str) else results


def _rounding(magnitude, execution):
    """An upper bound of |fl(v) − v| for |v| ≤ magnitude when v is rounded to the execution precision."""
    if execution not in ("float32",):
        return magnitude * 0.0
    return magnitude * 2.0 ** -24 + 2.0 ** -149


def _input_set(table, image, geo, lower, upper, bounds, eps, clip, execution):
    """The element of one image's pieces (lower, upper: (K, k)), batch K."""
    shape = image.shape
    if bounds == "interval":
        lo, hi = geometric.interval_bounds(image, geo, lower, upper)
        widen = _rounding(np.maximum(np.abs(lo), np.abs(hi)) + eps, execution) + eps
        below, above = np.nextafter(lo - widen, -np.inf), np.nextafter(hi + widen, np.inf)  # rounded outward
        if clip is not None:  # the ball is clipped, the transformed image is not (module docstring)
            below, above = np.maximum(below, np.minimum(clip[0], lo)), np.minimum(above, np.maximum(clip[1], hi))
        return table.from_bounds(Tensor(below), Tensor(above))
    A, b, c = geometric.linear_bounds(image, geo, lower, upper)
    reach = np.maximum(np.abs(lower), np.abs(upper))[:, None, :]                   # (K, 1, k)
    magnitude = np.abs(b) + np.sum(np.abs(A) * reach, axis=2) * (1 + 2.0 ** -40) + c + eps
    c = c + eps + _rounding(magnitude * (1 + 2.0 ** -40), execution)
    c = np.nextafter(c + 2.0 ** -1000, np.inf)                                     # the sums above, rounded up
    return table.from_affine(A, b, c, lower, upper, shape)


def _certify_one(net, x, labels, geo, name, lower, upper, bounds, eps, clip, execution, predicted, n_classes,
                 found, piece_batch) -> CertifyResult:
    table = domains.get(name)
    N = x.shape[0]
    verdicts, margins, points, times = ["unknown"] * N, np.full(N, -math.inf), [None] * N, np.zeros(N)
    for i in range(N):
        began = time.perf_counter()
        piece_low = np.full(lower.shape[0], np.nan)           # each piece's margin bound (NaN: not run)
        for start in range(0, lower.shape[0], piece_batch):
            part = slice(start, start + piece_batch)
            with ad.no_grad():
                element = _input_set(table, x[i], geo, lower[part], upper[part], bounds, eps, clip, execution)
                low = spec.margin_bounds(net, element, np.full(lower[part].shape[0], labels[i]), n_classes).numpy()
            piece_low[part] = np.min(np.where(np.isnan(low), -math.inf, low), axis=1) if low.size else math.inf
            if np.nanmin(piece_low) <= 0:  # one piece not verified: the image is not (the rest is not run)
                break
        times[i] = time.perf_counter() - began
        margins[i] = -math.inf if np.isnan(piece_low).any() else float(np.min(piece_low))
        if i in found:
            point, p, margin = found[i]
            limit = margin if fp.policy().sound else margin + 1e-5 * (1 + abs(margin))
            holding = (lower <= p).all(axis=1) & (p <= upper).all(axis=1) & ~np.isnan(piece_low)
            if holding.any() and np.min(piece_low[holding]) > limit:  # the pieces that hold the attack's p
                raise RuntimeError(f"domain {name!r} is unsound on input {i}: certified margin "
                                   f"{np.min(piece_low[holding]):.6g} exceeds the margin {margin:.6g} of a member "
                                   f"of the set (parameters {p.tolist()})")
            if margin <= 0 and point is not None:
                verdicts[i], points[i] = "falsified", point
                continue
        if margins[i] > 0:
            verdicts[i] = "verified"
    result = CertifyResult(name, eps, labels, predicted, verdicts, margins, points, times)
    result.extra["parameters"] = [found[i][1].tolist() if verdicts[i] == "falsified" else None for i in range(N)]
    return result


def _attack(net, x, labels, geo, lower, upper, eps, clip, steps, rng, execution) -> dict:
    """{input index: (point or None, p, margin)}: for each image the member of the set with the smallest
    margin found (grid + random parameters, then PGD in the eps ball); the point is given only where it
    refutes the guarantee after the exact re-check (``verdicts.refuting``) and lies in the set."""
    K, k = lower.shape
    budget = 3 * ATTACK_POINTS // 4                      # a grid in every piece (a random subset of pieces'
    per_piece = min(GRID, max(1, int((budget / K) ** (1 / max(k, 1)))))  # centres when there are more)
    if K * per_piece ** k <= budget:
        grid = np.concatenate([geometric.grid(lower[j], upper[j], per_piece) for j in range(K)])
    else:
        grid = ((lower + upper) / 2)[rng.permutation(K)[:budget]]
    corners = geometric.grid(geo.lower, geo.upper, 2)
    spread = geo.lower + (geo.upper - geo.lower) * rng.random((ATTACK_POINTS - len(grid) - len(corners), k))
    params = np.concatenate([grid, corners, spread])
    out = {}
    for i in range(x.shape[0]):
        images = _executed(geometric.transform(x[i], geo, params), execution)   # members (δ = 0)
        _, margin = clean_margins(net, images, np.full(len(images), labels[i]), CONCRETE_BATCH)
        best = int(np.argmin(margin))
        point, m = images[best], float(margin[best])
        if m > 0 and eps > 0 and steps > 0:
            centre = geometric.transform(x[i], geo, params[best])
            found = attacks.pgd(net, centre[None], labels[i:i + 1], eps, steps=steps, clip=clip, loss="margin",
                                rng=rng)
            candidate = _executed(found.points.numpy(), execution)
            if _member(candidate[0], centre, eps, clip):
                _, margin_pgd = clean_margins(net, candidate, labels[i:i + 1], 1)
                if margin_pgd[0] < m:
                    point, m = candidate[0], float(margin_pgd[0])
        refutes = m <= 0 and bool(refuting(net, point[None], labels[i:i + 1], spec.output_size(net), 1)[0])
        out[i] = (point if refutes else None, params[best], m)
    return out


def _member(point, centre, eps, clip) -> bool:
    """Is ``point`` = centre + δ with |δ|∞ ≤ eps and, where clip is given, inside [min(clip₀, centre),
    max(clip₁, centre)] (the ball is clipped, not the transformed image)?  Exact comparisons."""
    if not bool(fp.inside(point[None], centre[None], eps, None)[0]):
        return False
    return clip is None or bool(np.all((point >= np.minimum(clip[0], centre)) & (point <= np.maximum(clip[1], centre))))


def _executed(images, execution):
    """The images as the execution precision holds them (float64 values of those floats)."""
    return images.astype(execution).astype(np.float64) if execution in ("float32", "float64") else images

