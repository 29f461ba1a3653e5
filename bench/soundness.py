"""Benchmark (not a test): floating-point soundness of every domain, and what it costs (issue 11).

    python bench/soundness.py                 # 10^5 exact points per domain, then sound vs plain timing
    python bench/soundness.py --quick         # a short run of both parts
    python bench/soundness.py --points 20000 --skip-timing
    python bench/soundness.py --skip-points --nets ffnn6x100 convsmall --domains box deeppoly

Part 1, points.  Random small networks (the generators of tests/test_fp_property.py: fully connected,
conv + pools, residual, normalisation, sigmoid/tanh, float32 and float64, a third of them with
adversarial edits: huge biases, cancelling pairs, near ties, saturated sigmoids, underflow) and random
input sets (``from_bounds`` and ``linf_ball``, clipped or not, radii 0 to 0.5).  For each element, every domain of
``ball_domains()`` computes its output bounds and margin bounds once; then many points of the set
(corners, rational interior points, floats nearest the ends, random floats) are evaluated *once*
exactly (``tests/fp_exact.py``: Fractions, mpmath enclosures for sigmoid/tanh) and in every float
evaluation (seven summation orders, refcert, onnxruntime), and checked against every domain's bounds
with zero tolerance.  Prints per domain: elements, exact points, float evaluations, violations (values
outside a bound: output or margin, exact or float) and the number of elements they occurred in.

Part 2, cost.  Sound (default) vs plain (``refcert.fp.use(sound=False)``) ``spec.margin_bounds`` on
the networks of bench/certify.py (its builders and inputs), at batch 1 and at each of ``--batches``;
sound and plain runs alternate, ``--repeat`` times each; medians.  Prints per network and domain the
ms per image of both and their ratio at batch 1 and at the best batch (the fastest plain one), then
the geometric mean of the ratios per domain (goal of issue 11: at most 1.3).
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import pathlib
import resource
import statistics
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import refcert  # noqa: E402
from refcert import domains, fp, interpret, spec  # noqa: E402
from refcert.autodiff import Tensor, no_grad  # noqa: E402
from refcert.certify import ball_domains  # noqa: E402
from tests import fp_exact as fx  # noqa: E402
from tests import test_fp_property as gen  # noqa: E402


def _bench_certify():
    """bench/certify.py as a module (its network builders, NETS, _inputs and _time_one)."""
    spec_ = importlib.util.spec_from_file_location("bench_certify", REPO / "bench" / "certify.py")
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    return module


# --- part 1: points against the exact evaluator --------------------------------------------------------
def random_case(d):
    """A network from the test generators: FC, conv, or (one time in three) adversarial."""
    return d.choice([gen.build_fully_connected, gen.build_convolutional, gen.build_adversarial])(d)


def element_bounds(net, inputs, labels, names):
    """{domain: (lower, upper, margin lower)} as NumPy arrays, and the seconds it took."""
    began = time.perf_counter()
    out = {}
    with no_grad(), fx.quiet_floats():
        for name in names:
            domain = domains.get(name)
            lower, upper = interpret.run([net], inputs.build(domain)).bounds()
            margin = spec.margin_bounds(net, inputs.build(domain), labels)
            out[name] = (lower.numpy(), upper.numpy(), margin.numpy())
    return out, time.perf_counter() - began


def check_points(target, names, seed, per_element, budget_s):
    """Check elements until every domain has ``target`` exact points (or the budget runs out)."""
    d = gen.RandomDraws(np.random.default_rng(seed))
    totals = {name: {"elements": 0, "points": 0, "floats": 0, "violations": 0, "bad elements": 0, "first": None}
              for name in names}
    timing = {"bounds": 0.0, "evidence": 0.0}
    began = time.perf_counter()
    while min(t["points"] for t in totals.values()) < target and time.perf_counter() - began < budget_s:
        case = random_case(d)
        net = case.net
        inputs = gen.build_input_set(d, case.shape, case.dtype)
        rng = d.seed()
        labels = gen.pick_labels(case, inputs.lo.shape[0], rng, spec.output_size(net))
        bounds, seconds = element_bounds(net, inputs, labels, names)
        timing["bounds"] += seconds
        start = time.perf_counter()
        evidence = fx.gather_evidence(net, inputs.lo, inputs.hi, rng, per_element, labels)
        timing["evidence"] += time.perf_counter() - start
        for name, (lower, upper, margin) in bounds.items():
            found = evidence.violations(name, lower, upper, margin)
            t = totals[name]
            t["elements"] += 1
            t["points"] += evidence.exact_points
            t["floats"] += evidence.float_points
            t["violations"] += len(found)
            t["bad elements"] += bool(found)
            if found and t["first"] is None:
                t["first"] = f"{found[0]} | {case.dtype} net, edits {case.edits}, {inputs.description}"
    return totals, timing, time.perf_counter() - began


def print_points(totals, timing, elapsed):
    print(f"\nPart 1: sampled points vs every domain's bounds, zero tolerance ({elapsed:.0f} s: "
          f"bounds {timing['bounds']:.0f} s, exact and float evaluation {timing['evidence']:.0f} s)")
    header = (f"{'domain':<11} {'elements':>8} {'exact points':>12} {'float evals':>11} {'violations':>10} "
              f"{'in elements':>11}")
    print(header + "\n" + "-" * len(header))
    for name, t in totals.items():
        print(f"{name:<11} {t['elements']:>8} {t['points']:>12} {t['floats']:>11} {t['violations']:>10} "
              f"{t['bad elements']:>11}")
    for name, t in totals.items():
        if t["first"]:
            print(f"  first violation, {name}: {t['first']}")


# --- part 2: sound vs plain timing -------------------------------------------------------------------
def _median_ms(times, batch):
    return 1000 * statistics.median(times) / batch


def time_pair(bc, net, x, y, eps, name, batch, repeat, limit_s):
    """(sound ms/image, plain ms/image): medians over ``repeat`` alternating runs after one untimed run of
    each, or a string saying why not."""
    xb, yb = Tensor(x[:batch]), y[:batch]
    ball = domains.get(name).linf_ball

    def run():
        spec.margin_bounds(net, ball(xb, eps), yb).numpy()
    times = {True: [], False: []}
    try:
        with no_grad():
            for sound in (True, False):   # warm-up, untimed
                with fp.use(sound=sound):
                    bc._time_one(run, limit_s)
            for r in range(repeat):
                for sound in ((True, False) if r % 2 == 0 else (False, True)):
                    with fp.use(sound=sound):
                        times[sound].append(bc._time_one(run, limit_s))
    except bc._Timeout:
        return "timeout"
    except MemoryError:
        return "out of memory"
    return _median_ms(times[True], batch), _median_ms(times[False], batch)


def time_domains(bc, net_names, names, batches, repeat, limit_s, budget_s, dtype):
    """{(net, domain): {batch: (sound, plain) or str}}, printing a row per pair as it goes."""
    rng = np.random.default_rng(0)
    results = {}
    began = time.perf_counter()
    print(f"\nPart 2: sound vs plain margin bounds, ms per image (median of {repeat}, interleaved)")
    header = (f"{'net':<17} {'domain':<11} {'b1 sound':>9} {'b1 plain':>9} {'ratio':>6} "
              f"{'best b':>6} {'sound':>9} {'plain':>9} {'ratio':>6}")
    print(header + "\n" + "-" * len(header))
    for net_name in net_names:
        build, eps, source = bc.NETS[net_name]
        net = build(rng)
        net.astype(dtype)
        x, y = bc._inputs(source, max(batches + [1]), rng)
        x = x.astype(dtype)
        for name in names:
            cells = {}
            for batch in [1] + batches:
                left = budget_s - (time.perf_counter() - began)
                if left <= 0:
                    cells[batch] = "budget"
                    break
                cells[batch] = time_pair(bc, net, x, y, eps, name, batch, repeat, min(limit_s, left))
                if isinstance(cells[batch], str):
                    break
            results[(net_name, name)] = cells
            print(_row(net_name, name, cells), flush=True)
    return results


def _best(cells):
    timed = {b: v for b, v in cells.items() if not isinstance(v, str)}
    return min(timed, key=lambda b: timed[b][1]) if timed else None


def _row(net_name, name, cells):
    one = cells.get(1)
    if isinstance(one, str) or one is None:
        return f"{net_name:<17} {name:<11} {one or '-':>9}"
    best = _best(cells)
    s, p = cells[best]
    return (f"{net_name:<17} {name:<11} {one[0]:>9.2f} {one[1]:>9.2f} {one[0] / one[1]:>6.2f} "
            f"{best:>6} {s:>9.2f} {p:>9.2f} {s / p:>6.2f}")


def print_geomeans(results, names):
    print("\nGeometric mean of sound / plain per domain (over the nets timed)")
    header = f"{'domain':<11} {'batch 1':>8} {'best batch':>10} {'nets':>5}"
    print(header + "\n" + "-" * len(header))
    for name in names:
        ones, bests = [], []
        for (net_name, domain), cells in results.items():
            if domain != name or isinstance(cells.get(1), str) or cells.get(1) is None:
                continue
            ones.append(cells[1][0] / cells[1][1])
            s, p = cells[_best(cells)]
            bests.append(s / p)
        if ones:
            gm = lambda v: math.exp(sum(map(math.log, v)) / len(v))  # noqa: E731
            print(f"{name:<11} {gm(ones):>8.3f} {gm(bests):>10.3f} {len(ones):>5}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run: 5000 points, two nets, batch 8")
    parser.add_argument("--points", type=int, help="exact points per domain (default 100000; --quick 5000)")
    parser.add_argument("--per-element", type=int, default=64, help="sampling count per element (fp_exact)")
    parser.add_argument("--points-budget", type=float, default=3600.0, help="seconds for part 1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--domains", nargs="*", help="default: every ball domain")
    parser.add_argument("--nets", nargs="*", help="bench/certify.py nets (default: all; --quick: two)")
    parser.add_argument("--batches", type=int, nargs="*", help="default 8 32 (--quick: 8)")
    parser.add_argument("--repeat", type=int, help="timed runs of each mode (default 5; --quick 3)")
    parser.add_argument("--limit", type=float, default=60.0, help="seconds for one timed run")
    parser.add_argument("--timing-budget", type=float, default=1800.0, help="seconds for part 2")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--skip-points", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--max-memory-gb", type=float, default=6.0, help="address-space limit (0: none)")
    args = parser.parse_args(argv)
    if args.max_memory_gb > 0:
        limit = int(args.max_memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    names = args.domains or ball_domains()
    print(f"refcert {refcert.__version__}, domains {names}")
    if not args.skip_points:
        target = args.points or (5000 if args.quick else 100_000)
        totals, timing, elapsed = check_points(target, names, args.seed, args.per_element, args.points_budget)
        print_points(totals, timing, elapsed)
    if not args.skip_timing:
        bc = _bench_certify()
        nets = args.nets or (["ffnn6x100", "convsmall"] if args.quick else list(bc.NETS))
        batches = args.batches or ([8] if args.quick else [8, 32])
        repeat = args.repeat or (3 if args.quick else 5)
        results = time_domains(bc, nets, names, batches, repeat, args.limit, args.timing_budget, args.dtype)
        print_geomeans(results, names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
