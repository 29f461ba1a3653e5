"""``refcert approx``: build a ReLU network whose interval (Box) analysis δ-approximates f on [lower, upper].

    refcert approx --fn 'sin(3*x0) + abs(x1)' --lower 0,0 --upper 1,1 --delta 0.3 --lipschitz 4 \\
                   --out net.npz --plot net.png

The construction is Baader, Mirman & Vechev, ICLR 2020 (refcert/approx.py, proofs/universal_approximation.md).
"""
from __future__ import annotations

import math

import numpy as np

import refcert
from refcert import approx
from refcert.expr import compile_expression


def _vector(text: str, what: str) -> np.ndarray:
    try:
        values = np.array([float(v) for v in text.split(",")], dtype=np.float64)
    except ValueError:
        raise ValueError(f"--{what} must be comma-separated numbers such as 0,0, got {text!r}") from None
    if not np.all(np.isfinite(values)):
        raise ValueError(f"--{what} must be finite, got {text!r}")
    return values


def _pyplot():
    """matplotlib.pyplot on the Agg backend; ModuleNotFoundError (named by refcert.cli) without matplotlib."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def add_arguments(parser):
    parser.add_argument("--fn", required=True, help="f over x0..x{m-1}, e.g. 'sin(3*x0) + abs(x1)'")
    parser.add_argument("--lower", required=True, help="lower corner of the domain, comma-separated")
    parser.add_argument("--upper", required=True, help="upper corner of the domain, comma-separated")
    parser.add_argument("--delta", type=float, required=True, help="approximation tolerance δ > 0")
    parser.add_argument("--lipschitz", type=float, required=True,
                        help="ℓ∞ Lipschitz constant of f: |f(x) − f(y)| ≤ L·max_i |x_i − y_i|")
    parser.add_argument("--out", required=True, help="where to save the network (.npz)")
    parser.add_argument("--plot", help="also write a PNG (1-D and 2-D domains; needs matplotlib: "
                                       "pip install 'refcert[plot]')")
    parser.add_argument("--max-neurons", type=int, default=200_000, help="refuse larger networks")
    parser.add_argument("--max-mib", type=float, default=1024, help="refuse when weights/tables exceed this")


def run(args):
    lower, upper = _vector(args.lower, "lower"), _vector(args.upper, "upper")
    if lower.shape != upper.shape:
        raise ValueError(f"--lower has {lower.size} coordinates but --upper has {upper.size}")
    if args.max_neurons < 1 or not (args.max_mib > 0 and math.isfinite(args.max_mib)):  # NaN fails too
        raise ValueError(f"--max-neurons must be >= 1 and --max-mib a finite number > 0, got {args.max_neurons} "
                         f"and {args.max_mib}")
    plt = _pyplot() if args.plot and lower.size <= 2 else None  # a missing matplotlib fails before the work
    f = compile_expression(args.fn, lower.size)
    result = approx.interval_network(f, lower, upper, args.delta, lipschitz=args.lipschitz,
                                     max_neurons=args.max_neurons, max_bytes=args.max_mib * 2**20)
    refcert.save(result.net, args.out)
    p = result.plan
    print(f"f(x) = {args.fn} on [{args.lower}] .. [{args.upper}], delta = {args.delta}")
    print(f"grid M = {p.M}, slices N = {p.N} (h = {p.h:.4g}), min-tree depth d = {p.d}, L = {p.L}")
    print(f"network: {result.size}")
    print(f"saved {args.out}")
    if args.plot:
        if plt is None:
            print("--plot: only 1-D and 2-D domains can be plotted; skipped")
            return 0
        plot(plt, f, result, args.plot, title=args.fn)
        print(f"plot written to {args.plot}")
    return 0


def box_sweep(f, result, count=40, samples=2000, seed=0):
    """Boxes along the diagonal of Γ: (t, Box bounds of n, sampled range of f), widths ~ 1/8 of Γ."""
    from refcert import domains
    lower, upper = result.plan.lower, result.plan.upper
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 0.875, count)
    l_box = lower + (upper - lower) * t[:, None]
    u_box = l_box + (upper - lower) / 8
    n_lo, n_hi = (v.numpy()[:, 0] for v in result.net(domains.get("box").from_bounds(l_box, u_box)).bounds())
    points = l_box[:, None] + (u_box - l_box)[:, None] * rng.uniform(size=(count, samples, lower.size))
    values = f(points.reshape(-1, lower.size)).reshape(count, samples)
    return t, n_lo, n_hi, values.min(1), values.max(1)


def plot(plt, f, result, path, title):
    """1-D/2-D: f and n, and for a sweep of boxes n#(B) against the (sampled) range of f and the δ band."""
    lower, upper, delta = result.plan.lower, result.plan.upper, result.plan.delta
    fig, axes = plt.subplots(1, 3 if lower.size == 2 else 2, figsize=(15 if lower.size == 2 else 11, 4.2))
    if lower.size == 1:
        x = np.linspace(lower[0], upper[0], 800)[:, None]
        axes[0].plot(x[:, 0], f(x), label="f")
        axes[0].plot(x[:, 0], result.net(x).numpy()[:, 0], "--", label="network n")
        axes[0].fill_between(x[:, 0], f(x) - delta, f(x) + delta, alpha=0.2, label="f ± δ")
        axes[0].legend()
    else:
        g = np.linspace(0, 1, 120)
        X = np.stack(np.meshgrid(lower[0] + (upper[0] - lower[0]) * g, lower[1] + (upper[1] - lower[1]) * g), -1)
        pts = X.reshape(-1, 2)
        for ax, values, name in ((axes[0], f(pts), "f"), (axes[1], result.net(pts).numpy()[:, 0], "network n")):
            image = ax.imshow(values.reshape(120, 120), origin="lower", aspect="auto",
                              extent=(lower[0], upper[0], lower[1], upper[1]))
            ax.set_title(name), ax.set_xlabel("x0"), ax.set_ylabel("x1"), fig.colorbar(image, ax=ax)
    ax = axes[-1]
    t, n_lo, n_hi, f_lo, f_hi = box_sweep(f, result)
    ax.fill_between(t, f_lo - delta, f_hi + delta, color="tab:green", alpha=0.15, label="[l − δ, u + δ]")
    ax.fill_between(t, f_lo, f_hi, color="tab:green", alpha=0.4, label="range [l, u] of f (sampled)")
    ax.plot(t, n_lo, "k-", lw=1, label="Box bounds of n#(B)")
    ax.plot(t, n_hi, "k-", lw=1)
    ax.set_xlabel("box position t: B = lower + (upper − lower)·[t, t + 1/8]")
    ax.set_title("interval analysis along the diagonal"), ax.legend(fontsize=7)
    fig.suptitle(f"{title}:  δ = {delta},  {result.size.neurons} neurons")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
