"""``refcert demo``: the whole story in a few minutes, offline, on the shipped MNIST subset.

Trains one small network three ways — standard, adversarial (PGD, Madry'18) and certified (DiffAI,
Mirman'18) — then on held-out images reports clean accuracy, accuracy under a PGD attack, and the
percentage certified robust by Box, DeepZono and DeepPoly at one ε (``refcert.certify``), and plots
certified accuracy against ε (PNG; skipped with a note when matplotlib is missing).
"""
from __future__ import annotations

import csv
import dataclasses
import pathlib
import sys
import time

import numpy as np

from refcert import attacks, datasets, domains, models
from refcert.certify import certify
from refcert.io.npz import atomic_write
from refcert.train import TrainConfig, accuracy, train

TABLE_DOMAINS = ("box", "deepzono", "deeppoly")


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    model: str = "convtiny"
    eps: float = 0.1
    train_images: int = 4000
    test_images: int = 500
    epochs: int = 6
    batch_size: int = 50
    diffai_domain: str = "box"
    diffai_eps: float = 0.15          # DiffAI trains at a somewhat larger radius than it is tested at
    plot_eps: tuple = (0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2)
    plot_domain: str = "box"          # cheap enough for a whole curve; the table's domains are marked at eps


QUICK = DemoSettings(train_images=500, test_images=20, epochs=1, plot_eps=(0.0, 0.1))


def add_arguments(parser):
    parser.add_argument("--out", default="demo-out", help="folder for models, results.csv and the plot")
    parser.add_argument("--quick", action="store_true", help="a tiny run in seconds (for tests)")
    parser.add_argument("--eps", type=float, default=None, help="certification radius (default 0.1)")
    parser.add_argument("--seed", type=int, default=0)


def configs(s: DemoSettings, seed: int) -> dict[str, TrainConfig]:
    common = {"epochs": s.epochs, "batch_size": s.batch_size, "seed": seed, "ramp_epochs": max(1.0, s.epochs / 2)}
    return {"standard": TrainConfig(method="standard", **common),
            "pgd": TrainConfig(method="pgd", eps=s.eps, pgd_steps=3, **common),
            "diffai": TrainConfig(method="diffai", domain=s.diffai_domain, eps=s.diffai_eps, kappa=0.8, **common)}


def evaluate(net, x, y, eps, domain_names, seed: int) -> dict:
    """Clean accuracy, PGD accuracy and % verified per domain on (x, y) at ``eps``."""
    row = {"clean": accuracy(net, x, y)}
    found = attacks.pgd(net, x, y, eps, steps=20, restarts=1, rng=seed)
    robust = found.margins.numpy() > 0
    row["pgd"] = float(np.mean(robust))
    results = certify(net, x, y, eps, domain=list(domain_names), attack=False, batch_size=50)
    for name in domain_names:
        verified = np.array([v == "verified" for v in results[name].verdicts])
        if np.any(verified & ~robust):  # a certificate contradicted by an attack point: never print it
            raise RuntimeError(f"domain {name!r} verified input {int(np.argmax(verified & ~robust))} that PGD broke")
        row[name] = float(np.mean(verified))
    return row


def run(args):
    settings = QUICK if args.quick else DemoSettings()
    if args.eps is not None:
        settings = dataclasses.replace(settings, eps=float(args.eps))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    available = [d for d in TABLE_DOMAINS if d in domains.names()]
    missing = [d for d in TABLE_DOMAINS if d not in available]
    began = time.perf_counter()
    x, y = datasets.load("mnist-mini", "train")
    x_test, y_test = datasets.load("mnist-mini", "test")
    x, y = x[:settings.train_images], y[:settings.train_images]
    x_test, y_test = x_test[:settings.test_images], y_test[:settings.test_images]
    print(f"refcert demo: {settings.model} on {len(y)} MNIST training images (shipped subset), "
          f"{len(y_test)} held-out test images, eps = {settings.eps}", file=sys.stderr)
    rows, nets = {}, {}
    for method, config in configs(settings, args.seed).items():
        print(f"training ({method}) ...", file=sys.stderr)
        net = models.get(settings.model, "mnist", seed=args.seed)
        train(net, x, y, config, out=out / method, progress=False)
        nets[method] = net
        rows[method] = evaluate(net, x_test, y_test, settings.eps, available, args.seed)
    print_table(rows, available, settings, len(y_test))
    if missing:
        print(f"(domains not available in this build: {', '.join(missing)})")
    write_results(out / "results.csv", rows, available)
    plot(out / "certified_vs_eps.png", nets, rows, available, x_test, y_test, settings)
    print(f"total time {time.perf_counter() - began:.0f} s; models, metrics and results in {out}/")
    return 0


def print_table(rows: dict, domain_names, s: DemoSettings, n: int):
    header = f"{'training':<10} {'clean':>7} {'PGD':>7} " + " ".join(f"{d:>9}" for d in domain_names)
    print(f"\nMNIST ({n} test images), {s.model}, eps = {s.eps}: accuracy and % certified robust")
    print(header)
    print("-" * len(header))
    for method, row in rows.items():
        cells = " ".join(f"{100 * row[d]:>8.1f}%" for d in domain_names)
        print(f"{method:<10} {100 * row['clean']:>6.1f}% {100 * row['pgd']:>6.1f}% {cells}")


def write_results(path, rows: dict, domain_names):
    lines = ["training,clean,pgd," + ",".join(domain_names)]
    lines += [",".join([m, f"{r['clean']:.4f}", f"{r['pgd']:.4f}"] + [f"{r[d]:.4f}" for d in domain_names])
              for m, r in rows.items()]
    atomic_write(path, lambda stream: stream.write(("\n".join(lines) + "\n").encode()))


def plot(path, nets: dict, rows: dict, domain_names, x, y, s: DemoSettings):
    """Certified accuracy against eps (``s.plot_domain`` curves; the table's domains as markers at s.eps)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(plot skipped: matplotlib is not installed; pip install 'refcert[plot]')")
        return
    domain = s.plot_domain
    fig, ax = plt.subplots(figsize=(8, 4))
    markers = dict(zip(domain_names, "sD^v"))
    for method, net in nets.items():
        certified = [certify(net, x, y, eps, domain=domain, attack=False, batch_size=50).fraction("verified")
                     for eps in s.plot_eps]
        line, = ax.plot(s.plot_eps, [100 * c for c in certified], marker="o", label=f"{method} ({domain})")
        for name in domain_names:
            if name != domain:
                ax.plot([s.eps], [100 * rows[method][name]], linestyle="none", marker=markers[name],
                        color=line.get_color(), label=f"{method} ({name})")
    ax.set_xlabel("eps (L∞, pixel scale)")
    ax.set_ylabel("% certified robust")
    ax.set_title(f"{s.model} on the MNIST subset")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    atomic_write(path, lambda stream: fig.savefig(stream, format="png", dpi=100))
    plt.close(fig)
    print(f"plot: {path}")
