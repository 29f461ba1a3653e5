"""DeepPoly, α-CROWN and branch and bound on a shipped net: how many images each decides.

    python bench/bab_mnist.py [--net convsmall_mnist_pgd_0.1] [--eps 0.1] [--n 200] [--timeout 10]

The first N MNIST test images (full MNIST when REFCERT_DATA has it, else the shipped mnist-mini test split,
which holds the first 1,000 test images).  ``refcert.certify`` with deeppoly and alpha-crown (no attack)
gives the images each verifies; every image alpha-crown leaves open then goes to ``refcert.verify.verify``
(one disjunct per other class: y_label − y_j ≤ 0 on the ball ∩ [0, 1]) with ``--timeout`` seconds: PGD,
then branch and bound with attacks on the subproblems.  Prints verified / falsified / open and ms per image
for each method; "decided" counts images verified or with a checked counterexample.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import refcert  # noqa: E402
from refcert import weights  # noqa: E402
from refcert.verify import verify  # noqa: E402
import mnist_images  # noqa: E402  (bench/mnist_images.py)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="convsmall_mnist_pgd_0.1")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per image for verify (default 10)")
    args = parser.parse_args(argv)
    net = weights.load(args.net)
    x, y, source = mnist_images.first(args.n)
    print(f"{args.net}, eps {args.eps}, first {len(x)} test images of {source}")
    rows = {}
    verified = {}
    for name in ("deeppoly", "alpha-crown"):
        began = time.perf_counter()
        result = refcert.certify(net, x, y, args.eps, domain=[name], attack=False, batch_size=1)[name]
        seconds = time.perf_counter() - began
        verified[name] = np.array([v == "verified" for v in result.verdicts])
        rows[name] = (int(verified[name].sum()), 0, 1000 * seconds / len(x))
        print(f"{name:12} verified {rows[name][0]:4d}  {rows[name][2]:8.1f} ms/image", flush=True)
    open_ = np.flatnonzero(~verified["alpha-crown"])
    answers, began = {}, time.perf_counter()
    classes = int(net(x[:1]).numpy().shape[-1])
    for i in open_:
        t = int(y[i])
        specs = [((np.eye(classes)[t] - np.eye(classes)[j])[None], np.zeros(1)) for j in range(classes) if j != t]
        lower = np.clip(x[i] - args.eps, 0.0, 1.0).reshape(-1)
        upper = np.clip(x[i] + args.eps, 0.0, 1.0).reshape(-1)
        outcome = verify(net, [(lower, upper, specs)], input_shape=x.shape[1:], timeout=args.timeout)
        answers[i] = outcome.status
        print(f"  image {i}: {outcome.status} in {outcome.seconds:.1f} s ({outcome.message})", flush=True)
    seconds = time.perf_counter() - began
    unsat = sum(a == "unsat" for a in answers.values())
    sat = sum(a == "sat" for a in answers.values())
    total_verified = int(verified["alpha-crown"].sum()) + unsat
    print(f"\n{'method':28} {'verified':>8} {'falsified':>9} {'open':>5} {'decided':>7}")
    for name in ("deeppoly", "alpha-crown"):
        v = rows[name][0]
        print(f"{name + f' ({rows[name][2]:.0f} ms/image)':28} {v:>8} {0:>9} {len(x) - v:>5} {v:>7}")
    per_open = 1000 * seconds / max(len(open_), 1)
    label = f"+ verify/BaB ({per_open:.0f} ms/open image)"
    print(f"{label:28} {total_verified:>8} {sat:>9} {len(x) - total_verified - sat:>5} {total_verified + sat:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
