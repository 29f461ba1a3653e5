"""``refcert verify NET.onnx PROP.vnnlib``: decide a VNN-LIB property, print the verdict, write a VNN-COMP result.

The verdict is ``sat`` (a counterexample checked exactly on refcert's execution and, where onnxruntime is
installed, on the file itself under onnxruntime), ``unsat`` (every disjunct proved infeasible),
``unknown`` or ``timeout``; the exit code is 0 for any verdict and 1 for unreadable or mismatched files.
See ``refcert.verify`` for the method and its soundness conditions.

``refcert verify --instances instances.csv [--out results.csv] [--timeout-scale F]`` runs a VNN-COMP
instance list instead, one instance after the other in this process.  The CSV has a header with the columns
``onnx``, ``vnnlib`` and ``timeout`` (or ``timeout_s``), optionally ``benchmark`` and ``expected``; a file
without a header is read as VNN-COMP's own ``instances.csv`` (onnx, vnnlib, timeout).  Paths are relative to
the CSV's folder, or, when there is a ``benchmark`` column, to ``<CSV folder>/<benchmark>/`` (the layout of
``shared/vnncomp2021/instances.csv``); absolute paths are taken as they are.  Each instance gets its row's
timeout times ``--timeout-scale`` (``--timeout``, if given too, caps it), counted from the instance's start
(loading the network included) as ``--timeout`` counts from the process start for one instance.  After each
instance ``--out`` is rewritten atomically with one row per finished instance: benchmark (if the input has
it), onnx, vnnlib, timeout (the limit used), answer (sat/unsat/unknown/timeout/error), seconds,
counterexample (a VNN-COMP result file ``<out stem>_ce/<n>.txt`` beside ``--out`` when sat, the path
relative to ``--out``'s folder; else empty), expected and wrong (1 when sat was answered where unsat is
expected or vice versa; only when the input has ``expected``) and message.  An instance whose files are
missing or unreadable gets the answer ``error`` and continues.  The exit code is 1 when some answer is
wrong or the CSV cannot be read, else 0.
"""
from __future__ import annotations

import csv
import io
import math
import os
import sys
import time

import numpy as np

from refcert.certify import check_domains
from refcert.autodiff import no_grad
from refcert import parallel
from refcert.commands import add_alpha_arguments, add_parallel_arguments
from refcert.domains import alpha
from refcert.io.npz import atomic_write
from refcert.verify import DEFAULT_DOMAINS, verify
from refcert.weights import load_network, resolve

#: kept from --timeout for printing, writing the result and the interpreter's exit (measured 0.05-0.3 s)
EXIT_SECONDS = 0.25


def add_arguments(parser):
    parser.add_argument("net", metavar="NET", nargs="?",
                        help="the network: an .onnx file, an .npz written by refcert.save (its "
                        "VNN-LIB inputs X_i in C order of its NCHW input), or a shipped name (refcert weights)")
    parser.add_argument("property", metavar="PROP.vnnlib", nargs="?",
                        help="the property (VNN-LIB): its unsafe set")
    parser.add_argument("--domain", action="append", metavar="NAME",
                        help=f"abstract domain, tried in the order given (repeat); default {' '.join(DEFAULT_DOMAINS)}")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="wall-clock limit in seconds, counted from the process start: the verdict is printed "
                             "by then (within 5 %%), 'timeout' when undecided; with --instances a cap on each instance's limit")
    parser.add_argument("--result", metavar="PATH", help="write the VNN-COMP result file here (atomic)")
    parser.add_argument("--complete", action="store_true",
                        help="what the domains and PGD leave open: an exact MILP looks for a counterexample, "
                             "input splitting with the domains proves (small nets)")
    parser.add_argument("--seed", type=int, default=0, help="seed of PGD's random starts")
    add_alpha_arguments(parser)
    parser.add_argument("--execution", choices=("float32", "float64"), default=None,
                        help="the precision whose executions the verdict covers (default: the network file's)")
    parser.add_argument("--instances", metavar="CSV",
                        help="run a VNN-COMP instance list instead of NET PROP.vnnlib: columns onnx, vnnlib, timeout "
                             "(or timeout_s), optional benchmark (paths are then relative to CSV folder/benchmark/, "
                             "else to the CSV's folder) and expected; a headerless file is onnx,vnnlib,timeout")
    parser.add_argument("--out", metavar="RESULTS.csv",
                        help="with --instances: one row per instance, rewritten atomically after each; counterexamples "
                             "go to RESULTS_ce/<n>.txt")
    parser.add_argument("--timeout-scale", type=float, default=1.0, metavar="F",
                        help="with --instances: each instance's limit is its timeout times F (default 1)")
    add_parallel_arguments(parser, "instances", "with --instances: keep the rows already in --out and run only "
                           "the missing instances")


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


def _check_options(args):
    """The checks of the options every instance shares; the domain names."""
    names = check_domains(args.domain or DEFAULT_DOMAINS)
    if args.timeout is not None and not args.timeout >= 0:
        raise ValueError(f"--timeout must be >= 0 seconds, got {args.timeout}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    return names


def verify_instance(args, names, net_path, property_path, timeout, started):
    """Decide one instance: (outcome, disjuncts).  ``timeout`` seconds (None: no limit) counted from
    ``started`` (a ``time.monotonic`` value, None: from the call to ``verify``), less the time kept for
    printing and writing (``EXIT_SECONDS``, at most a tenth of the limit)."""
    from refcert.io.vnnlib import read_vnnlib
    deadline = None if timeout is None or started is None else \
        started + timeout - min(EXIT_SECONDS, timeout / 10)
    if not os.path.isfile(property_path):
        raise FileNotFoundError(f"{property_path}: no such file")
    net = load_network(net_path)  # in the file's precision; verify bounds a float64 copy, re-checks points as is
    onnx = getattr(net, "onnx_input_shape", None) is not None
    disjuncts = read_vnnlib(property_path)
    shape = None if onnx or not disjuncts else input_shape(net, int(np.size(disjuncts[0][0])), net_path)
    try:
        with alpha.use(iterations=args.alpha_iterations, lr=args.alpha_lr):
            outcome = verify(net, disjuncts, domains=names, timeout=timeout, deadline=deadline,
                             complete=args.complete, seed=args.seed, input_shape=shape, execution=args.execution,
                             confirm=_onnxruntime(resolve(net_path), net) if onnx else None)
    except ValueError as err:
        raise ValueError(f"{property_path} does not fit {net_path}: {err}") from err
    return outcome, disjuncts


def run(args):
    from refcert.io.vnnlib import write_result
    if getattr(args, "instances", None):
        if args.net is not None or args.property is not None:
            raise ValueError("give either NET PROP.vnnlib or --instances CSV, not both")
        if args.result:
            raise ValueError("--result is for one instance; with --instances counterexamples go beside --out")
        return run_instances(args)
    if args.net is None or args.property is None:  # what argparse says for missing positionals, exit code 2
        missing = ", ".join(name for name, value in (("NET", args.net), ("PROP.vnnlib", args.property)) if value is None)
        print(f"refcert verify: error: the following arguments are required: {missing} (or --instances CSV)",
              file=sys.stderr)
        return 2
    for option, value in (("--out", getattr(args, "out", None)),
                          ("--timeout-scale", None if getattr(args, "timeout_scale", 1.0) == 1.0 else True),
                          ("--workers", args.workers), ("--scheduler", args.scheduler), ("--resume", args.resume or None)):
        if value is not None:
            raise ValueError(f"{option} needs --instances")
    names = _check_options(args)
    started = getattr(args, "started", None)  # refcert.cli: the process start, so start-up counts too
    outcome, disjuncts = verify_instance(args, names, args.net, args.property, args.timeout, started)
    print(outcome.status)
    proved = ", ".join(f"{method}: {count}" for method, count in outcome.proved_by.items()) or "none"
    total = sum(len(specs) for _, _, specs in disjuncts)
    print(f"{outcome.seconds:.2f} s; {total} disjunct(s); proved infeasible by {proved}; {outcome.message}")
    if args.result:
        write_result(args.result, outcome.status, outcome.x, outcome.y)
        print(f"wrote {args.result}")
    return 0


# -- --instances: a VNN-COMP instance list -----------------------------------------------------------------

_ANSWERS = {"sat": "sat", "violated": "sat", "unsat": "unsat", "holds": "unsat"}


def read_instances(path):
    """(rows, has_benchmark, has_expected) of an instance list: each row a dict with onnx, vnnlib, timeout
    (a string, maybe empty), benchmark, expected and ``net``/``property``, the paths resolved (module
    docstring).  A ValueError for a file that is not such a list."""
    try:
        with open(path, newline="") as stream:
            table = [row for row in csv.reader(stream) if any(cell.strip() for cell in row)]
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a text CSV file ({err})") from None
    if not table:
        raise ValueError(f"{path}: no instances")
    header = [cell.strip().lower() for cell in table[0]]
    if "onnx" in header and "vnnlib" in header:
        table = table[1:]
        header = ["timeout" if name == "timeout_s" and "timeout" not in header else name for name in header]
    else:  # VNN-COMP's own instances.csv: onnx,vnnlib,timeout without a header
        header = ["onnx", "vnnlib", "timeout"]
    folder = os.path.dirname(os.path.abspath(path))
    rows = []
    for cells in table:
        row = {name: cells[i].strip() if i < len(cells) else "" for i, name in enumerate(header)}
        base = os.path.join(folder, row.get("benchmark", ""))
        row["net"] = os.path.join(base, row["onnx"]) if row["onnx"] else ""
        row["property"] = os.path.join(base, row["vnnlib"]) if row["vnnlib"] else ""
        rows.append(row)
    return rows, "benchmark" in header, "expected" in header


def _limit(row, args):
    """The instance's time limit in seconds (None: none): its timeout times --timeout-scale, capped by
    --timeout; a ValueError for a row without a usable timeout when --timeout is not given either."""
    text = row.get("timeout", "")
    if not text:
        if args.timeout is None:
            raise ValueError("no timeout in the row and no --timeout")
        return args.timeout
    try:
        value = float(text) * args.timeout_scale
    except ValueError:
        raise ValueError(f"timeout {text!r} is not a number") from None
    if not value >= 0:
        raise ValueError(f"timeout {text!r} times --timeout-scale {args.timeout_scale} is not >= 0 seconds")
    return value if args.timeout is None else min(value, args.timeout)


def _write_rows(path, columns, rows):
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    data = text.getvalue().encode()
    atomic_write(path, lambda stream: stream.write(data))


def _instance_row(shared, item):
    """One work item of ``--instances``: decide instance ``number`` and return its row (a dict)."""
    from refcert.io.vnnlib import write_result
    args, names, ce_folder, has_expected = shared
    number, row = item
    started = time.monotonic()
    out = {key: row.get(key, "") for key in ("benchmark", "onnx", "vnnlib", "expected")}
    out["number"] = str(number)
    out.update(counterexample="", message="", wrong="")
    try:
        limit = _limit(row, args)
        out["timeout"] = "" if limit is None else f"{limit:g}"
        if not row["onnx"] or not row["vnnlib"]:
            raise ValueError("the row has no onnx or no vnnlib file")
        if not os.path.isfile(row["net"]):
            raise FileNotFoundError(f"{row['net']}: no such file")
        outcome, _ = verify_instance(args, names, row["net"], row["property"], limit, started)
        out["answer"], out["message"] = outcome.status, outcome.message
        if outcome.status == "sat" and ce_folder is not None:
            os.makedirs(ce_folder, exist_ok=True)
            ce = os.path.join(ce_folder, f"{number}.txt")
            write_result(ce, outcome.status, outcome.x, outcome.y)
            out["counterexample"] = os.path.relpath(ce, os.path.dirname(os.path.abspath(args.out)))
    except KeyboardInterrupt:
        raise
    except Exception as err:  # one broken instance must not end the run
        out["answer"], out["message"] = "error", f"{type(err).__name__}: {err}"
    out["seconds"] = f"{time.monotonic() - started:.3f}"
    expected = _ANSWERS.get(str(out["expected"]).lower())
    if has_expected:
        wrong = expected is not None and out["answer"] in ("sat", "unsat") and out["answer"] != expected
        out["wrong"] = "1" if wrong else "0"
    return out


def _finished_rows(path, count) -> dict:
    """--resume: {instance number: row} of the rows already in the --out CSV (numbered in file order)."""
    if not path or not os.path.isfile(path):
        return {}
    with open(path, newline="") as stream:
        found = list(csv.DictReader(stream))
    if len(found) > count:
        raise ValueError(f"{path} has {len(found)} rows but the instance list only {count}: another run's results")
    return {int(row.get("number") or i): row for i, row in enumerate(found, 1)}


def run_instances(args):
    """``--instances``: every instance in turn, a row each (module docstring); the exit code."""
    names = _check_options(args)
    if not (math.isfinite(args.timeout_scale) and args.timeout_scale > 0):
        raise ValueError(f"--timeout-scale must be a finite number > 0, got {args.timeout_scale}")
    if not os.path.isfile(args.instances):
        raise FileNotFoundError(f"{args.instances}: no such file")
    instances, has_benchmark, has_expected = read_instances(args.instances)
    columns = ["number"] + (["benchmark"] if has_benchmark else []) + ["onnx", "vnnlib", "timeout", "answer", "seconds",
                                                          "counterexample"]
    columns += (["expected", "wrong"] if has_expected else []) + ["message"]
    ce_folder = None
    if args.out:
        stem = os.path.splitext(os.path.basename(args.out))[0]
        ce_folder = os.path.join(os.path.dirname(os.path.abspath(args.out)), f"{stem}_ce")
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    parallel.check(args.workers, args.scheduler)
    rows = _finished_rows(args.out, len(instances)) if args.resume else {}
    if args.resume and rows:
        print(f"resuming: {len(rows)} instance(s) already in {args.out}")
    items = [(number, (number, row)) for number, row in enumerate(instances, 1)]
    distributed = args.workers is not None or args.scheduler is not None
    for number, out in parallel.run(_instance_row, items, shared=(args, names, ce_folder, has_expected),
                                    workers=args.workers,
                                    scheduler=args.scheduler, done=rows, progress=distributed, what="instances"):
        rows[number] = out
        if args.out:
            _write_rows(args.out, columns, [rows[k] for k in sorted(rows)])
        where = "/".join(part for part in (out["benchmark"], out["onnx"]) if part)
        note = f" (expected {out['expected']})" if has_expected and out["expected"] else ""
        note += "  WRONG" if out["wrong"] == "1" else ""
        note += f"  {out['message']}" if out["answer"] == "error" else ""
        print(f"[{number}/{len(instances)}] {where} {out['vnnlib']}: {out['answer']} in {out['seconds']} s{note}",
              flush=True)
    done, counts = [rows[k] for k in sorted(rows)], {"solved": 0, "wrong": 0, "unknown": 0, "timeout": 0, "error": 0}
    for out in done:
        if out.get("wrong") == "1":
            counts["wrong"] += 1
        elif out["answer"] in ("sat", "unsat"):
            counts["solved"] += 1
        else:
            counts["unknown"] += 1
            if out["answer"] in ("timeout", "error"):
                counts[out["answer"]] += 1
    print(f"summary: {len(done)} instance(s): {counts['solved']} solved, {counts['wrong']} wrong, "
          f"{counts['unknown']} unknown ({counts['timeout']} timeout, {counts['error']} error)"
          + (f"; wrote {args.out}" if args.out else ""))
    return 1 if counts["wrong"] else 0
