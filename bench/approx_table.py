"""Benchmark: size of the interval-approximation network and worst observed Box error / δ.

    python bench/approx_table.py            # table for m = 1, 2, 3 and several δ; writes bench/approx_2d.png

For each (function, δ): grid M, bumps, neurons, parameters, build time, and over random boxes B (large,
small, point) the worst ratio max(l − lower(n#B), upper(n#B) − u, lower − l, u − upper)/δ, where l, u is
the exact range of f on B.  The theorem says the ratio is ≤ 1 (outer and inner inclusions).
"""
from __future__ import annotations

import pathlib
import sys
import time

import numpy as np

from refcert import approx, domains


def pyramid(m):  # 1 − Σ|x_i − ½|: exact range per box; ℓ∞-Lipschitz m
    f = lambda X: 1 - np.abs(X - 0.5).sum(1)
    def oracle(lo, hi):
        near, far = np.clip(0.5, lo, hi), np.maximum(np.abs(lo - 0.5), np.abs(hi - 0.5))
        return 1 - far.sum(1), 1 - np.abs(near - 0.5).sum(1)
    return f, oracle, float(m)


def worst_ratio(net, oracle, m, delta, rng, count=2000):
    c = rng.uniform(0, 1, (count, m))
    r = rng.choice([0.5, 0.05, 0.0], (count, 1)) * rng.uniform(0, 1, (count, m))
    lo, hi = np.clip(c - r, 0, 1), np.clip(c + r, 0, 1)
    l, u = oracle(lo, hi)
    nl, nu = (v.numpy()[:, 0] for v in net(domains.get("box").from_bounds(lo, hi)).bounds())
    return max(np.max(l - nl), np.max(nu - u), np.max(nl - l), np.max(u - nu)) / delta


def main():
    rng = np.random.default_rng(0)
    rows = []
    for m, deltas in ((1, [0.2, 0.1, 0.05, 0.02]), (2, [0.5, 0.3, 0.2]), (3, [1.0, 0.75])):
        f, oracle, lip = pyramid(m)
        for delta in deltas:
            start = time.perf_counter()
            try:
                res = approx.interval_network(f, [0] * m, [1] * m, delta, lipschitz=lip, max_bytes=2**30)
            except approx.ApproximationTooLarge as err:
                rows.append((m, delta, "-", "-", "-", "-", "-", f"refused: {str(err)[:60]}"))
                continue
            seconds = time.perf_counter() - start
            ratio = worst_ratio(res.net, oracle, m, delta, rng)
            rows.append((m, delta, res.plan.M, res.size.bumps, res.size.neurons, res.size.parameters,
                         f"{seconds:.2f}", f"{ratio:.3f}"))
    print("| m | δ | grid M | bumps | neurons | parameters | build s | worst error/δ (Box, 2000 boxes) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    from refcert.commands.approx import plot
    from refcert.expr import compile_expression
    g = compile_expression("sin(3*x0) + abs(x1)", 2)
    res = approx.interval_network(g, [0, 0], [1, 1], 0.3, lipschitz=4)
    out = pathlib.Path(__file__).with_name("approx_2d.png")
    plot(plt, g, res, out, title="sin(3*x0) + abs(x1)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
