"""Geometric specifications (issue 15): % certified with interval (a) and DeepG linear (b) pixel bounds.

    REFCERT_DATA=DIR python bench/geometric.py [--n 100] [--invariant NET.npz] [--domain deeppoly]
                                               [--specs rotate:15 rotate:30 translate:2 scale:0.9,1.1]

The first N MNIST test images (full MNIST when REFCERT_DATA has it, else the shipped mnist-mini test split).
Nets: the shipped ConvSmall standard, PGD (0.1) and DiffAI-box (0.1) nets and, with --invariant, a net
trained with ``refcert train --spec rotate:15``.  For each net and specification: the images certified by
``refcert.certify(..., spec=, splits=, bounds=)`` with interval and with linear pixel bounds (same domain,
same pieces: SPLITS below per specification), ms per image, and the images not falsified by the attack (a
dense grid of parameters, then PGD): an upper bound of what any verifier can certify.  One run; numbers
are from this machine.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import refcert  # noqa: E402
from refcert import weights  # noqa: E402
import mnist_images  # noqa: E402  (bench/mnist_images.py)

#: pieces per parameter for each specification (a piece per 3.75° of rotation, per pixel of translation)
SPLITS = {"rotate:15": 8, "rotate:30": 16, "translate:2": 4, "scale:0.9,1.1": 4}
NETS = ("convsmall_mnist_standard", "convsmall_mnist_pgd_0.1", "convsmall_mnist_diffai_box_0.1")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--invariant", metavar="NET.npz", help="a net trained with refcert train --spec rotate:15")
    parser.add_argument("--domain", default="deeppoly")
    parser.add_argument("--specs", nargs="+", default=list(SPLITS))
    parser.add_argument("--nets", nargs="*", default=list(NETS), help="shipped nets (none: only --invariant)")
    args = parser.parse_args(argv)
    x, y, source = mnist_images.first(args.n)
    nets = [(name, weights.load(name)) for name in args.nets]
    if args.invariant:
        nets.append((pathlib.Path(args.invariant).parent.name or args.invariant, refcert.load(args.invariant)))
    print(f"{source}: first {len(x)} test images, domain {args.domain}")
    print(f"{'net':<32} {'spec':<15} {'splits':>6} {'interval':>9} {'ms':>6} {'linear':>8} {'ms':>6} {'not falsified':>14}")
    for name, net in nets:
        for text in args.specs:
            splits = SPLITS.get(text, 4)
            row = {}
            for bounds in ("interval", "linear"):
                began = time.perf_counter()
                result = refcert.certify(net, x, y, domain=args.domain, spec=text, splits=splits, bounds=bounds,
                                         attack=bounds == "linear")
                row[bounds] = (100 * result.fraction("verified"), 1000 * (time.perf_counter() - began) / len(x))
                if bounds == "linear":
                    row["open"] = 100 * (1 - result.fraction("falsified"))
            print(f"{name:<32} {text:<15} {splits:>6} {row['interval'][0]:>8.0f}% {row['interval'][1]:>6.0f} "
                  f"{row['linear'][0]:>7.0f}% {row['linear'][1]:>6.0f} {row['open']:>13.0f}%", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
