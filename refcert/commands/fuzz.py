"""``refcert fuzz``: differential fuzzing of a neural-network verifier against the exact oracle.

    refcert fuzz --verifier marabou | refcert | 'CMD {onnx} {vnnlib} {result} {timeout}'
                 --cases 50 --seed 0 --out DIR [--timeout 20] [--no-shrink] [--family net|fp]
Writes DIR/case-NNNN/ (net.onnx, prop.vnnlib, answer.json, stdout.txt, stderr.txt, result.txt) and
DIR/summary.csv, prints the summary table; exit code 1 when an unsound answer or a bad
counterexample was found (for CI), else 0.  Classes: refcert/fuzz/runner.py.  ``--family fp``: the
floating-point quirk family with exact real answers (refcert/fuzz/fp_family.py; classes in fp_check.py).
"""
from __future__ import annotations

import argparse
import importlib
import math

from refcert.commands import add_parallel_arguments
from refcert.fuzz import adapters, runner

#: what every case of a family needs (ONNX files, onnxruntime's checks, the MILP oracle); imported before
#: any case, so a missing one is named by refcert.cli with its extra
NEEDS = {"net": ("onnx", "onnxruntime", "scipy.optimize"), "fp": ("onnx", "onnxruntime")}


def add_arguments(parser):
    parser.add_argument("--verifier", required=True,
                        help="'marabou', 'refcert', or a command with {onnx} {vnnlib} {result} {timeout}")
    parser.add_argument("--cases", type=int, default=50, help="number of cases (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="campaign seed: same seed, same cases")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--timeout", type=float, default=20.0,
                        help="the verifier's time limit per case in seconds (passed to it; a process still running "
                             f"{adapters.GRACE:g} s later is killed and counts as a crash)")
    parser.add_argument("--shrink", action=argparse.BooleanOptionalAction, default=True,
                        help="shrink failing cases (default on)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary table")
    parser.add_argument("--family", choices=("net", "fp"), default="net",
                        help="'net': random nets in benchmark layouts, MILP answers (default); 'fp': "
                             "floating-point quirks (absorption, cancellation, near ties, tiny boxes, huge biases) "
                             "with exact rational answers")
    add_parallel_arguments(parser, "cases", "keep the cases already in DIR/summary.csv and run only the missing ones")


def run(args):
    if args.cases < 1:
        raise ValueError(f"--cases must be >= 1, got {args.cases}")
    if not (args.timeout > 0 and math.isfinite(args.timeout)):  # NaN fails too
        raise ValueError(f"--timeout must be a finite number of seconds > 0, got {args.timeout}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    for module in NEEDS[args.family]:
        importlib.import_module(module)
    adapter = adapters.get(args.verifier)
    log = (lambda *a: None) if args.quiet else (lambda line: print(line, flush=True))
    fam = runner.family(args.family)
    rows = runner.campaign(adapter, args.cases, args.seed, args.out, args.timeout, args.shrink, log, fam,
                           workers=args.workers, scheduler=args.scheduler, resume=args.resume)
    print(runner.summary_table(rows, adapter.name, fam.classes))
    if fam.extra_summary is not None:
        print("\n" + fam.extra_summary(rows))
    return 1 if any(r["class"] in ("unsound", "bad-counterexample") for r in rows) else 0
