"""``refcert verify NET.onnx PROP.vnnlib``: decide a VNN-LIB property, print the verdict, write a VNN-COMP result.

The verdict is ``sat`` (a counterexample checked exactly on refcert's execution and, where onnxruntime is
installed, on the file itself under onnxruntime), ``unsat`` (every disjunct proved infeasible),
``unknown`` or ``timeout``; the exit code is 0 for any verdict and 1 for unreadable or mismatched files.
See ``refcert.verify`` for the method and its soundness conditions.
"""
from __future__ import annotations

import os

from refcert import domains
from refcert.verify import DEFAULT_DOMAINS, verify


def add_arguments(parser):
    parser.add_argument("net", metavar="NET.onnx", help="the network (ONNX)")
    parser.add_argument("property", metavar="PROP.vnnlib", help="the property (VNN-LIB): its unsafe set")
    parser.add_argument("--domain", action="append", metavar="NAME",
                        help=f"abstract domain, tried in the order given (repeat); default {' '.join(DEFAULT_DOMAINS)}")
    parser.add_argument("--timeout", type=float, default=None, metavar="S", help="wall-clock limit in seconds")
    parser.add_argument("--result", metavar="PATH", help="write the VNN-COMP result file here (atomic)")
    parser.add_argument("--complete", action="store_true",
                        help="what the domains and PGD leave open: an exact MILP looks for a counterexample, "
                             "input splitting with the domains proves (small nets)")
    parser.add_argument("--seed", type=int, default=0, help="seed of PGD's random starts")
    parser.add_argument("--execution", choices=("float32", "float64"), default=None,
                        help="the precision whose executions the verdict covers (default: the ONNX file's dtype)")


def _onnxruntime(path, net):
    """x (flat, ONNX order) -> outputs of the file itself under onnxruntime, or None without onnxruntime."""
    try:
        import numpy as np
        import onnxruntime
    except ImportError:
        return None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name, shape = session.get_inputs()[0].name, tuple(net.onnx_input_shape)
    return lambda x: session.run(None, {name: np.asarray(x, dtype=net.onnx_dtype).reshape(shape)})[0].reshape(-1)


def run(args):
    from refcert.io.onnx import load_onnx
    from refcert.io.vnnlib import read_vnnlib, write_result
    names = args.domain or list(DEFAULT_DOMAINS)
    for name in names:
        if name not in domains.names():
            raise ValueError(f"unknown domain {name!r}; choose from {', '.join(domains.names())}")
    if args.timeout is not None and not args.timeout >= 0:
        raise ValueError(f"--timeout must be >= 0 seconds, got {args.timeout}")
    for path in (args.net, args.property):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file")
    net = load_onnx(args.net, dtype="float64")  # bounds in float64; verify re-checks points in float32 too
    disjuncts = read_vnnlib(args.property)
    try:
        outcome = verify(net, disjuncts, domains=names, timeout=args.timeout, complete=args.complete,
                         seed=args.seed, execution=args.execution, confirm=_onnxruntime(args.net, net))
    except ValueError as err:
        raise ValueError(f"{args.property} does not fit {args.net}: {err}") from err
    print(outcome.status)
    proved = ", ".join(f"{method}: {count}" for method, count in outcome.proved_by.items()) or "none"
    total = sum(len(specs) for _, _, specs in disjuncts)
    print(f"{outcome.seconds:.2f} s; {total} disjunct(s); proved infeasible by {proved}; {outcome.message}")
    if args.result:
        write_result(args.result, outcome.status, outcome.x, outcome.y)
        print(f"wrote {args.result}")
    return 0
