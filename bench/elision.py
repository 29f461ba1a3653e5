"""Specification elision (issue 16, item 1): margins with and without the folded last layer.

    REFCERT_DATA=DIR python bench/elision.py [--n 200] [--eps 0.1]

On the first N MNIST test images (full MNIST from REFCERT_DATA, else the shipped mnist-mini), for the shipped
ConvSmall PGD (0.1) net with Box and the DiffAI-box (0.2) net with Box, DeepPoly and CROWN-IBP: how many of
the N·9 margin lower bounds ``spec.margin_bounds`` (elided) makes tighter than the plain [net, C] run
(``spec.through``), the largest gain, and the images verified each way.  Float32 executions, sound policy.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from refcert import domains, fp, spec, weights  # noqa: E402
from refcert.autodiff import Tensor, no_grad  # noqa: E402
import mnist_images  # noqa: E402  (bench/mnist_images.py)

CASES = (("convsmall_mnist_pgd_0.1", ("box",)), ("convsmall_mnist_diffai_box_0.2", ("box", "deeppoly", "crown-ibp")))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--eps", type=float, default=0.1)
    args = parser.parse_args(argv)
    x, y, source = mnist_images.first(args.n)
    print(f"{source}: first {len(x)} test images, eps {args.eps}")
    print(f"{'net':<32} {'domain':<10} {'tighter':>14} {'largest gain':>13} {'verified before':>16} {'after':>6}")
    for name, names in CASES:
        net = weights.load(name)
        for domain in names:
            old, new = [], []
            for start in range(0, len(x), 50):
                part = slice(start, start + 50)
                element = lambda: domains.get(domain).linf_ball(Tensor(x[part]), args.eps, (0.0, 1.0))  # noqa: E731
                with no_grad(), fp.use(execution="float32"):
                    new.append(spec.margin_bounds(net, element(), y[part], 10).numpy())
                    C = spec.margin_matrix(y[part], 10, dtype="float32")
                    old.append(spec.through(spec._layers(net), element(), C).bounds()[0].numpy())
            old, new = np.concatenate(old), np.concatenate(new)
            print(f"{name:<32} {domain:<10} {int(np.sum(new > old)):>6} of {new.size:<5} {np.max(new - old):>13.3f} "
                  f"{int(np.sum(old.min(1) > 0)):>16} {int(np.sum(new.min(1) > 0)):>6}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
