"""``refcert verify NET.onnx PROP.vnnlib``: decide a VNN-LIB property, print the verdict, write a VNN-COMP result.

The verdict is ``sat`` (a counterexample checked exactly on refcert's execution and, where onnxruntime is
installed, on the file itself under onnxruntime), ``unsat`` (every disjunct proved infeasible),
``unknown`` or ``timeout``; the exit code is 0 for any verdict and 1 for unreadable or mismatched files.
See ``refcert.verify`` for the method and its soundness conditions.
"""
from __future__ import annotations

import math
import os

import numpy as np

from refcert.certify import check_domains
from refcert.autodiff import no_grad
from refcert.verify import DEFAULT_DOMAINS, verify
from refcert.weights import load_network, resolve

#: kept from --timeout for printing, writing the result and the interpreter's exit (measured 0.05-0.3 s)
EXIT_SECONDS = 0.25


def add_arguments(parser):
    parser.add_argument("net", metavar="NET", help="the network: an .onnx file, an .npz written by refcert.save (its "
                        "VNN-LIB inputs X_i in C order of its NCHW input), or a shipped name (refcert weights)")
    parser.add_argument("property", metavar="PROP.vnnlib", help="the property (VNN-LIB): its unsafe set")
    parser.add_argument("--domain", action="append", metavar="NAME",
                        help=f"abstract domain, tried in the order given (repeat); default {' '.join(DEFAULT_DOMAINS)}")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="wall-clock limit in seconds, counted from the process start: the verdict is printed "
                             "by then (within 5 %%), 'timeout' when undecided")
    parser.add_argument("--result", metavar="PATH", help="write the VNN-COMP result file here (atomic)")
    parser.add_argument("--complete", action="store_true",
                        help="what the domains and PGD leave open: an exact MILP looks for a counterexample, "
                             "input splitting with the domains proves (small nets)")
    parser.add_argument("--seed", type=int, default=0, help="seed of PGD's random starts")
    parser.add_argument("--execution", choices=("float32", "float64"), default=None,
                        help="the precision whose executions the verdict covers (default: the network file's)")


def input_shape(net, size: int, path) -> tuple:
    """The input shape (no batch) for ``size`` VNN-LIB inputs of a network that records none (an .npz):
    (C, s, s) when its first layer that cares is a Conv2d or a C-channel Normalize (square images), else
    (size,); checked by running the net once, else a ValueError saying to export it to ONNX."""
    shape = (size,)
    first = next((layer for layer in getattr(net, "layers", [net]) if layer.op not in ("relu", "sigmoid", "tanh")
                  and not (layer.op == "normalize" and layer.params["mean"].shape[0] == 1)), None)
    if first is not None and first.op in ("conv2d", "normalize"):
        channels = first.params["weight"].shape[1] if first.op == "conv2d" else first.params["mean"].shape[0]
        side = math.isqrt(size // channels)
        shape = (channels, side, side)
    try:
        if math.prod(shape) != size:
            raise ValueError("not a square image")
        with no_grad():
            net(np.zeros((1,) + shape))
    except Exception as err:  # a shape mismatch deep inside a layer
        raise ValueError(f"{path}: cannot tell which input shape the network takes for the property's {size} "
                         f"inputs (tried {shape}); export it with refcert.export_onnx(net, 'net.onnx', "
                         f"input_shape=(1, C, H, W)) and verify the .onnx") from err
    return shape


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
    from refcert.io.vnnlib import read_vnnlib, write_result
    names = check_domains(args.domain or DEFAULT_DOMAINS)
    if args.timeout is not None and not args.timeout >= 0:
        raise ValueError(f"--timeout must be >= 0 seconds, got {args.timeout}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    started = getattr(args, "started", None)  # refcert.cli: the process start, so start-up counts too
    deadline = None if args.timeout is None or started is None else \
        started + args.timeout - min(EXIT_SECONDS, args.timeout / 10)
    if not os.path.isfile(args.property):
        raise FileNotFoundError(f"{args.property}: no such file")
    net = load_network(args.net)  # in the file's precision; verify bounds a float64 copy, re-checks points as is
    onnx = getattr(net, "onnx_input_shape", None) is not None
    disjuncts = read_vnnlib(args.property)
    shape = None if onnx or not disjuncts else input_shape(net, int(np.size(disjuncts[0][0])), args.net)
    try:
        outcome = verify(net, disjuncts, domains=names, timeout=args.timeout, deadline=deadline,
                         complete=args.complete, seed=args.seed, input_shape=shape, execution=args.execution,
                         confirm=_onnxruntime(resolve(args.net), net) if onnx else None)
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
