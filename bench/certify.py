"""Benchmark: milliseconds per image to bound the robustness margin, per domain and network.

    python bench/certify.py                              # all domains, all nets below
    python bench/certify.py --domains deepzono --nets convbig-diffai --budget 120
    python bench/certify.py --net trained.npz --inputs ../shared/datasets/eran/mnist_test.csv --eps 0.1

Nets: FFNN 6x100, ConvSmall and ConvBig with random PyTorch-style weights (eps 0.02, uniform random
images; random nets have many unstable ReLUs, so they are a hard case for the domains), and the
DiffAI-trained ConvSmall and ConvBig shipped in datasets/weights/ (eps 0.1, the shipped mnist-mini test
images).  ``--eps`` overrides every net's radius.  Measures ``spec.margin_bounds`` on an L∞ ball (the
attack is not timed) at batch 1 and at each of ``--batches``, and reports the fastest; the baseline is
the concrete forward pass of the same net in the same run (column "x forward").  A domain name with
``-dense`` appended (``deeppoly-dense``) runs that domain with the dense back-substitution rule
(``backsub.PATCHES`` off: every row over whole layers), the baseline of the receptive-field rule; each
such pair gets a line with the ratio of the two, measured in the same run.  Each measurement has a
wall-clock limit (SIGALRM) and the process a memory limit (--max-memory-gb); a run that exceeds either
prints "timeout" / "out of memory" and the bench moves on.
"""
from __future__ import annotations

import argparse
import pathlib
import resource
import signal
import sys
import time

import numpy as np

import refcert
from refcert import backends, datasets, domains, nn, spec
from refcert.autodiff import Tensor, no_grad
from refcert.certify import ball_domains
from refcert.domains import backsub

#: appended to a domain name: that domain with the dense back-substitution rule (the baseline)
DENSE = "-dense"


def ffnn(rng):
    layers = [nn.Normalize([0.1307], [0.3081]), nn.Flatten()]
    width = 784
    for _ in range(6):
        layers += [nn.Linear(width, 100, rng=rng), nn.ReLU()]
        width = 100
    return nn.Sequential(*layers, nn.Linear(width, 10, rng=rng))


def conv_small(rng):
    return nn.Sequential(nn.Normalize([0.1307], [0.3081]), nn.Conv2d(1, 16, 4, 2, 0, rng=rng), nn.ReLU(),
                         nn.Conv2d(16, 32, 4, 2, 0, rng=rng), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * 5 * 5, 100, rng=rng), nn.ReLU(), nn.Linear(100, 10, rng=rng))


def conv_big(rng):
    return nn.Sequential(nn.Normalize([0.1307], [0.3081]),
                         nn.Conv2d(1, 32, 3, 1, 1, rng=rng), nn.ReLU(), nn.Conv2d(32, 32, 4, 2, 1, rng=rng), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, 1, 1, rng=rng), nn.ReLU(), nn.Conv2d(64, 64, 4, 2, 1, rng=rng), nn.ReLU(),
                         nn.Flatten(), nn.Linear(64 * 7 * 7, 512, rng=rng), nn.ReLU(),
                         nn.Linear(512, 512, rng=rng), nn.ReLU(), nn.Linear(512, 10, rng=rng))


WEIGHTS = pathlib.Path(datasets.__file__).resolve().parent / "weights"


def shipped(name):
    return lambda rng: refcert.load(WEIGHTS / name)


# name -> (builder, eps, inputs): "random" images or the shipped "mnist-mini" test images
NETS = {"ffnn6x100": (ffnn, 0.02, "random"), "convsmall": (conv_small, 0.02, "random"),
        "convbig": (conv_big, 0.02, "random"),
        "convsmall-diffai": (shipped("convsmall_mnist_diffai_box_0.1.npz"), 0.1, "mnist-mini"),
        "convbig-diffai": (shipped("convbig_mnist_diffai_box_0.2.npz"), 0.1, "mnist-mini")}


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def _time_one(fn, limit_s: float) -> float:
    """Seconds for one call of fn, or raise _Timeout after limit_s."""
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, max(limit_s, 0.01))
    try:
        began = time.perf_counter()
        fn()
        return time.perf_counter() - began
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def measure(net, x, y, eps, domain, batch, limit_s, repeat):
    """ms per image (best of ``repeat``) for margin bounds on a batch, or a string saying why not."""
    xb, yb = x[:batch], y[:batch]
    dense = domain.endswith(DENSE)
    if domain == "forward":
        run = lambda: net(Tensor(xb)).numpy()
    else:
        ball = domains.get(domain[:-len(DENSE)] if dense else domain).linf_ball
        run = lambda: spec.margin_bounds(net, ball(Tensor(xb), eps), yb).numpy()
    best = float("inf")
    saved, backsub.PATCHES = backsub.PATCHES, not dense
    try:
        with no_grad():
            for _ in range(repeat):
                best = min(best, _time_one(run, limit_s))
                limit_s -= best
    except _Timeout:
        return "timeout" if best == float("inf") else 1000 * best / len(xb)
    except MemoryError:
        return "out of memory"
    finally:
        backsub.PATCHES = saved
    return 1000 * best / len(xb)


def _inputs(source, count, rng):
    """``count`` MNIST-shaped inputs: "random" (uniform), "mnist-mini" (shipped test images) or an ERAN CSV."""
    if source == "random":
        return rng.uniform(0, 1, (count, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, count)
    if source == "mnist-mini":
        x, y = datasets.load("mnist-mini", "test")
    else:
        from refcert.datasets.eran import read_eran_csv
        x, y = read_eran_csv(source)
    reps = -(-count // len(x))
    return np.concatenate([x] * reps)[:count], np.concatenate([y] * reps)[:count]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", nargs="*", help="default: every registered set domain")
    parser.add_argument("--nets", nargs="*", choices=list(NETS), default=list(NETS))
    parser.add_argument("--net", help="a trained net file (refcert.save) instead of random nets")
    parser.add_argument("--inputs", help="ERAN CSV of MNIST images for --net (default: mnist-mini test images)")
    parser.add_argument("--eps", type=float, help="radius for every net (default: each net's own, see above)")
    parser.add_argument("--batches", type=int, nargs="*", default=[8, 32])
    parser.add_argument("--budget", type=float, default=240.0, help="seconds for the whole run")
    parser.add_argument("--limit", type=float, default=60.0, help="seconds for one measurement")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--max-memory-gb", type=float, default=6.0,
                        help="address-space limit of the process (0: none; use 0 with cupy, CUDA maps far more)")
    parser.add_argument("--backend", default=None, help="numpy | cupy | strict")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)
    if args.max_memory_gb > 0:
        limit_bytes = int(args.max_memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, resource.getrlimit(resource.RLIMIT_AS)[1]))
    names = args.domains or ball_domains()
    rng = np.random.default_rng(0)
    count = max([1] + args.batches)
    if args.net:
        source = args.inputs or "mnist-mini"
        plan = {pathlib.Path(args.net).stem: (lambda rng: refcert.load(args.net), 0.1, source)}
    else:
        plan = {k: NETS[k] for k in args.nets}
    began = time.perf_counter()
    backend = backends.use(args.backend) if args.backend else backends.use(backends.current().name)
    with backend as active:
        print(f"backend {active.name} ({active.device}), dtype={args.dtype}, batches 1 and {args.batches}")
        header = (f"{'net':<17} {'eps':>5} {'domain':<11} {'batch 1 ms':>11} {'best ms':>9} {'at batch':>8} "
                  f"{'x forward':>10}")
        print(header + "\n" + "-" * len(header))
        for net_name, (build, eps, source) in plan.items():
            net, eps = build(rng), eps if args.eps is None else args.eps
            x, y = _inputs(source, count, rng)
            x = x.astype(args.dtype)
            net.astype(args.dtype)
            forward = measure(net, x, y, eps, "forward", max(args.batches + [1]), 10.0, 3)
            measured = {}
            for domain in names:
                left = args.budget - (time.perf_counter() - began)
                if left <= 0:
                    print(f"{net_name:<17} {eps:>5} {domain:<11} {'skipped (budget)':>11}")
                    continue
                cells = {1: measure(net, x, y, eps, domain, 1, min(args.limit, left), args.repeat)}
                for batch in args.batches:
                    left = args.budget - (time.perf_counter() - began)
                    if isinstance(cells[1], str) or left <= 0:
                        break
                    cells[batch] = measure(net, x, y, eps, domain, batch, min(args.limit, left), 1)
                timed = {b: v for b, v in cells.items() if not isinstance(v, str)}
                at = min(timed, key=timed.get) if timed else None
                one = cells[1] if isinstance(cells[1], str) else f"{cells[1]:.2f}"
                best = f"{timed[at]:.2f}" if at else "-"
                ratio = f"{timed[at] / forward:.0f}" if at and not isinstance(forward, str) else "-"
                print(f"{net_name:<17} {eps:>5} {domain:<11} {one:>11} {best:>9} {at or '-':>8} {ratio:>10}",
                      flush=True)
                measured[domain] = timed
            for domain in names:  # the receptive-field rule against the dense rule, batch by batch
                fast, slow = measured.get(domain, {}), measured.get(domain + DENSE, {})
                shared = [b for b in fast if b in slow]
                if shared:
                    ratios = ", ".join(f"batch {b}: {slow[b] / fast[b]:.1f}x" for b in shared)
                    print(f"{net_name:<17} {domain}: dense rule / receptive fields = {ratios}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
